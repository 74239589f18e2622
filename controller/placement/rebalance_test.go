package placement

import (
	"fmt"
	"maps"
	"math/rand"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/couchdb-controller/couchdb-controller/couch"
)

func TestRebalanceMoves(t *testing.T) {
	q4 := map[string][]int{"0": {0, 1, 2}, "4": {0, 1, 2}, "8": {0, 1, 2}, "c": {0, 1, 2}}
	cases := map[string]struct {
		in   Input
		want []string
	}{
		"the big user database moves, not the small system ones": {
			in: Input{Replicas: 5, Rebalance: true, Members: members(0, 1, 2, 3, 4), MaxMoves: 1,
				Maps:       map[string]couch.ShardMap{"_users": smap("_users", map[string][]int{all: {0, 1, 2}}), "acc1": smap("acc1", q4)},
				RangeBytes: map[RangeRef]int64{{"_users", all}: 1 << 10, {"acc1", "0"}: 1 << 20, {"acc1", "4"}: 1 << 20, {"acc1", "8"}: 1 << 20, {"acc1", "c"}: 1 << 20}},
			// Every range of acc1 is as large and on the same members: the first move is of the
			// first range whose drop (extraDrop) is the member with the most bytes, 0.
			want: []string{"AddCopy(acc1/4 on " + name(3) + ")", "SyncShards(acc1)"},
		},
		"several moves at once, each range once, targets within their fill slots": {
			in: Input{Replicas: 5, Rebalance: true, Members: members(0, 1, 2, 3, 4), MaxMoves: 8, MaxFillsPerNode: 2,
				Maps:       map[string]couch.ShardMap{"acc1": smap("acc1", q4)},
				RangeBytes: map[RangeRef]int64{{"acc1", "0"}: 1 << 20, {"acc1", "4"}: 1 << 20, {"acc1", "8"}: 1 << 20, {"acc1", "c"}: 1 << 20}},
			// 12 copies over 5 members end 3,3,2,2,2: four moves, one per range, started together;
			// 2 gives two (it is the source of two fills, its limit), 0 and 1 one each
			// (TestRebalanceDropsWhereItCounted checks where the drops fall).
			want: []string{"AddCopy(acc1/4 on " + name(3) + ")", "AddCopy(acc1/8 on " + name(4) + ")", "AddCopy(acc1/0 on " + name(3) + ")", "AddCopy(acc1/c on " + name(4) + ")", "SyncShards(acc1)"},
		},
		"a balanced database is left alone even when the total copies per member differ": {
			in: Input{Replicas: 4, Rebalance: true, Members: members(0, 1, 2, 3), MaxMoves: 4,
				Maps:       map[string]couch.ShardMap{"a": smap("a", map[string][]int{r0: {0, 1}, r1: {2, 3}}), "b": smap("b", map[string][]int{all: {0, 1}})},
				RangeBytes: map[RangeRef]int64{{"a", r0}: 100, {"a", r1}: 100, {"b", all}: 100}},
		},
		"bytes: a copy moves from the fullest member to one below the band": {
			in: Input{Replicas: 3, Rebalance: true, Members: members(0, 1, 2), MaxMoves: 1,
				Maps:       map[string]couch.ShardMap{"big": smap("big", map[string][]int{r0: {0}, r1: {1}}), "x": smap("x", map[string][]int{r0: {0}, r1: {1}})},
				RangeBytes: map[RangeRef]int64{{"big", r0}: 1000, {"big", r1}: 1000, {"x", r0}: 900, {"x", r1}: 900}},
			// 0 and 1 hold 1900, 2 nothing: the band is the largest copy (1000). Both copies of 0 close
			// the gap equally well (to 100); the larger goes.
			want: []string{"AddCopy(big/" + r0 + " on " + name(2) + ")", "SyncShards(big)"},
		},
		"no move that leaves a range fewer zones": {
			in: Input{Replicas: 4, Rebalance: true, Members: members(0, 1, 2, 3), MaxMoves: 4,
				Zones:      map[string]string{name(0): "a", name(1): "b", name(2): "b", name(3): "a"},
				Maps:       map[string]couch.ShardMap{"d": smap("d", map[string][]int{r0: {0, 1}, r1: {0, 2}, "x": {0, 1}})},
				RangeBytes: map[RangeRef]int64{{"d", r0}: 10, {"d", r1}: 10, {"d", "x"}: 10}},
			// 0 (zone a) holds 3 of 6, 3 (zone a) none: moves within zone a.
			want: []string{"AddCopy(d/" + r0 + " on " + name(3) + ")", "SyncShards(d)"},
		},
		"not while a drain is under way": {
			in: Input{Replicas: 4, TargetReplicas: func() *int { n := 3; return &n }(), Rebalance: true, MaxMoves: 4,
				Members: []Member{{Name: name(0), Ordinal: 0, Live: true}, {Name: name(1), Ordinal: 1, Live: true}, {Name: name(2), Ordinal: 2, Live: true}, {Name: name(3), Ordinal: 3, Live: true, Maintenance: true}},
				Maps:    map[string]couch.ShardMap{"a": smap("a", map[string][]int{r0: {0, 1, 3}, r1: {0, 1, 2}})}},
			want: []string{"AddCopy(a/" + r0 + " on " + name(2) + ")", "SyncShards(a)"},
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			res := Plan(tc.in)
			if diff := cmp.Diff(tc.want, strs(res)); diff != "" {
				t.Errorf("actions (-want +got):\n%s\nwaiting %q", diff, res.Waiting)
			}
		})
	}
}

