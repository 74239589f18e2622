package controller

import (
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/couchdb-controller/couchdb-controller/couch"
)

// TestPostRunsBesideTheSync: the _sync_shards after an edit that added copies waits for the shard
// cache beside the sync, which returns at once; the next sync records it as a sync of its database,
// unless the database was edited again meanwhile (the new copies may not have been listed when it
// posted), and a database with a post running gets no second one.
func TestPostRunsBesideTheSync(t *testing.T) {
	f := newFixture(t)
	f.formed3()
	f.createDB(0, "db1", 2, 2, 10)
	f.neverListing()
	m, _ := f.node(0).ShardMap("db1")
	var adds []Action
	for _, rng := range m.Ranges() {
		for i := range 3 {
			if n := escapedNode(i); !m.HasCopy(rng, n) {
				adds = append(adds, Action{Kind: ActAddCopy, Via: 0, DB: "db1", Range: rng, Node: n, NodeCount: 2})
				break
			}
		}
	}
	if len(adds) < 2 {
		t.Fatalf("db1 has no two ranges to add copies to: %v", m.ByRange)
	}
	st, sts := f.c.state(key), f.cachedStatefulSet()
	o := Observed{Namespace: testNS, StatefulSet: "db", Pods: map[int]*PodObs{0: podObs(f.cachedPod("db-0"), 0, 5984)}}
	post := Action{Kind: ActSyncShards, Via: 0, DB: "db1"}
	posts := func() int {
		n := 0
		for _, c := range f.couchCalls() {
			if c.Method == "POST" && c.Path == "/db1/_sync_shards" {
				n++
			}
		}
		return n
	}

	f.resetCalls()
	st.noteAdded("db1")
	start := time.Now()
	if err := f.c.applyActions(f.ctx, key, st, sts, o, []Action{adds[0], post}); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > listWait/2 {
		t.Errorf("applyActions took %v: it waited for the listing (%v) instead of leaving it to the post", took, listWait)
	}
	if !st.posts.isRunning("db1") {
		t.Fatal("no post of db1 is running")
	}
	// An edit of db1 while its post runs: no second post, and the running one counts for nothing.
	if err := f.c.applyActions(f.ctx, key, st, sts, o, []Action{adds[1], post}); err != nil {
		t.Fatal(err)
	}
	st.posts.wait()
	if n := posts(); n != 1 {
		t.Errorf("%d posts of db1, want 1 (none while one runs)", n)
	}
	f.c.collectPosts(f.ctx, st)
	if !st.unsynced["db1"] {
		t.Error("db1 counts as synced after a post that started before its last edit")
	}

	// A post with no edit after it counts.
	f.resetCalls()
	if err := f.c.applyActions(f.ctx, key, st, sts, o, []Action{{Kind: ActRemoveCopy, Via: 0, DB: "db1", Range: adds[0].Range, Node: adds[0].Node, NodeCount: 2}, adds[0], post}); err != nil {
		t.Fatal(err)
	}
	st.posts.wait()
	f.c.collectPosts(f.ctx, st)
	if n := posts(); n != 1 {
		t.Errorf("%d posts of db1, want 1", n)
	}
	if st.unsynced["db1"] {
		t.Error("db1 is still unsynced after a post with no edit after it")
	}

	// A post that finished, then an edit that added copies before any sync collected it: the
	// post counts for nothing.
	readd := []Action{{Kind: ActRemoveCopy, Via: 0, DB: "db1", Range: adds[1].Range, Node: adds[1].Node, NodeCount: 2}, adds[1]}
	if err := f.c.applyActions(f.ctx, key, st, sts, o, append(slices.Clone(readd), post)); err != nil {
		t.Fatal(err)
	}
	st.posts.wait()
	if err := f.c.applyActions(f.ctx, key, st, sts, o, readd); err != nil {
		t.Fatal(err)
	}
	f.c.collectPosts(f.ctx, st)
	if !st.unsynced["db1"] {
		t.Error("db1 counts as synced by a post that finished before its last edit")
	}
}

// TestHeldAddIsPostedWhenPlacementSaysSo: a held add (placement/held.go) is written with no post;
// its database is held, not unsynced, so no plan posts it but placement's; the post placement then
// plans waits for the node to list the held copy (one GET /{db}/_shards before the POST) and fills
// it.
func TestHeldAddIsPostedWhenPlacementSaysSo(t *testing.T) {
	f := newFixture(t)
	f.formed3()
	f.createDB(0, "db1", 1, 2, 10)
	m, _ := f.node(0).ShardMap("db1")
	rng := m.Ranges()[0]
	target := ""
	for i := range 3 {
		if n := escapedNode(i); !m.HasCopy(rng, n) {
			target = n
		}
	}
	st, sts := f.c.state(key), f.cachedStatefulSet()
	o := Observed{Namespace: testNS, StatefulSet: "db", Pods: map[int]*PodObs{0: podObs(f.cachedPod("db-0"), 0, 5984)}}
	calls := func() []string {
		var out []string
		for _, c := range f.couchCalls() {
			if c.Path == "/db1/_shards" || c.Path == "/db1/_sync_shards" {
				out = append(out, c.Method+" "+c.Path)
			}
		}
		return out
	}

	f.resetCalls()
	held := Action{Kind: ActAddCopy, Via: 0, DB: "db1", Range: rng, Node: target, NodeCount: 2, Held: true}
	if err := f.c.applyActions(f.ctx, key, st, sts, o, []Action{held}); err != nil {
		t.Fatal(err)
	}
	st.posts.wait()
	if got := calls(); len(got) != 0 {
		t.Errorf("a held add was posted: %v", got)
	}
	after, _ := f.node(0).ShardMap("db1")
	if !after.HasCopy(rng, target) {
		t.Fatalf("the held copy is not in the map: %v", after.ByRange)
	}
	maps := map[string]couch.ShardMap{"db1": after}
	if unsynced, held := pendingPosts(st, maps); !held["db1"] || len(unsynced) != 0 {
		t.Errorf("held %v, unsynced %v: want db1 held, not among the unsynced (which every plan posts)", held, unsynced)
	}

	f.resetCalls()
	if err := f.c.applyActions(f.ctx, key, st, sts, o, []Action{{Kind: ActSyncShards, Via: 0, DB: "db1"}}); err != nil {
		t.Fatal(err)
	}
	st.posts.wait()
	if diff := cmp.Diff([]string{"GET /db1/_shards", "POST /db1/_sync_shards"}, calls()); diff != "" {
		t.Errorf("the held copy's post (-want +got):\n%s", diff)
	}
	st.fills.look(time.Now(), &ShardObs{Maps: maps})
	if _, held := pendingPosts(st, maps); len(held) != 0 {
		t.Error("db1 is still held after its post")
	}
}
