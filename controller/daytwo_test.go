package controller

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/klog/v2"
	"k8s.io/klog/v2/textlogger"

	"github.com/couchdb-controller/couchdb-controller/couch"
	"github.com/couchdb-controller/couchdb-controller/couch/couchtest"
)

// Fixture tests of issue 15: the admin hash and CouchDB-made uuid/secret copied to restarted and
// joined members, drift reported and never written, the member gate held until a restarted member
// has caught up, and a leftover maintenance mode cleared.

// syncBuffer is a log sink tests can read while the controller writes to it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// captureLogs makes the controller log everything (V(10)) into the returned buffer.
func (f *fixture) captureLogs() *syncBuffer {
	buf := &syncBuffer{}
	logger := textlogger.NewLogger(textlogger.NewConfig(textlogger.Output(buf), textlogger.Verbosity(10)))
	f.ctx = klog.NewContext(f.ctx, logger)
	return buf
}

func (f *fixture) putConfig(ord int, section, key, value string) {
	f.t.Helper()
	if _, err := f.admin(ord).SetConfig(f.ctx, "_local", section, key, value); err != nil {
		f.t.Fatal(err)
	}
}

func (f *fixture) getConfig(ord int, section, key string) string {
	f.t.Helper()
	v, err := f.admin(ord).GetConfig(f.ctx, "_local", section, key)
	if err != nil && !couch.IsNotFound(err) {
		f.t.Fatal(err)
	}
	return v
}

// restartContainer plays the kubelet after a CouchDB container restart: one more restart, a new start time.
func (f *fixture) restartContainer(name string) {
	f.updatePod(name, func(p *corev1.Pod) {
		restarts := int32(1)
		if len(p.Status.ContainerStatuses) > 0 {
			restarts = p.Status.ContainerStatuses[0].RestartCount + 1
		}
		started := metav1.NewTime(time.Now().Add(2 * time.Second)) // after the gate's transition (1 s resolution)
		p.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "couchdb", RestartCount: restarts, Ready: true,
			State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: started}}}}
	})
}

// exposed gathers everything the controller shows: logs, events, metrics, status, as one string.
func (f *fixture) exposed(logs *syncBuffer, events []string) string {
	f.t.Helper()
	var b strings.Builder
	b.WriteString(logs.String())
	b.WriteString(strings.Join(events, "\n"))
	mfs, err := f.reg.Gather()
	if err != nil {
		f.t.Fatal(err)
	}
	for _, mf := range mfs {
		b.WriteString(mf.String())
	}
	st, _ := json.Marshal(f.c.Clusters())
	b.Write(st)
	return b.String()
}

// assertHidden fails when any secret, or a recognisable part of one, appears in s.
func assertHidden(t *testing.T, s string, secrets ...string) {
	t.Helper()
	for _, v := range secrets {
		parts := append([]string{v}, strings.FieldsFunc(v, func(r rune) bool { return r == ',' || r == '-' || r == ':' })...)
		for _, p := range parts {
			if len(p) >= 16 && strings.Contains(s, p) {
				t.Errorf("a secret value (%d characters) appears in the controller's logs, events, metrics or status", len(p))
			}
		}
	}
}

// sessionCookie logs in on the node of pod ordinal ord (POST /_session) and returns the cookie.
func (f *fixture) sessionCookie(ord int) string {
	f.t.Helper()
	body := strings.NewReader(`{"name":"admin","password":"` + testPass + `"}`)
	req, err := http.NewRequestWithContext(f.ctx, http.MethodPost, f.node(ord).URL()+"/_session", body)
	if err != nil {
		f.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		f.t.Fatal(err)
	}
	_ = resp.Body.Close()
	for _, c := range resp.Cookies() {
		if c.Name == "AuthSession" {
			return c.Value
		}
	}
	f.t.Fatalf("POST /_session on db-%d: %s, no AuthSession cookie", ord, resp.Status)
	return ""
}