// sim is a cluster without CouchDB: shard maps edited with Edit, copies that fill only after a
// SyncShards of their database and a coin flip, and stats that say so.
type sim struct {
	rng     *rand.Rand
	sizes   map[string]int64 // copy size per database; drawn from its name when absent
	in      Input
	filled  map[CopyKey]bool
	synced  map[string]bool // a SyncShards since the database's last added copy
	held    map[string]bool // a held add (held.go) since
	applied int
}

func (s *sim) stats() {
	s.in.Held = maps.Clone(s.held)
	s.in.Stats = map[CopyKey]CopyStat{}
	for _, k := range StatsNeeded(s.in) {
		st := CopyStat{UUID: "u" + k.Node}
		if s.filled[k] {
			st.Docs, st.Seq, st.Pushed = 10, 10, map[string]int64{}
			for _, o := range s.in.Maps[k.DB].ByRange[k.Range] {
				if s.filled[CopyKey{k.DB, k.Range, o}] {
					st.Pushed["u"+o] = 10
				}
			}
		}
		s.in.Stats[k] = st
	}
	s.in.RangeBytes = map[RangeRef]int64{}
	for _, r := range SizesNeeded(s.in) {
		s.in.RangeBytes[r] = s.size(r.DB)
	}
}

func (s *sim) size(db string) int64 {
	if b, ok := s.sizes[db]; ok {
		return b
	}
	var n int
	fmt.Sscanf(db, "db%d", &n)
	return int64(1+n*n*37%97) << 10
}

// step plans once and applies the plan; it reports whether anything was planned.
func (s *sim) step(t *testing.T) bool {
	for k := range s.filled {
		if !s.filled[k] && s.synced[k.DB] && s.rng.Intn(2) == 0 {
			s.filled[k] = true
		}
	}
	s.stats()
	res := Plan(s.in)
	if err := checkSafety(s.in, res); err != nil {
		t.Fatal(err)
	}
	for _, a := range res.Actions {
		if !s.apply(t, a) {
			t.Fatalf("unexpected %s", a)
		}
	}
	return len(res.Actions) > 0
}

// apply applies one shard step (map edits, syncs, fences) and reports whether it was one.
func (s *sim) apply(t *testing.T, a Action) bool {
	switch a.Kind {
	case AddCopy, RemoveCopy:
		m := s.in.Maps[a.DB].Clone()
		if _, err := Edit(&m, a); err != nil {
			t.Fatal(err)
		}
		s.in.Maps[a.DB] = m
		if a.Kind == AddCopy {
			s.filled[CopyKey{a.DB, a.Range, a.Node}] = false
			s.synced[a.DB] = false
			if a.Held {
				if s.held == nil {
					s.held = map[string]bool{}
				}
				s.held[a.DB] = true
			}
		}
		s.applied++
	case SyncShards:
		s.synced[a.DB] = true
		delete(s.held, a.DB)
	case FenceTarget, ClearMaintenance, SetMaintenance:
		for i := range s.in.Members {
			if s.in.Members[i].Name == a.Node {
				on := a.Kind != ClearMaintenance
				s.in.Members[i].Maintenance, s.in.Members[i].Fenced = on, on && a.Value != DrainModeServing
			}
		}
	default:
		return false
	}
	return true
}

