package placement

import (
	"fmt"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/couchdb-controller/couchdb-controller/couch"
)

func TestConcurrentMoves(t *testing.T) {
	gone := []string{name(3)}
	threeRanges := func() map[string]couch.ShardMap {
		return map[string]couch.ShardMap{
			"a": smap("a", map[string][]int{r0: {0, 1, 3}, r1: {0, 2, 3}}),
			"b": smap("b", map[string][]int{all: {1, 2, 3}}),
		}
	}
	cases := map[string]struct {
		in   Input
		want []string
	}{
		"one move at a time by default": {
			in:   Input{Replicas: 3, Members: members(0, 1, 2), Departed: gone, Maps: threeRanges()},
			want: []string{"AddCopy(a/" + r0 + " on " + name(2) + ")", "SyncShards(a)"},
		},
		"several at once: edits first, one SyncShards per database after them": {
			in: Input{Replicas: 3, Members: members(0, 1, 2), Departed: gone, Maps: threeRanges(), MaxMoves: 8, MaxFillsPerNode: 4},
			want: []string{"AddCopy(a/" + r0 + " on " + name(2) + ")", "AddCopy(a/" + r1 + " on " + name(1) + ")", "AddCopy(b/" + all + " on " + name(0) + ")",
				"SyncShards(a)", "SyncShards(b)"},
		},
		"the per-node bound: each member takes one fill": {
			in: Input{Replicas: 4, Members: members(0, 1, 2, 4), Departed: gone, MaxMoves: 8, MaxFillsPerNode: 1,
				Maps: map[string]couch.ShardMap{"a": smap("a", map[string][]int{r0: {0, 1, 3}, r1: {0, 1, 3}, "x": {0, 1, 3}})}},
			want: []string{"AddCopy(a/" + r0 + " on " + name(2) + ")", "AddCopy(a/" + r1 + " on " + name(4) + ")", "SyncShards(a)"},
		},
		"moves in flight use the budget: a verified one completes and its slot starts the next move in the same plan, the other waits": {
			in: Input{Replicas: 3, Members: members(0, 1, 2), Departed: gone, MaxMoves: 2,
				Maps: map[string]couch.ShardMap{
					"a": withN(smap("a", map[string][]int{r0: {0, 1, 3, 2}, r1: {0, 1, 3, 2}}), 3),
					"b": smap("b", map[string][]int{all: {1, 2, 3}}),
				},
				Stats: func() map[CopyKey]CopyStat {
					st := stats("a", r0, 4, 0, 1, 2)
					for k, v := range stats("a", r1, 4, 0, 1) {
						st[k] = v
					}
					st[CopyKey{"a", r1, name(2)}] = CopyStat{Docs: 1, Seq: 1, UUID: "u" + name(2)}
					return st
				}()},
			want: []string{"RemoveCopy(a/" + r0 + " on " + name(3) + ")", "AddCopy(b/" + all + " on " + name(0) + ")", "SyncShards(a)", "SyncShards(b)"},
		},
		"several verified copies of one database dropped together": {
			in: Input{Replicas: 3, Members: members(0, 1, 2), Departed: gone, MaxMoves: 2,
				Maps: map[string]couch.ShardMap{"a": withN(smap("a", map[string][]int{r0: {0, 1, 3, 2}, r1: {0, 1, 3, 2}}), 3)},
				Stats: func() map[CopyKey]CopyStat {
					st := stats("a", r0, 4, 0, 1, 2)
					for k, v := range stats("a", r1, 4, 0, 1, 2) {
						st[k] = v
					}
					return st
				}()},
			want: []string{"RemoveCopy(a/" + r0 + " on " + name(3) + ")", "RemoveCopy(a/" + r1 + " on " + name(3) + ")", "RemoveNode(" + name(3) + ")"},
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			res := Plan(tc.in)
			if diff := cmp.Diff(tc.want, strs(res)); diff != "" {
				t.Errorf("actions (-want +got):\n%s\nwaiting %q", diff, res.Waiting)
			}
			if err := checkSafety(tc.in, res); err != nil {
				t.Error(err)
			}
		})
	}
}

