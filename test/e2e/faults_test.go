package e2e

import (
	"context"
	"fmt"
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
	"github.com/couchdb-controller/couchdb-controller/test/couchpods"
)

// TestFaultMatrix: one member's CouchDB misbehaves while its 3-node cluster (db1 with data, kept on
// every member by couchdb.io/replicate) grows to 4. The faulty member is db-1, or db-0 (the node the
// controller asks first and writes through while it is healthy) for the faults that fail requests.
// Each fault runs twice: seen by Kubernetes (the readiness probe fails too, so the pod turns NotReady)
// and unseen (/_up stays healthy, so the pod stays Ready and only the controller's requests fail).
// For every case:
//   - the new node joins while the fault lasts (one bad node does not stop the cluster's others);
//   - nothing of the faulty member is removed: its _nodes doc and every shard copy stay;
//   - every document stays readable through a healthy node;
//   - an unseen fault that fails requests raises a CouchDBUnreachable or CouchDBBadResponse Warning,
//     and a slow node (slow, not down) raises no CouchDBUnreachable at all;
//   - once the fault clears, all 4 nodes are members and hold a full copy of every range of db1.
//
// The controller runs with the production request timeout (5 s), so a 2 s slow node is slow, not
// down.
func TestFaultMatrix(t *testing.T) {
	faults := []struct {
		name    string
		victim  int             // ordinal of the faulty member
		fault   couchtest.Fault // zero: stop the node instead
		warning string          // expected when Kubernetes does not see the fault
	}{
		{name: "down", victim: 1},
		{name: "hung", victim: 1, fault: couchtest.Fault{Hang: true}, warning: controller.ReasonCouchDBUnreachable},
		{name: "slow", victim: 1, fault: couchtest.Fault{Latency: 2 * time.Second}},
		{name: "500", victim: 1, fault: couchtest.Fault{Status: 500}, warning: controller.ReasonCouchDBUnreachable},
		{name: "drop", victim: 1, fault: couchtest.Fault{Drop: true}, warning: controller.ReasonCouchDBUnreachable},
		{name: "nonjson", victim: 1, fault: couchtest.Fault{NonJSON: true}, warning: controller.ReasonCouchDBBadResponse},
		{name: "hung-db0", victim: 0, fault: couchtest.Fault{Hang: true}, warning: controller.ReasonCouchDBUnreachable},
		{name: "500-db0", victim: 0, fault: couchtest.Fault{Status: 500}, warning: controller.ReasonCouchDBUnreachable},
		{name: "drop-db0", victim: 0, fault: couchtest.Fault{Drop: true}, warning: controller.ReasonCouchDBUnreachable},
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
				runFault(t, strings.TrimSuffix(fc.name, "-db0"), fc.victim, fc.fault, seen, fc.warning)
			})
		}
	}
}

