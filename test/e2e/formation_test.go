package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/couchdb-controller/couchdb-controller/controller"
	"github.com/couchdb-controller/couchdb-controller/couch"
	"github.com/couchdb-controller/couchdb-controller/couch/couchtest"
)

func TestFormsThreeNodeClusterAndJoinsScaleUp(t *testing.T) {
	ns := newNamespace(t)
	s := newSpec("db", 3)
	s.parallel = true
	rc := startController(t, ns)
	s.create(t, ns)
	waitMembers(t, s, ns, 3, 60*time.Second)
	poll(t, 20*time.Second, "cluster_finished on every node", func(context.Context) (bool, error) {
		for i := 0; i < 3; i++ {
			if setupState(t, ns, podName(s, i)) != couch.StateClusterFinished {
				return false, nil
			}
		}
		return true, nil
	})
	waitEvent(t, ns, "ClusterFormed")
	poll(t, 10*time.Second, "cluster_formed metric", func(context.Context) (bool, error) {
		return metricValue(t, rc, "couchdb_controller_cluster_formed", map[string]string{"namespace": ns, "cluster": "db"}) == 1, nil
	})

	// kubectl scale --replicas=5 (the scale subresource)
	scaleTo(t, ns, "db", 5)
	waitMembers(t, s, ns, 5, 60*time.Second)
	poll(t, 20*time.Second, "two NodeJoined events and join observations", func(context.Context) (bool, error) {
		return len(events(t, ns, "NodeJoined")) >= 2 && histogramCount(t, rc, "couchdb_controller_node_join_duration_seconds") >= 2, nil
	})
	waitEvent(t, ns, "ClusterFormed")
	if n := len(events(t, ns, "ClusterFormed")); n != 1 {
		t.Errorf("ClusterFormed events = %d, want exactly 1", n)
	}
	var st controller.ClusterStatus
	poll(t, 10*time.Second, "the status API to show 5 members, Ready", func(context.Context) (bool, error) {
		var ok bool
		st, ok = rc.ctrl.Cluster(ns, "db")
		return ok && len(st.Members) == 5 && st.Phase == controller.PhaseReady, nil
	})
	t.Logf("status: phase=%s members=%d", st.Phase, len(st.Members))
}

func TestSingleReplicaIsFinishedWithoutSingleNodeMode(t *testing.T) {
	ns := newNamespace(t)
	s := newSpec("solo", 1)
	startController(t, ns)
	s.create(t, ns)
	poll(t, 60*time.Second, "cluster_finished", func(context.Context) (bool, error) {
		return setupState(t, ns, "solo-0") == couch.StateClusterFinished, nil
	})
	// enable_single_node would have set [cluster] n=1, which spoils a later scale-up.
	n := nodeOf(ns, "solo-0")
	c, _ := couch.New(couch.Options{BaseURL: n.URL(), Username: "admin", Password: s.password})
	if st, _ := c.SetupState(context.Background()); st != couch.StateClusterFinished {
		t.Fatalf("state %s, want cluster_finished (not single_node_enabled)", st)
	}
}

// TestPodRestartRejoinsAsSameNode deletes a member's pod: the StatefulSet recreates it with the same
// name and (like a PVC) the same data; it must come back as the same CouchDB node without the
// controller rewriting its _nodes document, and with its documents intact.
func TestPodRestartRejoinsAsSameNode(t *testing.T) {
	ctx := context.Background()
	ns := newNamespace(t)
	s := newSpec("rs", 3)
	s.parallel = true
	startController(t, ns)
	s.create(t, ns)
	waitMembers(t, s, ns, 3, 60*time.Second)
	const docs = 20
	loadData(t, s, ns, docs)
	poll(t, 20*time.Second, "db1 fully on every member", func(ctx context.Context) (bool, error) {
		m, err := couchdb(t, ns, podName(s, 0), s.password).GetShardMap(ctx, "db1")
		return err == nil && fullCopies(ns, s, m, 3), nil
	})
	node := s.nodeName(ns, 1)
	before, err := couchdb(t, ns, podName(s, 0), s.password).GetNodeDoc(ctx, node)
	if err != nil {
		t.Fatal(err)
	}
	pod, err := env.kube.CoreV1().Pods(ns).Get(ctx, "rs-1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := env.kube.CoreV1().Pods(ns).Delete(ctx, "rs-1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	poll(t, 60*time.Second, "rs-1 recreated and ready", func(ctx context.Context) (bool, error) {
		p, err := env.kube.CoreV1().Pods(ns).Get(ctx, "rs-1", metav1.GetOptions{})
		if err != nil || p.UID == pod.UID {
			return false, nil
		}
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
				return true, nil
			}
		}
		return false, nil
	})
	waitMembers(t, s, ns, 3, 30*time.Second)
	// Same node, not re-added: its _nodes document is the one it had, as every member sees it.
	for i := 0; i < 3; i++ {
		after, err := couchdb(t, ns, podName(s, i), s.password).GetNodeDoc(ctx, node)
		if err != nil || after.Rev != before.Rev {
			t.Errorf("%s's _nodes doc for %s: rev %q (%v), want %q unchanged", podName(s, i), node, after.Rev, err, before.Rev)
		}
	}
	// Its data survived: every document is readable through rs-1 itself, and its copies are full.
	for i := 0; i < docs; i++ {
		if code, body := rawDo(t, ns, "rs-1", s.password, "GET", fmt.Sprintf("/db1/doc%03d", i), ""); code != 200 {
			t.Errorf("doc%03d through the restarted rs-1: %d %s", i, code, body)
		}
	}
	poll(t, 20*time.Second, "rs-1's copies as full as the others", func(ctx context.Context) (bool, error) {
		m, err := couchdb(t, ns, "rs-1", s.password).GetShardMap(ctx, "db1")
		return err == nil && fullCopies(ns, s, m, 3), nil
	})
	if n := len(events(t, ns, controller.ReasonNodeRemoved)); n != 0 {
		t.Errorf("%d NodeRemoved events: a restarted pod is not a removed node", n)
	}
}