// TestMovesInFlightSurviveARestart applies a concurrent plan's edits and plans again from the maps
// alone (a restarted controller): the moves in flight are recognised, none is started twice, and
// the budget counts them.
func TestMovesInFlightSurviveARestart(t *testing.T) {
	in := Input{Replicas: 5, Rebalance: true, Members: members(0, 1, 2, 3, 4), MaxMoves: 3, MaxFillsPerNode: 3,
		Maps: map[string]couch.ShardMap{"a": smap("a", map[string][]int{"0": {0, 1, 2}, "4": {0, 1, 2}, "8": {0, 1, 2}, "c": {0, 1, 2}})}}
	first := Plan(in)
	adds := 0
	m := in.Maps["a"].Clone()
	for _, a := range first.Actions {
		if a.Kind == AddCopy {
			adds++
			if _, err := Edit(&m, a); err != nil {
				t.Fatal(err)
			}
		}
	}
	if adds != 3 {
		t.Fatalf("first plan %v: want 3 moves started", strs(first))
	}
	in.Maps = map[string]couch.ShardMap{"a": m}
	again := Plan(in) // no document counts yet: the copies are filling
	for _, a := range again.Actions {
		if a.Kind == AddCopy || a.Kind == RemoveCopy {
			t.Errorf("after a restart with 3 moves in flight and a budget of 3: %v", strs(again))
		}
	}
	if diff := cmp.Diff([]string{"SyncShards(a)"}, strs(again)); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	// The copies the moves drop are the sources they meant: never the copy being filled.
	for _, k := range SourcesNeeded(in) {
		if n := newestCopy(m, k.Range); n == k.Node {
			t.Errorf("%v: the copy being filled is the one to drop", k)
		}
	}
}

// TestExtraDropKeepsTheNewCopy: with every holder tied on zones, copies and bytes, the copy added
// last (the one a move is filling) is not the one dropped.
func TestExtraDropKeepsTheNewCopy(t *testing.T) {
	m := withN(smap("a", map[string][]int{r0: {0, 1}}), 2)
	m.AddCopy(r0, name(2))
	in := Input{Replicas: 3, Members: members(0, 1, 2), Maps: map[string]couch.ShardMap{"a": m}}
	v := newView(in)
	if got := v.extraDrop("a", m, r0, v.stayingCopies(m, r0), v.count["a"]); got == name(2) {
		t.Errorf("dropped the newest copy %s", got)
	}
}

// TestInFlightMovesOfADatabaseDropFromDifferentMembers: a rebalance of q=2 n=3 from three members to
// five starts two moves of the database at once, meant to empty two different members. Picked one
// range at a time from the maps, both drops fell on the same member (every member held two copies),
// which then held none and took a third move to fix: 47 extra moves in the 100-database bench.
func TestInFlightMovesOfADatabaseDropFromDifferentMembers(t *testing.T) {
	m := withN(smap("a", map[string][]int{r0: {0, 1, 2}, r1: {0, 1, 2}}), 3)
	m.AddCopy(r0, name(4))
	m.AddCopy(r1, name(3))
	in := Input{Replicas: 5, Rebalance: true, Members: members(0, 1, 2, 3, 4), Maps: map[string]couch.ShardMap{"a": m}, MaxMoves: 8, MaxFillsPerNode: 4}
	v := newView(in)
	drops := v.extraDrops("a", m)
	if drops[r0] == "" || drops[r0] == drops[r1] {
		t.Fatalf("drops %v: want one copy dropped from each of two different members", drops)
	}
	for i := range 5 {
		if c := v.proj["a"][name(i)]; c < 1 || c > 2 {
			t.Errorf("%s holds %d copies once the moves in flight end; want 1 or 2", name(i), c)
		}
	}
	for _, a := range Plan(in).Actions {
		if a.Kind == AddCopy {
			t.Errorf("planned %s: the moves in flight already balance the database", a)
		}
	}
}

// TestDrainTargetsOnlyMembersItKeeps: target-replicas 3 from 5 drains db-4, then db-3. A copy of
// db-4 goes to db-2, not to db-3 (which holds fewer copies of the database but is drained next,
// where the copy would have to move again: 32 of 273 moves in the 100-database bench).
func TestDrainTargetsOnlyMembersItKeeps(t *testing.T) {
	three := 3
	m := withN(smap("a", map[string][]int{r0: {0, 1, 4}, r1: {0, 1, 2}}), 3)
	mem := members(0, 1, 2, 3, 4)
	mem[4].Maintenance, mem[4].Fenced = true, true
	in := Input{Replicas: 5, TargetReplicas: &three, Members: mem, Maps: map[string]couch.ShardMap{"a": m}, MaxMoves: 8, MaxFillsPerNode: 4}
	var adds []string
	for _, a := range Plan(in).Actions {
		if a.Kind == AddCopy {
			adds = append(adds, a.String())
		}
	}
	want := []string{Action{Kind: AddCopy, DB: "a", Range: r0, Node: name(2), N: 3}.String()}
	if diff := cmp.Diff(want, adds); diff != "" {
		t.Errorf("adds (-want +got):\n%s", diff)
	}
}

