package e2e

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
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
				node := nodeOf(ns, podName(s, i))
				finishes += requestsLogged(t, ns, podName(s, i), "POST /_cluster_setup")
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

// killBefore starts a controller that dies right before its first action of kind (on pod, for
// SetMemberCondition, set to value) once armed is closed (the formation before it runs normally), and returns what
// it was about to do.
func killBefore(t *testing.T, ns string, kind controller.ActionKind, pod string, value bool, armed <-chan struct{}) (*runningController, <-chan controller.Action) {
	var dead atomic.Bool
	killed := make(chan controller.Action, 1)
	rc := startControllerWith(t, ns, func(ctx context.Context, _ cache.ObjectName, a controller.Action) error {
		if dead.Load() {
			return errKilled // dead processes do nothing
		}
		select {
		case <-armed:
		default:
			return nil
		}
		if a.Kind == kind && (kind != controller.ActSetMemberCondition || a.Pod == pod && a.Value == value) {
			dead.Store(true)
			killed <- a
			return errKilled
		}
		return nil
	})
	return rc, killed
}

func waitKilled(t *testing.T, rc *runningController, killed <-chan controller.Action) {
	t.Helper()
	select {
	case a := <-killed:
		rc.stop()
		t.Logf("killed before %s", a)
	case <-time.After(90 * time.Second):
		t.Fatal("the controller never reached the step")
	}
}

// TestControllerKilledAtEachJoinStep kills the controller before each kind of action a join with
// couchdb.io/replicate performs (add to _nodes, open the member gate, add a shard copy, trigger
// internal replication), starts a fresh one, and checks convergence without duplicate work: _nodes
// docs stay at their first revision and db1 ends with exactly one copy of each range per member.
func TestControllerKilledAtEachJoinStep(t *testing.T) {
	for _, kind := range []controller.ActionKind{controller.ActAddNode, controller.ActSetMemberCondition, controller.ActAddCopy, controller.ActSyncShards} {
		t.Run(string(kind), func(t *testing.T) {
			t.Parallel()
			ns := newNamespace(t)
			s := newSpec("kj"+strings.ToLower(string(kind)), 3)
			s.parallel, s.memberGate = true, true
			s.annotations = map[string]string{controller.AnnotationReplicate: "db1"}
			armed := make(chan struct{})
			rc, killed := killBefore(t, ns, kind, podName(s, 3), true, armed)
			s.create(t, ns)
			waitMembers(t, s, ns, 3, 60*time.Second)
			loadData(t, s, ns, 20)
			poll(t, 30*time.Second, "db1 on every member", func(context.Context) (bool, error) {
				m, err := couchdb(t, ns, podName(s, 0), s.password).GetShardMap(context.Background(), "db1")
				return err == nil && len(m.Nodes()) == 3, nil
			})
			waitMemberConditions(t, s, ns, 3)
			close(armed)
			scaleTo(t, ns, s.name, 4)
			waitKilled(t, rc, killed)
			startController(t, ns)
			waitMembers(t, s, ns, 4, 60*time.Second)
			poll(t, 60*time.Second, "db1 fully on 4 members and db-3 a Ready member", func(ctx context.Context) (bool, error) {
				m, err := couchdb(t, ns, podName(s, 0), s.password).GetShardMap(ctx, "db1")
				if err != nil || !fullCopies(ns, s, m, 4) || memberCondition(ctx, ns, podName(s, 3)) != corev1.ConditionTrue {
					return false, nil
				}
				for _, rng := range m.Ranges() {
					if len(m.ByRange[rng]) != 4 {
						return false, nil
					}
				}
				return true, nil
			})
			for i := 0; i < 4; i++ {
				d, err := couchdb(t, ns, podName(s, 0), s.password).GetNodeDoc(context.Background(), s.nodeName(ns, i))
				if err != nil || !strings.HasPrefix(d.Rev, "1-") {
					t.Errorf("_nodes doc of %d: rev %q err %v (a duplicate write would have made a new revision)", i, d.Rev, err)
				}
			}
			if m := readAll(t, s, ns, 20); m != 0 {
				t.Errorf("%d documents missing", m)
			}
		})
	}
}