// TestRebalanceFixpoint applies plans to simulated clusters (2-7 members, zones off or equal zones,
// 1-6 databases of q 1-8 and n 1-3 created on the first members, as after a scale-up, or anywhere,
// zones ignored) until a plan is
// empty, and asserts that this happens, and that the fixpoint meets rule 8: every database spread
// floor/ceil, bytes within the band, every range at n copies covering min(n, zones) zones.
func TestRebalanceFixpoint(t *testing.T) {
	for seed := int64(0); seed < 400; seed++ {
		rng := rand.New(rand.NewSource(seed))
		nMembers := 2 + rng.Intn(6)
		zoneN := 0
		if rng.Intn(2) == 0 && nMembers%3 == 0 {
			zoneN = 3
		} else if rng.Intn(2) == 0 && nMembers%2 == 0 {
			zoneN = 2
		}
		s := &sim{rng: rng, filled: map[CopyKey]bool{}, synced: map[string]bool{}}
		s.in = Input{Replicas: nMembers, Rebalance: true, Members: members(seqInts(nMembers)...), Maps: map[string]couch.ShardMap{},
			MaxMoves: 1 + rng.Intn(8), MaxFillsPerNode: 1 + rng.Intn(3)}
		if zoneN > 0 {
			s.in.Zones = map[string]string{}
			for i := 0; i < nMembers; i++ {
				s.in.Zones[name(i)] = fmt.Sprintf("z%d", i%zoneN)
			}
		}
		scatter := rng.Intn(2) == 0
		for d := 0; d < 1+rng.Intn(6); d++ {
			q, n := 1+rng.Intn(8), 1+rng.Intn(min(3, nMembers))
			if zoneN > 0 {
				n = 1 + rng.Intn(zoneN)
			}
			by := map[string][]int{}
			for r := 0; r < q; r++ {
				// On the first n members (one per zone, as CouchDB places with a zone rule), or on any n
				// (as CouchDB places without one: zones short, for the heal to fix).
				holders := seqInts(n)
				if scatter {
					holders = rng.Perm(nMembers)[:n]
				}
				by[fmt.Sprintf("r%d", r)] = holders
			}
			db := fmt.Sprintf("db%d", d)
			s.in.Maps[db] = smap(db, by)
			for _, rng := range s.in.Maps[db].Ranges() {
				for _, node := range s.in.Maps[db].ByRange[rng] {
					s.filled[CopyKey{db, rng, node}] = true
				}
			}
		}
		steps := 0
		for ; s.step(t); steps++ {
			if steps > 3000 {
				t.Fatalf("seed %d: no fixpoint after %d plans (%d edits)", seed, steps, s.applied)
			}
		}
		checkRule8(t, seed, s.in)
	}
}

func seqInts(n int) []int {
	out := make([]int, n)
	for i := range out {
		out[i] = i
	}
	return out
}

func checkRule8(t *testing.T, seed int64, in Input) {
	t.Helper()
	v := newView(in)
	var total, largest int64
	bytes := map[string]int64{}
	for _, db := range sortedDBs(in.Maps) {
		m := in.Maps[db]
		count := map[string]int{}
		for _, n := range v.staying {
			count[n] = len(m.ByNode[n])
			for _, r := range m.ByNode[n] {
				b := in.RangeBytes[RangeRef{db, r}]
				bytes[n] += b
				total += b
				largest = max(largest, b)
			}
		}
		lo, hi := 1<<30, 0
		for _, c := range count {
			lo, hi = min(lo, c), max(hi, c)
		}
		if hi-lo > 1 {
			t.Errorf("seed %d: %s spread %v", seed, db, count)
		}
		for _, r := range m.Ranges() {
			if len(m.ByRange[r]) != DBN(m) {
				t.Errorf("seed %d: %s/%s has %v, n=%d", seed, db, r, m.ByRange[r], DBN(m))
			}
			if v.zonesOn && v.zoneCount(m.ByRange[r]) < min(DBN(m), len(v.zones)) {
				t.Errorf("seed %d: %s/%s copies %v cover too few zones", seed, db, r, m.ByRange[r])
			}
		}
	}
	mean := float64(total) / float64(len(v.staying))
	band := max(mean/10, float64(largest))
	for n, b := range bytes {
		if d := float64(b) - mean; d > band || -d > band {
			t.Errorf("seed %d: %s holds %d bytes, mean %.0f, band %.0f: %v", seed, n, b, mean, band, bytes)
		}
	}
}