func runFault(t *testing.T, name string, victimOrd int, fault couchtest.Fault, seen bool, warning string) {
	ctx := context.Background()
	ns := newNamespace(t)
	s := newSpec(fmt.Sprintf("f%s%d", name, victimOrd), 3)
	s.parallel = true
	s.annotations = map[string]string{"couchdb.io/replicate": "db1"}
	startControllerOpts(t, ns, controllerOpts{timeout: 5 * time.Second})
	s.create(t, ns)
	waitMembers(t, s, ns, 3, 60*time.Second)
	const docs = 40
	loadData(t, s, ns, docs)
	healthy := podName(s, 0) // where the test reads while the victim is faulty
	if victimOrd == 0 {
		healthy = podName(s, 2)
	}
	before := copiesVia(t, ns, healthy, s.password)
	if len(before) == 0 {
		t.Fatal("db1 has no shard map")
	}

	victim := nodeOf(ns, podName(s, victimOrd))
	if fault == (couchtest.Fault{}) {
		victim.Stop()
	} else {
		fault.SpareUp = !seen
		setFault(t, ns, podName(s, victimOrd), fault)
	}
	faultyName := s.nodeName(ns, victimOrd)
	scaleTo(t, ns, s.name, 4)
	poll(t, 60*time.Second, fmt.Sprintf("db-3 to join while db-%d is faulty", victimOrd), func(context.Context) (bool, error) {
		return slices.Contains(clusterNodesOf(ns, healthy), s.nodeName(ns, 3)), nil
	})
	if warning != "" && !seen {
		waitEvent(t, ns, warning)
	}
	if fault.Latency > 0 {
		for _, e := range events(t, ns, controller.ReasonCouchDBUnreachable) {
			t.Errorf("a slow node was reported unreachable: %s", e.Message)
		}
	}
	// Nothing of the faulty member went while it was faulty.
	now := copiesVia(t, ns, healthy, s.password)
	for c := range before {
		if !now[c] {
			t.Errorf("copy %s was removed while its node was faulty", c)
		}
	}
	if _, err := couchdb(t, ns, healthy, s.password).GetNodeDoc(ctx, faultyName); err != nil {
		t.Errorf("the faulty member's _nodes doc: %v", err)
	}
	if m := readAllVia(t, s, ns, healthy, docs); m != 0 {
		t.Errorf("%d documents unreadable through %s during the fault", m, healthy)
	}

	if fault == (couchtest.Fault{}) {
		if err := victim.Start(); err != nil {
			t.Fatal(err)
		}
	} else {
		setFault(t, ns, podName(s, victimOrd), couchtest.Fault{})
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

// copiesVia lists db1's shard copies as "range@node", as pod sees the map.
func copiesVia(t *testing.T, ns, pod, password string) map[string]bool {
	m, err := couchdb(t, ns, pod, password).GetShardMap(context.Background(), "db1")
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
			node := nodeOf(ns, podName(s, i))
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
// (5 failed logins); the other nodes never see a failed login. It keeps trying while locked, backing
// off: those attempts are refused with 403 and are not failures. The Secret is fixed while the
// account is locked: CouchDB refuses even the right password, the controller says so and keeps
// backing off; once the lockout expires (the emulator's clock is moved past it), the next attempt
// succeeds and a new pod joins.
//
// No hammering: every authentication attempt db-0 saw is counted, the locked ones too, and the total
// must stay within what the controller's credential backoff allows (one attempt, then one after each
// wait, the wait doubling from credBackoff) over the time each password was being refused.
func TestWrongPasswordUntilLockout(t *testing.T) {
	ctx := context.Background()
	ns := newNamespace(t)
	s := newSpec("lock", 3)
	s.parallel = true
	// CouchDB's lockout lasts 5 minutes from the first failure; real nodes get a shorter one through a
	// mounted ini file (max_lifetime is read at start), as a user would configure it. It must outlast
	// the controller's backoff through the test's steps while locked (attempts 6.2, 12.6, 25.4 s after
	// the first failure, then the fixed Secret's), or a late attempt meets an expired lockout.
	const realLockout = 60 * time.Second
	if realNodes() {
		s.ini = fmt.Sprintf("[chttpd_auth_lockout]\nmax_lifetime = %d\n", realLockout.Milliseconds())
	}
	const credBackoff = 200 * time.Millisecond
	startControllerOpts(t, ns, controllerOpts{credBackoff: credBackoff})
	s.create(t, ns)
	waitMembers(t, s, ns, 3, 60*time.Second)
	// Failed and locked-out logins per node: the emulator counts them; a real node logs each one.
	counts := func(i int) (failed, locked int) {
		if !realNodes() {
			r := emulated(t, ns, podName(s, i)).Requests()
			return r.Failures, r.Locked
		}
		n := env.real.Node(ns, podName(s, i))
		if n == nil {
			return 0, 0 // not started yet
		}
		f, err := n.CountLog(couchpods.LogLoginFailed)
		if err != nil {
			t.Fatal(err)
		}
		l, err := n.CountLog(couchpods.LogLoginLocked)
		if err != nil {
			t.Fatal(err)
		}
		return f, l
	}
	// allowed is how many logins the backoff permits within d of the first: one at once, then one
	// after credBackoff, 2·credBackoff, 4·credBackoff... (capped at 5 minutes, as the controller's is).
	allowed := func(d time.Duration) int {
		n, wait := 1, credBackoff
		for at := wait; at <= d; at += wait {
			n++
			wait = min(2*wait, 5*time.Minute)
		}
		return n
	}
	// Counts before the password changes: formation logged in successfully, nothing failed.
	type count struct{ failed, locked int }
	before := make([]count, 3)
	for i := range before {
		before[i].failed, before[i].locked = counts(i)
		if before[i] != (count{}) {
			t.Fatalf("db-%d had %d failed and %d locked logins before the password changed", i, before[i].failed, before[i].locked)
		}
	}
	base := func(i int) count {
		if i < len(before) {
			return before[i]
		}
		return count{} // db-3 boots later
	}
	failures := func(i int) int { f, _ := counts(i); return f - base(i).failed }
	locked := func(i int) int { _, l := counts(i); return l - base(i).locked }

	const rotated = "rotated-password-5521"
	usePassword(rotated)
	rotatedAt := time.Now()
	// db-0 first, and the others only once the controller has failed there: a sync that had logged
	// in to db-0 just before its change would otherwise go on to db-1 and db-2 after theirs, and
	// count failures the controller's rule (stop at the first node that rejects) cannot prevent. Syncs
	// of one cluster never overlap, so once one failed on db-0, no sync holding a db-0 success is left.
	setAdminPassword(t, ns, podName(s, 0), s.password, rotated)
	poll(t, 60*time.Second, "the controller's first failed login on db-0", func(context.Context) (bool, error) {
		return failures(0) >= 1, nil
	})
	for i := 1; i < 3; i++ {
		setAdminPassword(t, ns, podName(s, i), s.password, rotated)
	}
	waitEvent(t, ns, controller.ReasonCredentialsInvalid)
	poll(t, 60*time.Second, "CouchDB to lock the account (5 failed logins on db-0)", func(context.Context) (bool, error) {
		return failures(0) >= 5, nil
	})
	locked0 := time.Now()
	// CouchDB's side of it: even the right password is refused now. This probe is the test's own
	// attempt while locked; it is not the controller's.
	if code, body := rawDo(t, ns, podName(s, 0), rotated, "GET", "/_membership", ""); code != 403 {
		t.Fatalf("db-0 answered %d %s with the right password, want 403: the account should be locked", code, body)
	}
	const probes = 1
	// The controller keeps trying while locked; each try is a 403, not a failure.
	poll(t, 30*time.Second, "a controller attempt against the locked account", func(context.Context) (bool, error) {
		return locked(0)-probes >= 1, nil
	})
	if f := failures(0); f != 5 {
		t.Errorf("db-0 saw %d failed logins, want exactly the 5 that lock the account", f)
	}
	for i := 1; i < 3; i++ {
		if f, l := failures(i), locked(i); f+l != 0 {
			t.Errorf("db-%d saw %d failed and %d locked logins; only one node should be asked", i, f, l)
		}
	}

	setSecretPassword(t, ns, s, rotated)
	fixedAt := time.Now()
	lockedAtFix := locked(0)
	// Every refused attempt with the old Secret, against what the backoff allows since the password
	// changed (the first attempt came later than that, so the bound is loose, never tight).
	oldSecret := failures(0) + lockedAtFix - probes
	if limit := allowed(fixedAt.Sub(rotatedAt)); oldSecret > limit {
		t.Errorf("the controller tried the old password %d times in %s (locked after %s); its backoff allows %d",
			oldSecret, fixedAt.Sub(rotatedAt).Round(time.Millisecond), locked0.Sub(rotatedAt).Round(time.Millisecond), limit)
	}
	// A changed Secret is tried at once: against the locked account, that is a 403 too.
	poll(t, 30*time.Second, "the fixed Secret to be tried against the locked account", func(context.Context) (bool, error) {
		return locked(0) > lockedAtFix, nil
	})
	s.password = rotated
	passwords.Store(ns, rotated)
	poll(t, 30*time.Second, "a Warning that the account is locked", func(context.Context) (bool, error) {
		for _, e := range events(t, ns, controller.ReasonCredentialsInvalid) {
			if strings.Contains(e.Message, "locked") && !e.LastTimestamp.Time.Before(locked0.Truncate(time.Second)) {
				return true, nil
			}
		}
		return false, nil
	})
	// CouchDB's lockout lives in each node's memory, so only db-0 (the node the controller asks first)
	// is locked; the controller keeps asking it, backing off, until the lockout expires.
	scaleTo(t, ns, s.name, 4)
	if realNodes() {
		// A real node's clock cannot be moved: its lockout (max_lifetime, from the first failure,
		// which came before locked0) is shortened by the pods' ini instead, and waited out here so
		// that the test's own membership polls are not refused and counted.
		time.Sleep(time.Until(locked0.Add(realLockout + time.Second)))
	} else {
		couchClockSkew.Add(int64(6 * time.Minute))
	}
	waitMembers(t, s, ns, 4, 60*time.Second)
	recoveredAt := time.Now()
	if _, err := couchdb(t, ns, podName(s, 0), rotated).Membership(ctx); err != nil {
		t.Errorf("the account is still refused: %v", err)
	}
	total := 0
	for i := 0; i < 4; i++ {
		total += failures(i)
	}
	if total != 5 {
		t.Errorf("%d failed logins in all, want 5", total)
	}
	// The right password was refused only while db-0 was locked. The Secret's change reset the
	// backoff, so the count starts again from one attempt at once; one more is allowed for an attempt
	// with the old Secret that was under way when it changed.
	newSecret := locked(0) - lockedAtFix
	if limit := allowed(recoveredAt.Sub(fixedAt)) + 1; newSecret > limit {
		t.Errorf("the controller tried the fixed Secret %d times against the locked account in %s; its backoff allows %d",
			newSecret, recoveredAt.Sub(fixedAt).Round(time.Millisecond), limit)
	}
	t.Logf("db-0: %d failed logins and %d attempts while locked with the old Secret over %s; %d attempts while locked with the fixed one over %s",
		5, oldSecret-5, fixedAt.Sub(rotatedAt).Round(time.Millisecond), newSecret, recoveredAt.Sub(fixedAt).Round(time.Millisecond))
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
		// Only the join of the new node: a repeated AddNode of a node already in, planned from a
		// member's view that lagged, would restart the API server under the test's own scale-up.
		if a.Kind == controller.ActAddNode && strings.HasPrefix(a.Node, "couchdb@"+podName(s, 3)+".") &&
			restarted.CompareAndSwap(false, true) {
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
