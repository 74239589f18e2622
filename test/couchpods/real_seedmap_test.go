package couchpods

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/couchdb-controller/couchdb-controller/couch"
)

// TestRealSeededShardMapLetsPushesCreateTheCopy records, on two real CouchDB nodes (COUCHDB_REL),
// what the controller's seedMaps relies on (controller/seedmap.go). sd-1 is left out of sd-0's
// _nodes, so mem3's ring never brings it sd-0's _dbs: the state of a node whose _dbs push hung. A
// database on sd-0 gets a new copy on sd-1 in its map, and:
//   - a _sync_shards on sd-0 creates nothing on sd-1: the push fails with missing_target (sd-1's own
//     _dbs does not hold the database, mem3_util:get_or_create_db_int; the first post meets
//     noconnect, sd-0 not being connected to a node outside its _nodes, and brings the connection
//     up);
//   - PUT /_node/_local/_dbs/{db}?new_edits=false on sd-1 with sd-0's map stores it with sd-0's
//     revision;
//   - the next _sync_shards on sd-0 fills the copy on sd-1.
func TestRealSeededShardMapLetsPushesCreateTheCopy(t *testing.T) {
	const pw = "seed-pw-1"
	names := []string{"sd-0", "sd-1"}
	b := startRealPods(t, names, func(name string) *corev1.Pod { return realTestPod(name, "sd", pw) })
	ctx := context.Background()
	n0, n1 := b.Node("ns", "sd-0"), b.Node("ns", "sd-1")
	client := func(url string) *couch.Client {
		c, err := couch.New(couch.Options{BaseURL: url, Username: "admin", Password: pw, Timeout: 30 * time.Second, RetryMax: -1})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	c0, c1 := client(n0.URL()), client(n1.URL())
	const db, docs = "seeded", 20
	if err := c0.CreateDB(ctx, db, 1, 1); err != nil {
		t.Fatal(err)
	}
	if err := bulkDocs(ctx, n0, pw, db, docs); err != nil {
		t.Fatal(err)
	}
	m, err := c0.GetShardMap(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	rng := m.Ranges()[0]
	m.AddCopy(rng, n1.Name())
	if _, err := c0.PutShardMap(ctx, m); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "sd-0's shard cache lists the copy on sd-1", func() bool {
		s, err := c0.Shards(ctx, db)
		return err == nil && slices.Contains(s[rng], n1.Name())
	})
	shard := m.ShardName(rng)
	total := func() (int64, error) {
		info, err := c1.ShardCopyInfo(ctx, "_local", shard)
		return info.DocCount + info.DocDelCount, err
	}
	// sd-0 is not connected to sd-1 (not a member): the first push meets noconnect and the
	// connection comes up; the second reaches sd-1.
	for range 2 {
		if err := c0.SyncShards(ctx, db); err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * time.Second)
	}
	if got, err := total(); !couch.IsNotFound(err) {
		t.Fatalf("sd-1's copy 2 s after a post, its _dbs without the database: %d documents, %v; want not found", got, err)
	}
	missing := 0
	for _, l := range logLinesAbout(t, n0, db) {
		if strings.Contains(l, "missing_target") {
			missing++
		}
	}
	t.Logf("sd-0 logged %d missing_target lines about %s", missing, db)
	if missing == 0 {
		t.Error("sd-0 logged no missing_target for the push into sd-1")
	}

	if _, err := c1.GetShardMap(ctx, db); !couch.IsNotFound(err) {
		t.Fatalf("sd-1's _dbs before the copy: %v, want not found", err)
	}
	m, err = c0.GetShardMap(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	if err := c1.SeedShardMap(ctx, m); err != nil {
		t.Fatal(err)
	}
	got, err := c1.GetShardMap(ctx, db)
	if err != nil || got.Rev != m.Rev {
		t.Fatalf("sd-1's _dbs after the copy: rev %q, %v; want %q", got.Rev, err, m.Rev)
	}
	start := time.Now()
	if err := c0.SyncShards(ctx, db); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "sd-1's copy filled after the map was copied and posted again", func() bool {
		n, err := total()
		return err == nil && n == docs
	})
	t.Logf("sd-1's copy held %d documents %v after the post that followed the copy", docs, time.Since(start).Round(10*time.Millisecond))
}
