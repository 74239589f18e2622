package controller

import (
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/runtime"
)

// A node added to _nodes that never connects (here: another Erlang cookie) leaves the join waiting
// for ever; after UnreachableAfter a NodeNotConnected Warning names the pod and what to check, and
// nothing more is written to CouchDB while it waits.
func TestNodeNotConnectedWarns(t *testing.T) {
	for _, tc := range []struct {
		name   string
		cookie string
		warn   bool
	}{
		{name: "another cookie", cookie: "not-the-cluster-cookie", warn: true},
		{name: "control: same cookie"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			f.formed3()
			f.events()
			f.objects = []runtime.Object{statefulSet(4, nil), service(true), endpoints(), secret(testPass), pod(0, true), pod(1, true), pod(2, true), pod(3, true)}
			f.cookies = map[int]string{3: tc.cookie}
			f.unreachableAfter = time.Nanosecond
			f.addNode(3, testPass)
			f.newController()
			for i := 0; i < 4; i++ {
				if err := f.c.sync(f.ctx, key); err != nil {
					t.Fatalf("sync %d: %v", i, err)
				}
			}
			var got []string
			for _, w := range f.warningEvents() {
				if strings.Contains(w, ReasonNodeNotConnected) {
					got = append(got, w)
				}
			}
			if !tc.warn {
				if len(got) != 0 {
					t.Errorf("warned about a node that connects: %q", got)
				}
				return
			}
			if len(got) != 1 {
				t.Fatalf("NodeNotConnected warnings %q, want one (emitted once while it holds)", got)
			}
			for _, want := range []string{"db-3", "COUCHDB_ERLANG_COOKIE", "9100"} {
				if !strings.Contains(got[0], want) {
					t.Errorf("warning %q does not mention %q", got[0], want)
				}
			}
		})
	}
}
