package placement

import (
	"fmt"
	"slices"
	"sort"
)

// createReplicated creates the first database of couchdb.io/replicate that does not exist, while
// every staying member is up.
func (v *view) createReplicated() (*Action, string) {
	for _, db := range v.in.Replicate {
		if _, ok := v.in.Maps[db]; ok || slices.Contains(v.in.DBs, db) || len(v.staying) == 0 {
			continue
		}
		if down := v.downStaying(); down != "" {
			// The coordinator's _dbs may be stale: the database may have been created while it was down,
			// through a member that is down now. Creating it again would give _dbs two first revisions of
			// its map, and the losing one's copies would be dropped with whatever was written to them.
			return nil, fmt.Sprintf("database %s (%s) is created once every member is up: %s is not", db, "couchdb.io/replicate", down)
		}
		return &Action{Kind: CreateDB, DB: db, N: len(v.staying)}, ""
	}
	return nil, ""
}

// planHeal adds the copies ranges lack on staying members (rule 6), within the move budget: ranges
// with the fewest live copies first, then the largest.
func (v *view) planHeal(p *planner) {
	type short struct {
		db, rng string
		live    int
		size    int64
	}
	var todo []short
	for _, db := range sortedDBs(v.in.Maps) {
		if v.frozen[db] {
			continue
		}
		m := v.in.Maps[db]
		for _, rng := range m.Ranges() {
			if len(v.stayingCopies(m, rng)) < v.want(db) {
				todo = append(todo, short{db, rng, len(v.liveCopies(m, rng)), v.in.RangeBytes[RangeRef{db, rng}]})
			}
		}
	}
	sort.SliceStable(todo, func(i, j int) bool {
		if todo[i].live != todo[j].live {
			return todo[i].live < todo[j].live
		}
		return todo[i].size > todo[j].size
	})
	for _, s := range todo {
		m := v.in.Maps[s.db]
		// The copy this heal will let go: the drained node's, which takes part in the fill.
		src := ""
		if v.drain != "" && !v.drainDown && m.HasCopy(s.rng, v.drain) {
			src = v.drain
		}
		holders := slices.Clone(m.ByRange[s.rng])
		for k := v.want(s.db) - len(v.stayingCopies(m, s.rng)); k > 0; k-- {
			if p.budget() <= 0 || !p.canFill(src) {
				return
			}
			// A move keeps the range's live copies meanwhile (a drain's); a heal restores one.
			move := len(v.liveCopies(m, s.rng)) >= v.want(s.db)
			target, blocked := v.target(p, RangeRef{s.db, s.rng}, holders, false, move)
			if target == "" {
				if !blocked {
					p.wait(fmt.Sprintf("no live member can take a copy of %s/%s", s.db, s.rng))
				}
				break
			}
			p.add(m, s.db, s.rng, target, src)
			src = "" // one fill slot of the drained node per range
			holders = append(holders, target)
		}
	}
}

// target picks the live staying member to take a new copy of a range of db held by holders: one in a
// zone the range lacks (required with needZone), then one a target-replicas drain keeps (not one it
// drains later), then the fewest copies of db, the fewest bytes, the fewest copies, the lowest name.
// blocked reports that members could take it but are at their fill limit.
func (v *view) target(p *planner, rr RangeRef, holders []string, needZone, move bool) (string, bool) {
	db := rr.DB
	has := map[string]bool{}
	for _, h := range holders {
		if v.isStaying[h] {
			has[v.in.Zones[h]] = true
		}
	}
	best, blocked := "", false
	var bestKey [5]int64
	for _, n := range v.liveStaying() {
		if slices.Contains(holders, n) {
			continue
		}
		z := v.in.Zones[n]
		lacking := v.zonesOn && z != "" && !has[z]
		if needZone && !lacking {
			continue
		}
		if !p.canFill(n) || !p.mayFill(rr, n, move) {
			blocked = true
			continue
		}
		newZone := int64(1)
		if lacking {
			newZone = 0
		}
		later := int64(0)
		if v.leavesLater[n] {
			later = 1
		}
		key := [5]int64{newZone, later, int64(v.proj[db][n]), v.projBytes[n], int64(v.load[n])}
		if best == "" || slices.Compare(key[:], bestKey[:]) < 0 {
			best, bestKey = n, key
		}
	}
	return best, best == "" && blocked
}