func TestReadinessGateKeepsNonMemberOutOfService(t *testing.T) {
	ns := newNamespace(t)
	s := newSpec("gated", 3) // OrderedReady: pod N+1 only after pod N is Ready, which needs membership
	s.memberGate = true
	startController(t, ns)
	s.create(t, ns)
	waitMembers(t, s, ns, 3, 90*time.Second)
	waitReadyAddresses(t, ns, "gated", 3)
	// Every pod's member condition is True, set by the controller.
	for i := 0; i < 3; i++ {
		p, err := env.kube.CoreV1().Pods(ns).Get(context.Background(), podName(s, i), metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for _, c := range p.Status.Conditions {
			if c.Type == "couchdb.io/member" && c.Status == corev1.ConditionTrue {
				found = true
			}
		}
		if !found {
			t.Errorf("pod %s has no couchdb.io/member=True condition", p.Name)
		}
	}
}

// TestHelmChartStyleStatefulSet runs the apache/couchdb-helm chart's shape: Parallel pods, node names
// from ERL_FLAGS "-name couchdb" plus the pod FQDN, a seedlist, credentials only in the container env,
// and a headless Service with publishNotReadyAddresses. With that, the Endpoints list every pod as
// ready whatever its state, so the controller must go by the pods' own conditions: a member whose
// CouchDB stops answering its probe is reported as not a member, and nothing of it is removed.
func TestHelmChartStyleStatefulSet(t *testing.T) {
	ctx := context.Background()
	ns := newNamespace(t)
	s := newSpec("couchdb", 3)
	s.helm = true
	rc := startController(t, ns)
	s.create(t, ns)
	waitMembers(t, s, ns, 3, 60*time.Second)
	poll(t, 30*time.Second, "cluster_finished", func(context.Context) (bool, error) {
		return setupState(t, ns, "couchdb-0") == couch.StateClusterFinished, nil
	})
	nodeState := func(pod, state string) float64 {
		return metricValue(t, rc, "couchdb_controller_node_state", map[string]string{"namespace": ns, "cluster": "couchdb", "pod": pod, "state": state})
	}
	poll(t, 20*time.Second, "cluster_formed 1 and every pod a member in the metrics", func(context.Context) (bool, error) {
		if metricValue(t, rc, "couchdb_controller_cluster_formed", map[string]string{"namespace": ns, "cluster": "couchdb"}) != 1 {
			return false, nil
		}
		for i := 0; i < 3; i++ {
			if nodeState(podName(s, i), "member") != 1 {
				return false, nil
			}
		}
		return true, nil
	})
	waitEvent(t, ns, controller.ReasonClusterFormed)
	if n := len(events(t, ns, controller.ReasonClusterFormed)); n != 1 {
		t.Errorf("ClusterFormed events = %d, want 1", n)
	}
	before, err := couchdb(t, ns, "couchdb-0", s.password).GetNodeDoc(ctx, s.nodeName(ns, 1))
	if err != nil {
		t.Fatal(err)
	}

	// couchdb-1's CouchDB answers 500 to everything (its probe too; on a real node through its fault
	// proxy): the pod turns NotReady, but the Service publishes not-ready addresses, so the Endpoints
	// still count it ready.
	setFault(t, ns, "couchdb-1", couchtest.Fault{Status: 500})
	poll(t, 30*time.Second, "couchdb-1 NotReady while the Endpoints still list 3 ready addresses", func(ctx context.Context) (bool, error) {
		p, err := env.kube.CoreV1().Pods(ns).Get(ctx, "couchdb-1", metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		ready, notReady := addresses(ctx, ns, "couchdb")
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.ContainersReady && c.Status == corev1.ConditionFalse {
				if ready != 3 || notReady != 0 {
					return false, fmt.Errorf("Endpoints have %d ready and %d not-ready addresses: publishNotReadyAddresses should keep all 3 ready", ready, notReady)
				}
				return true, nil
			}
		}
		return false, nil
	})
	poll(t, 30*time.Second, "the controller to report couchdb-1 as not a member", func(context.Context) (bool, error) {
		st, ok := rc.ctrl.Cluster(ns, "couchdb")
		return ok && nodeState("couchdb-1", "member") < 1 && len(st.Nodes) == 3 && st.Nodes[1].State != "member" && st.Phase != controller.PhaseReady, nil
	})
	setFault(t, ns, "couchdb-1", couchtest.Fault{})
	poll(t, 60*time.Second, "couchdb-1 a member again", func(context.Context) (bool, error) {
		st, ok := rc.ctrl.Cluster(ns, "couchdb")
		return ok && nodeState("couchdb-1", "member") == 1 && st.Phase == controller.PhaseReady, nil
	})
	after, err := couchdb(t, ns, "couchdb-0", s.password).GetNodeDoc(ctx, s.nodeName(ns, 1))
	if err != nil || after.Rev != before.Rev {
		t.Errorf("couchdb-1's _nodes doc: rev %q (%v), want %q: nothing of a NotReady member is removed or re-added", after.Rev, err, before.Rev)
	}
	if n := len(events(t, ns, controller.ReasonNodeRemoved)); n != 0 {
		t.Errorf("%d NodeRemoved events", n)
	}
}

func metricValue(t *testing.T, rc *runningController, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := rc.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for k, v := range labels {
				ok := false
				for _, l := range m.GetLabel() {
					if l.GetName() == k && l.GetValue() == v {
						ok = true
					}
				}
				if !ok {
					continue next
				}
			}
			if m.GetGauge() != nil {
				return m.GetGauge().GetValue()
			}
			return m.GetCounter().GetValue()
		}
	}
	return -1
}

