package placement

import (
	"cmp"
	"slices"

	"github.com/couchdb-controller/couchdb-controller/couch"
)

// move is a planned rebalance move of one copy of db/rng from one member to another.
type move struct {
	db, rng, from, to string
	size              int64
}

// rebalanceReady reports whether rebalancing may start moves: every staying member is up (a member
// that is down would be balanced against when it returns), no range is short of copies and nothing
// is left on leaving nodes (healing and draining come first).
func (v *view) rebalanceReady() bool {
	if len(v.staying) < 2 || v.downStaying() != "" {
		return false
	}
	for _, db := range sortedDBs(v.in.Maps) {
		if v.frozen[db] {
			continue
		}
		m := v.in.Maps[db]
		for _, rng := range m.Ranges() {
			if len(v.stayingCopies(m, rng)) < v.want(db) {
				return false
			}
			for _, n := range m.ByRange[rng] {
				if v.leaving[n] {
					return false
				}
			}
		}
	}
	return true
}

// planRebalance plans moves toward rule 8, within the budget: first per-database balance (a), then
// bytes (b).
func (v *view) planRebalance(p *planner) {
	if !v.rebalanceReady() {
		return
	}
	for p.budget() > 0 {
		mv, ok := v.countMove(p)
		if !ok {
			break
		}
		p.add(v.in.Maps[mv.db], mv.db, mv.rng, mv.to, mv.from)
	}
	for p.budget() > 0 {
		mv, ok := v.bytesMove(p)
		if !ok {
			break
		}
		p.add(v.in.Maps[mv.db], mv.db, mv.rng, mv.to, mv.from)
	}
}

// movable lists the databases rebalance may move: not frozen, not on every member anyway.
func (v *view) movable() []string {
	var out []string
	for _, db := range sortedDBs(v.in.Maps) {
		if !v.frozen[db] && !v.replicated(db) {
			out = append(out, db)
		}
	}
	return out
}

// dbBytes is the bytes of all of db's copies, as the maps are read (cached: countMove sorts by it for
// every move it plans).
func (v *view) dbBytes(db string) int64 {
	if b, ok := v.dbSize[db]; ok {
		return b
	}
	var b int64
	m := v.in.Maps[db]
	for rng, nodes := range m.ByRange {
		b += v.in.RangeBytes[RangeRef{db, rng}] * int64(len(nodes))
	}
	v.dbSize[db] = b
	return b
}

// spread is the difference between the most and fewest copies of db a staying member holds (projected).
func (v *view) spread(db string) int {
	lo, hi := 1<<30, 0
	for _, n := range v.staying {
		c := v.proj[db][n]
		lo, hi = min(lo, c), max(hi, c)
	}
	return hi - lo
}

// countMove finds the next move toward rule 8a: of the database whose members differ most (then the
// largest), a copy from a member with at least two more copies of it than the target, the largest
// range first, keeping the range's zones.
func (v *view) countMove(p *planner) (move, bool) {
	// The keys are computed once per database, not in the comparisons: with 1,000 databases of q=8
	// the comparisons made 60% of a plan's CPU.
	type cand struct {
		db     string
		spread int
		bytes  int64
	}
	var cands []cand
	for _, db := range v.movable() {
		if sp := v.spread(db); sp >= 2 {
			cands = append(cands, cand{db, sp, v.dbBytes(db)})
		}
	}
	slices.SortStableFunc(cands, func(a, b cand) int {
		if c := cmp.Compare(b.spread, a.spread); c != 0 {
			return c
		}
		return cmp.Compare(b.bytes, a.bytes)
	})
	for _, c := range cands {
		db := c.db
		byCount := func(desc bool) []string {
			ns := slices.Clone(v.staying)
			sign := 1
			if desc {
				sign = -1
			}
			slices.SortStableFunc(ns, func(a, b string) int {
				if c := cmp.Compare(v.proj[db][a], v.proj[db][b]); c != 0 {
					return sign * c
				}
				return sign * cmp.Compare(v.projBytes[a], v.projBytes[b])
			})
			return ns
		}
		for _, from := range byCount(true) {
			for _, to := range byCount(false) {
				if v.proj[db][from]-v.proj[db][to] < 2 {
					break
				}
				if mv, ok := v.pickRange(p, db, from, to, 0); ok {
					return mv, true
				}
			}
		}
	}
	return move{}, false
}

