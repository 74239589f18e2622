package placement

import (
	"fmt"
	"maps"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/couchdb-controller/couchdb-controller/couch"
)

// TestFillFences checks rule 10: a member filling a new copy is fenced (maintenance mode) before the
// copy enters the map, only while every range it holds keeps a serving copy elsewhere; a move whose
// target only other fences keep from being fenced waits for them; fences end with their fills.
func TestFillFences(t *testing.T) {
	one := 3
	fenced := func(m Member) Member { m.Maintenance, m.Fenced = true, true; return m }
	drainOf3 := append(members(0, 1, 2), fenced(Member{Name: name(3), Ordinal: 3, Live: true}))
	rebalanced := members(0, 1, 2, 3)
	rebalanced[3] = fenced(rebalanced[3])
	nolbOf3 := append(members(0, 1, 2), Member{Name: name(3), Ordinal: 3, Live: true, Maintenance: true})
	// Three ranges each held by the drained 3 and two of 0, 1, 2, each moving to the third: in flight,
	// with every target fenced and its copy filling.
	shared := map[string]couch.ShardMap{}
	sharedStats := map[CopyKey]CopyStat{}
	for i, db := range []string{"a", "b", "c"} {
		var holders []int
		for o := 0; o < 3; o++ {
			if o != i {
				holders = append(holders, o)
			}
		}
		m := smap(db, map[string][]int{all: append(holders, 3)})
		m.AddCopy(all, name(i))
		shared[db] = m
		maps.Copy(sharedStats, stats(db, all, 10, 0, 1, 2, 3))
		s := sharedStats[CopyKey{db, all, name(i)}]
		s.Docs, s.Seq = 4, 4 // filling
		sharedStats[CopyKey{db, all, name(i)}] = s
		s = sharedStats[CopyKey{db, all, name(3)}]
		s.Seq = 14 // written since its serving mark at 10
		s.Pushed = nil
		sharedStats[CopyKey{db, all, name(3)}] = s
	}
	sharedMarks := map[CopyKey]Mark{}
	for _, db := range []string{"a", "b", "c"} {
		sharedMarks[CopyKey{db, all, name(3)}] = Mark{Seq: 10, UUID: "u" + name(3), Total: 10, Serving: true}
	}
	filled := maps.Clone(sharedStats)
	for i, db := range []string{"a", "b", "c"} {
		s := filled[CopyKey{db, all, name(i)}]
		s.Docs = 10
		filled[CopyKey{db, all, name(i)}] = s
	}
	// a's fill is done and its drained copy verified; b's and c's are still filling on 1 and 2.
	aDone := maps.Clone(sharedStats)
	s := aDone[CopyKey{"a", all, name(0)}]
	s.Docs = 10
	aDone[CopyKey{"a", all, name(0)}] = s
	s = aDone[CopyKey{"a", all, name(3)}]
	s.Pushed = map[string]int64{"u" + name(0): 14, "u" + name(1): 14, "u" + name(2): 14}
	aDone[CopyKey{"a", all, name(3)}] = s
	allFenced := []Member{fenced(members(0)[0]), fenced(Member{Name: name(1), Ordinal: 1, Live: true}), fenced(Member{Name: name(2), Ordinal: 2, Live: true}), nolbOf3[3]}
	a := withN(smap("a", map[string][]int{all: {0, 1, 2}}), 3)
	a.AddCopy(all, name(3)) // the move's new copy, added last
	inFlight := map[string]couch.ShardMap{"a": a}
	caughtUp := stats("a", all, 10, 0, 1, 2, 3)
	lagging := maps.Clone(caughtUp)
	s = lagging[CopyKey{"a", all, name(3)}]
	s.Docs = 4
	lagging[CopyKey{"a", all, name(3)}] = s
	cases := map[string]struct {
		in      Input
		want    []string
		waiting string
	}{
		"a rebalance fences the new members before their copies enter the map": {
			in: Input{Replicas: 4, Members: members(0, 1, 2, 3), Rebalance: true, MaxMoves: 8, MaxFillsPerNode: 4,
				Maps: map[string]couch.ShardMap{"a": smap("a", map[string][]int{r0: {0, 1, 2}, r1: {0, 1, 2}})}},
			want: []string{"FenceTarget(" + name(3) + ")", "AddCopy(a/" + r0 + " on " + name(3) + ")", "SyncShards(a)"},
		},
		"a drain fences one target at a time when two would leave a range with no serving copy": {
			// c's range on 0, 1 and the drained 3: with 0 and 1 both fenced, nobody serves it.
			in: Input{Replicas: 4, TargetReplicas: &one, Members: drainOf3, MaxMoves: 8, MaxFillsPerNode: 4, Decom: map[string]bool{name(3): true},
				Maps: map[string]couch.ShardMap{"a": smap("a", map[string][]int{all: {1, 2, 3}}), "b": smap("b", map[string][]int{all: {0, 2, 3}}), "c": smap("c", map[string][]int{all: {0, 1, 3}})}},
			want: []string{"FenceTarget(" + name(0) + ")", "AddCopy(a/" + all + " on " + name(0) + ")", "SyncShards(a)"},
		},
		"a drain whose node is in nolb fences every target: the drained node still serves the range the others share": {
			in: Input{Replicas: 4, TargetReplicas: &one, Members: nolbOf3, MaxMoves: 8, MaxFillsPerNode: 4, Decom: map[string]bool{name(3): true},
				Maps: map[string]couch.ShardMap{"a": smap("a", map[string][]int{all: {1, 2, 3}}), "b": smap("b", map[string][]int{all: {0, 2, 3}}), "c": smap("c", map[string][]int{all: {0, 1, 3}})}},
			want: []string{"FenceTarget(" + name(0) + ")", "FenceTarget(" + name(1) + ")", "FenceTarget(" + name(2) + ")",
				"AddCopy(a/" + all + " on " + name(0) + ")", "AddCopy(b/" + all + " on " + name(1) + ")", "AddCopy(c/" + all + " on " + name(2) + ")",
				"SyncShards(a)", "SyncShards(b)", "SyncShards(c)"},
		},
		"a verified drop waits while it is the last serving copy of a range a fenced member has not filled": {
			in: Input{Replicas: 4, TargetReplicas: &one, Members: allFenced, MaxMoves: 8, MaxFillsPerNode: 4, Decom: map[string]bool{name(3): true},
				Maps: shared, Stats: aDone},
			want:    []string{"SyncShards(b)", "SyncShards(c)"},
			waiting: "is dropped once",
		},
		"writes reach the drained node in nolb: its fills go on, nothing new starts, it stays in nolb": {
			in: Input{Replicas: 4, TargetReplicas: &one, Members: allFenced, MaxMoves: 8, MaxFillsPerNode: 4, Decom: map[string]bool{name(3): true},
				Maps: shared, Stats: sharedStats, Marks: sharedMarks},
			want:    []string{"SyncShards(a)", "SyncShards(b)", "SyncShards(c)"},
			waiting: "new moves wait for the fills under way",
		},
		"writes reach the drained node in nolb and the fills are done: fences relying on it end, then it goes to true": {
			in: Input{Replicas: 4, TargetReplicas: &one, Members: allFenced, MaxMoves: 8, MaxFillsPerNode: 4, Decom: map[string]bool{name(3): true},
				Maps: shared, Stats: filled, Marks: sharedMarks},
			want: []string{"ClearMaintenance(" + name(1) + ")", "ClearMaintenance(" + name(2) + ")", "SetMaintenance(" + name(3) + `="true")`},
		},
		"a target no fence can ever make safe fills unfenced (n=2, its other copy on the drained node)": {
			in: Input{Replicas: 3, TargetReplicas: func() *int { two := 2; return &two }(), MaxMoves: 8, MaxFillsPerNode: 4, Decom: map[string]bool{name(2): true},
				Members: []Member{{Name: name(0), Ordinal: 0, Live: true}, {Name: name(1), Ordinal: 1, Live: true}, fenced(Member{Name: name(2), Ordinal: 2, Live: true})},
				Maps:    map[string]couch.ShardMap{"a": smap("a", map[string][]int{r0: {1, 2}, r1: {0, 2}})}},
			want: []string{"AddCopy(a/" + r0 + " on " + name(0) + ")", "AddCopy(a/" + r1 + " on " + name(1) + ")", "SyncShards(a)"},
		},
		"a fill still short keeps its fence": {
			in:   Input{Replicas: 4, Members: rebalanced, Rebalance: true, MaxMoves: 1, Maps: inFlight, Stats: lagging},
			want: []string{"SyncShards(a)"},
		},
		"the fence ends before the move's drop": {
			in:   Input{Replicas: 4, Members: rebalanced, Rebalance: true, MaxMoves: 1, Maps: inFlight, Stats: caughtUp},
			want: []string{"ClearMaintenance(" + name(3) + ")", "RemoveCopy(a/" + all + " on " + name(1) + ")"},
		},
		"a fence left over with no fill is cleared": {
			in:   Input{Replicas: 4, Members: rebalanced, Maps: map[string]couch.ShardMap{"a": smap("a", map[string][]int{all: {0, 1, 3}})}},
			want: []string{"ClearMaintenance(" + name(3) + ")"},
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			res := Plan(tc.in)
			var got []string
			for _, a := range res.Actions {
				got = append(got, a.String())
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("actions (-want +got):\n%s\nwaiting %q", diff, res.Waiting)
			}
			if tc.waiting != "" && !strings.Contains(res.Waiting, tc.waiting) {
				t.Errorf("waiting %q, want it to say %q", res.Waiting, tc.waiting)
			}
			if err := checkSafety(tc.in, res); err != nil {
				t.Error(err)
			}
		})
	}
}

