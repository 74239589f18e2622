package controller

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/couchdb-controller/couchdb-controller/couch"
	"github.com/couchdb-controller/couchdb-controller/couch/couchtest"
)

// Fixture tests of the shard placement apply paths (issue 5): c.sync against the emulator, with the
// shard maps, copies and document counts read back from the emulated nodes.

// createDB creates a clustered database through the node of pod ordinal ord and writes docs documents.
func (f *fixture) createDB(ord int, db string, q, n, docs int) {
	f.t.Helper()
	if err := f.admin(ord).CreateDB(f.ctx, db, q, n); err != nil {
		f.t.Fatal(err)
	}
	f.writeDocs(ord, db, "doc", docs)
}

// writeDocs writes docs documents named prefix-NNN to db through the node of pod ordinal ord.
func (f *fixture) writeDocs(ord int, db, prefix string, docs int) {
	f.t.Helper()
	if docs == 0 {
		return
	}
	var body struct {
		Docs []map[string]any `json:"docs"`
	}
	for i := 0; i < docs; i++ {
		body.Docs = append(body.Docs, map[string]any{"_id": fmt.Sprintf("%s-%03d", prefix, i), "v": i})
	}
	raw, _ := json.Marshal(body)
	req, err := http.NewRequestWithContext(f.ctx, http.MethodPost, f.node(ord).URL()+"/"+db+"/_bulk_docs", bytes.NewReader(raw))
	if err != nil {
		f.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.SetBasicAuth("admin", testPass)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		f.t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		f.t.Fatalf("_bulk_docs to %s: %s", db, resp.Status)
	}
}

// maps reads every database's shard map from the node of pod ordinal ord.
func (f *fixture) maps(ord int) map[string]couch.ShardMap {
	f.t.Helper()
	dbs, err := f.admin(ord).AllDBs(f.ctx)
	if err != nil {
		f.t.Fatal(err)
	}
	out := map[string]couch.ShardMap{}
	for _, db := range dbs {
		m, ok := f.node(ord).ShardMap(db)
		if !ok {
			f.t.Fatalf("no shard map of %s on db-%d", db, ord)
		}
		out[db] = m
	}
	return out
}

// copyTotal is doc_count + doc_del_count of a node's local copy of shard, -1 when it has none.
func copyTotal(n *couchtest.Node, shard string) int64 {
	docs, del, ok := n.CopyDocCount(shard)
	if !ok {
		return -1
	}
	return docs + del
}

// removal is what the emulated nodes held when the controller was about to drop a shard copy.
type removal struct {
	DB, Range, Node string
	Source          int64            // documents on the copy being dropped
	Others          map[string]int64 // documents on each other copy in the map
}

// recordRemovals makes the fixture note the document counts of every copy of a range just before a
// RemoveCopy is applied: a copy may only be dropped once the others hold at least what it holds.
func (f *fixture) recordRemovals(out *[]removal) {
	f.beforeAction = func(a Action) error {
		if a.Kind != ActRemoveCopy {
			return nil
		}
		m, ok := f.node(0).ShardMap(a.DB)
		if !ok {
			return fmt.Errorf("test: no map of %s", a.DB)
		}
		shard := m.ShardName(a.Range)
		r := removal{DB: a.DB, Range: a.Range, Node: a.Node, Source: copyTotal(f.network.Node(a.Node), shard), Others: map[string]int64{}}
		for _, n := range m.ByRange[a.Range] {
			if n != a.Node {
				r.Others[n] = copyTotal(f.network.Node(n), shard)
			}
		}
		*out = append(*out, r)
		return nil
	}
}

// actionsApplied is the sum of actions_total.
func (f *fixture) actionsApplied() float64 {
	sum := 0.0
	for _, v := range f.series("actions_total") {
		sum += v
	}
	return sum
}