// pickRange picks a range of db that from holds and to does not, with no move in flight, whose move
// keeps its zones, drops from's copy and fits both members' fill slots; the largest (below maxSize when it is > 0:
// a bytes move must shrink the gap between the members) first.
func (v *view) pickRange(p *planner, db, from, to string, maxSize int64) (move, bool) {
	if !p.canFill(from) || !p.canFill(to) {
		return move{}, false
	}
	m := v.in.Maps[db]
	best, found := move{}, false
	for _, rng := range m.ByNode[from] {
		if v.busy[RangeRef{db, rng}] || m.HasCopy(rng, to) || !v.keepsZones(db, m, rng, from, to) || !p.mayFill(RangeRef{db, rng}, to, true) {
			continue
		}
		size := v.in.RangeBytes[RangeRef{db, rng}]
		if maxSize > 0 && (size <= 0 || size >= maxSize) {
			continue
		}
		if v.dropFor(p, db, rng, to) != from {
			continue // the move would drop another member's copy (extraDrop)
		}
		if !found || v.better(size, best.size, maxSize) || size == best.size && rng < best.rng {
			best, found = move{db: db, rng: rng, from: from, to: to, size: size}, true
		}
	}
	return best, found
}

// better orders candidate sizes: the largest for a count move, the one closest to half the gap for a
// bytes move (it lowers the squared bytes most).
func (v *view) better(size, than, gap int64) bool {
	if gap <= 0 {
		return size > than
	}
	d := func(s int64) int64 {
		if x := gap - 2*s; x >= 0 {
			return x
		}
		return 2*s - gap
	}
	return d(size) < d(than) || d(size) == d(than) && size > than
}

// keepsZones reports whether moving the range's copy from one member to another keeps the number of
// zones it covers (up to its goal).
func (v *view) keepsZones(db string, m couch.ShardMap, rng, from, to string) bool {
	if !v.zonesOn {
		return true
	}
	now := v.stayingCopies(m, rng)
	after := append(slices.DeleteFunc(slices.Clone(now), func(n string) bool { return n == from }), to)
	return v.coverage(db, after) >= v.coverage(db, now)
}

// bytesBand is the allowed distance of a member's bytes from the mean: 10% of the mean or the
// largest copy, whichever is larger.
func (v *view) bytesBand() (mean float64, band float64) {
	var total, largest int64
	for _, n := range v.staying {
		total += v.projBytes[n]
	}
	for _, db := range sortedDBs(v.in.Maps) {
		m := v.in.Maps[db]
		for _, rng := range m.Ranges() {
			if len(v.stayingCopies(m, rng)) > 0 {
				largest = max(largest, v.in.RangeBytes[RangeRef{db, rng}])
			}
		}
	}
	mean = float64(total) / float64(len(v.staying))
	return mean, max(mean/10, float64(largest))
}

// bytesMove finds the next move toward rule 8b: from a member above the band (or the fullest, toward
// one below it) to a lighter member, of a copy smaller than the gap between them whose database the
// source holds more copies of than the target, so that 8a stays true.
func (v *view) bytesMove(p *planner) (move, bool) {
	mean, band := v.bytesBand()
	heavy := slices.Clone(v.staying)
	slices.SortStableFunc(heavy, func(a, b string) int { return cmp.Compare(v.projBytes[b], v.projBytes[a]) })
	light := slices.Clone(v.staying)
	slices.SortStableFunc(light, func(a, b string) int { return cmp.Compare(v.projBytes[a], v.projBytes[b]) })
	for _, from := range heavy {
		for _, to := range light {
			bf, bt := float64(v.projBytes[from]), float64(v.projBytes[to])
			if bf <= bt {
				break
			}
			if bf-mean <= band && mean-bt <= band {
				continue // both inside the band: nothing to fix between them
			}
			gap := v.projBytes[from] - v.projBytes[to]
			var best move
			found := false
			for _, db := range v.movable() {
				if v.proj[db][from]-v.proj[db][to] < 1 {
					continue
				}
				mv, ok := v.pickRange(p, db, from, to, gap)
				if ok && (!found || v.better(mv.size, best.size, gap)) {
					best, found = mv, true
				}
			}
			if found {
				return best, true
			}
		}
	}
	return move{}, false
}
