package e2e

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/couchdb-controller/couchdb-controller/couch/couchtest"
	"github.com/couchdb-controller/couchdb-controller/test/couchpods"
)

// couchNode is what a test may ask of one pod's CouchDB, whether it is an emulated node or a real
// CouchDB 3.4 node (COUCHDB_REL). Tests reach it directly, not through the controller.
type couchNode interface {
	Name() string
	URL() string
	Running() bool
	Stop()
	Start() error
	// ClusterNodes is the node's _nodes (cluster_nodes of /_membership); nil when it does not answer.
	ClusterNodes() []string
	// CopyDocCount counts the documents of the node's local copy of a shard.
	CopyDocCount(shard string) (docs, deleted int64, ok bool)
}

// realNodes reports whether the suite runs on real CouchDB nodes.
func realNodes() bool { return env.real != nil }

// skipOnRealNodes skips a test that needs what only the emulator can do, printing why.
func skipOnRealNodes(t *testing.T, why string) {
	t.Helper()
	if realNodes() {
		t.Skipf("skipped on real CouchDB nodes (%s=%s): %s", couchpods.ReleaseEnv, env.release, why)
	}
}

// nodeOf returns the CouchDB of a pod (nil if it never started).
func nodeOf(ns, pod string) couchNode {
	if realNodes() {
		n := env.real.Node(ns, pod)
		if n == nil {
			return nil
		}
		return &realNode{RealNode: n, ns: ns}
	}
	n := env.backend.Node(ns, pod)
	if n == nil {
		return nil
	}
	return n
}

// emulated returns the emulated node of a pod, for what only the emulator offers (fault injection,
// request counts); the test must have called skipOnRealNodes first.
func emulated(t *testing.T, ns, pod string) *couchtest.Node {
	t.Helper()
	if realNodes() {
		t.Fatalf("%s/%s: the emulator's controls are not available on real nodes (call skipOnRealNodes)", ns, pod)
	}
	return env.backend.Node(ns, pod)
}

// setFault injects (or with the zero value clears) a fault into the pod's CouchDB as the controller
// and the kubelet reach it: into the emulated node itself, or into the fault-injecting proxy in
// front of a real node (test/couchpods), which answers as the emulator does under the same fault.
func setFault(t *testing.T, ns, pod string, f couchtest.Fault) {
	t.Helper()
	if realNodes() {
		n := env.real.Node(ns, pod)
		if n == nil {
			t.Fatalf("%s/%s has no CouchDB node", ns, pod)
		}
		n.SetFault(f)
		return
	}
	emulated(t, ns, pod).SetFault(f)
}

// realNode asks a real node as the namespace's admin, with the password the test last set.
type realNode struct {
	*couchpods.RealNode
	ns string
}

func (n *realNode) ClusterNodes() []string {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return n.RealNode.ClusterNodes(ctx, "admin", passwordOf(n.ns))
}

func (n *realNode) CopyDocCount(shard string) (int64, int64, bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return n.RealNode.CopyDocCount(ctx, "admin", passwordOf(n.ns), shard)
}

// requestsLogged counts the requests a node logged whose method and path start with prefix
// ("POST /_cluster_setup"): the emulator counts them itself; CouchDB writes one notice line per
// request ("... <peer> <user> POST /_cluster_setup 201 ok 12").
func requestsLogged(t *testing.T, ns, pod, prefix string) int {
	t.Helper()
	if !realNodes() {
		count := 0
		for path, c := range emulated(t, ns, pod).Requests().ByPath {
			if strings.HasPrefix(path, prefix) {
				count += c
			}
		}
		return count
	}
	n, err := env.real.Node(ns, pod).CountLog(" " + prefix)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// setAdminPassword changes the admin password in CouchDB (not in the Secret): the emulator directly,
// a real node through its _config API as the current admin (the last ini file takes it, so a
// restart would undo it, as in the official image).
func setAdminPassword(t *testing.T, ns, pod, old, password string) {
	t.Helper()
	if !realNodes() {
		emulated(t, ns, pod).SetAdminPassword("admin", password)
		return
	}
	code, body := rawDo(t, ns, pod, old, http.MethodPut, "/_node/_local/_config/admins/admin", fmt.Sprintf("%q", password))
	if code != http.StatusOK {
		t.Fatalf("set %s's admin password: %d %s", pod, code, body)
	}
}
