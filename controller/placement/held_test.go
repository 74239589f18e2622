package placement

import (
	"slices"
	"testing"

	"github.com/couchdb-controller/couchdb-controller/couch"
)

// TestHeldMoves follows one rebalance of four q=2 databases from three members to five,
// two moves at a time (held.go): the plan that fills both slots holds one more add, the held
// database gets no post and no other move while the slots are taken, and the plan that completes a
// move posts it first, in the freed slot. A controller that restarted has forgotten what it held:
// the held copy is a move in flight like any other, pushed and counted.
func TestHeldMoves(t *testing.T) {
	dbs := []string{"a", "b", "c", "d"}
	in := Input{Replicas: 5, Rebalance: true, Members: members(0, 1, 2, 3, 4), MaxMoves: 2, MaxFillsPerNode: 4,
		Maps: map[string]couch.ShardMap{}}
	for _, db := range dbs {
		in.Maps[db] = withN(smap(db, map[string][]int{r0: {0, 1, 2}, r1: {0, 1, 2}}), 3)
	}
	first := Plan(in)
	if err := checkSafety(in, first); err != nil {
		t.Fatal(err)
	}
	var filling, held []string
	for _, a := range first.Actions {
		switch {
		case a.Kind == AddCopy && a.Held:
			held = append(held, a.DB)
		case a.Kind == AddCopy:
			filling = append(filling, a.DB)
		}
	}
	if len(filling) != 2 || len(held) != 1 {
		t.Fatalf("first plan %v: want 2 adds filling and 1 held (MaxMoves 2, half again held)", strs(first))
	}
	h := held[0]
	if posts(first)[h] {
		t.Fatalf("first plan %v posts the held database %s", strs(first), h)
	}
	// The maps once the first plan is written; every copy as full as its range but the new ones.
	after := map[string]couch.ShardMap{}
	for db, m := range in.Maps {
		after[db] = m.Clone()
	}
	added := map[RangeRef]string{}
	for _, a := range first.Actions {
		if a.Kind == AddCopy {
			m := after[a.DB]
			if _, err := Edit(&m, a); err != nil {
				t.Fatal(err)
			}
			after[a.DB] = m
			added[RangeRef{a.DB, a.Range}] = a.Node
		}
	}
	counts := func(full ...string) map[CopyKey]CopyStat {
		st := map[CopyKey]CopyStat{}
		for _, db := range dbs {
			for _, rng := range after[db].Ranges() {
				n, moving := added[RangeRef{db, rng}]
				filled := !moving || slices.Contains(full, db)
				var ords []int
				for _, c := range after[db].ByRange[rng] {
					if c != n || filled {
						ords = append(ords, ordinalOf(c))
					}
				}
				for k, s := range stats(db, rng, 10, ords...) {
					st[k] = s
				}
				if !filled {
					st[CopyKey{db, rng, n}] = CopyStat{UUID: "u" + n}
				}
			}
		}
		return st
	}
	next := func(held map[string]bool, full ...string) Result {
		t.Helper()
		in := in
		in.Maps, in.Held, in.Stats = after, held, counts(full...)
		res := Plan(in)
		if err := checkSafety(in, res); err != nil {
			t.Fatal(err)
		}
		return res
	}

	t.Run("slots taken: the held database waits, with no other move", func(t *testing.T) {
		res := next(map[string]bool{h: true})
		for _, a := range res.Actions {
			if a.DB == h {
				t.Errorf("%v: %s for held %s while both slots fill", strs(res), a, h)
			}
			if a.Kind == AddCopy && a.Held {
				t.Errorf("%v: a second held add (%s) beyond MaxMoves/2", strs(res), a)
			}
		}
	})
	t.Run("completed moves post the held database first, in a freed slot", func(t *testing.T) {
		res := next(map[string]bool{h: true}, filling...)
		if !posts(res)[h] {
			t.Fatalf("%v: no SyncShards(%s)", strs(res), h)
		}
		edited := slices.ContainsFunc(res.Actions, func(a Action) bool { return a.DB == h && a.Kind != SyncShards })
		if first := withoutFences(res.Actions)[0]; !edited && (first.Kind != SyncShards || first.DB != h) {
			t.Errorf("%v: want SyncShards(%s) first (the plan leaves its map alone)", strs(res), h)
		}
		drops, adds := 0, 0
		for _, a := range res.Actions {
			switch {
			case a.Kind == RemoveCopy:
				drops++
			case a.Kind == AddCopy && !a.Held:
				adds++
			}
		}
		if drops != len(filling) || adds > drops-1 {
			t.Errorf("%v: %d moves completed, %d new fills: the held one takes a freed slot", strs(res), drops, adds)
		}
	})
	t.Run("a restart forgot the hold: the copy is a move in flight, pushed and counted", func(t *testing.T) {
		res := next(nil)
		if !posts(res)[h] {
			t.Errorf("%v: no SyncShards(%s) for its empty copy", strs(res), h)
		}
		for _, a := range res.Actions {
			if a.Kind == AddCopy && !a.Held {
				t.Errorf("%v: %s beyond the 2 slots (3 moves in flight)", strs(res), a)
			}
		}
	})
	t.Run("one move at a time holds nothing", func(t *testing.T) {
		in := in
		in.MaxMoves = 1
		res := Plan(in)
		if slices.ContainsFunc(res.Actions, func(a Action) bool { return a.Held }) {
			t.Errorf("%v: a held add with MaxMoves 1", strs(res))
		}
	})
}

func posts(res Result) map[string]bool {
	out := map[string]bool{}
	for _, a := range res.Actions {
		if a.Kind == SyncShards {
			out[a.DB] = true
		}
	}
	return out
}
