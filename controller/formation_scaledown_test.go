package controller

import (
	"errors"
	"fmt"
	"sort"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
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

// A drain of two nodes whose informer has not yet shown the first ScaleDown when the next look
// comes (stepRequeue makes that look 5 ms later; a watch delivers in 10-200 ms): the look goes on
// with the replicas the controller set, starting the next node's drain, instead of scaling down
// again from the cached StatefulSet and failing on its resourceVersion.
func TestDrainGoesOnBeforeTheInformerShowsTheScaleDown(t *testing.T) {
	f := newFixture(t)
	f.formedN(4, false)
	f.createDB(0, "data", 2, 3, 20)
	sts := statefulSet(4, map[string]string{AnnotationTargetReplicas: "2"})
	sts.ResourceVersion = "2"
	f.cache(sts)
	f.lagScale = true
	f.client.ClearActions()
	scaled := func() []string {
		var out []string
		for _, a := range f.kubeActions() {
			if strings.HasPrefix(a, "update statefulsets/scale") {
				out = append(out, a)
			}
		}
		return out
	}
	lagged, deleted := 0, map[int]bool{}
	for i := 0; i < 200 && *f.cachedStatefulSet().Spec.Replicas > 2 || f.served != nil; i++ {
		if err := f.c.sync(f.ctx, key); err != nil {
			t.Fatalf("sync %d: %v", i, err)
		}
		for _, ord := range []int{2, 3} {
			// The kubelet takes a pod in maintenance mode out of readiness (/_up fails).
			if mode := f.node(ord).MaintenanceMode(); (mode == "nolb" || mode == "true") && !deleted[ord] {
				f.updatePod(pod(ord, true).Name, func(p *corev1.Pod) {
					for i := range p.Status.Conditions {
						if p.Status.Conditions[i].Type == corev1.ContainersReady {
							p.Status.Conditions[i].Status = corev1.ConditionFalse
						}
					}
				})
			}
		}
		if f.served == nil {
			continue
		}
		// The look right after the ScaleDown, with the cache still at the old replicas.
		lagged++
		if err := f.c.sync(f.ctx, key); err != nil {
			t.Fatalf("look before the informer shows the scale-down: %v", err)
		}
		if lagged == 1 {
			if mode := f.node(2).MaintenanceMode(); mode != "nolb" && mode != "true" {
				t.Errorf("db-2's maintenance mode %q after the first scale-down: the next drain did not start", mode)
			}
		}
		f.catchUpScale()
		// The StatefulSet controller deletes the pod the scale-down left over.
		gone := int(*f.cachedStatefulSet().Spec.Replicas)
		f.uncache(f.cachedPod(pod(gone, true).Name))
		f.node(gone).Stop()
		deleted[gone] = true
	}
	if diff := cmp.Diff([]string{"update statefulsets/scale ns/db replicas=3", "update statefulsets/scale ns/db replicas=2"}, scaled()); diff != "" {
		t.Errorf("scale updates (-want +got):\n%s", diff)
	}
	if lagged != 2 {
		t.Errorf("%d scale-downs looked at before the informer showed them, want 2", lagged)
	}
	if got := f.node(0).ClusterNodes(); len(got) != 2 {
		t.Errorf("_nodes %v, want the two staying nodes", got)
	}
}
