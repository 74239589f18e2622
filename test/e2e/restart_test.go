package e2e

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"k8s.io/client-go/tools/cache"

	"github.com/couchdb-controller/couchdb-controller/controller"
	"github.com/couchdb-controller/couchdb-controller/couch"
)

var errKilled = errors.New("controller killed by the test")

// TestControllerKilledAtEachFormationStep kills the controller right before its k-th action (an
// exact step, not a timing guess), starts a fresh one, and checks the cluster converges without
// duplicate work: every _nodes document is still at its first revision and finish_cluster succeeded
// once.
func TestControllerKilledAtEachFormationStep(t *testing.T) {
	for k := 1; k <= 3; k++ {
		t.Run(fmt.Sprintf("before action %d", k), func(t *testing.T) {
			ns := newNamespace(t)
			s := newSpec(fmt.Sprintf("kill%d", k), 3)
			s.parallel = true
			var n atomic.Int32
			killed := make(chan controller.Action, 1)
			rc := startControllerWith(t, ns, func(ctx context.Context, _ cache.ObjectName, a controller.Action) error {
				if int(n.Add(1)) == k {
					select {
					case killed <- a:
					default:
					}
					return errKilled
				}
				if int(n.Load()) > k {
					return errKilled // dead processes do nothing
				}
				return nil
			})
			s.create(t, ns)
			var a controller.Action
			select {
			case a = <-killed:
			case <-time.After(60 * time.Second):
				t.Fatal("the controller never reached the step")
			}
			rc.stop()
			t.Logf("killed before %s", a)
			startController(t, ns)
			waitMembers(t, s, ns, 3, 60*time.Second)
			poll(t, 30*time.Second, "cluster_finished", func(context.Context) (bool, error) {
				return setupState(t, ns, podName(s, 0)) == couch.StateClusterFinished, nil
			})
			finishes := 0
			for i := 0; i < 3; i++ {
				node := env.backend.Node(ns, podName(s, i))
				for path, c := range node.Requests().ByPath {
					if strings.HasPrefix(path, "POST /_cluster_setup") {
						finishes += c
					}
				}
				c, _ := couch.New(couch.Options{BaseURL: node.URL(), Username: "admin", Password: s.password})
				for j := 0; j < 3; j++ {
					d, err := c.GetNodeDoc(context.Background(), s.nodeName(ns, j))
					if err != nil || !strings.HasPrefix(d.Rev, "1-") {
						t.Errorf("%s's _nodes doc for %d: rev %q err %v (a duplicate write would have made a new revision)", node.Name(), j, d.Rev, err)
					}
				}
			}
			if finishes != 1 {
				t.Errorf("finish_cluster was posted %d times, want exactly 1", finishes)
			}
		})
	}
}
