package controller

import (
	"errors"
	"fmt"
	"sort"
	"testing"

	"github.com/google/go-cmp/cmp"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/couchdb-controller/couchdb-controller/couch"
)

// A StatefulSet scaled 5 -> 3 after every node joined _nodes but before finish_cluster: the removed
// pods hold no shard copy (no database exists yet), so they leave _nodes and setup finishes, instead
// of finish_cluster waiting on them for ever.
//
// A _nodes doc already gone when the controller removes it (another client's delete, or an earlier
// removal _membership did not show yet) gets no NodeRemoved event: one event per removal.
func TestSyncScaleDownBeforeSetupFinished(t *testing.T) {
	for _, goneFirst := range []bool{false, true} {
		t.Run(fmt.Sprintf("doc of db-4 gone first=%t", goneFirst), func(t *testing.T) { testScaleDownBeforeSetupFinished(t, goneFirst) })
	}
}

func testScaleDownBeforeSetupFinished(t *testing.T, goneFirst bool) {
	f := newFixture(t)
	f.objects = []runtime.Object{statefulSet(5, nil), service(true), endpoints(), secret(testPass)}
	for i := 0; i < 5; i++ {
		f.objects = append(f.objects, pod(i, true))
		f.addNode(i, testPass)
	}
	hold := true
	f.beforeAction = func(a Action) error {
		if hold && a.Kind == ActFinishCluster {
			return errors.New("held before finish_cluster")
		}
		if goneFirst && a.Kind == ActRemoveNode && a.Node == nodeName(4) {
			if _, err := f.admin(0).RemoveNodeDoc(f.ctx, a.Node); err != nil {
				return err
			}
		}
		return nil
	}
	f.newController()
	for i := 0; i < 6; i++ {
		_ = f.c.sync(f.ctx, key) // the held FinishCluster fails the sync, as a crash there would
	}
	if got := f.node(0).ClusterNodes(); len(got) != 5 {
		t.Fatalf("before the scale-down _nodes lists %v, want all 5", got)
	}

	// kubectl scale --replicas=3: the StatefulSet controller deletes pods 4 and 3.
	sts := statefulSet(3, nil)
	sts.ResourceVersion = "2"
	f.cache(sts)
	for _, ord := range []int{3, 4} {
		f.uncache(f.cachedPod(pod(ord, true).Name))
		f.node(ord).Stop()
	}
	hold = false
	f.resetCalls()
	f.syncUntilQuiet(6)

	want := []string{nodeName(0), nodeName(1), nodeName(2)}
	for ord := 0; ord < 3; ord++ {
		got := f.node(ord).ClusterNodes()
		sort.Strings(got)
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("db-%d _nodes (-want +got):\n%s", ord, diff)
		}
	}
	if st, err := f.admin(0).SetupState(f.ctx); err != nil || st != couch.StateClusterFinished {
		t.Errorf("setup state %q, %v; want cluster_finished", st, err)
	}
	removed := 2
	if goneFirst {
		removed = 1
	}
	if ev := countReasons(f.events()); ev[ReasonNodeRemoved] != removed || ev[ReasonClusterFormed] != 1 {
		t.Errorf("events %v, want %d NodeRemoved and one ClusterFormed", ev, removed)
	}
	if st, _ := f.c.Cluster(testNS, "main"); st.Phase != PhaseReady {
		t.Errorf("phase %s, want Ready", st.Phase)
	}
}