// TestRebalanceScaleUpSpreadsTheUserData is issue 12's case: 3 -> 5 members with acc1 (q=4, n=3)
// dwarfing _users, _replicator and a replicated database. At the fixpoint every member holds 2 or 3
// of acc1's 12 copies and the bytes are within the band, where balancing total copies had left one
// member with none of acc1.
func TestRebalanceScaleUpSpreadsTheUserData(t *testing.T) {
	for _, maxMoves := range []int{1, 8} {
		s := &sim{rng: rand.New(rand.NewSource(1)), filled: map[CopyKey]bool{}, synced: map[string]bool{}}
		s.in = Input{Replicas: 5, Rebalance: true, Members: members(0, 1, 2, 3, 4), Replicate: []string{"rep"}, MaxMoves: maxMoves,
			Maps: map[string]couch.ShardMap{
				"_users":      smap("_users", map[string][]int{all: {0, 1, 2}}),
				"_replicator": smap("_replicator", map[string][]int{all: {0, 1, 2}}),
				"rep":         smap("rep", map[string][]int{all: {0, 1, 2, 3, 4}}),
				"acc1":        smap("acc1", map[string][]int{"0": {0, 1, 2}, "4": {0, 1, 2}, "8": {0, 1, 2}, "c": {0, 1, 2}}),
			}}
		for db, m := range s.in.Maps {
			for _, r := range m.Ranges() {
				for _, n := range m.ByRange[r] {
					s.filled[CopyKey{db, r, n}] = true
				}
			}
		}
		s.sizes = map[string]int64{"_users": 16 << 10, "_replicator": 16 << 10, "rep": 20 << 10, "acc1": 4 << 20}
		plans := 0
		for {
			for k := range s.filled {
				s.filled[k] = s.filled[k] || s.synced[k.DB] // _sync_shards fills a copy at once
			}
			s.stats()
			res := Plan(s.in)
			if len(res.Actions) == 0 {
				break
			}
			if plans++; plans > 200 {
				t.Fatalf("max moves %d: no fixpoint", maxMoves)
			}
			for _, a := range res.Actions {
				s.apply(t, a)
			}
		}
		acc := s.in.Maps["acc1"]
		for i := 0; i < 5; i++ {
			if c := len(acc.ByNode[name(i)]); c < 2 || c > 3 {
				t.Errorf("max moves %d: %s holds %d of acc1's copies: %v", maxMoves, name(i), c, acc.ByNode)
			}
		}
		checkRule8(t, int64(maxMoves), s.in)
		t.Logf("max moves %d: %d plans", maxMoves, plans)
	}
}

// BenchmarkPlanRebalance plans the start of a rebalance of 1,000 databases of q=8 from three members
// to five (go test -bench PlanRebalance ./controller/placement): every look while copies move plans
// over every map.
func BenchmarkPlanRebalance(b *testing.B) {
	in := Input{Replicas: 5, Rebalance: true, Members: members(0, 1, 2, 3, 4), MaxMoves: 8, MaxFillsPerNode: 4,
		Maps: map[string]couch.ShardMap{}, RangeBytes: map[RangeRef]int64{}}
	for i := range 1000 {
		db := fmt.Sprintf("db-%04d", i)
		byRange := map[string][]int{}
		for r := range 8 {
			rng := fmt.Sprintf("%08x", r<<28)
			byRange[rng] = []int{0, 1, 2}
			in.RangeBytes[RangeRef{db, rng}] = int64(1000 + i)
		}
		in.Maps[db] = withN(smap(db, byRange), 3)
	}
	for b.Loop() {
		Plan(in)
	}
}