// cookieAccepted asks the node of pod ordinal ord whom the cookie authenticates (GET /_session).
func (f *fixture) cookieAccepted(ord int, cookie string) bool {
	f.t.Helper()
	req, err := http.NewRequestWithContext(f.ctx, http.MethodGet, f.node(ord).URL()+"/_session", nil)
	if err != nil {
		f.t.Fatal(err)
	}
	req.AddCookie(&http.Cookie{Name: "AuthSession", Value: cookie})
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		f.t.Fatal(err)
	}
	defer resp.Body.Close()
	var s struct {
		UserCtx struct {
			Name *string `json:"name"`
		} `json:"userCtx"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		f.t.Fatal(err)
	}
	return s.UserCtx.Name != nil && *s.UserCtx.Name == "admin"
}

// checkCookies: a cookie from every running node is accepted by every running node.
func (f *fixture) checkCookies(when string, ords ...int) {
	f.t.Helper()
	for _, from := range ords {
		c := f.sessionCookie(from)
		for _, to := range ords {
			if !f.cookieAccepted(to, c) {
				f.t.Errorf("%s: db-%d refuses a session cookie from db-%d", when, to, from)
			}
		}
	}
}

// restart restarts the node of pod ordinal ord as the official image does (a new salt for the admin
// hash, runtime config gone) and plays the kubelet's report of it.
func (f *fixture) restart(ord int) {
	f.t.Helper()
	f.node(ord).Stop()
	if err := f.node(ord).Start(); err != nil {
		f.t.Fatal(err)
	}
	f.restartContainer(fmt.Sprintf("db-%d", ord))
}

func TestDayTwoAdminHashCopiedAfterRestart(t *testing.T) {
	f := newFixture(t)
	f.ephemeral = true
	logs := f.captureLogs()
	f.formed3()
	var events []string
	events = append(events, f.rawEvents()...)
	f.checkCookies("after formation", 0, 1, 2)
	seen := map[string]bool{}
	hashes := func() []string {
		var out []string
		for ord := 0; ord < len(f.nodes); ord++ {
			h := f.getConfig(ord, "admins", "admin")
			seen[h] = true
			out = append(out, h)
		}
		return out
	}
	h0 := hashes()[0]

	// db-1 restarts: CouchDB hashes the password with a salt of its own and makes up a new uuid (the
	// pods do not set one); the secret comes back from COUCHDB_SECRET, the same on every pod.
	f.restart(1)
	if hashes()[1] == h0 {
		t.Fatal("the emulated restart kept the hash: the test would prove nothing")
	}
	f.resetCalls()
	f.syncUntilQuiet(3)
	if diff := cmp.Diff([]string{h0, h0, h0}, hashes()); diff != "" {
		t.Errorf("hashes after db-1's restart differ (%d distinct)", len(seen))
	}
	var puts []string
	for _, c := range f.couchWriteCalls() {
		if strings.Contains(c, "/_config/") {
			puts = append(puts, c)
		}
	}
	want := []string{"10.0.0.2 PUT /_node/_local/_config/admins/admin", "10.0.0.2 PUT /_node/_local/_config/couchdb/uuid"}
	if diff := cmp.Diff(want, puts); diff != "" {
		t.Errorf("config writes (-want +got):\n%s", diff)
	}
	ev := f.rawEvents()
	events = append(events, ev...)
	if want := "Normal AdminHashCopied Gave pod db-1 the password hash of admin admin that pod db-0 holds, so session cookies are valid on every member"; count(ev, want) != 1 {
		t.Errorf("events %q, want one %q", ev, want)
	}
	f.checkCookies("after db-1's restart", 0, 1, 2)

	// Steady state: the config is not read again while no member's pod or container changes.
	f.resetCalls()
	f.syncUntilQuiet(2)
	for _, c := range f.couchCalls() {
		if strings.Contains(c.Path, "/_config/") {
			t.Errorf("steady-state sync read the config: %s", c)
		}
	}

	// The coordinator restarts: the hash the other two share wins, so the cookies they issued
	// stay valid.
	cookie1 := f.sessionCookie(1)
	f.restart(0)
	if hashes()[0] == h0 {
		t.Fatal("the emulated restart of db-0 kept the hash")
	}
	f.syncUntilQuiet(3)
	if diff := cmp.Diff([]string{h0, h0, h0}, hashes()); diff != "" {
		t.Errorf("hashes after db-0's restart: not the majority's")
	}
	for i := 0; i < 3; i++ {
		if !f.cookieAccepted(i, cookie1) {
			t.Errorf("db-%d refuses a cookie issued before db-0's restart", i)
		}
	}
	// A scale-up: the new node gets the hash too.
	sts := statefulSet(4, nil)
	sts.ResourceVersion = "2"
	f.cache(sts)
	f.addNode(3, testPass)
	seen[f.getConfig(3, "admins", "admin")] = true
	f.cache(pod(3, true))
	f.syncUntilQuiet(5)
	if diff := cmp.Diff([]string{h0, h0, h0, h0}, hashes()); diff != "" {
		t.Error("the joined node does not hold the members' hash")
	}
	f.checkCookies("after a scale-up", 0, 1, 2, 3)
	events = append(events, f.rawEvents()...)
	var all []string
	for h := range seen {
		all = append(all, h)
	}
	if len(all) < 4 {
		t.Errorf("only %d distinct hashes were seen: the restarts did not rehash", len(all))
	}
	assertHidden(t, f.exposed(logs, events), all...)
	if !strings.Contains(logs.String(), "CopyAdminHash(to db-0 from ordinal 1)") {
		t.Errorf("the logs do not show the copy action")
	}
}

func TestDayTwoAdminHashOptOut(t *testing.T) {
	f := newFixture(t)
	f.ephemeral = true
	f.formed3()
	sts := f.cachedStatefulSet().DeepCopy()
	sts.Annotations = map[string]string{AnnotationSyncAdminHash: "false"}
	sts.ResourceVersion = bumpRV(sts.ResourceVersion)
	f.cache(sts)
	f.rawEvents()
	f.restart(1)
	h1 := f.getConfig(1, "admins", "admin")
	f.resetCalls()
	f.syncUntilQuiet(2)
	if got := f.getConfig(1, "admins", "admin"); got != h1 {
		t.Error("the hash was changed although couchdb.io/sync-admin-hash is false")
	}
	for _, c := range f.couchWriteCalls() {
		if strings.Contains(c, "/_config/admins") {
			t.Errorf("admin hash write with the sync off: %s", c)
		}
	}
	// With the sync off, the difference is reported like any other admin's.
	if got := countReasons(f.events())[ReasonAdminsDiffer]; got != 1 {
		t.Errorf("%d %s events, want 1", got, ReasonAdminsDiffer)
	}
}

func TestDayTwoOtherAdminsReportedNotChanged(t *testing.T) {
	f := newFixture(t)
	logs := f.captureLogs()
	f.formed3()
	f.rawEvents()
	// The same password set on every node: each hashes it with its own salt.
	var hs []string
	for i := 0; i < 3; i++ {
		f.putConfig(i, "admins", "ops", "ops-password-8812")
		hs = append(hs, f.getConfig(i, "admins", "ops"))
	}
	f.forceConfigRead() // set behind the controller's back: seen at the periodic re-read
	f.resetCalls()
	f.syncUntilQuiet(2)
	for i := 0; i < 3; i++ {
		if got := f.getConfig(i, "admins", "ops"); got != hs[i] {
			t.Errorf("db-%d: another admin's hash was changed", i)
		}
	}
	ev := f.rawEvents()
	want := "Warning AdminsDiffer [admins] ops is not the same on every member (pods grouped by value: db-0 | db-1 | db-2)"
	found := false
	for _, e := range ev {
		found = found || strings.HasPrefix(e, want)
	}
	if !found {
		t.Errorf("events %q, want one starting %q", ev, want)
	}
	assertHidden(t, f.exposed(logs, ev), hs...)
}

func TestDayTwoSessionKeysCopiedToRestartedAndJoined(t *testing.T) {
	f := newFixture(t)
	f.formed3()
	uuid, sec := f.getConfig(0, "couchdb", "uuid"), f.getConfig(0, "chttpd_auth", "secret")
	for i := 1; i < 3; i++ {
		if f.getConfig(i, "couchdb", "uuid") != uuid || f.getConfig(i, "chttpd_auth", "secret") != sec {
			t.Fatalf("finish_cluster did not copy uuid and secret to db-%d", i)
		}
	}
	// A restart without the keys in the pod's config: CouchDB makes up new ones.
	f.putConfig(2, "couchdb", "uuid", "0123456789abcdef0123456789abcdef")
	f.putConfig(2, "chttpd_auth", "secret", "fedcba9876543210fedcba9876543210")
	f.restartContainer("db-2")
	f.syncUntilQuiet(2)
	// A scale-up: the new node never got finish_cluster's copy.
	sts := statefulSet(4, nil)
	sts.ResourceVersion = "2"
	f.cache(sts)
	f.addNode(3, testPass)
	f.cache(pod(3, true))
	f.syncUntilQuiet(4)
	for i := 0; i < 4; i++ {
		if f.getConfig(i, "couchdb", "uuid") != uuid || f.getConfig(i, "chttpd_auth", "secret") != sec {
			t.Errorf("db-%d holds another uuid or secret than the cluster", i)
		}
	}
	if got := f.series("config_drift"); got[`config_drift{key="couchdb.uuid"}`] != 0 || len(got) != 4 {
		t.Errorf("config_drift %v, want 4 series at 0", got)
	}
}

func TestDayTwoConfigDriftReportedNotWritten(t *testing.T) {
	f := newFixture(t)
	logs := f.captureLogs()
	f.formed3()
	// The pods set the uuid themselves, in an ini file from a ConfigMap (one file per pod): a
	// difference is the user's to fix.
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "db-ini", Namespace: testNS},
		Data: map[string]string{"db-0.ini": "[couchdb]\nuuid = a\n", "db-1.ini": "[couchdb]\n; per pod\nuuid=b\n"}}
	if _, err := f.client.CoreV1().ConfigMaps(testNS).Create(f.ctx, cm, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	sts := f.cachedStatefulSet().DeepCopy()
	sts.Spec.Template.Spec.Volumes = append(sts.Spec.Template.Spec.Volumes, corev1.Volume{Name: "ini",
		VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: "db-ini"}}}})
	sts.ResourceVersion, sts.Generation = bumpRV(sts.ResourceVersion), sts.Generation+1
	f.cache(sts)
	f.rawEvents()
	uuid := f.getConfig(0, "couchdb", "uuid")
	other := "99999999999999999999999999999999"
	f.putConfig(1, "couchdb", "uuid", other)
	f.putConfig(2, "cluster", "q", "8")
	f.restartContainer("db-1")
	f.restartContainer("db-2")
	f.resetCalls()
	f.syncUntilQuiet(2)
	for _, c := range f.couchWriteCalls() {
		if strings.Contains(c, "/_config/") {
			t.Errorf("a drifting key was written: %s", c)
		}
	}
	ev := f.rawEvents()
	wantPrefix := []string{
		"Warning ConfigDrift StatefulSet ns/db: members disagree about [couchdb] uuid (pods grouped by value: db-0, db-2 | db-1;",
		"Warning ConfigDrift StatefulSet ns/db: members disagree about [cluster] q (pods grouped by value: db-0, db-1 | db-2;",
	}
	for _, w := range wantPrefix {
		n := 0
		for _, e := range ev {
			if strings.HasPrefix(e, w) {
				n++
			}
		}
		if n != 1 {
			t.Errorf("%d events starting %q in %q", n, w, ev)
		}
	}
	want := map[string]float64{`config_drift{key="couchdb.uuid"}`: 1, `config_drift{key="chttpd_auth.secret"}`: 0,
		`config_drift{key="cluster.n"}`: 0, `config_drift{key="cluster.q"}`: 1}
	if diff := cmp.Diff(want, f.series("config_drift")); diff != "" {
		t.Errorf("config_drift (-want +got):\n%s", diff)
	}
	st, _ := f.c.Cluster(testNS, "main")
	if len(st.ConfigDrift) != 2 || st.ConfigDrift[0].Key != "couchdb.uuid" || st.ConfigDrift[1].Key != "cluster.q" {
		t.Errorf("status configDrift %+v", st.ConfigDrift)
	}
	// Still drifting: no second event.
	f.syncUntilQuiet(2)
	if ev := f.rawEvents(); len(ev) != 0 {
		t.Errorf("events while the drift holds: %q", ev)
	}
	// The user fixes it (the pods restart with one value).
	f.putConfig(1, "couchdb", "uuid", uuid)
	f.putConfig(2, "cluster", "q", "2")
	f.restartContainer("db-1")
	f.restartContainer("db-2")
	f.syncUntilQuiet(2)
	for k, v := range f.series("config_drift") {
		if v != 0 {
			t.Errorf("%s = %v after the fix", k, v)
		}
	}
	st, _ = f.c.Cluster(testNS, "main")
	if len(st.ConfigDrift) != 0 || len(st.Warnings) != 0 {
		t.Errorf("status after the fix: drift %+v, warnings %q", st.ConfigDrift, st.Warnings)
	}
	assertHidden(t, f.exposed(logs, ev), uuid, other)
	// Forgetting the cluster drops the series.
	f.c.forget(key)
	if n := testutil.CollectAndCount(f.reg, "couchdb_controller_config_drift"); n != 0 {
		t.Errorf("%d config_drift series after forget", n)
	}
}

// gatedWithData forms a 3-node gated cluster whose database has documents on every node, with
// internal replication after delay (the time a restarted node takes to catch up).
func gatedWithData(t *testing.T, delay time.Duration) *fixture {
	f := newFixture(t)
	f.network = couchtest.NewNetwork(couchtest.NetworkOptions{SyncDelay: delay})
	f.formedN(3, true)
	f.createDB(0, "appdb", 2, 3, 20)
	f.converge(20, nil)
	for i := 0; i < 3; i++ {
		if c := f.memberCondition(fmt.Sprintf("db-%d", i)); c == nil || !*c {
			t.Fatalf("db-%d gate not True after formation", i)
		}
	}
	f.rawEvents()
	return f
}

func (f *fixture) memberCondition(pod string) *bool {
	for _, c := range f.cachedPod(pod).Status.Conditions {
		if c.Type == ConditionMember {
			v := c.Status == corev1.ConditionTrue
			return &v
		}
	}
	return nil
}

// restartBehind stops db-1's node, writes while it is down, and brings it back as a restarted container.
func (f *fixture) restartBehind() {
	f.node(1).Stop()
	f.writeDocs(0, "appdb", "missed", 30)
	if err := f.node(1).Start(); err != nil {
		f.t.Fatal(err)
	}
	f.restartContainer("db-1")
}

func TestDayTwoMemberGateWaitsForCatchUp(t *testing.T) {
	f := gatedWithData(t, 400*time.Millisecond)
	f.restartBehind()
	if err := f.c.sync(f.ctx, key); err != nil {
		t.Fatal(err)
	}
	if c := f.memberCondition("db-1"); c == nil || *c {
		t.Fatalf("db-1 gate %v right after its restart, want False while it catches up", c)
	}
	st, _ := f.c.Cluster(testNS, "main")
	if !strings.Contains(st.Nodes[1].CatchingUp, "catching up") {
		t.Errorf("status of db-1: %+v", st.Nodes[1])
	}
	// When the gate opens, db-1's copies hold every document.
	err := wait.PollUntilContextTimeout(f.ctx, 20*time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) {
		if err := f.c.sync(f.ctx, key); err != nil {
			return false, err
		}
		c := f.memberCondition("db-1")
		return c != nil && *c, nil
	})
	if err != nil {
		t.Fatalf("gate never opened: %v", err)
	}
	m := f.maps(0)["appdb"]
	for _, rng := range m.Ranges() {
		if got, want := copyTotal(f.node(1), m.ShardName(rng)), copyTotal(f.node(0), m.ShardName(rng)); got != want {
			t.Errorf("gate opened with db-1's copy of %s at %d of %d documents", rng, got, want)
		}
	}
	st, _ = f.c.Cluster(testNS, "main")
	if st.Nodes[1].CatchingUp != "" {
		t.Errorf("status still says catching up: %+v", st.Nodes[1])
	}
	if ev := f.events(); count(ev, ReasonCatchUpTimeout) != 0 {
		t.Errorf("events %v", ev)
	}
}

// checkpointsUnreadable makes every node's shard checkpoints unreadable, so no catch-up can be verified.
type checkpointsUnreadable struct{ CouchAPI }

func (checkpointsUnreadable) ShardCheckpoints(context.Context, string, string) ([]couch.SyncCheckpoint, error) {
	return nil, errors.New("test: checkpoints unreadable")
}

func TestDayTwoMemberGateOpensAtTimeout(t *testing.T) {
	f := gatedWithData(t, 20*time.Millisecond)
	now := time.Now()
	f.c.cfg.Now = func() time.Time { return now }
	f.c.cfg.CatchUpTimeout = 10 * time.Minute
	f.wrap = func(_ string, api CouchAPI) CouchAPI { return checkpointsUnreadable{api} }
	f.c.mu.Lock()
	for _, st := range f.c.clusters {
		st.clients = map[string]CouchAPI{}
	}
	f.c.mu.Unlock()
	f.restartBehind()
	f.syncUntilQuiet(3)
	if c := f.memberCondition("db-1"); c == nil || *c {
		t.Fatalf("db-1 gate %v before the timeout, want False", c)
	}
	now = now.Add(10*time.Minute + time.Second)
	f.syncUntilQuiet(2)
	if c := f.memberCondition("db-1"); c == nil || !*c {
		t.Fatalf("db-1 gate %v after the timeout, want True", c)
	}
	if got := countReasons(f.events())[ReasonCatchUpTimeout]; got != 1 {
		t.Errorf("%d %s events, want 1", got, ReasonCatchUpTimeout)
	}
	// The same container run is not held again.
	f.syncUntilQuiet(2)
	if c := f.memberCondition("db-1"); c == nil || !*c {
		t.Error("gate closed again")
	}
}

// TestDayTwoScaleUpNotGated: a node the controller adds holds no copies: its gate opens as soon as it
// is a member, without reading the shard maps for it.
func TestDayTwoScaleUpNotGated(t *testing.T) {
	f := gatedWithData(t, 20*time.Millisecond)
	sts := statefulSet(4, nil)
	sts.ResourceVersion = "5"
	f.cache(sts)
	f.addNode(3, testPass)
	f.cache(gatedPod(3))
	f.resetCalls()
	for i := 0; i < 3; i++ {
		if err := f.c.sync(f.ctx, key); err != nil {
			t.Fatal(err)
		}
		if c := f.memberCondition("db-3"); c != nil && *c {
			break
		}
	}
	if c := f.memberCondition("db-3"); c == nil || !*c {
		t.Fatalf("db-3 gate %v after the join", c)
	}
	for _, c := range f.couchCalls() {
		if strings.Contains(c.Path, "/_local_docs") {
			t.Errorf("the join read checkpoints: %s", c)
		}
	}
}

func TestDayTwoLeftoverNolbCleared(t *testing.T) {
	f := newFixture(t)
	f.formed3()
	f.putConfig(1, "couchdb", "maintenance_mode", "nolb")
	// /_up fails: the kubelet marks the containers not ready.
	f.updatePod("db-1", func(p *corev1.Pod) {
		p.Status.Conditions = []corev1.PodCondition{{Type: corev1.ContainersReady, Status: corev1.ConditionFalse}}
	})
	f.syncUntilQuiet(2)
	if got := f.node(1).MaintenanceMode(); got != "false" {
		t.Errorf("maintenance_mode of db-1 %q, want false", got)
	}
	// A pod being deleted keeps it: that is the preStop hook doing its job.
	f.putConfig(2, "couchdb", "maintenance_mode", "nolb")
	f.updatePod("db-2", func(p *corev1.Pod) {
		p.DeletionTimestamp = ptrTime(metav1.Now())
		p.Status.Conditions = []corev1.PodCondition{{Type: corev1.ContainersReady, Status: corev1.ConditionFalse}}
	})
	f.syncUntilQuiet(2)
	if got := f.node(2).MaintenanceMode(); got != "nolb" {
		t.Errorf("maintenance_mode of the terminating db-2 %q, want nolb kept", got)
	}
}

func ptrTime(t metav1.Time) *metav1.Time { return &t }

func TestIniSets(t *testing.T) {
	for body, want := range map[string]bool{
		"[couchdb]\nuuid = x\n":                true,
		"[couchdb]\n;uuid = x\n":               false,
		"[cluster]\nuuid = x\n":                false,
		"[couchdb]\nmax_dbs_open=1\nuuid=x":    true,
		"[ couchdb ]\n  uuid   =  \n":          true,
		"[chttpd_auth]\nsecret = s\n[couchdb]": false,
	} {
		if got := iniSets(body, "couchdb", "uuid"); got != want {
			t.Errorf("iniSets(%q) = %t, want %t", body, got, want)
		}
	}
}

// forceConfigRead makes the next sync read every member's config (as shardsMaxAge passing would).
func (f *fixture) forceConfigRead() {
	st := f.c.state(key)
	f.c.mu.Lock()
	st.config.at = time.Time{}
	f.c.mu.Unlock()
}

// TestConfigReadOnlyWhereItChanged: a join reads the new member's config, not every member's again;
// a restarted pod is read alone; the periodic re-read reads every member.
func TestConfigReadOnlyWhereItChanged(t *testing.T) {
	f := newFixture(t)
	f.formed3()
	configReads := func() map[string]int {
		out := map[string]int{}
		for _, c := range f.couchCalls() {
			if s := c.String(); strings.Contains(s, "GET /_node/_local/_config/") {
				out[strings.Fields(s)[0]]++
			}
		}
		return out
	}
	f.scaleUpToFour()
	f.syncUntilQuiet(3)
	if got := f.node(0).ClusterNodes(); len(got) != 4 {
		t.Fatalf("_nodes %v after the join", got)
	}
	// The new member is read, written to (uuid, secret) and read again; the others not at all.
	if got := configReads(); got["10.0.0.1"]+got["10.0.0.2"]+got["10.0.0.3"] != 0 || got["10.0.0.4"] == 0 {
		t.Errorf("config reads by node during the join: %v, want only 10.0.0.4's", got)
	}
	f.restartContainer("db-1")
	f.resetCalls()
	f.syncUntilQuiet(2)
	if got := configReads(); got["10.0.0.1"]+got["10.0.0.3"]+got["10.0.0.4"] != 0 || got["10.0.0.2"] == 0 {
		t.Errorf("config reads by node after db-1 restarted: %v, want only 10.0.0.2's", got)
	}
	f.forceConfigRead()
	f.resetCalls()
	f.syncUntilQuiet(1)
	if got := configReads(); len(got) != 4 {
		t.Errorf("config reads by node at the periodic re-read: %v, want all four", got)
	}
}
