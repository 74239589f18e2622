package placement

import (
	"encoding/json"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/couchdb-controller/couchdb-controller/couch"
)

func smap(db string, byRange map[string][]int) couch.ShardMap {
	m := couch.ShardMap{ID: db, ByNode: map[string][]string{}, ByRange: map[string][]string{}}
	for r, ords := range byRange {
		for _, o := range ords {
			m.AddCopy(r, name(o))
		}
	}
	return m
}

// withN records n in m as Edit does.
func withN(m couch.ShardMap, n int) couch.ShardMap {
	m.Extra = map[string]any{NKey: n}
	return m
}

func members(live ...int) []Member {
	var out []Member
	for _, o := range live {
		out = append(out, Member{Name: name(o), Ordinal: o, Live: true})
	}
	return out
}

// strs lists the plan's steps but its fill fences, which fence_test.go checks: the tables here are
// about where copies go.
func strs(res Result) []string {
	var out []string
	for _, a := range withoutFences(res.Actions) {
		out = append(out, a.String())
	}
	return out
}

func withoutFences(as []Action) []Action {
	return slices.DeleteFunc(slices.Clone(as), func(a Action) bool { return a.Kind == FenceTarget })
}

// stats gives every listed copy of rng in db the same total, a non-zero update_seq and a uuid, and
// records on each a push checkpoint to every other at its update_seq: the copies are in sync.
func stats(db, rng string, docs int64, ords ...int) map[CopyKey]CopyStat {
	out := map[CopyKey]CopyStat{}
	for _, o := range ords {
		s := CopyStat{Docs: docs, Seq: docs, UUID: "u" + name(o), Pushed: map[string]int64{}}
		for _, p := range ords {
			if p != o {
				s.Pushed["u"+name(p)] = docs
			}
		}
		out[CopyKey{db, rng, name(o)}] = s
	}
	return out
}

const r0, r1, all = "00000000-7fffffff", "80000000-ffffffff", "00000000-ffffffff"

