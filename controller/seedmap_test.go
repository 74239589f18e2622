package controller

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/couchdb-controller/couchdb-controller/couch"
)

// TestRebalanceOntoANodeWhoseDBsNeverCame: the cluster scales 3 -> 4 with couchdb.io/rebalance, and
// mem3's push of _dbs into the new node hangs (couchtest.Node.HoldDBs), as it once did for a minute
// on CouchDB 3.4.3. The new node knows no database, so CouchDB refuses every push into the copies
// the rebalance gives it (missing_target) and no post can fill them. The controller finds the copies
// without a file, copies each map the node lacks into its _dbs (new_edits=false, the revision
// kept), and the moves complete: the node holds its share of each database, full, while mem3's push
// into it is still held.
func TestRebalanceOntoANodeWhoseDBsNeverCame(t *testing.T) {
	f := newFixture(t)
	f.formed3()
	f.createDB(0, "db1", 2, 3, 30)
	f.converge(20, nil)
	sts := statefulSet(4, map[string]string{AnnotationRebalance: "true"})
	sts.ResourceVersion = "2"
	f.cache(sts)
	n3 := f.addNode(3, testPass)
	n3.HoldDBs(true)
	f.cache(pod(3, true))
	f.resetCalls()
	start := time.Now()
	f.converge(2000, nil)
	t.Logf("converged in %v", time.Since(start).Round(time.Millisecond))

	m, _ := f.node(0).ShardMap("db1")
	if got := len(m.ByNode[escapedNode(3)]); got != 1 && got != 2 {
		t.Fatalf("db-3 holds %d of db1's 6 copies after the rebalance, want 1 or 2: %v", got, m.ByNode)
	}
	for _, rng := range m.ByNode[escapedNode(3)] {
		shard := m.ShardName(rng)
		if got, want := copyTotal(f.node(3), shard), copyTotal(f.node(0), shard); got != want || want == 0 {
			t.Errorf("db1/%s on db-3 holds %d of %d documents", rng, got, want)
		}
	}
	if _, ok := f.node(3).ShardMap("db1"); !ok {
		t.Error("db-3's _dbs has no map of db1")
	}
	seeded := 0
	for _, c := range f.couchCalls() {
		if c.Method == http.MethodPut && strings.HasPrefix(c.Path, "/_node/_local/_dbs/") && strings.Contains(c.Query, "new_edits=false") {
			seeded++
		}
	}
	if seeded == 0 {
		t.Error("no map was copied with new_edits=false")
	}
}

// TestSeedShardMapKeepsTheRevision: a map copied into a node's _dbs keeps the revision it has on
// the node it came from, so that mem3's own push later finds the same revision and adds nothing.
func TestSeedShardMapKeepsTheRevision(t *testing.T) {
	f := newFixture(t)
	f.formed3()
	f.createDB(0, "db1", 2, 3, 0)
	n3 := f.addNode(3, testPass)
	n3.HoldDBs(true)
	m, err := f.admin(0).GetShardMap(f.ctx, "db1")
	if err != nil {
		t.Fatal(err)
	}
	c3 := f.admin(3)
	if _, err := c3.GetShardMap(f.ctx, "db1"); !couch.IsNotFound(err) {
		t.Fatalf("db-3 before the copy: %v, want not found", err)
	}
	if err := c3.SeedShardMap(f.ctx, m); err != nil {
		t.Fatal(err)
	}
	got, err := c3.GetShardMap(f.ctx, "db1")
	if err != nil || got.Rev != m.Rev {
		t.Fatalf("db-3 after the copy: rev %q, %v; want %q", got.Rev, err, m.Rev)
	}
}
