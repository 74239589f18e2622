package controller

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/tools/cache"

	"github.com/couchdb-controller/couchdb-controller/couch"
)

// Fixture tests of the zone, placement-rule and batched-move apply paths (issues 12 and 13).

func zoneNodeObj(name, zone string) *corev1.Node {
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, ResourceVersion: "1", Labels: map[string]string{"kubernetes.io/hostname": name}}}
	if zone != "" {
		n.Labels[DefaultZoneLabel] = zone
	}
	return n
}

// formedInZones forms a 3-node cluster whose pods run on Nodes node-a, node-b, node-c labelled with
// zones zone-a/b/c (annotations go on the StatefulSet).
func (f *fixture) formedInZones(annotations map[string]string) {
	f.objects = []runtime.Object{statefulSet(3, annotations), service(true), endpoints(), secret(testPass)}
	for i, z := range []string{"a", "b", "c"} {
		p := pod(i, true)
		p.Spec.NodeName = "node-" + z
		f.objects = append(f.objects, p, zoneNodeObj("node-"+z, "zone-"+z))
		f.addNode(i, testPass)
	}
	f.newController()
	f.syncUntilQuiet(5)
	if got := f.node(0).ClusterNodes(); len(got) != 3 {
		f.t.Fatalf("fixture: formation left _nodes %v", got)
	}
}

func (f *fixture) nodeZones() []string {
	st, ok := f.c.Cluster(testNS, "main")
	if !ok {
		f.t.Fatal("no status")
	}
	var out []string
	for _, n := range st.Nodes {
		out = append(out, n.Pod+"="+n.Zone)
	}
	return out
}

// configCalls lists the recorded requests for [cluster] key; configReads only the GETs.
func (f *fixture) configCalls(key string) []string { return f.configRequests(key, "") }

func (f *fixture) configReads(key string) []string { return f.configRequests(key, http.MethodGet) }

func (f *fixture) configRequests(key, method string) []string {
	var out []string
	for _, c := range f.couchCalls() {
		if strings.HasSuffix(c.Path, "/_config/cluster/"+key) && (method == "" || c.Method == method) {
			out = append(out, c.Method+" "+c.Path)
		}
	}
	return out
}

// forceShardRead makes the next sync read the shard maps (as shardsMaxAge passing would).
func (f *fixture) forceShardRead() {
	st := f.c.state(key)
	f.c.mu.Lock()
	st.shardsRead = time.Time{}
	f.c.mu.Unlock()
}

// TestSyncZonesFromNodeLabels: a member's zone is its Node's zone label (the status API shows it);
// each member's [cluster] placement and the coordinator's [cluster] n are read once per CouchDB
// process, not on every read of the maps; a Node label change requeues the cluster.
func TestSyncZonesFromNodeLabels(t *testing.T) {
	f := newFixture(t)
	f.formedInZones(nil)
	if diff := cmp.Diff([]string{"db-0=zone-a", "db-1=zone-b", "db-2=zone-c"}, f.nodeZones()); diff != "" {
		t.Errorf("zones in the status API (-want +got):\n%s", diff)
	}
	placementReads := f.configReads("placement")
	if len(placementReads) != 3 || len(f.configReads("n")) != 1 {
		t.Errorf("reads of [cluster] placement %v and n %v, want one per member and one", placementReads, f.configReads("n"))
	}
	f.forceShardRead()
	f.syncUntilQuiet(3) // the zones and placement rules the controller writes are not read back
	f.resetCalls()
	f.forceShardRead()
	f.syncUntilQuiet(1)
	if got := append(f.configReads("placement"), f.configReads("n")...); len(got) != 0 {
		t.Errorf("config read again by the same CouchDB processes: %v", got)
	}
	// A restarted container is a new process: its runtime config may be gone, so it is read again.
	f.updatePod("db-1", func(p *corev1.Pod) {
		p.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "couchdb", RestartCount: 1, Ready: true}}
	})
	f.forceShardRead()
	f.syncUntilQuiet(1)
	if diff := cmp.Diff([]string{"GET /_node/" + escapedNode(1) + "/_config/cluster/placement"}, f.configReads("placement")); diff != "" {
		t.Errorf("reads after db-1's restart (-want +got):\n%s", diff)
	}

	// The zone label moves: the cluster with a pod on that Node is requeued, and the next sync sees it.
	for f.c.queue.Len() > 0 {
		k, _ := f.c.queue.Get()
		f.c.queue.Done(k)
	}
	old := zoneNodeObj("node-b", "zone-b")
	moved := zoneNodeObj("node-b", "zone-d")
	moved.ResourceVersion = "2"
	f.c.enqueueNodeUpdate(old, moved)
	if f.c.queue.Len() != 1 {
		t.Fatalf("queue holds %d keys after node-b's zone label changed, want the cluster's", f.c.queue.Len())
	}
	if k, _ := f.c.queue.Get(); k != key {
		t.Errorf("requeued %v, want %v", k, key)
	}
	same := moved.DeepCopy()
	same.ResourceVersion = "3" // a status heartbeat: labels unchanged
	f.c.enqueueNodeUpdate(moved, same)
	f.c.enqueueNode(zoneNodeObj("node-elsewhere", "zone-a"))
	if f.c.queue.Len() != 0 {
		t.Errorf("queue holds %d keys after a heartbeat and a Node without cluster pods", f.c.queue.Len())
	}
	if err := f.c.nodeFactory.Core().V1().Nodes().Informer().GetIndexer().Update(moved); err != nil {
		t.Fatal(err)
	}
	f.syncUntilQuiet(1)
	if diff := cmp.Diff([]string{"db-0=zone-a", "db-1=zone-d", "db-2=zone-c"}, f.nodeZones()); diff != "" {
		t.Errorf("zones after the label change (-want +got):\n%s", diff)
	}
}