// TestControllerKilledAtEachDrainStep kills the controller before each kind of action of a drain
// (maintenance mode, add copy, sync, remove copy, remove from _nodes, close the member gate, lower
// spec.replicas), starts a fresh one, and checks the drain completes with every document readable,
// no shard map referencing the drained node, and spec.replicas lowered exactly once.
func TestControllerKilledAtEachDrainStep(t *testing.T) {
	kinds := []controller.ActionKind{controller.ActSetMaintenance, controller.ActAddCopy, controller.ActSyncShards,
		controller.ActRemoveCopy, controller.ActRemoveNode, controller.ActSetMemberCondition, controller.ActScaleDown}
	for _, kind := range kinds {
		t.Run(string(kind), func(t *testing.T) {
			t.Parallel()
			ns := newNamespace(t)
			s := newSpec("kd"+strings.ToLower(string(kind)), 4)
			s.parallel, s.memberGate = true, true
			armed := make(chan struct{})
			rc, killed := killBefore(t, ns, kind, podName(s, 3), false, armed)
			s.create(t, ns)
			waitMembers(t, s, ns, 4, 60*time.Second)
			waitMemberConditions(t, s, ns, 4)
			const docs = 30
			loadData(t, s, ns, docs)
			close(armed)
			patch := []byte(`{"metadata":{"annotations":{"couchdb.io/target-replicas":"3"}}}`)
			if _, err := env.kube.AppsV1().StatefulSets(ns).Patch(context.Background(), s.name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
				t.Fatal(err)
			}
			waitKilled(t, rc, killed)
			if m := readAll(t, s, ns, docs); m != 0 {
				t.Errorf("%d documents unreadable right after the kill", m)
			}
			rc = startController(t, ns)
			poll(t, 90*time.Second, "spec.replicas to reach 3", func(ctx context.Context) (bool, error) {
				sts, err := env.kube.AppsV1().StatefulSets(ns).Get(ctx, s.name, metav1.GetOptions{})
				return err == nil && *sts.Spec.Replicas == 3, nil
			})
			waitMembers(t, s, ns, 3, 60*time.Second)
			if nodes := mapNodes(t, s, ns); !onlyOrdinalsBelow(nodes, s, ns, 3) {
				t.Errorf("db1's map still references %v", nodes)
			}
			if m := readAll(t, s, ns, docs); m != 0 {
				t.Errorf("%d documents missing after the drain", m)
			}
			// A duplicate ScaleDown would come from a later sync: let two more complete.
			base := counterSum(t, rc, "couchdb_controller_syncs_total")
			poll(t, 30*time.Second, "two more syncs", func(context.Context) (bool, error) {
				return counterSum(t, rc, "couchdb_controller_syncs_total") >= base+2, nil
			})
			sts, err := env.kube.AppsV1().StatefulSets(ns).Get(context.Background(), s.name, metav1.GetOptions{})
			if err != nil || *sts.Spec.Replicas != 3 {
				t.Errorf("spec.replicas %v after the drain settled (%v), want 3", sts.Spec.Replicas, err)
			}
		})
	}
}

// waitMemberConditions waits until the first n pods carry couchdb.io/member=True: formation is over.
func waitMemberConditions(t *testing.T, s clusterSpec, ns string, n int) {
	t.Helper()
	poll(t, 60*time.Second, "every member's couchdb.io/member condition", func(ctx context.Context) (bool, error) {
		for i := 0; i < n; i++ {
			if memberCondition(ctx, ns, podName(s, i)) != corev1.ConditionTrue {
				return false, nil
			}
		}
		return true, nil
	})
}