func TestPlanRules(t *testing.T) {
	two := 2
	synced := stats("a", r0, 3, 0, 1, 2, 3)
	behind := stats("a", r0, 3, 0, 1, 2, 3)
	// db-1's copy is the extra one (0, 1 and 2 tie on copies of "a"; dropTie ranks db-1 first).
	s := behind[CopyKey{"a", r0, name(1)}]
	s.Pushed = map[string]int64{"u" + name(0): 3, "u" + name(2): 3, "u" + name(3): 2} // its last push to db-3 is older
	behind[CopyKey{"a", r0, name(1)}] = s
	cases := map[string]struct {
		in      Input
		want    []string
		atRisk  int
		waiting bool
	}{
		"healthy: nothing to do": {
			in: Input{Replicas: 3, Members: members(0, 1, 2), Maps: map[string]couch.ShardMap{"a": smap("a", map[string][]int{r0: {0, 1, 2}, r1: {0, 1, 2}})}},
		},
		"departed copy is re-created on the emptiest live member first": {
			in:   Input{Replicas: 3, Members: members(0, 1, 2), Departed: []string{name(3)}, Maps: map[string]couch.ShardMap{"a": smap("a", map[string][]int{r0: {0, 1, 3}, r1: {0, 1, 2}})}},
			want: []string{"AddCopy(a/" + r0 + " on " + name(2) + ")", "SyncShards(a)"},
		},
		"departed copy is dropped only with counts showing the others caught up": {
			in:      Input{Replicas: 3, Members: members(0, 1, 2), Departed: []string{name(3)}, Maps: map[string]couch.ShardMap{"a": smap("a", map[string][]int{r0: {0, 1, 2, 3}})}},
			want:    []string{"SyncShards(a)"},
			waiting: true,
		},
		"caught up: drop the departed copy, then the node, in that order": {
			in: Input{Replicas: 3, Members: members(0, 1, 2), Departed: []string{name(3)}, Maps: map[string]couch.ShardMap{"a": smap("a", map[string][]int{r0: {0, 1, 2, 3}})},
				Stats: map[CopyKey]CopyStat{{"a", r0, name(0)}: {Docs: 5, Deleted: 1}, {"a", r0, name(1)}: {Docs: 5, Deleted: 1}, {"a", r0, name(2)}: {Docs: 6}}},
			want: []string{"RemoveCopy(a/" + r0 + " on " + name(3) + ")", "RemoveNode(" + name(3) + ")"},
		},
		"a new copy behind the live sources is not enough": {
			in: Input{Replicas: 3, Members: members(0, 1, 2), Departed: []string{name(3)}, Maps: map[string]couch.ShardMap{"a": smap("a", map[string][]int{r0: {0, 1, 2, 3}})},
				Stats: map[CopyKey]CopyStat{{"a", r0, name(0)}: {Docs: 5, Deleted: 1}, {"a", r0, name(1)}: {Docs: 5, Deleted: 1}, {"a", r0, name(2)}: {Docs: 2}}},
			want:    []string{"SyncShards(a)"},
			waiting: true,
		},
		"unreferenced departed node leaves _nodes": {
			in:   Input{Replicas: 3, Members: members(0, 1, 2), Departed: []string{name(3)}, Maps: map[string]couch.ShardMap{"a": smap("a", map[string][]int{r0: {0, 1, 2}})}},
			want: []string{"RemoveNode(" + name(3) + ")"},
		},
		"no live copy: database frozen, DataAtRisk, node kept": {
			in:     Input{Replicas: 1, Members: members(0), Departed: []string{name(1), name(2)}, Maps: map[string]couch.ShardMap{"a": smap("a", map[string][]int{r0: {1, 2}, r1: {0, 1}})}},
			atRisk: 1, waiting: true,
		},
		"replicate: missing database is created on every member": {
			in:   Input{Replicas: 3, Members: members(0, 1, 2), Replicate: []string{"b"}, Maps: map[string]couch.ShardMap{}},
			want: []string{"CreateDB(b n=3)"},
		},
		"replicate: not created while a member is down (its _dbs may be the one that has it)": {
			in: Input{Replicas: 3, Members: []Member{{Name: name(0), Ordinal: 0, Live: true}, {Name: name(1), Ordinal: 1, Live: true}, {Name: name(2), Ordinal: 2}},
				Replicate: []string{"b"}, Maps: map[string]couch.ShardMap{}},
			waiting: true,
		},
		"replicate: a copy on every member": {
			in:   Input{Replicas: 3, Members: members(0, 1, 2), Replicate: []string{"b"}, DBs: []string{"b"}, Maps: map[string]couch.ShardMap{"b": smap("b", map[string][]int{r0: {0, 1}})}},
			want: []string{"AddCopy(b/" + r0 + " on " + name(2) + ")", "SyncShards(b)"},
		},
		"drain: decom and maintenance mode before anything moves": {
			in: Input{Replicas: 3, TargetReplicas: &two, Members: members(0, 1, 2), Maps: map[string]couch.ShardMap{"a": smap("a", map[string][]int{r0: {0, 2}})},
				Decom: map[string]bool{name(0): false, name(1): false, name(2): false}},
			want: []string{"SetDecom(" + name(2) + ")", "SetMaintenance(" + name(2) + `="nolb")`},
		},
		"drain: the drained node's copy moves to a staying member": {
			in: Input{Replicas: 3, TargetReplicas: &two, Members: []Member{{Name: name(0), Ordinal: 0, Live: true}, {Name: name(1), Ordinal: 1, Live: true}, {Name: name(2), Ordinal: 2, Live: true, Maintenance: true}},
				Maps: map[string]couch.ShardMap{"a": smap("a", map[string][]int{r0: {0, 2}})}, Decom: map[string]bool{name(2): true}},
			want: []string{"AddCopy(a/" + r0 + " on " + name(1) + ")", "SyncShards(a)"},
		},
		"drain: equal counts are not enough, the drained copy's push must have reached the staying ones": {
			in: Input{Replicas: 4, TargetReplicas: &two, Members: []Member{{Name: name(0), Ordinal: 0, Live: true}, {Name: name(1), Ordinal: 1, Live: true}, {Name: name(2), Ordinal: 2, Live: true}, {Name: name(3), Ordinal: 3, Live: true, Maintenance: true}},
				Maps: map[string]couch.ShardMap{"a": smap("a", map[string][]int{r0: {0, 1, 2, 3}})}, Stats: func() map[CopyKey]CopyStat {
					st := stats("a", r0, 3, 0, 1, 2, 3)
					s := st[CopyKey{"a", r0, name(3)}]
					s.Pushed = map[string]int64{"u" + name(0): 3, "u" + name(1): 3, "u" + name(2): 2}
					st[CopyKey{"a", r0, name(3)}] = s
					return st
				}()},
			want: []string{"SyncShards(a)"}, waiting: true,
		},
		"drain: verified by checkpoints, the drained copy is dropped": {
			in: Input{Replicas: 4, TargetReplicas: &two, Members: []Member{{Name: name(0), Ordinal: 0, Live: true}, {Name: name(1), Ordinal: 1, Live: true}, {Name: name(2), Ordinal: 2, Live: true}, {Name: name(3), Ordinal: 3, Live: true, Maintenance: true}},
				Maps: map[string]couch.ShardMap{"a": smap("a", map[string][]int{r0: {0, 1, 2, 3}})}, Stats: synced},
			want: []string{"RemoveCopy(a/" + r0 + " on " + name(3) + ")", "RemoveNode(" + name(3) + ")"},
		},
		"drain: empty node leaves _nodes, then the StatefulSet shrinks": {
			in: Input{Replicas: 3, TargetReplicas: &two, Members: []Member{{Name: name(0), Ordinal: 0, Live: true}, {Name: name(1), Ordinal: 1, Live: true}, {Name: name(2), Ordinal: 2, Live: true, Maintenance: true}},
				Maps: map[string]couch.ShardMap{"a": smap("a", map[string][]int{r0: {0, 1}})}},
			want: []string{"RemoveNode(" + name(2) + ")"},
		},
		"drain: removed from _nodes, scale down by one": {
			in:   Input{Replicas: 3, TargetReplicas: &two, Members: members(0, 1), Maps: map[string]couch.ShardMap{"a": smap("a", map[string][]int{r0: {0, 1}})}},
			want: []string{"ScaleDown(replicas=2)"},
		},
		"drain of a down node: no maintenance (it cannot be set), its copy is re-created from the live one": {
			in: Input{Replicas: 3, TargetReplicas: &two, Members: []Member{{Name: name(0), Ordinal: 0, Live: true}, {Name: name(1), Ordinal: 1, Live: true}, {Name: name(2), Ordinal: 2}},
				Maps: map[string]couch.ShardMap{"a": smap("a", map[string][]int{r0: {0, 2}})}, Decom: map[string]bool{name(0): false, name(1): false, name(2): false}},
			want: []string{"SetDecom(" + name(2) + ")", "AddCopy(a/" + r0 + " on " + name(1) + ")", "SyncShards(a)"},
		},
		"drain of a down node: its copy is kept until it is back, and the node stays": {
			in: Input{Replicas: 3, TargetReplicas: &two, Members: []Member{{Name: name(0), Ordinal: 0, Live: true}, {Name: name(1), Ordinal: 1, Live: true}, {Name: name(2), Ordinal: 2}},
				Maps: map[string]couch.ShardMap{"a": smap("a", map[string][]int{r0: {0, 1, 2}})}, Decom: map[string]bool{name(2): true},
				Stats: map[CopyKey]CopyStat{{"a", r0, name(0)}: {Docs: 4, Seq: 4}, {"a", r0, name(1)}: {Docs: 4, Seq: 4}}},
			waiting: true,
		},
		"drain cancelled: maintenance and decom come off": {
			in: Input{Replicas: 3, Members: []Member{{Name: name(0), Ordinal: 0, Live: true}, {Name: name(1), Ordinal: 1, Live: true}, {Name: name(2), Ordinal: 2, Live: true, Maintenance: true}},
				Maps: map[string]couch.ShardMap{}, Decom: map[string]bool{name(0): false, name(1): false, name(2): true}},
			want: []string{"ClearMaintenance(" + name(2) + ")", "ClearDecom(" + name(2) + ")"},
		},
		"decom before a database is created; a departed node loses decom only by leaving _nodes": {
			in: Input{Replicas: 3, Members: members(0, 1, 2), Departed: []string{name(3), name(4)}, Replicate: []string{"b"}, Maps: map[string]couch.ShardMap{},
				Decom: map[string]bool{name(0): false, name(1): false, name(2): false, name(3): false, name(4): true}},
			want: []string{"SetDecom(" + name(3) + ")", "CreateDB(b n=3)"},
		},
		"rebalance: one copy to the emptiest member": {
			in: Input{Replicas: 4, Rebalance: true, Members: members(0, 1, 2, 3),
				Maps: map[string]couch.ShardMap{"a": smap("a", map[string][]int{r0: {0, 1, 2}, r1: {0, 1, 2}})}},
			want: []string{"AddCopy(a/" + r0 + " on " + name(3) + ")", "SyncShards(a)"},
		},
		"rebalance moves one-range databases too, by bytes once each database is balanced": {
			in: Input{Replicas: 4, Rebalance: true, Members: members(0, 1, 2, 3),
				Maps:       map[string]couch.ShardMap{"a": smap("a", map[string][]int{all: {0, 1, 2}}), "b": smap("b", map[string][]int{all: {0, 1, 2}})},
				RangeBytes: map[RangeRef]int64{{"a", all}: 100, {"b", all}: 100}},
			// a's copy would be dropped from db-1 (dropTie), which is not the first of the tied
			// fullest members: b's is.
			want: []string{"AddCopy(b/" + all + " on " + name(3) + ")", "SyncShards(b)"},
		},
		"rebalance: one-range databases with unknown sizes are balanced per database already": {
			in: Input{Replicas: 4, Rebalance: true, Members: members(0, 1, 2, 3),
				Maps: map[string]couch.ShardMap{"a": smap("a", map[string][]int{all: {0, 1, 2}}), "b": smap("b", map[string][]int{all: {0, 1, 2}})}},
		},
		"rebalance: an extra copy is dropped from a fullest holder once verified": {
			in: Input{Replicas: 4, Rebalance: true, Members: members(0, 1, 2, 3),
				Maps:  map[string]couch.ShardMap{"a": withN(smap("a", map[string][]int{r0: {0, 1, 2, 3}, r1: {0, 1, 2}}), 3)},
				Stats: synced},
			want: []string{"RemoveCopy(a/" + r0 + " on " + name(1) + ")"},
		},
		"rebalance: the extra copy's last push is older than its update_seq: sync first": {
			in: Input{Replicas: 4, Rebalance: true, Members: members(0, 1, 2, 3),
				Maps:  map[string]couch.ShardMap{"a": withN(smap("a", map[string][]int{r0: {0, 1, 2, 3}, r1: {0, 1, 2}}), 3)},
				Stats: behind},
			want: []string{"SyncShards(a)"}, waiting: true,
		},
		"a staying copy down: wait, never drop the departed one": {
			in: Input{Replicas: 3, Members: []Member{{Name: name(0), Ordinal: 0, Live: true}, {Name: name(1), Ordinal: 1, Live: true}, {Name: name(2), Ordinal: 2}}, Departed: []string{name(3)},
				Maps:  map[string]couch.ShardMap{"a": smap("a", map[string][]int{r0: {0, 1, 2, 3}})},
				Stats: map[CopyKey]CopyStat{{"a", r0, name(0)}: {Docs: 3}, {"a", r0, name(1)}: {Docs: 3}}},
			want: []string{"SyncShards(a)"}, waiting: true,
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			res := Plan(tc.in)
			if diff := cmp.Diff(tc.want, strs(res)); diff != "" {
				t.Errorf("actions (-want +got):\n%s\nwaiting %q", diff, res.Waiting)
			}
			if len(res.AtRisk) != tc.atRisk {
				t.Errorf("at risk %v", res.AtRisk)
			}
			if tc.waiting != (res.Waiting != "") {
				t.Errorf("waiting %q", res.Waiting)
			}
		})
	}
}