func escapedNode(ord int) string {
	return fmt.Sprintf("couchdb@db-%d.db.%s.svc.cluster.local", ord, testNS)
}

// TestSyncZonesOff: couchdb.io/zone-label "" turns zones off (no zone, no placement read); an
// invalid label key is a Warning naming the annotation and the fix, and nothing is done.
func TestSyncZonesOff(t *testing.T) {
	f := newFixture(t)
	f.formedInZones(map[string]string{AnnotationZoneLabel: ""})
	if diff := cmp.Diff([]string{"db-0=", "db-1=", "db-2="}, f.nodeZones()); diff != "" {
		t.Errorf("zones with zones off (-want +got):\n%s", diff)
	}
	if got := f.configCalls("placement"); len(got) != 0 {
		t.Errorf("[cluster] placement read with zones off: %v", got)
	}

	g := newFixture(t)
	g.formedInZones(nil)
	g.rawEvents()
	bad := g.cachedStatefulSet().DeepCopy()
	bad.Annotations = map[string]string{AnnotationZoneLabel: "not a label!"}
	bad.ResourceVersion = bumpRV(bad.ResourceVersion)
	g.cache(bad)
	g.syncUntilQuiet(2)
	var warned []string
	for _, e := range g.rawEvents() {
		if strings.Contains(e, ReasonInvalidAnnotation) {
			warned = append(warned, e)
		}
	}
	if len(warned) != 1 || !strings.Contains(warned[0], AnnotationZoneLabel) || !strings.Contains(warned[0], DefaultZoneLabel) {
		t.Errorf("InvalidAnnotation events %q, want one naming %s and the default label", warned, AnnotationZoneLabel)
	}
}

// conflictOnce makes the first PutNodeDoc lose a race: another writer updates the doc first.
type conflictOnce struct {
	CouchAPI
	other *couch.Client
	puts  int
}

func (c *conflictOnce) PutNodeDoc(ctx context.Context, d couch.NodeDoc) (string, error) {
	c.puts++
	if c.puts == 1 {
		cur, err := c.other.GetNodeDoc(ctx, d.ID)
		if err != nil {
			return "", err
		}
		cur.Extra["racer"] = "was here"
		if _, err := c.other.PutNodeDoc(ctx, cur); err != nil {
			return "", err
		}
	}
	return c.CouchAPI.PutNodeDoc(ctx, d)
}

