package controller

import (
	"fmt"
	"net"
	"strconv"
	"strings"
)

// validateNodeName says why a CouchDB node name reported by GET /_node/_local cannot be a member of
// the cluster of pod, or "" when it can. CouchDB never checks names: a wrong one in _nodes is a
// phantom member that degrades every database created afterwards, so the controller refuses it.
func validateNodeName(name, pod string) string {
	if name == "nonode@nohost" {
		return "the Erlang VM is not distributed (nonode@nohost): set NODENAME or ERL_FLAGS=-name couchdb@<pod>.<service>.<namespace>.svc.cluster.local"
	}
	user, host, ok := strings.Cut(name, "@")
	if !ok || user == "" || host == "" || strings.ContainsAny(name, " /\t\n") {
		return fmt.Sprintf("node name %q is not of the form name@host", name)
	}
	if host == "localhost" || strings.HasPrefix(host, "localhost.") {
		return fmt.Sprintf("node name %q uses a loopback host: other nodes cannot reach it", name)
	}
	if ip := net.ParseIP(host); ip != nil {
		if ip.IsLoopback() {
			return fmt.Sprintf("node name %q uses a loopback host: other nodes cannot reach it", name)
		}
		return fmt.Sprintf("node name %q uses an IP address, which changes when the pod is rescheduled: use the pod's DNS name %s.<service>.<namespace>.svc.cluster.local", name, pod)
	}
	if first, _, _ := strings.Cut(host, "."); first != pod {
		return fmt.Sprintf("node name %q does not name pod %s: its host must be %s.<service>.<namespace>.svc.cluster.local", name, pod, pod)
	}
	return ""
}

// nodeOrdinal returns the ordinal of the StatefulSet pod a node name refers to, when its host's first
// label is <statefulSet>-<ordinal>.
func nodeOrdinal(name, statefulSet string) (int, bool) {
	_, host, ok := strings.Cut(name, "@")
	if !ok {
		return 0, false
	}
	first, _, _ := strings.Cut(host, ".")
	return podOrdinal(first, statefulSet)
}

// podOrdinal parses <statefulSet>-<ordinal>.
func podOrdinal(pod, statefulSet string) (int, bool) {
	rest, ok := strings.CutPrefix(pod, statefulSet+"-")
	if !ok || rest == "" {
		return 0, false
	}
	n, err := strconv.Atoi(rest)
	if err != nil || n < 0 || strconv.Itoa(n) != rest {
		return 0, false
	}
	return n, true
}

// nodeIdentity is what one CouchDB process says of itself; it cannot change while the process runs.
type nodeIdentity struct {
	name    string // GET /_node/_local
	version string // GET /
}

// validateVersion accepts CouchDB 3.x: the shard-map edits, _sync_shards behaviour, maintenance mode
// answers and lockout this controller relies on were recorded on 3.x. A 2.x node answers the same
// paths with subtly different meanings, so it is refused rather than half-managed.
func validateVersion(v string) string {
	major, _, _ := strings.Cut(v, ".")
	if major == "3" {
		return ""
	}
	if v == "" {
		return "GET / reports no version; this is not CouchDB 3.x"
	}
	return fmt.Sprintf("CouchDB %s is not supported (3.x is); upgrade the image", v)
}
