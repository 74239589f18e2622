package controller

import (
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/couchdb-controller/couchdb-controller/controller/placement"
	"github.com/couchdb-controller/couchdb-controller/couch"
)

func mapWith(changelog [][]string, extra map[string]any) couch.ShardMap {
	m := couch.ShardMap{ByNode: map[string][]string{}, ByRange: map[string][]string{}, Extra: extra}
	for _, e := range changelog {
		if e[0] == "add" {
			m.AddCopy(e[1], e[2])
		}
	}
	m.Changelog = changelog
	return m
}

// A process that starts with no memory posts one _sync_shards for each database whose map was
// edited, and none for a database as CouchDB created it.
func TestSeedUnsynced(t *testing.T) {
	created := [][]string{{"add", "00000000-ffffffff", "a"}, {"add", "00000000-ffffffff", "b"}}
	maps := map[string]couch.ShardMap{
		"as-created":    mapWith(created, nil),
		"edited":        mapWith(append(slices.Clone(created), []string{"add", "00000000-ffffffff", "c"}), map[string]any{placement.NKey: float64(2)}),
		"moved-by-hand": mapWith(append(slices.Clone(created), []string{"delete", "00000000-ffffffff", "b"}), nil),
	}
	if diff := cmp.Diff([]string{"edited", "moved-by-hand"}, seedUnsynced(maps)); diff != "" {
		t.Error(diff)
	}
	st := newClusterState()
	if diff := cmp.Diff([]string{"edited", "moved-by-hand"}, takeUnsynced(st, maps)); diff != "" {
		t.Errorf("first read: %s", diff)
	}
	st.noteSynced("edited")
	st.noteAdded("as-created")
	delete(maps, "moved-by-hand") // deleted meanwhile
	if diff := cmp.Diff([]string{"as-created"}, takeUnsynced(st, maps)); diff != "" {
		t.Errorf("later read (no second seeding): %s", diff)
	}
}

// A database waiting for its push gets exactly one SyncShards, also when placement plans one.
func TestPlanPostsUnsyncedOnce(t *testing.T) {
	o := world{replicas: 3, pods: []int{0, 1, 2}, members: names(0, 1, 2), connected: names(0, 1, 2), setup: couch.StateClusterFinished}.observe()
	m := mapWith([][]string{{"add", "00000000-ffffffff", nodeName(0)}, {"add", "00000000-ffffffff", nodeName(1)}, {"add", "00000000-ffffffff", nodeName(2)}}, nil)
	o.Shards = &ShardObs{DBs: []string{"db1", "db2"}, Maps: map[string]couch.ShardMap{"db1": m, "db2": m}, Unsynced: []string{"db1", "db2"},
		Maintenance: map[string]bool{}, Stats: map[placement.CopyKey]placement.CopyStat{}}
	p := PlanCluster(o)
	if diff := cmp.Diff([]string{"SyncShards(db1)", "SyncShards(db2)"}, kinds(p)); diff != "" {
		t.Error(diff)
	}
	o.Shards.Unsynced = nil
	if p := PlanCluster(o); len(p.Actions) != 0 {
		t.Errorf("nothing waiting: plan %v", kinds(p))
	}
	// Last in the plan: a post that fails (a node down) must not stop the gate of a member.
	o.Shards.Unsynced = []string{"db1"}
	o.Pods[2].HasMemberGate = true
	if diff := cmp.Diff([]string{"SetMemberCondition(db-2=true)", "SyncShards(db1)"}, kinds(PlanCluster(o))); diff != "" {
		t.Errorf("order: %s", diff)
	}
}
