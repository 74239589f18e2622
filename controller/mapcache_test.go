package controller

import (
	"context"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/couchdb-controller/couchdb-controller/couch"
)

// sinceRecorder records the since of every _dbs changes read, and can make the node's answer go back
// in time (a different _dbs file behind the same pod identity).
type sinceRecorder struct {
	CouchAPI
	sinces  []string
	rewound bool
}

func (r *sinceRecorder) ShardMapsSince(ctx context.Context, since string) (couch.ShardMapChanges, error) {
	r.sinces = append(r.sinces, since)
	ch, err := r.CouchAPI.ShardMapsSince(ctx, since)
	if r.rewound && since != "0" {
		ch.LastSeq = "1"
	}
	return ch, err
}

// TestReadShardMapsIncrementally: the maps are read in one request, then only what changed since,
// and the result is always exactly what the node's _dbs holds, database by database.
func TestReadShardMapsIncrementally(t *testing.T) {
	f := newFixture(t)
	f.formed3()
	admin := f.admin(0)
	ctx := context.Background()
	for _, db := range []string{"a", "b"} {
		if err := admin.CreateDB(ctx, db, 2, 2); err != nil {
			t.Fatal(err)
		}
	}
	coord := &NodeObs{Name: f.node(0).Name()}
	st := newClusterState()
	now := time.Unix(1000, 0)
	f.c.cfg.Now = func() time.Time { return now }
	rec := &sinceRecorder{CouchAPI: admin}

	var previous map[string]couch.ShardMap
	for i, step := range []struct {
		name     string
		change   func()
		identity string
		full     bool
	}{
		{name: "first read", identity: "uid-1/10.0.0.1/0", full: true},
		{name: "nothing changed", identity: "uid-1/10.0.0.1/0"},
		{name: "a copy added to a", identity: "uid-1/10.0.0.1/0", change: func() {
			m, err := admin.GetShardMap(ctx, "a")
			if err != nil {
				t.Fatal(err)
			}
			rng := m.Ranges()[0]
			for _, n := range f.node(0).ClusterNodes() {
				if !m.HasCopy(rng, n) {
					m.ByRange[rng] = append(m.ByRange[rng], n)
					m.ByNode[n] = append(m.ByNode[n], rng)
					m.Changelog = append(m.Changelog, []string{"add", rng, n})
					break
				}
			}
			if _, err := admin.PutShardMap(ctx, m); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "b deleted, c created", identity: "uid-1/10.0.0.1/0", change: func() {
			req, _ := http.NewRequest(http.MethodDelete, f.node(0).URL()+"/b", nil)
			req.SetBasicAuth("admin", testPass)
			resp, err := http.DefaultClient.Do(req)
			if err != nil || resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusAccepted {
				t.Fatalf("DELETE /b: %v %v", resp, err)
			}
			resp.Body.Close()
			if err := admin.CreateDB(ctx, "c", 1, 3); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "the coordinator's container restarted", identity: "uid-1/10.0.0.1/1", full: true},
		{name: "ten minutes of incremental reads", identity: "uid-1/10.0.0.1/1", full: true, change: func() { now = now.Add(mapsFullRead) }},
		{name: "the node's _dbs went back in time", identity: "uid-1/10.0.0.1/1", change: func() { rec.rewound = true }},
		{name: "read again after the rewind", identity: "uid-1/10.0.0.1/1", change: func() { rec.rewound = false }},
	} {
		if step.change != nil {
			step.change()
		}
		var before map[string]couch.ShardMap
		if previous != nil {
			before = map[string]couch.ShardMap{}
			for db, m := range previous {
				before[db] = m
			}
		}
		rec.sinces = nil
		dbs, maps, err := f.c.readShardMaps(ctx, st, rec, coord, step.identity)
		if err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		wantDBs, err := admin.AllDBs(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(dbs, wantDBs) {
			t.Errorf("%s: databases %v, _all_dbs says %v", step.name, dbs, wantDBs)
		}
		for _, db := range wantDBs {
			want, err := admin.GetShardMap(ctx, db)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(want, maps[db]); diff != "" {
				t.Errorf("%s: map of %s (-node +read):\n%s", step.name, db, diff)
			}
		}
		first := rec.sinces[0]
		if full := first == "0"; full != step.full && step.name != "the node's _dbs went back in time" {
			t.Errorf("%s: read since %v, want a full read: %v", step.name, rec.sinces, step.full)
		}
		if step.name == "the node's _dbs went back in time" && !slices.Equal(rec.sinces[1:], []string{"0"}) {
			t.Errorf("%s: read since %v, want the incremental read then a full one", step.name, rec.sinces)
		}
		if i > 0 && len(rec.sinces) == 1 && !step.full && first == "0" {
			t.Errorf("%s: incremental read asked since 0", step.name)
		}
		// The maps handed out before are the caller's to keep: a later read never changes them.
		if before != nil {
			if diff := cmp.Diff(before, previous); diff != "" {
				t.Errorf("%s: the previous sync's maps changed under it:\n%s", step.name, diff)
			}
		}
		previous = maps
	}
}
