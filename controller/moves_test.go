package controller

import (
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/couchdb-controller/couchdb-controller/couch"
)

// TestApplyEditsTheObservedMap: a map edit starts from the map the sync read, with its revision,
// so it is one PUT; a map that changed since the read answers 409 and the edit is made again on a
// fresh read, keeping the other change; a drop and an add of the same map are one write.
func TestApplyEditsTheObservedMap(t *testing.T) {
	const (
		put = "PUT /_node/_local/_dbs/db1"
		get = "GET /_node/_local/_dbs/db1"
	)
	tests := []struct {
		name     string
		observed bool // the sync read the maps
		stale    bool // someone edits the map after the read
		twoEdits bool // a drop, then an add of the same map
		want     []string
	}{
		{name: "observed", observed: true, want: []string{put}},
		{name: "not observed", want: []string{get, put}},
		{name: "changed since the read", observed: true, stale: true, want: []string{put, get, put}},
		{name: "drop then add of one map", observed: true, twoEdits: true, want: []string{put}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			f.formed3()
			f.createDB(0, "db1", 4, 2, 20)
			m, _ := f.node(0).ShardMap("db1")
			// target lacks the first range; other lacks another range than the first.
			rng := m.Ranges()[0]
			target, other, otherRange := "", "", ""
			for i := range 3 {
				n := escapedNode(i)
				if !m.HasCopy(rng, n) && target == "" {
					target = n
					continue
				}
				for _, r := range m.Ranges()[1:] {
					if !m.HasCopy(r, n) && other == "" {
						other, otherRange = n, r
					}
				}
			}
			if target == "" || other == "" {
				t.Fatalf("no free copies in %v", m.ByRange)
			}
			st, sts := f.c.state(key), f.cachedStatefulSet()
			o := Observed{Namespace: testNS, StatefulSet: "db", Pods: map[int]*PodObs{0: podObs(f.cachedPod("db-0"), 0, 5984)}}
			if tc.observed {
				o.Shards = &ShardObs{Maps: map[string]couch.ShardMap{"db1": m}}
			}
			if tc.stale {
				changed := m.Clone()
				changed.AddCopy(otherRange, other)
				if _, err := f.admin(0).PutShardMap(f.ctx, changed); err != nil {
					t.Fatal(err)
				}
			}
			plan := []Action{{Kind: ActAddCopy, Via: 0, DB: "db1", Range: rng, Node: target, NodeCount: 2}}
			dropped := ""
			if tc.twoEdits {
				dropped = m.ByRange[otherRange][0]
				plan = []Action{
					{Kind: ActRemoveCopy, Via: 0, DB: "db1", Range: otherRange, Node: dropped, NodeCount: 2},
					plan[0],
				}
			}
			f.resetCalls()
			if err := f.c.applyActions(f.ctx, key, st, sts, o, plan); err != nil {
				t.Fatal(err)
			}
			var calls []string
			for _, c := range f.couchCalls() {
				calls = append(calls, c.Method+" "+c.Path)
			}
			if diff := cmp.Diff(tc.want, calls); diff != "" {
				t.Errorf("requests (-want +got):\n%s", diff)
			}
			after, _ := f.node(0).ShardMap("db1")
			if !after.HasCopy(rng, target) {
				t.Errorf("the added copy is not in the map: %v", after.ByRange)
			}
			if tc.stale && !after.HasCopy(otherRange, other) {
				t.Errorf("the other edit was lost: %v", after.ByRange)
			}
			if tc.twoEdits && after.HasCopy(otherRange, dropped) {
				t.Errorf("the dropped copy is still in the map: %v", after.ByRange)
			}
		})
	}
}