// TestSetZoneKeepsTheDocsOtherFields: SetZone is a read-modify-write of the _nodes doc with its _rev
// that keeps every other field (decom, unknown ones), retries a 409 once with a fresh revision, and
// writes nothing when the zone is already right.
func TestSetZoneKeepsTheDocsOtherFields(t *testing.T) {
	f := newFixture(t)
	f.formed3()
	ctx := f.ctx
	node := escapedNode(2)
	d, err := f.admin(0).GetNodeDoc(ctx, node)
	if err != nil {
		t.Fatal(err)
	}
	d.Decom, d.Extra = true, map[string]any{"custom": "kept"}
	if _, err := f.admin(0).PutNodeDoc(ctx, d); err != nil {
		t.Fatal(err)
	}
	base, err := couch.New(couch.Options{BaseURL: f.node(0).URL(), Username: "admin", Password: testPass, RetryMax: -1})
	if err != nil {
		t.Fatal(err)
	}
	api := &conflictOnce{CouchAPI: base, other: f.admin(1)}
	if err := setZone(ctx, api, node, "zone-c"); err != nil {
		t.Fatalf("SetZone: %v", err)
	}
	got, err := f.admin(0).GetNodeDoc(ctx, node)
	if err != nil {
		t.Fatal(err)
	}
	if got.Zone != "zone-c" || !got.Decom || got.Extra["custom"] != "kept" || got.Extra["racer"] != "was here" || api.puts != 2 {
		t.Errorf("after SetZone with one conflict: %+v (%d PUTs), want zone-c with decom, custom and racer kept, 2 PUTs", got, api.puts)
	}
	if err := setZone(ctx, api, node, "zone-c"); err != nil || api.puts != 2 {
		t.Errorf("repeated SetZone: %v, %d PUTs in all, want no new PUT", err, api.puts)
	}
	if err := setZone(ctx, api, "couchdb@gone.example", "zone-c"); err != nil {
		t.Errorf("SetZone of a node without a doc: %v, want nothing done", err)
	}
}

// TestApplySetPlacement: SetPlacement sets the member's [cluster] placement through the coordinator
// and deletes it for ""; deleting an unset rule is done already.
func TestApplySetPlacement(t *testing.T) {
	f := newFixture(t)
	f.formed3()
	st, sts := f.c.state(key), f.cachedStatefulSet()
	o := Observed{Namespace: testNS, StatefulSet: "db", Pods: map[int]*PodObs{}}
	for i := 0; i < 3; i++ {
		o.Pods[i] = podObs(f.cachedPod(fmt.Sprintf("db-%d", i)), i, 5984)
	}
	node := escapedNode(1)
	read := func() (string, error) { return f.admin(1).GetConfig(f.ctx, "_local", "cluster", "placement") }
	if err := f.c.apply(f.ctx, st, sts, o, Action{Kind: ActSetPlacement, Via: 0, Node: node, Text: "zone-a:1,zone-b:1"}); err != nil {
		t.Fatal(err)
	}
	if v, err := read(); err != nil || v != "zone-a:1,zone-b:1" {
		t.Errorf("db-1's placement %q, %v", v, err)
	}
	for i := range 2 {
		if err := f.c.apply(f.ctx, st, sts, o, Action{Kind: ActSetPlacement, Via: 0, Node: node}); err != nil {
			t.Fatalf("delete %d: %v", i, err)
		}
	}
	if _, err := read(); !couch.IsNotFound(err) {
		t.Errorf("db-1's placement after the delete: %v, want not found", err)
	}
	for _, c := range f.configCalls("placement") {
		if !strings.HasPrefix(c, http.MethodPut+" /_node/"+node) && !strings.HasPrefix(c, http.MethodDelete+" /_node/"+node) && !strings.HasPrefix(c, http.MethodGet) {
			t.Errorf("unexpected request %s", c)
		}
	}
}

