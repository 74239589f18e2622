package couchtest

import (
	"context"
	"testing"
	"time"

	"github.com/couchdb-controller/couchdb-controller/couch"
)

// TestPushIntoANodeWithoutTheDatabaseFails plays test/couchpods
// TestRealSeededShardMapLetsPushesCreateTheCopy (recorded on CouchDB 3.4.3): node3's _dbs never
// gets the maps (HoldDBs), so a _sync_shards creates nothing of a new copy on it (missing_target);
// a PUT of the map into its _dbs with new_edits=false keeps the revision, and the next post fills
// the copy.
func TestPushIntoANodeWithoutTheDatabaseFails(t *testing.T) {
	ctx := context.Background()
	_, nodes, clients := startCluster(t, 3, "any")
	nodes[2].HoldDBs(true)
	formCluster(t, nodes, clients)
	const db, docs = "seeded", 20
	if err := clients[0].CreateDB(ctx, db, 1, 1); err != nil {
		t.Fatal(err)
	}
	bulk(t, clients[0], db, docs, 10)
	m, err := clients[0].GetShardMap(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	rng := m.Ranges()[0]
	m.AddCopy(rng, nodes[2].Name())
	if _, err := clients[0].PutShardMap(ctx, m); err != nil {
		t.Fatal(err)
	}
	total := func() (int64, error) {
		info, err := clients[2].ShardCopyInfo(ctx, "_local", m.ShardName(rng))
		return info.DocCount + info.DocDelCount, err
	}
	if err := clients[0].SyncShards(ctx, db); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	if got, err := total(); !couch.IsNotFound(err) {
		t.Fatalf("node3's copy after a post, its _dbs without the database: %d documents, %v; want not found", got, err)
	}
	if _, err := clients[2].GetShardMap(ctx, db); !couch.IsNotFound(err) {
		t.Fatalf("node3's _dbs before the copy: %v, want not found", err)
	}
	m, err = clients[0].GetShardMap(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	if err := clients[2].SeedShardMap(ctx, m); err != nil {
		t.Fatal(err)
	}
	if got, err := clients[2].GetShardMap(ctx, db); err != nil || got.Rev != m.Rev {
		t.Fatalf("node3's _dbs after the copy: rev %q, %v; want %q", got.Rev, err, m.Rev)
	}
	if err := clients[0].SyncShards(ctx, db); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(2 * time.Second)
	for {
		n, err := total()
		if err == nil && n == docs {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("node3's copy after the map was copied and posted again: %d documents, %v; want %d", n, err, docs)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