// converge runs syncs until one applies nothing while the phase is Ready, at most max of them. After
// each sync, step (if set) plays the rest of the cluster: kubelet, StatefulSet controller. It
// returns the number of syncs.
func (f *fixture) converge(max int, step func()) int {
	f.t.Helper()
	for i := 1; i <= max; i++ {
		before := f.actionsApplied()
		if err := f.c.sync(f.ctx, key); err != nil {
			f.t.Fatalf("sync %d: %v", i, err)
		}
		if step != nil {
			step()
		}
		if st, _ := f.c.Cluster(testNS, "main"); st.Phase == PhaseReady && f.actionsApplied() == before {
			return i
		}
		time.Sleep(5 * time.Millisecond) // internal replication runs on timers (5 ms after _sync_shards)
	}
	st, _ := f.c.Cluster(testNS, "main")
	f.t.Fatalf("not converged after %d syncs: phase %s, waiting %q, warnings %q", max, st.Phase, st.Waiting, st.Warnings)
	return max
}

// copiesOn counts the copies node holds over all maps.
func copiesOn(maps map[string]couch.ShardMap, node string) int {
	n := 0
	for _, m := range maps {
		n += len(m.ByNode[node])
	}
	return n
}

func totalRanges(maps map[string]couch.ShardMap) int {
	n := 0
	for _, m := range maps {
		n += len(m.ByRange)
	}
	return n
}

// checkRemovals asserts that every copy was dropped only after every other copy of its range held at
// least its documents, and that the check was not vacuous for db.
func checkRemovals(t *testing.T, removals []removal, db string) {
	t.Helper()
	withDocs := 0
	for _, r := range removals {
		for n, c := range r.Others {
			if c < r.Source {
				t.Errorf("copy of %s/%s on %s was dropped while %s held %d of its %d documents", r.DB, r.Range, r.Node, n, c, r.Source)
			}
		}
		if r.DB == db && r.Source > 0 {
			withDocs++
		}
	}
	if withDocs == 0 {
		t.Errorf("no removal of a %s copy that held documents: %+v", db, removals)
	}
}

