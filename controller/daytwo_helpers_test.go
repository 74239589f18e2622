package controller

import "strings"

// dayTwoCopyEvent reports whether e is one of the Normal events of a day-2 copy (the admin hash,
// or a uuid or secret CouchDB made up) to one of pods: a joined node gets them, which tests of other
// features do not count.
func dayTwoCopyEvent(e string, pods ...string) bool {
	for _, r := range []string{ReasonAdminHashCopied, ReasonConfigCopied} {
		for _, p := range pods {
			if strings.HasPrefix(e, "Normal "+r+" Gave pod "+p+" ") {
				return true
			}
		}
	}
	return false
}

// dropDayTwoCopies removes the day-2 copy actions from a map of counter increases.
func dropDayTwoCopies(d map[string]float64) {
	for _, k := range []ActionKind{ActCopyAdminHash, ActCopyConfig} {
		delete(d, `actions_total{action="`+string(k)+`",result="success"}`)
	}
}