// TestApplyBatchesEditsOfOneDatabase: consecutive copy edits of one database are one GET and one
// PUT of its map and one _sync_shards; a hook that stops the sync at the second edit lets only the
// first be written.
func TestApplyBatchesEditsOfOneDatabase(t *testing.T) {
	f := newFixture(t)
	f.formed3()
	f.createDB(0, "db1", 4, 2, 20)
	m, _ := f.node(0).ShardMap("db1")
	target := ""
	var free []string
	for i := 0; i < 3 && len(free) < 2; i++ {
		target = escapedNode(i)
		free = nil
		for _, rng := range m.Ranges() {
			if !m.HasCopy(rng, target) {
				free = append(free, rng)
			}
		}
	}
	if len(free) < 2 {
		t.Fatalf("no node lacks two ranges of db1: %v", m.ByRange)
	}
	st, sts := f.c.state(key), f.cachedStatefulSet()
	o := Observed{Namespace: testNS, StatefulSet: "db", Pods: map[int]*PodObs{0: podObs(f.cachedPod("db-0"), 0, 5984)}}
	plan := []Action{
		{Kind: ActAddCopy, Via: 0, DB: "db1", Range: free[0], Node: target, NodeCount: 2},
		{Kind: ActAddCopy, Via: 0, DB: "db1", Range: free[1], Node: target, NodeCount: 2},
		{Kind: ActSyncShards, Via: 0, DB: "db1"},
		{Kind: ActSyncShards, Via: 0, DB: "db1"},
	}
	f.rawEvents()
	f.resetCalls()
	if err := f.c.applyActions(f.ctx, key, st, sts, o, plan); err != nil {
		t.Fatal(err)
	}
	st.posts.wait()
	var calls []string
	for _, c := range f.couchCalls() {
		calls = append(calls, c.Method+" "+c.Path)
	}
	want := []string{"GET /_node/_local/_dbs/db1", "PUT /_node/_local/_dbs/db1", "GET /db1/_shards", "POST /db1/_sync_shards"}
	if diff := cmp.Diff(want, calls); diff != "" {
		t.Errorf("requests (-want +got):\n%s", diff)
	}
	m, _ = f.node(0).ShardMap("db1")
	if !m.HasCopy(free[0], target) || !m.HasCopy(free[1], target) {
		t.Errorf("map after the batch: %v", m.ByRange)
	}
	if n := count(f.events(), ReasonShardCopyAdded); n != 2 {
		t.Errorf("%d ShardCopyAdded events, want 2", n)
	}
	if got := f.series("actions_total")[`actions_total{action="AddCopy",result="success"}`]; got != 2 {
		t.Errorf("actions_total{AddCopy,success} = %v, want 2", got)
	}

	// Undo, then stop at the second edit: the first is written alone, nothing after it.
	for _, rng := range free[:2] {
		m.RemoveCopy(rng, target)
	}
	if _, err := f.admin(0).PutShardMap(f.ctx, m); err != nil {
		t.Fatal(err)
	}
	stop := fmt.Errorf("killed")
	f.c.cfg.BeforeAction = func(_ context.Context, _ cache.ObjectName, a Action) error {
		if a.Kind == ActAddCopy && a.Range == free[1] {
			return stop
		}
		return nil
	}
	if err := f.c.applyActions(f.ctx, key, st, sts, o, plan); err != stop {
		t.Fatalf("applyActions with the hook: %v, want the hook's error", err)
	}
	m, _ = f.node(0).ShardMap("db1")
	if !m.HasCopy(free[0], target) || m.HasCopy(free[1], target) {
		t.Errorf("map after a stop at the second edit: %v", m.ByRange)
	}
}

func TestUnderReplicatedMessage(t *testing.T) {
	o := Observed{Namespace: "prod", StatefulSet: "couch"}
	var sf []Shortfall
	for i := range 12 {
		sf = append(sf, Shortfall{DB: fmt.Sprintf("db%02d", i), N: 3 + i/11, Copies: 2, Members: 2})
	}
	p := underReplicated(o, sf)
	for _, want := range []string{"prod/couch has 2 members", "db00 (n=3)", "db09 (n=3)", "and 2 more", "at least 4 replicas", `"couchdb.io/n"`} {
		if !strings.Contains(p.Message, want) {
			t.Errorf("message does not say %q: %s", want, p.Message)
		}
	}
	if strings.Contains(p.Message, "db10") || p.Reason != ReasonUnderReplicated {
		t.Errorf("%s: %s", p.Reason, p.Message)
	}
	if again := underReplicated(o, sf); again != p {
		t.Errorf("the message changes between syncs: %q vs %q", again.Message, p.Message)
	}
}

// TestSyncWritesZonesAndPlacement: with members in three zones, the controller writes each zone on
// its member's _nodes doc and sets [cluster] placement to one copy per zone on every member; a
// database created afterwards through any member has one copy per range in each zone.
func TestSyncWritesZonesAndPlacement(t *testing.T) {
	f := newFixture(t)
	f.formedInZones(nil)
	f.forceShardRead()
	f.syncUntilQuiet(6)
	for i, z := range []string{"zone-a", "zone-b", "zone-c"} {
		d, err := f.admin(0).GetNodeDoc(f.ctx, escapedNode(i))
		if err != nil || d.Zone != z {
			t.Errorf("_nodes doc of db-%d: zone %q (%v), want %s", i, d.Zone, err, z)
		}
		if v, err := f.admin(i).GetConfig(f.ctx, "_local", "cluster", "placement"); err != nil || v != "zone-a:1,zone-b:1,zone-c:1" {
			t.Errorf("[cluster] placement of db-%d: %q (%v)", i, v, err)
		}
	}
	if err := f.admin(2).CreateDB(f.ctx, "zoned", 4, 0); err != nil {
		t.Fatal(err)
	}
	m, _ := f.node(0).ShardMap("zoned")
	for _, rng := range m.Ranges() {
		if len(m.ByRange[rng]) != 3 {
			t.Errorf("zoned/%s on %v, want one copy per zone", rng, m.ByRange[rng])
		}
	}
	if got := f.series("shard_ranges")[`shard_ranges{state="zone_violation"}`]; got != 0 {
		t.Errorf("shard_ranges{zone_violation} = %v", got)
	}
}