// TestSyncScaleDownMovesCopies drains a 4-node cluster to 3, once through couchdb.io/target-replicas
// (maintenance mode, move, remove from _nodes, lower spec.replicas) and once by a plain scale-down
// whose departed node is healed away; both must re-create every copy the fourth node held before
// dropping it, and end with shard maps and _nodes that reference only the three staying members.
func TestSyncScaleDownMovesCopies(t *testing.T) {
	cases := []struct {
		name string
		// start changes the cluster; step runs after each sync (the rest of Kubernetes).
		start, step func(f *fixture, seen map[string]bool)
		events      func(k int) map[string]int
		kube        []string
		actions     func(k int) map[string]float64
	}{{
		name: "target-replicas drains the highest ordinal",
		start: func(f *fixture, _ map[string]bool) {
			sts := statefulSet(4, map[string]string{AnnotationTargetReplicas: "3"})
			sts.ResourceVersion = "2"
			f.cache(sts)
		},
		step: func(f *fixture, seen map[string]bool) {
			if f.series("node_state")[`node_state{pod="db-3",state="draining"}`] == 1 {
				seen["node_state draining"] = true
			}
			if mode := f.node(3).MaintenanceMode(); (mode == "nolb" || mode == "true") && !seen["maintenance"] {
				seen["maintenance"] = true
				// Maintenance mode fails /_up on purpose, so the kubelet marks the pod not ready.
				f.updatePod("db-3", func(p *corev1.Pod) {
					for i := range p.Status.Conditions {
						if p.Status.Conditions[i].Type == corev1.ContainersReady {
							p.Status.Conditions[i].Status = corev1.ConditionFalse
						}
					}
				})
			}
			if *f.cachedStatefulSet().Spec.Replicas == 3 && !seen["pod deleted"] {
				seen["pod deleted"] = true
				// The StatefulSet controller deletes the pod the scale-down left over.
				f.uncache(f.cachedPod("db-3"))
				f.node(3).Stop()
			}
		},
		events: func(k int) map[string]int {
			return map[string]int{ReasonDraining: 1, ReasonShardCopyAdded: k, ReasonShardCopyRemoved: k, ReasonNodeRemoved: 1, ReasonScaledDown: 1}
		},
		kube: []string{"patch pods/status ns/db-3 couchdb.io/member=False", "update statefulsets/scale ns/db replicas=3"},
		actions: func(k int) map[string]float64 {
			return map[string]float64{
				`actions_total{action="SetDecom",result="success"}`:           1,
				`actions_total{action="SetMaintenance",result="success"}`:     1,
				`actions_total{action="SetMemberCondition",result="success"}`: 1,
				`actions_total{action="AddCopy",result="success"}`:            float64(k),
				`actions_total{action="RemoveCopy",result="success"}`:         float64(k),
				`actions_total{action="RemoveNode",result="success"}`:         1,
				`actions_total{action="ScaleDown",result="success"}`:          1,
				`shard_moves_total{result="added"}`:                           float64(k),
				`shard_moves_total{result="removed"}`:                         float64(k),
			}
		},
	}, {
		name: "plain scale-down heals the departed node's copies",
		start: func(f *fixture, _ map[string]bool) {
			sts := statefulSet(3, nil)
			sts.ResourceVersion = "2"
			f.cache(sts)
			f.uncache(f.cachedPod("db-3"))
			f.node(3).Stop()
		},
		events: func(k int) map[string]int {
			return map[string]int{ReasonShardCopyAdded: k, ReasonShardCopyRemoved: k, ReasonNodeRemoved: 1}
		},
		actions: func(k int) map[string]float64 {
			return map[string]float64{
				`actions_total{action="AddCopy",result="success"}`:    float64(k),
				`actions_total{action="RemoveCopy",result="success"}`: float64(k),
				`actions_total{action="RemoveNode",result="success"}`: 1,
				`actions_total{action="SetDecom",result="success"}`:   1,
				`shard_moves_total{result="added"}`:                   float64(k),
				`shard_moves_total{result="removed"}`:                 float64(k),
			}
		},
	}}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			var removals []removal
			f.recordRemovals(&removals)
			f.formedN(4, true)
			f.createDB(0, "data", 2, 3, 40)
			before := f.maps(0)
			k := copiesOn(before, nodeName(3))
			if k == 0 || len(before["data"].ByNode[nodeName(3)]) == 0 {
				t.Fatalf("fixture: db-3 holds no copy of data; maps %+v", before)
			}
			f.events()
			f.resetCalls()
			f.client.ClearActions()
			metricsBefore := f.series("actions_total", "shard_moves_total", "syncs_total")

			seen := map[string]bool{}
			tc.start(f, seen)
			if err := f.c.sync(f.ctx, key); err != nil {
				t.Fatal(err)
			}
			// The first sync sees the fourth node's ranges short of a copy on the staying members.
			want := map[string]float64{`shard_ranges{state="healthy"}`: float64(totalRanges(before) - k),
				`shard_ranges{state="under_replicated"}`: float64(k), `shard_ranges{state="unavailable"}`: 0, `shard_ranges{state="zone_violation"}`: 0}
			if diff := cmp.Diff(want, f.series("shard_ranges")); diff != "" {
				t.Errorf("shard_ranges after the first sync (-want +got):\n%s", diff)
			}
			step := func() {
				if tc.step != nil {
					tc.step(f, seen)
				}
			}
			step()
			syncs := 1 + f.converge(300, step)

			// Each copy was dropped only after the others had caught up.
			if len(removals) != k {
				t.Errorf("%d copies removed, want %d (those db-3 held)", len(removals), k)
			}
			for _, r := range removals {
				if r.Node != nodeName(3) {
					t.Errorf("removed a copy on %s, a staying member: %+v", r.Node, r)
				}
			}
			checkRemovals(t, removals, "data")

			// Maps and _nodes reference only the staying members; every range is back to n=3 copies,
			// each holding every document.
			after := f.maps(0)
			staying := names(0, 1, 2)
			for db, m := range after {
				for _, rng := range m.Ranges() {
					if diff := cmp.Diff(staying, sortedCopy(m.ByRange[rng])); diff != "" {
						t.Errorf("%s/%s copies (-want +got):\n%s", db, rng, diff)
					}
					for _, n := range m.ByRange[rng] {
						if got, want := copyTotal(f.network.Node(n), m.ShardName(rng)), copyTotal(f.network.Node(nodeName(3)), before[db].ShardName(rng)); before[db].HasCopy(rng, nodeName(3)) && got < want {
							t.Errorf("%s/%s on %s holds %d documents, the drained copy held %d", db, rng, n, got, want)
						}
					}
				}
			}
			if info, err := f.admin(0).DBInfo(f.ctx, "data"); err != nil || info.DocCount != 40 {
				t.Errorf("data after the drain: %+v, %v; want 40 documents", info, err)
			}
			if diff := cmp.Diff(staying, sortedCopy(f.node(0).ClusterNodes())); diff != "" {
				t.Errorf("_nodes (-want +got):\n%s", diff)
			}

			gotEvents := countReasons(f.events())
			if diff := cmp.Diff(tc.events(k), gotEvents); diff != "" {
				t.Errorf("events by reason (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.kube, f.kubeActions()); diff != "" {
				t.Errorf("Kubernetes actions (-want +got):\n%s", diff)
			}
			d := delta(metricsBefore, f.series("actions_total", "shard_moves_total", "syncs_total"))
			if got := d[`actions_total{action="SyncShards",result="success"}`]; got < float64(k) {
				t.Errorf("SyncShards applied %v times, want at least one per added copy (%d)", got, k)
			}
			delete(d, `actions_total{action="SyncShards",result="success"}`)
			// Fill fences come and go with the syncs' timing; every one of them must have ended.
			fence, unfence := `actions_total{action="FenceTarget",result="success"}`, `actions_total{action="ClearMaintenance",result="success"}`
			if d[fence] != d[unfence] {
				t.Errorf("%v fill fences set, %v cleared", d[fence], d[unfence])
			}
			delete(d, fence)
			delete(d, unfence)
			for ord := range staying {
				if mode := f.node(ord).MaintenanceMode(); mode == "true" || mode == "nolb" {
					t.Errorf("db-%d is left in maintenance mode", ord)
				}
			}
			wantDelta := tc.actions(k)
			wantDelta[`syncs_total{result="success"}`] = float64(syncs)
			if diff := cmp.Diff(wantDelta, d); diff != "" {
				t.Errorf("counter increases (-want +got):\n%s", diff)
			}
			wantGauges := map[string]float64{
				`shard_ranges{state="healthy"}`: float64(totalRanges(after)), `shard_ranges{state="under_replicated"}`: 0, `shard_ranges{state="unavailable"}`: 0, `shard_ranges{state="zone_violation"}`: 0,
				`cluster_nodes{kind="desired"}`: 3, `cluster_nodes{kind="member"}`: 3, `cluster_nodes{kind="reachable"}`: 3,
				`node_state{pod="db-0",state="member"}`: 1, `node_state{pod="db-1",state="member"}`: 1, `node_state{pod="db-2",state="member"}`: 1,
			}
			if diff := cmp.Diff(wantGauges, f.series("shard_ranges", "cluster_nodes", "node_state")); diff != "" {
				t.Errorf("gauges (-want +got):\n%s", diff)
			}
			if st, _ := f.c.Cluster(testNS, "main"); st.Replicas != 3 || len(st.Members) != 3 || st.Shards != (ShardHealth{Healthy: totalRanges(after)}) {
				t.Errorf("status %+v", st)
			}
			if tc.step != nil {
				for _, s := range []string{"node_state draining", "maintenance", "pod deleted"} {
					if !seen[s] {
						t.Errorf("never saw %s", s)
					}
				}
			}
		})
	}
}