// TestRebalanceDropsWhereItCounted: a rebalance of twelve q=2 n=3 databases from three members to
// five, eight moves at a time and four per node. The plan counts each move's fill slot on the member
// it drops from; once its edits are written, the copies the maps say each move drops (what the next
// plan, or a restarted controller, counts) must be those: at most four per member, and at most two
// of the held ones. Drops picked apart from the plan by the members' bytes all fell on the one
// member with the most, six or eight of them.
func TestRebalanceDropsWhereItCounted(t *testing.T) {
	in := Input{Replicas: 5, Rebalance: true, Members: members(0, 1, 2, 3, 4), MaxMoves: 8, MaxFillsPerNode: 4,
		Maps: map[string]couch.ShardMap{}, RangeBytes: map[RangeRef]int64{}}
	for i := range 12 {
		db := fmt.Sprintf("db-%02d", i)
		in.Maps[db] = withN(smap(db, map[string][]int{r0: {0, 1, 2}, r1: {0, 1, 2}}), 3)
		in.RangeBytes[RangeRef{db, r0}], in.RangeBytes[RangeRef{db, r1}] = 1000, 1000
	}
	for round := range 3 {
		res := Plan(in)
		if err := checkSafety(in, res); err != nil {
			t.Fatal(err)
		}
		// The controller names a database held from its held add until a plan posts it.
		held := map[string]bool{}
		for db := range in.Held {
			held[db] = !posts(res)[db]
		}
		after := map[string]couch.ShardMap{}
		for db, m := range in.Maps {
			after[db] = m.Clone()
		}
		adds := 0
		for _, a := range res.Actions {
			if a.Kind != AddCopy {
				continue
			}
			adds++
			m := after[a.DB]
			if _, err := Edit(&m, a); err != nil {
				t.Fatal(err)
			}
			after[a.DB] = m
			if a.Held {
				held[a.DB] = true
			}
		}
		if round == 0 && adds != 12 {
			t.Fatalf("first plan %v: want 8 moves filling and 4 held", strs(res))
		}
		in.Maps, in.Held = after, held
		v := newView(in)
		for _, n := range v.staying {
			if v.fills[n] > in.MaxFillsPerNode || v.heldFills[n] > in.MaxFillsPerNode/2 {
				t.Errorf("round %d: %s takes part in %d moves filling and %d held; bounds %d and %d (plan %v)",
					round, n, v.fills[n], v.heldFills[n], in.MaxFillsPerNode, in.MaxFillsPerNode/2, strs(res))
			}
		}
		// Nothing fills: the next round plans only what the slots still allow (none).
	}
}

// TestDrainWaitsForAMemberItKeeps: the one member the drain keeps that lacks a range is at its fill
// limit. The move waits for it rather than going to db-3, which the drain reaches next: that copy
// would have to move again (8 of 86 adds in a real-node drain of 30 databases did).
func TestDrainWaitsForAMemberItKeeps(t *testing.T) {
	three := 3
	b := withN(smap("b", map[string][]int{all: {0, 1, 4}}), 3)
	b.AddCopy(all, name(2)) // filling: db-2's one fill slot is taken
	mem := members(0, 1, 2, 3, 4)
	mem[4].Maintenance, mem[4].Fenced = true, true
	in := Input{Replicas: 5, TargetReplicas: &three, Members: mem, MaxMoves: 8, MaxFillsPerNode: 1,
		Maps: map[string]couch.ShardMap{"a": withN(smap("a", map[string][]int{r0: {0, 1, 4}, r1: {0, 1, 2}}), 3), "b": b}}
	res := Plan(in)
	for _, a := range res.Actions {
		if a.Kind == AddCopy {
			t.Errorf("planned %s while db-2, the member the drain keeps that lacks it, fills another copy", a)
		}
	}
	if err := checkSafety(in, res); err != nil {
		t.Error(err)
	}
}