// TestJoinWritesTheZoneWithTheNodeDoc: with zones on, the sync that adds a node to _nodes also gives
// its doc the zone, as a second revision of the empty doc the node writes itself at boot (a first
// revision with the zone would be a conflicting branch). A node that comes back with a placement rule
// naming its zone then serves it at once, and creations through it do not fail.
func TestJoinWritesTheZoneWithTheNodeDoc(t *testing.T) {
	f := newFixture(t)
	f.formedInZones(nil)
	sts := statefulSet(4, nil)
	sts.ResourceVersion = "2"
	f.cache(sts)
	f.addNode(3, testPass)
	p := pod(3, true)
	p.Spec.NodeName = "node-c"
	f.cache(p)
	for i := 0; i < 5 && !slices.Contains(f.node(0).ClusterNodes(), escapedNode(3)); i++ {
		f.syncUntilQuiet(1)
	}
	d, err := f.admin(0).GetNodeDoc(f.ctx, escapedNode(3))
	if err != nil {
		t.Fatal(err)
	}
	if d.Zone != "zone-c" || !strings.HasPrefix(d.Rev, "2-") {
		t.Errorf("after the join, db-3's _nodes doc has zone %q at rev %s; want zone-c at the second revision", d.Zone, d.Rev)
	}
}

// TestSyncUnderReplicatedBelowN: a plain scale-down 3 -> 2 with n=3 databases is under-replicated
// (metric, one Warning, status, phase Degraded); lowering each database's n to 2 in its map, as the
// Warning says, clears it.
func TestSyncUnderReplicatedBelowN(t *testing.T) {
	f := newFixture(t)
	f.formed3()
	f.createDB(0, "db1", 2, 3, 10)
	f.events()
	sts := statefulSet(2, nil)
	sts.ResourceVersion = "2"
	f.cache(sts)
	f.uncache(f.cachedPod("db-2"))
	f.node(2).Stop()
	f.syncUntilQuiet(15)
	var under []string
	for _, e := range f.rawEvents() {
		if strings.HasPrefix(e, corev1.EventTypeWarning+" "+ReasonUnderReplicated+" ") {
			under = append(under, e)
		}
	}
	if len(under) != 1 || !strings.Contains(under[0], "db1 (n=3)") || !strings.Contains(under[0], "has 2 members") {
		t.Fatalf("UnderReplicated Warnings %q, want one naming db1 (n=3) and 2 members over 15 syncs", under)
	}
	st, _ := f.c.Cluster(testNS, "main")
	if st.Phase != PhaseDegraded || st.Shards.UnderReplicated == 0 || len(st.Shortfalls) == 0 {
		t.Errorf("status phase %s, shards %+v, shortfalls %v", st.Phase, st.Shards, st.Shortfalls)
	}
	if got := f.series("shard_ranges")[`shard_ranges{state="under_replicated"}`]; got == 0 {
		t.Error("shard_ranges{under_replicated} = 0")
	}
	// The fix the Warning names: lower n in each database's map document.
	for db := range f.maps(0) {
		m, err := f.admin(0).GetShardMap(f.ctx, db)
		if err != nil {
			t.Fatal(err)
		}
		if m.Extra == nil {
			m.Extra = map[string]any{}
		}
		m.Extra["couchdb.io/n"] = 2
		if _, err := f.admin(0).PutShardMap(f.ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	f.syncUntilQuiet(5)
	st, _ = f.c.Cluster(testNS, "main")
	if st.Phase != PhaseReady || st.Shards.UnderReplicated != 0 || len(st.Shortfalls) != 0 {
		t.Errorf("after lowering n: phase %s, shards %+v, shortfalls %v", st.Phase, st.Shards, st.Shortfalls)
	}
	if got := f.series("shard_ranges")[`shard_ranges{state="under_replicated"}`]; got != 0 {
		t.Errorf("shard_ranges{under_replicated} = %v after lowering n", got)
	}
}