// TestDrainRestsAFence: in a drain where only two of the three staying members can be fenced at once
// (range all of "s" is on all three), members 0 and 1 are fenced and filling. When member 2 has as
// many copies waiting as they have together, the fenced one with the fewest fills in flight (1)
// takes no new copy, so that its fills end, its fence lifts and member 2 is fenced in its place;
// otherwise it takes its next copy as before. Nothing else changes: member 0 still takes its next
// copy, and member 2 is not fenced beside the two.
func TestDrainRestsAFence(t *testing.T) {
	target := 3
	drained := Member{Name: name(3), Ordinal: 3, Live: true, Maintenance: true} // "nolb": it serves
	fencedM := func(o int) Member {
		return Member{Name: name(o), Ordinal: o, Live: true, Maintenance: true, Fenced: true}
	}
	base := func(waitingFor2 int) Input {
		in := Input{Replicas: 4, TargetReplicas: &target, MaxMoves: 8, MaxFillsPerNode: 4,
			Members: []Member{fencedM(0), fencedM(1), {Name: name(2), Ordinal: 2, Live: true}, drained},
			Maps:    map[string]couch.ShardMap{"s": withN(smap("s", map[string][]int{all: {0, 1, 2}}), 3)},
			Stats:   map[CopyKey]CopyStat{}}
		// In flight: two fills on member 0, one on member 1 (half full).
		for db, to := range map[string]int{"f0a": 0, "f0b": 0, "f1": 1} {
			var from []int
			for o := range 4 {
				if o != to {
					from = append(from, o)
				}
			}
			m := withN(smap(db, map[string][]int{all: from}), 3)
			m.AddCopy(all, name(to))
			in.Maps[db] = m
			maps.Copy(in.Stats, stats(db, all, 10, append(from, to)...))
			s := in.Stats[CopyKey{db, all, name(to)}]
			s.Docs, s.Seq = 5, 5
			in.Stats[CopyKey{db, all, name(to)}] = s
		}
		// Waiting: one range for member 0, one for member 1, waitingFor2 for member 2.
		in.Maps["w0"] = withN(smap("w0", map[string][]int{all: {1, 2, 3}}), 3)
		in.Maps["w1"] = withN(smap("w1", map[string][]int{all: {0, 2, 3}}), 3)
		for i := range waitingFor2 {
			db := fmt.Sprintf("w2-%d", i)
			in.Maps[db] = withN(smap(db, map[string][]int{all: {0, 1, 3}}), 3)
		}
		return in
	}
	for _, tc := range []struct {
		name        string
		waitingFor2 int
		want        []string // the copies added
	}{
		{"member 2 waits for fewer than the fenced members have together", 1,
			[]string{"w0/" + all + " on " + name(0), "w1/" + all + " on " + name(1)}},
		{"member 2 waits for as many as they have together: member 1 rests", 2,
			[]string{"w0/" + all + " on " + name(0)}},
		{"and for more", 5,
			[]string{"w0/" + all + " on " + name(0)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := Plan(base(tc.waitingFor2))
			var added []string
			for _, a := range res.Actions {
				switch a.Kind {
				case AddCopy:
					added = append(added, a.DB+"/"+a.Range+" on "+a.Node)
				case FenceTarget, ClearMaintenance:
					t.Errorf("unexpected %s: members 0 and 1 stay fenced while they fill, and 2 cannot be fenced beside them", a)
				}
			}
			if diff := cmp.Diff(tc.want, added); diff != "" {
				t.Errorf("copies added (-want +got):\n%s\nactions: %v", diff, res.Actions)
			}
		})
	}
}
