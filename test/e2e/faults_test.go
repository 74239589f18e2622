package e2e

import (
	"context"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/couchdb-controller/couchdb-controller/controller"
	"github.com/couchdb-controller/couchdb-controller/couch"
	"github.com/couchdb-controller/couchdb-controller/couch/couchtest"
)

// TestFaultMatrix: one member's CouchDB misbehaves while its 3-node cluster (db1 with data, kept on
// every member by couchdb.io/replicate) grows to 4. Each fault runs twice: seen by Kubernetes (the
// readiness probe fails too, so the pod turns NotReady) and unseen (/_up stays healthy, so the pod
// stays Ready and only the controller's requests fail). For every case:
//   - the new node joins while the fault lasts (one bad node does not stop the cluster's others);
//   - nothing of the faulty member is removed: its _nodes doc and every shard copy stay;
//   - every document stays readable through a healthy node;
//   - an unseen fault that fails requests raises a CouchDBUnreachable or CouchDBBadResponse Warning;
//   - once the fault clears, all 4 nodes are members and hold a full copy of every range of db1.
//
// The controller runs with the production request timeout (5 s), so a 2 s slow node is slow, not
// down.
func TestFaultMatrix(t *testing.T) {
	faults := []struct {
		name    string
		fault   couchtest.Fault // zero: stop the node instead
		warning string          // expected when Kubernetes does not see the fault
	}{
		{name: "down", warning: ""},
		{name: "hung", fault: couchtest.Fault{Hang: true}, warning: controller.ReasonCouchDBUnreachable},
		{name: "slow", fault: couchtest.Fault{Latency: 2 * time.Second}},
		{name: "500", fault: couchtest.Fault{Status: 500}, warning: controller.ReasonCouchDBUnreachable},
		{name: "drop", fault: couchtest.Fault{Drop: true}, warning: controller.ReasonCouchDBUnreachable},
		{name: "nonjson", fault: couchtest.Fault{NonJSON: true}, warning: controller.ReasonCouchDBBadResponse},
	}
	for _, fc := range faults {
		for _, seen := range []bool{true, false} {
			if fc.name == "down" && !seen {
				continue // a stopped node fails its probe: Kubernetes always sees it
			}
			name := fc.name + "/unseen"
			if seen {
				name = fc.name + "/seen"
			}
			t.Run(name, func(t *testing.T) {
				t.Parallel()
				runFault(t, fc.name, fc.fault, seen, fc.warning)
			})
		}
	}
}

func runFault(t *testing.T, name string, fault couchtest.Fault, seen bool, warning string) {
	ctx := context.Background()
	ns := newNamespace(t)
	s := newSpec("f"+name, 3)
	s.parallel = true
	s.annotations = map[string]string{"couchdb.io/replicate": "db1"}
	startControllerOpts(t, ns, controllerOpts{timeout: 5 * time.Second})
	s.create(t, ns)
	waitMembers(t, s, ns, 3, 60*time.Second)
	const docs = 40
	loadData(t, s, ns, docs)
	before := copies(t, s, ns)
	if len(before) == 0 {
		t.Fatal("db1 has no shard map")
	}

	victim := env.backend.Node(ns, podName(s, 1))
	if fault == (couchtest.Fault{}) {
		victim.Stop()
	} else {
		fault.SpareUp = !seen
		victim.SetFault(fault)
	}
	faultyName := s.nodeName(ns, 1)
	scaleTo(t, ns, s.name, 4)
	poll(t, 60*time.Second, "db-3 to join while db-1 is faulty", func(context.Context) (bool, error) {
		return slices.Contains(clusterNodesOf(ns, podName(s, 0)), s.nodeName(ns, 3)), nil
	})
	if warning != "" && !seen {
		waitEvent(t, ns, warning)
	}
	// Nothing of the faulty member went while it was faulty.
	now := copies(t, s, ns)
	for c := range before {
		if !now[c] {
			t.Errorf("copy %s was removed while its node was faulty", c)
		}
	}
	if _, err := couchdb(t, ns, podName(s, 0), s.password).GetNodeDoc(ctx, faultyName); err != nil {
		t.Errorf("the faulty member's _nodes doc: %v", err)
	}
	if m := readAll(t, s, ns, docs); m != 0 {
		t.Errorf("%d documents unreadable through db-0 during the fault", m)
	}

	if fault == (couchtest.Fault{}) {
		if err := victim.Start(); err != nil {
			t.Fatal(err)
		}
	} else {
		victim.SetFault(couchtest.Fault{})
	}
	waitMembers(t, s, ns, 4, 60*time.Second)
	poll(t, 60*time.Second, "every range of db1 on all 4 members with every document", func(context.Context) (bool, error) {
		m, err := couchdb(t, ns, podName(s, 0), s.password).GetShardMap(ctx, "db1")
		if err != nil {
			return false, nil
		}
		for _, rng := range m.Ranges() {
			if len(m.ByRange[rng]) != 4 {
				return false, nil
			}
		}
		return fullCopies(ns, s, m, 4), nil
	})
	if m := readAll(t, s, ns, docs); m != 0 {
		t.Errorf("%d documents missing after the fault cleared", m)
	}
}

