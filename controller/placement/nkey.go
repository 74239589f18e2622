package placement

import (
	"encoding/json"
	"fmt"
	"math"

	"github.com/couchdb-controller/couchdb-controller/couch"
)

// NKey is the field of a database's shard map document in which the controller records the
// database's n the first time it edits the map. CouchDB keeps no n of its own: the map lists the
// copies there are now, and GET /{db} cluster.n is computed from it (it counts a copy being added at
// once, and copies on departed nodes), so during a move the map alone cannot tell a database with
// n=3 and one copy in flight from one with n=4. mem3 ignores fields it does not know, and every edit
// re-reads the map and keeps them. Set it by hand to change a database's n.
const NKey = "couchdb.io/n"

// DBN is the database's n: NKey when the map carries a valid one; otherwise, for a map the controller
// has never edited (so no move of its own is in flight), the number of copies per range CouchDB gave
// it: the most common count, the smaller on a tie, copies on departed nodes included.
func DBN(m couch.ShardMap) int {
	if n, ok := recordedN(m); ok {
		return n
	}
	return copyCount(m)
}

func recordedN(m couch.ShardMap) (int, bool) {
	var f float64
	switch x := m.Extra[NKey].(type) {
	case float64:
		f = x
	case int:
		f = float64(x)
	case json.Number:
		var err error
		if f, err = x.Float64(); err != nil {
			return 0, false
		}
	default:
		return 0, false
	}
	if f < 1 || f != math.Trunc(f) || f > 1000 {
		return 0, false
	}
	return int(f), true
}

// Edit applies an AddCopy or RemoveCopy to a freshly read map with the documented procedure, and
// records a.N under NKey when the map has no n recorded yet, in the same write: from then on the
// database's n no longer depends on what is in flight. It reports whether m changed; dropping a
// range's last copy is refused.
func Edit(m *couch.ShardMap, a Action) (bool, error) {
	changed := false
	switch a.Kind {
	case AddCopy:
		changed = m.AddCopy(a.Range, a.Node)
	case RemoveCopy:
		if m.HasCopy(a.Range, a.Node) && len(m.ByRange[a.Range]) <= 1 {
			return false, fmt.Errorf("refusing to remove the last copy of %s/%s", a.DB, a.Range)
		}
		changed = m.RemoveCopy(a.Range, a.Node)
	default:
		return false, fmt.Errorf("%s is not a shard map edit", a.Kind)
	}
	if _, ok := recordedN(*m); !ok && a.N > 0 {
		if m.Extra == nil {
			m.Extra = map[string]any{}
		}
		m.Extra[NKey] = a.N
		changed = true
	}
	return changed, nil
}

// copyCount counts a database's copies per range: the most common number (the smaller on a tie).
func copyCount(m couch.ShardMap) int {
	counts := map[int]int{}
	for _, nodes := range m.ByRange {
		counts[len(nodes)]++
	}
	n, best := 0, 0
	for c, k := range counts {
		if k > best || k == best && c < n {
			n, best = c, k
		}
	}
	return n
}