func TestStatsNeededOnlyForRangesWithACopyToDrop(t *testing.T) {
	in := Input{Replicas: 3, Members: members(0, 1, 2), Departed: []string{name(3)},
		Maps: map[string]couch.ShardMap{"a": smap("a", map[string][]int{r0: {0, 1, 2, 3}, r1: {0, 1, 2}})}}
	want := []CopyKey{{"a", r0, name(0)}, {"a", r0, name(1)}, {"a", r0, name(2)}}
	if diff := cmp.Diff(want, StatsNeeded(in)); diff != "" {
		t.Error(diff)
	}
	if got := SourcesNeeded(in); len(got) != 0 {
		t.Errorf("a departed node that is down has no checkpoints to read: %v", got)
	}
	in.Members = append(in.Members, Member{Name: name(3), Ordinal: 3, Live: true})
	in.Replicas, in.TargetReplicas = 4, func() *int { n := 3; return &n }()
	in.Members[3].Maintenance = true
	in.Departed = nil
	if diff := cmp.Diff([]CopyKey{{"a", r0, name(3)}}, SourcesNeeded(in)); diff != "" {
		t.Errorf("the drained copy's checkpoints are needed: %s", diff)
	}
}

// TestNIsNotReadFromCopiesInFlight is the regression test for n taken from the current map: a
// one-range database with n=3 on members 0-3 and a copy on departed node 4. The planner used to count
// the copy it had just added on 2 as part of n (4 copies listed), add another on 3, then drop node
// 4's, leaving 4 copies. Now the first AddCopy records n=3 in the map (NKey), and the state after it
// reads as n=3 with the departed copy to drop.
func TestNIsNotReadFromCopiesInFlight(t *testing.T) {
	in := Input{Replicas: 4, Members: members(0, 1, 2, 3), Departed: []string{name(4)},
		Maps: map[string]couch.ShardMap{"d": smap("d", map[string][]int{all: {0, 1, 4}})}}
	res := Plan(in)
	res.Actions = withoutFences(res.Actions)
	if len(res.Actions) == 0 || res.Actions[0].Kind != AddCopy || res.Actions[0].N != 3 {
		t.Errorf("first step %v: want an AddCopy carrying n=3 to record", res.Actions)
	}
	// After the AddCopy on 2 (n recorded in the same write) and a sync: 2 has caught up.
	m := smap("d", map[string][]int{all: {0, 1, 2, 4}})
	m.Extra = map[string]any{"couchdb.io/n": float64(3)} // as a map read back from CouchDB carries it
	in.Maps["d"] = m
	in.Stats = map[CopyKey]CopyStat{{"d", all, name(0)}: {Docs: 7}, {"d", all, name(1)}: {Docs: 7}, {"d", all, name(2)}: {Docs: 7}}
	want := []string{"RemoveCopy(d/" + all + " on " + name(4) + ")", "RemoveNode(" + name(4) + ")"}
	if diff := cmp.Diff(want, strs(Plan(in))); diff != "" {
		t.Errorf("mid-heal step (-want +got):\n%s", diff)
	}
}