// TestSyncReplicateCreatesMissingDB: couchdb.io/replicate names a database that does not exist; it
// is created, through the coordinator, with a copy of every range on every member.
func TestSyncReplicateCreatesMissingDB(t *testing.T) {
	f := newFixture(t)
	f.formed3()
	f.events()
	f.resetCalls()
	f.client.ClearActions()
	before := f.series("actions_total", "shard_moves_total")
	sts := statefulSet(3, map[string]string{AnnotationReplicate: "appdb"})
	sts.ResourceVersion = "2"
	f.cache(sts)
	f.converge(20, nil)

	m, ok := f.node(0).ShardMap("appdb")
	if !ok {
		t.Fatal("appdb was not created")
	}
	for _, rng := range m.Ranges() {
		if diff := cmp.Diff(names(0, 1, 2), sortedCopy(m.ByRange[rng])); diff != "" {
			t.Errorf("appdb/%s copies (-want +got):\n%s", rng, diff)
		}
	}
	if diff := cmp.Diff([]string{"10.0.0.1 PUT /appdb"}, f.couchWriteCalls()); diff != "" {
		t.Errorf("CouchDB writes (-want +got):\n%s", diff)
	}
	want := []string{"Normal ShardCopyAdded Created database appdb with a copy on each of 3 members (couchdb.io/replicate)"}
	if diff := cmp.Diff(want, f.rawEvents()); diff != "" {
		t.Errorf("events (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(map[string]float64{`actions_total{action="CreateDB",result="success"}`: 1},
		delta(before, f.series("actions_total", "shard_moves_total"))); diff != "" {
		t.Errorf("counter increases (-want +got):\n%s", diff)
	}
	if got := f.series("shard_ranges"); got[`shard_ranges{state="healthy"}`] != float64(totalRanges(f.maps(0))) || got[`shard_ranges{state="under_replicated"}`] != 0 {
		t.Errorf("shard_ranges %v", got)
	}
	if got := f.kubeActions(); len(got) != 0 {
		t.Errorf("Kubernetes actions: %v", got)
	}
}

// TestSyncReplicateCopiesToJoinedNode: a node that joins a cluster with couchdb.io/replicate gets a
// copy of every range of the replicated database (AddCopy), filled by _sync_shards; nothing is removed.
func TestSyncReplicateCopiesToJoinedNode(t *testing.T) {
	f := newFixture(t)
	f.formed3()
	sts := statefulSet(3, map[string]string{AnnotationReplicate: "appdb"})
	sts.ResourceVersion = "2"
	f.cache(sts)
	f.converge(20, nil)
	f.writeDocs(0, "appdb", "doc", 30)
	f.events()
	f.resetCalls()
	f.client.ClearActions()
	before := f.series("actions_total", "shard_moves_total")

	sts = statefulSet(4, map[string]string{AnnotationReplicate: "appdb"})
	sts.ResourceVersion = "3"
	f.cache(sts)
	f.addNode(3, testPass)
	f.cache(pod(3, true))
	f.converge(50, nil)

	m, _ := f.node(0).ShardMap("appdb")
	var wantEvents []string
	for _, rng := range m.Ranges() {
		if diff := cmp.Diff(names(0, 1, 2, 3), sortedCopy(m.ByRange[rng])); diff != "" {
			t.Errorf("appdb/%s copies (-want +got):\n%s", rng, diff)
		}
		wantEvents = append(wantEvents, fmt.Sprintf("Normal ShardCopyAdded Added a copy of appdb range %s on %s", rng, nodeName(3)))
	}
	var got []string
	for _, e := range f.rawEvents() {
		if !strings.Contains(e, " "+ReasonNodeJoined+" ") && !dayTwoCopyEvent(e, "db-3") {
			got = append(got, e)
		}
	}
	sort.Strings(got)
	if diff := cmp.Diff(wantEvents, got); diff != "" {
		t.Errorf("events besides NodeJoined (-want +got):\n%s", diff)
	}
	// The new copies fill only through _sync_shards (no document was written since).
	err := wait.PollUntilContextTimeout(f.ctx, 5*time.Millisecond, 5*time.Second, true, func(context.Context) (bool, error) {
		for _, rng := range m.Ranges() {
			if copyTotal(f.node(3), m.ShardName(rng)) < copyTotal(f.node(0), m.ShardName(rng)) {
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		for _, rng := range m.Ranges() {
			t.Errorf("appdb/%s: db-3 holds %d documents, db-0 %d", rng, copyTotal(f.node(3), m.ShardName(rng)), copyTotal(f.node(0), m.ShardName(rng)))
		}
	}
	syncShards := 0
	for _, c := range f.couchCalls() {
		if c.Method == http.MethodPost && c.Path == "/appdb/_sync_shards" {
			syncShards++
		}
		if c.Method == http.MethodPut && strings.HasPrefix(c.Path, "/_node/_local/_dbs/") && c.Path != "/_node/_local/_dbs/appdb" {
			t.Errorf("a database not named in %s was changed: %s", AnnotationReplicate, c)
		}
	}
	if syncShards == 0 {
		t.Error("no POST /appdb/_sync_shards")
	}
	d := delta(before, f.series("actions_total", "shard_moves_total"))
	if d[`actions_total{action="SyncShards",result="success"}`] != float64(syncShards) {
		t.Errorf("actions_total SyncShards %v, requests %d", d[`actions_total{action="SyncShards",result="success"}`], syncShards)
	}
	delete(d, `actions_total{action="SyncShards",result="success"}`)
	dropDayTwoCopies(d) // the joined node gets the members' uuid, secret and admin hash
	q := float64(len(m.Ranges()))
	want := map[string]float64{
		`actions_total{action="AddNode",result="success"}`: 1,
		`actions_total{action="AddCopy",result="success"}`: q,
		`shard_moves_total{result="added"}`:                q,
	}
	if diff := cmp.Diff(want, d); diff != "" {
		t.Errorf("counter increases (-want +got):\n%s", diff)
	}
}

// TestSyncDataAtRisk: a plain scale-down takes away the only node holding a database with n=1. The
// database is frozen: no shard-map write, the departed node stays in _nodes, one DataAtRisk Warning
// names the database and its ranges; scaling back up brings the copies back.
func TestSyncDataAtRisk(t *testing.T) {
	f := newFixture(t)
	f.formed3()
	if err := f.admin(0).CreateDB(f.ctx, "solo", 2, 1); err != nil {
		t.Fatal(err)
	}
	// Put every range of solo on db-2 alone, as an earlier placement might have.
	m, err := f.admin(0).GetShardMap(f.ctx, "solo")
	if err != nil {
		t.Fatal(err)
	}
	for _, rng := range m.Ranges() {
		m.AddCopy(rng, nodeName(2))
		for _, n := range append([]string(nil), m.ByRange[rng]...) {
			if n != nodeName(2) {
				m.RemoveCopy(rng, n)
			}
		}
	}
	if _, err := f.admin(0).PutShardMap(f.ctx, m); err != nil {
		t.Fatal(err)
	}
	f.writeDocs(0, "solo", "doc", 10)
	soloBefore, _ := f.node(0).ShardMap("solo")
	ranges := soloBefore.Ranges()
	f.events()
	f.resetCalls()
	f.client.ClearActions()
	before := f.series("actions_total")

	sts := statefulSet(2, nil)
	sts.ResourceVersion = "2"
	f.cache(sts)
	f.uncache(f.cachedPod("db-2"))
	f.node(2).Stop()
	f.syncUntilQuiet(20)

	var atRisk, under []string
	for _, e := range f.rawEvents() {
		switch {
		case strings.HasPrefix(e, corev1.EventTypeWarning+" "+ReasonDataAtRisk+" "):
			atRisk = append(atRisk, e)
		case strings.HasPrefix(e, corev1.EventTypeWarning+" "+ReasonUnderReplicated+" "):
			// 2 members for n=3 system databases: honest, and raised once.
			under = append(under, e)
		case strings.HasPrefix(e, corev1.EventTypeNormal+" "+ReasonShardCopyRemoved+" ") && !strings.Contains(e, "solo"):
			// Databases with live copies elsewhere are still healed.
		default:
			t.Errorf("unexpected event %q", e)
		}
	}
	if len(atRisk) != 1 {
		t.Fatalf("DataAtRisk Warnings %q, want one over 20 syncs", atRisk)
	}
	if len(under) != 1 || !strings.Contains(under[0], "_users (n=3)") {
		t.Errorf("UnderReplicated Warnings %q, want one naming _users (n=3) over 20 syncs", under)
	}
	for _, s := range append([]string{"solo", "scale the StatefulSet back up"}, ranges...) {
		if !strings.Contains(atRisk[0], s) {
			t.Errorf("the Warning does not mention %q: %s", s, atRisk[0])
		}
	}
	for _, c := range f.couchCalls() {
		if c.Method != http.MethodGet && strings.Contains(c.Path, "solo") || c.Method == http.MethodDelete {
			t.Errorf("write to the frozen database, or a reference deleted: %s", c)
		}
	}
	soloAfter, _ := f.node(0).ShardMap("solo")
	if diff := cmp.Diff(soloBefore, soloAfter); diff != "" {
		t.Errorf("solo's shard map changed (-before +after):\n%s", diff)
	}
	if diff := cmp.Diff(names(0, 1, 2), sortedCopy(f.node(0).ClusterNodes())); diff != "" {
		t.Errorf("_nodes (-want +got): every reference must be kept\n%s", diff)
	}
	if d := delta(before, f.series("actions_total")); d[`actions_total{action="RemoveNode",result="success"}`] != 0 {
		t.Errorf("RemoveNode applied: %v", d)
	}
	if got := f.series("shard_ranges")[`shard_ranges{state="unavailable"}`]; got != float64(len(ranges)) {
		t.Errorf("shard_ranges{unavailable} = %v, want %d", got, len(ranges))
	}
	st, _ := f.c.Cluster(testNS, "main")
	if st.Shards.Unavailable != len(ranges) || !strings.Contains(strings.Join(st.Warnings, "\n"), "solo") {
		t.Errorf("status %+v", st)
	}
	if got := f.kubeActions(); len(got) != 0 {
		t.Errorf("Kubernetes actions: %v", got)
	}
	t.Run("phase is Degraded", func(t *testing.T) {
		if st.Phase != PhaseDegraded {
			t.Errorf("phase %s with data at risk, want %s", st.Phase, PhaseDegraded)
		}
	})

	// Scaling back up brings db-2 and its copies back.
	sts = statefulSet(3, nil)
	sts.ResourceVersion = "3"
	f.cache(sts)
	if err := f.node(2).Start(); err != nil {
		t.Fatal(err)
	}
	p := pod(2, true)
	p.UID, p.ResourceVersion = "uid-2-new", "2"
	f.cache(p)
	f.converge(50, nil)
	if info, err := f.admin(0).DBInfo(f.ctx, "solo"); err != nil || info.DocCount != 10 {
		t.Errorf("solo after scaling back up: %+v, %v; want 10 documents", info, err)
	}
	soloAfter, _ = f.node(0).ShardMap("solo")
	if diff := cmp.Diff(soloBefore, soloAfter); diff != "" {
		t.Errorf("solo's shard map changed (-before +after):\n%s", diff)
	}
	if ev := countReasons(f.events()); ev[ReasonNodeRemoved] != 0 || ev[ReasonDataAtRisk] != 0 {
		t.Errorf("events after scaling back up: %v", ev)
	}
	t.Run("shard health is current once Ready", func(t *testing.T) {
		want := map[string]float64{`shard_ranges{state="healthy"}`: float64(totalRanges(f.maps(0))), `shard_ranges{state="under_replicated"}`: 0, `shard_ranges{state="unavailable"}`: 0, `shard_ranges{state="zone_violation"}`: 0}
		if diff := cmp.Diff(want, f.series("shard_ranges")); diff != "" {
			t.Errorf("shard_ranges once Ready again (-want +got):\n%s", diff)
		}
		if st, _ := f.c.Cluster(testNS, "main"); st.Shards.Unavailable != 0 {
			t.Errorf("status shards %+v once Ready again", st.Shards)
		}
	})
}