// counterSum adds up every series of the counter name (all label values).
func counterSum(t *testing.T, rc *runningController, name string) float64 {
	t.Helper()
	mfs, err := rc.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, m := range mf.GetMetric() {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}

func histogramCount(t *testing.T, rc *runningController, name string) uint64 {
	t.Helper()
	mfs, err := rc.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) > 0 {
			return mf.GetMetric()[0].GetHistogram().GetSampleCount()
		}
	}
	return 0
}

var _ = testutil.ToFloat64

// TestReadinessGateHoldsPodsOutUntilMember pauses the controller's actions first: the pods' containers
// are ready, but the couchdb.io/member gate keeps them out of the Service's ready addresses; once the
// pause is lifted the controller joins them and they become ready addresses.
func TestReadinessGateHoldsPodsOutUntilMember(t *testing.T) {
	ns := newNamespace(t)
	s := newSpec("held", 3)
	s.parallel, s.memberGate = true, true
	s.annotations = map[string]string{"couchdb.io/paused": "true"}
	startController(t, ns)
	s.create(t, ns)
	// A pod is a not-ready address as soon as it has an IP, before its probe passes: wait for every
	// pod's containers to be ready too, so that the gate, not the probe, is what holds them out.
	poll(t, 60*time.Second, "3 not-ready addresses with ready containers", func(ctx context.Context) (bool, error) {
		ready, notReady := addresses(ctx, ns, "held")
		if ready != 0 {
			return false, fmt.Errorf("a non-member is a ready address")
		}
		if notReady != 3 {
			return false, nil
		}
		for i := 0; i < 3; i++ {
			p, err := env.kube.CoreV1().Pods(ns).Get(ctx, podName(s, i), metav1.GetOptions{})
			if err != nil {
				return false, nil
			}
			for _, c := range p.Status.Conditions {
				if c.Type == corev1.ContainersReady && c.Status != corev1.ConditionTrue {
					return false, nil
				}
			}
		}
		return true, nil
	})
	patch := []byte(`{"metadata":{"annotations":{"couchdb.io/paused":null}}}`)
	if _, err := env.kube.AppsV1().StatefulSets(ns).Patch(context.Background(), "held", types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	waitMembers(t, s, ns, 3, 60*time.Second)
	waitReadyAddresses(t, ns, "held", 3)
}

// addresses counts the ready and not-ready addresses of the Endpoints ns/name.
func addresses(ctx context.Context, ns, name string) (ready, notReady int) {
	ep, err := env.kube.CoreV1().Endpoints(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return 0, 0
	}
	for _, ss := range ep.Subsets {
		ready += len(ss.Addresses)
		notReady += len(ss.NotReadyAddresses)
	}
	return ready, notReady
}

func waitReadyAddresses(t *testing.T, ns, name string, want int) {
	t.Helper()
	poll(t, 30*time.Second, fmt.Sprintf("%d ready addresses", want), func(ctx context.Context) (bool, error) {
		ready, _ := addresses(ctx, ns, name)
		return ready == want, nil
	})
}