// copies lists db1's shard copies as "range@node", as pod 0 sees the map.
func copies(t *testing.T, s clusterSpec, ns string) map[string]bool {
	m, err := couchdb(t, ns, podName(s, 0), s.password).GetShardMap(context.Background(), "db1")
	if err != nil {
		t.Fatalf("db1's shard map: %v", err)
	}
	out := map[string]bool{}
	for rng, nodes := range m.ByRange {
		for _, n := range nodes {
			out[rng+"@"+n] = true
		}
	}
	return out
}

// fullCopies reports whether each of the first n pods holds a copy of every range of m with as many
// documents as the fullest copy of that range.
func fullCopies(ns string, s clusterSpec, m couch.ShardMap, n int) bool {
	for _, rng := range m.Ranges() {
		most := int64(0)
		counts := map[string]int64{}
		for i := 0; i < n; i++ {
			node := env.backend.Node(ns, podName(s, i))
			if node == nil {
				return false
			}
			docs, deleted, ok := node.CopyDocCount(m.ShardName(rng))
			if !ok {
				return false
			}
			counts[node.Name()] = docs + deleted
			most = max(most, docs+deleted)
		}
		for _, c := range counts {
			if c != most {
				return false
			}
		}
	}
	return true
}

// TestWrongPasswordUntilLockout: after formation the admin password is changed in CouchDB but not in
// the Secret. The controller asks a single node, backing off, until CouchDB 3.4 locks the account
// (5 failed logins); the other nodes never see a failed login. The Secret is fixed while the account
// is locked: CouchDB refuses even the right password, the controller says so and keeps backing off;
// once the lockout expires (the emulator's clock is moved past it), the next attempt succeeds and a
// new pod joins. The failed logins are counted: no hammering.
func TestWrongPasswordUntilLockout(t *testing.T) {
	ctx := context.Background()
	ns := newNamespace(t)
	s := newSpec("lock", 3)
	s.parallel = true
	startControllerOpts(t, ns, controllerOpts{credBackoff: 200 * time.Millisecond})
	s.create(t, ns)
	waitMembers(t, s, ns, 3, 60*time.Second)
	failures := func(i int) int { return env.backend.Node(ns, podName(s, i)).Requests().Failures }

	const rotated = "rotated-password-5521"
	usePassword(rotated)
	for i := 0; i < 3; i++ {
		env.backend.Node(ns, podName(s, i)).SetAdminPassword("admin", rotated)
	}
	waitEvent(t, ns, controller.ReasonCredentialsInvalid)
	poll(t, 60*time.Second, "CouchDB to lock the account", func(context.Context) (bool, error) {
		code, _ := rawDo(t, ns, podName(s, 0), rotated, "GET", "/_membership", "")
		return code == 403, nil
	})
	locked := time.Now()
	time.Sleep(3 * time.Second) // the controller keeps trying, locked out: those are not failed logins
	if f := failures(0); f != 5 {
		t.Errorf("db-0 saw %d failed logins, want exactly the 5 that lock the account", f)
	}
	if f1, f2 := failures(1), failures(2); f1+f2 != 0 {
		t.Errorf("the other nodes saw %d and %d failed logins; only one node should be asked", f1, f2)
	}

	setSecretPassword(t, ns, s, rotated)
	s.password = rotated
	passwords.Store(ns, rotated)
	poll(t, 30*time.Second, "a Warning that the account is locked", func(context.Context) (bool, error) {
		for _, e := range events(t, ns, controller.ReasonCredentialsInvalid) {
			if strings.Contains(e.Message, "locked") && !e.LastTimestamp.Time.Before(locked.Truncate(time.Second)) {
				return true, nil
			}
		}
		return false, nil
	})
	// CouchDB's lockout lives in each node's memory, so only db-0 (the node the controller asks first)
	// is locked; the controller keeps asking it, backing off, until the lockout expires.
	scaleTo(t, ns, s.name, 4)
	couchClockSkew.Add(int64(6 * time.Minute))
	waitMembers(t, s, ns, 4, 60*time.Second)
	if f := failures(0) + failures(1) + failures(2) + failures(3); f != 5 {
		t.Errorf("%d failed logins in all, want 5", f)
	}
	if _, err := couchdb(t, ns, podName(s, 0), rotated).Membership(ctx); err != nil {
		t.Errorf("the account is still refused: %v", err)
	}
}

