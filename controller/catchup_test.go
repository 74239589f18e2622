package controller

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/couchdb-controller/couchdb-controller/controller/placement"
	"github.com/couchdb-controller/couchdb-controller/couch"
)

// catchUpPending decides from what one sync read; under a constant write load the sources' update_seq
// and doc counts keep moving, so the checkpoint against the update_seq first read during the wait is
// what can prove the catch-up.
func TestCatchUpPending(t *testing.T) {
	own := &placement.CopyStat{Docs: 90, Seq: 95, UUID: "own"}
	src := func(docs, seq, pushed int64) map[string]placement.CopyStat {
		return map[string]placement.CopyStat{"n0": {Docs: docs, Seq: seq, UUID: "s0", Pushed: map[string]int64{"own": pushed}}}
	}
	for _, tc := range []struct {
		name     string
		cu       *CatchUpObs
		want     bool
		contains string
	}{
		{name: "not restarted", cu: nil},
		{name: "timed out: the gate opens (with a Warning elsewhere)", cu: &CatchUpObs{TimedOut: true}},
		{name: "not read yet", cu: &CatchUpObs{}, want: true, contains: "waiting to read"},
		{name: "own copy unreadable", cu: &CatchUpObs{Read: true, Copies: []CopyCatchUp{{DB: "db", Range: "r", Sources: src(100, 120, 0)}}},
			want: true, contains: "no information"},
		{name: "a source unreadable", cu: &CatchUpObs{Read: true, Copies: []CopyCatchUp{{DB: "db", Range: "r", Own: own, Unread: []string{"n1"}}}},
			want: true, contains: "cannot yet read"},
		{name: "pushed to the current update_seq", cu: &CatchUpObs{Read: true, Copies: []CopyCatchUp{{DB: "db", Range: "r", Own: own, Sources: src(100, 120, 120)}}}},
		{name: "same counts", cu: &CatchUpObs{Read: true, Copies: []CopyCatchUp{{DB: "db", Range: "r", Own: own, Sources: src(90, 120, 0)}}}},
		{name: "behind, no baseline", cu: &CatchUpObs{Read: true, Copies: []CopyCatchUp{{DB: "db", Range: "r", Own: own, Sources: src(100, 120, 80)}}},
			want: true, contains: "checkpoint 80 of update_seq 120"},
		{name: "pushed past what the source held when the wait began, writes still coming",
			cu: &CatchUpObs{Read: true, Copies: []CopyCatchUp{{DB: "db", Range: "r", Own: own, Sources: src(100, 130, 110), Baseline: map[string]int64{"n0": 105}}}}},
		{name: "not yet pushed to the baseline",
			cu:   &CatchUpObs{Read: true, Copies: []CopyCatchUp{{DB: "db", Range: "r", Own: own, Sources: src(100, 130, 100), Baseline: map[string]int64{"n0": 105}}}},
			want: true, contains: "checkpoint 100 of update_seq 105"},
		{name: "a baseline of another source does not count",
			cu:   &CatchUpObs{Read: true, Copies: []CopyCatchUp{{DB: "db", Range: "r", Own: own, Sources: src(100, 130, 100), Baseline: map[string]int64{"n1": 50}}}},
			want: true, contains: "copy on n0"},
		{name: "nothing ever written on the source", cu: &CatchUpObs{Read: true, Copies: []CopyCatchUp{{DB: "db", Range: "r", Own: own,
			Sources: map[string]placement.CopyStat{"n0": {UUID: "s0"}}}}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := Observed{}
			if tc.cu != nil {
				tc.cu.Timeout = time.Minute
				o.CatchUp = map[int]*CatchUpObs{1: tc.cu}
			}
			why, got := catchUpPending(o, 1)
			if got != tc.want || !strings.Contains(why, tc.contains) {
				t.Errorf("catchUpPending = %q, %v; want %v containing %q", why, got, tc.want, tc.contains)
			}
		})
	}
}

// A member held for catch-up whose copy is behind gets a _sync_shards of that database: nothing else
// in CouchDB pushes to a copy that was only added to a map (a controller killed between the AddCopy
// and its SyncShards leaves it empty), so without it the gate waits for --catch-up-timeout.
func TestCatchUpPlansSyncShardsForCopiesBehind(t *testing.T) {
	finished := couch.StateClusterFinished
	empty := &placement.CopyStat{UUID: "own"}
	full := map[string]placement.CopyStat{"n0": {Docs: 20, Seq: 20, UUID: "s0", Pushed: map[string]int64{}}}
	caught := map[string]placement.CopyStat{"n0": {Docs: 20, Seq: 20, UUID: "s0", Pushed: map[string]int64{"own": 20}}}
	for _, tc := range []struct {
		name    string
		cu      *CatchUpObs
		want    []string
		filling bool
	}{
		{name: "an empty copy of db1 and a caught-up copy of db2: db1 is pushed",
			cu: &CatchUpObs{Read: true, Copies: []CopyCatchUp{
				{DB: "db1", Range: "00000000-7fffffff", Own: empty, Sources: full},
				{DB: "db1", Range: "80000000-ffffffff", Own: empty, Sources: full},
				{DB: "db2", Range: "00000000-ffffffff", Own: empty, Sources: caught}}},
			want: []string{"SyncShards(db1)"}, filling: true},
		{name: "not read yet: nothing known to push", cu: &CatchUpObs{}},
		{name: "a source unreadable: nothing known to push",
			cu: &CatchUpObs{Read: true, Copies: []CopyCatchUp{{DB: "db1", Range: "00000000-ffffffff", Own: empty, Unread: []string{"n1"}}}}},
		{name: "timed out: the gate opens, nothing pushed",
			cu:   &CatchUpObs{TimedOut: true, Read: true, Copies: []CopyCatchUp{{DB: "db1", Range: "00000000-ffffffff", Own: empty, Sources: full}}},
			want: []string{"SetMemberCondition(db-3=true)"}},
		{name: "caught up: the gate opens",
			cu:   &CatchUpObs{Read: true, Copies: []CopyCatchUp{{DB: "db2", Range: "00000000-ffffffff", Own: empty, Sources: caught}}},
			want: []string{"SetMemberCondition(db-3=true)"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := world{replicas: 4, pods: []int{0, 1, 2, 3}, members: names(0, 1, 2, 3), connected: names(0, 1, 2, 3), setup: finished}.observe()
			tr, fa := true, false
			for _, p := range o.Pods {
				p.HasMemberGate, p.MemberCondition = true, &tr
			}
			o.Pods[3].MemberCondition = &fa
			tc.cu.Timeout = time.Minute
			o.CatchUp = map[int]*CatchUpObs{3: tc.cu}
			p := PlanCluster(o)
			if diff := cmp.Diff(tc.want, kinds(p)); diff != "" {
				t.Errorf("actions (-want +got):\n%s", diff)
			}
			if p.Filling != tc.filling {
				t.Errorf("Filling = %v, want %v (a plan of catch-up pushes only is looked at again as fills are)", p.Filling, tc.filling)
			}
		})
	}
}