// TestHealOfOneRangeDatabaseKeepsItsN runs the same heal to its end through Edit, the edit the
// controller applies: exactly n copies remain, all on members.
func TestHealOfOneRangeDatabaseKeepsItsN(t *testing.T) {
	m := smap("d", map[string][]int{all: {0, 1, 4}})
	departed := []string{name(4)}
	for step := 0; ; step++ {
		if step == 20 {
			t.Fatalf("no fixpoint: %v", m.ByRange)
		}
		in := Input{Replicas: 4, Members: members(0, 1, 2, 3), Departed: departed, Maps: map[string]couch.ShardMap{"d": m}, Stats: map[CopyKey]CopyStat{}}
		for _, k := range StatsNeeded(in) {
			in.Stats[k] = CopyStat{Docs: 7} // every copy caught up at once (a departed copy is never read)
		}
		res := Plan(in)
		if len(res.Actions) == 0 {
			break
		}
		for _, a := range res.Actions {
			switch a.Kind {
			case AddCopy, RemoveCopy:
				// The map round-trips through JSON, as it does through CouchDB.
				if _, err := Edit(&m, a); err != nil {
					t.Fatal(err)
				}
				raw, _ := json.Marshal(m)
				m = couch.ShardMap{}
				if err := json.Unmarshal(raw, &m); err != nil {
					t.Fatal(err)
				}
			case RemoveNode:
				departed = nil
			}
		}
	}
	want := []string{name(0), name(1), name(2)}
	if diff := cmp.Diff(want, sortedCopy(m.ByRange[all])); diff != "" {
		t.Errorf("copies (-want +got):\n%s", diff)
	}
	if DBN(m) != 3 {
		t.Errorf("n %d", DBN(m))
	}
}