func setSecretPassword(t *testing.T, ns string, s clusterSpec, pw string) {
	t.Helper()
	sec, err := env.kube.CoreV1().Secrets(ns).Get(context.Background(), s.name+"-admin", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	sec.Data["adminPassword"] = []byte(pw)
	if _, err := env.kube.CoreV1().Secrets(ns).Update(context.Background(), sec, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// TestAPIServerRestartMidSync kills kube-apiserver right before the controller's join of a new node
// (inside sync, between plan and apply) and starts it again. The join's CouchDB write goes ahead; what
// follows (the member condition, the Event) meets a restarting API server. The controller must
// converge and its informers must resume: a later scale-up joins too.
func TestAPIServerRestartMidSync(t *testing.T) {
	ns := newNamespace(t)
	s := newSpec("apirestart", 3)
	s.parallel = true
	s.memberGate = true
	var restarted atomic.Bool
	armed := make(chan struct{})
	startControllerWith(t, ns, func(ctx context.Context, _ cache.ObjectName, a controller.Action) error {
		select {
		case <-armed:
		default:
			return nil
		}
		if a.Kind == controller.ActAddNode && restarted.CompareAndSwap(false, true) {
			t.Logf("restarting kube-apiserver before %s", a)
			if err := env.cp.RestartAPIServer(context.Background()); err != nil {
				t.Errorf("restart: %v", err)
			}
		}
		return nil
	})
	s.create(t, ns)
	waitMembers(t, s, ns, 3, 60*time.Second)
	close(armed)
	scaleTo(t, ns, s.name, 4)
	waitMembers(t, s, ns, 4, 90*time.Second)
	if !restarted.Load() {
		t.Fatal("the API server was never restarted: the hook did not see the join")
	}
	poll(t, 60*time.Second, "db-3's couchdb.io/member condition", func(ctx context.Context) (bool, error) {
		return memberCondition(ctx, ns, podName(s, 3)) == corev1.ConditionTrue, nil
	})
	scaleTo(t, ns, s.name, 5)
	waitMembers(t, s, ns, 5, 60*time.Second)
	poll(t, 60*time.Second, "db-4's couchdb.io/member condition", func(ctx context.Context) (bool, error) {
		return memberCondition(ctx, ns, podName(s, 4)) == corev1.ConditionTrue, nil
	})
}

func memberCondition(ctx context.Context, ns, pod string) corev1.ConditionStatus {
	p, err := env.kube.CoreV1().Pods(ns).Get(ctx, pod, metav1.GetOptions{})
	if err != nil {
		return ""
	}
	for _, c := range p.Status.Conditions {
		if c.Type == controller.ConditionMember {
			return c.Status
		}
	}
	return ""
}
