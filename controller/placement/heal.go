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
// with the fewest live copies first, then those whose members able to take them have the most
// ranges waiting (a drain to n members leaves each range one: a member left for last would fill
// alone, at its MaxFillsPerNode, while the others idle), then the largest.
func (v *view) planHeal(p *planner) {
	type short struct {
		db, rng string
		live    int
		backlog int
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
				todo = append(todo, short{db, rng, len(v.liveCopies(m, rng)), 0, v.in.RangeBytes[RangeRef{db, rng}]})
			}
		}
	}
	backlog := map[string]int{}
	for _, s := range todo {
		for _, n := range v.takers(s.db, s.rng) {
			backlog[n]++
		}
	}
	for i, s := range todo {
		for _, n := range v.takers(s.db, s.rng) {
			todo[i].backlog = max(todo[i].backlog, backlog[n])
		}
	}
	sort.SliceStable(todo, func(i, j int) bool {
		if todo[i].live != todo[j].live {
			return todo[i].live < todo[j].live
		}
		if todo[i].backlog != todo[j].backlog {
			return todo[i].backlog > todo[j].backlog
		}
		return todo[i].size > todo[j].size
	})
	// Two passes: the heals and the moves whose target is already fenced for a fill, then the rest.
	// Moves keep going to a fenced member while it has any to take, so its fence is not lifted for
	// another member's: only once the ranges that could go to it are done can two members be
	// fenced at once (rule 10 lets a member be fenced only while every range it holds keeps a
	// serving copy elsewhere, and in a drain most ranges share two members with the drained node).
	// With the drained node serving (DrainMode), fences do not exclude each other that way: one pass.
	passes := 2
	if v.drainServes {
		passes = 1
	}
	if !p.holding {
		p.resting = v.restFence(p, backlog) // the pass that holds keeps the slot pass's choice
	}
	done := make([]bool, len(todo))
	for pass := range passes {
		for i, s := range todo {
			if done[i] {
				continue
			}
			more, skipped := v.healRange(p, s.db, s.rng, pass == 0 && passes == 2)
			if !more {
				return
			}
			done[i] = !skipped
		}
	}
}

// healRange adds the copies one range lacks, within the budget; with warmOnly, a move (a range that
// keeps its live copies meanwhile) only onto a member fenced for a fill already. more is false once
// the budget is spent; skipped says warmOnly left the range for later, untouched.
func (v *view) healRange(p *planner, db, rng string, warmOnly bool) (more, skipped bool) {
	m := v.in.Maps[db]
	// The copy this heal will let go: the drained node's, which takes part in the fill.
	src := ""
	if v.drain != "" && !v.drainDown && m.HasCopy(rng, v.drain) {
		src = v.drain
	}
	if p.holding && (v.frozen[db] || src == "") {
		// Of the copies a range lacks, only a drain's moves are held (held.go), one per database:
		// any other may have no copy to drop, or one on a drained node that is down, held back;
		// either way no move in flight for the next plan to post.
		return true, true
	}
	holders := slices.Clone(m.ByRange[rng])
	for k := v.want(db) - len(v.stayingCopies(m, rng)); k > 0; k-- {
		if p.budget() <= 0 || !p.canFill(src) {
			return false, false
		}
		// A move keeps the range's live copies meanwhile (a drain's); a heal restores one.
		move := len(v.liveCopies(m, rng)) >= v.want(db)
		target, fenceWait, blocked := v.pick(p, RangeRef{db, rng}, holders, false, move)
		if src != "" && move && fenceWait != "" {
			// A drain move waits for the member it would go to rather than extend another member's
			// fence: a fence kept busy with moves that could go elsewhere keeps every other member
			// from being fenced (and filled) alongside it. It waits only for fills in flight.
			p.wait(fmt.Sprintf("a copy of %s/%s waits for the fills on other members to end before %s can be fenced for it", db, rng, fenceWait))
			return true, warmOnly && len(holders) == len(m.ByRange[rng])
		}
		if target == "" {
			if !blocked {
				p.wait(fmt.Sprintf("no live member can take a copy of %s/%s", db, rng))
			}
			break
		}
		if warmOnly && move && !p.fencedForFill(target) {
			return true, len(holders) == len(m.ByRange[rng])
		}
		p.add(m, db, rng, target, src)
		src = "" // one fill slot of the drained node per range
		holders = append(holders, target)
	}
	return true, false
}

// target picks the live staying member to take a new copy of a range of db held by holders: one in a
// zone the range lacks (required with needZone), then one a target-replicas drain keeps (not one it
// drains later; for a move, never one it drains later while a member it keeps lacks the range), then
// the fewest copies of db, the fewest bytes, the fewest copies, the lowest name. blocked reports that
// members could take it but are at their fill limit (or are kept members a move waits for).
func (v *view) target(p *planner, rr RangeRef, holders []string, needZone, move bool) (string, bool) {
	best, _, blocked := v.pick(p, rr, holders, needZone, move)
	return best, blocked
}

// pick is target, and also the member target would pick but for the fill fences of other members
// (fenceWait: it has a free fill slot, but mayFill says to wait for their fills to end), "" when
// that is the member picked.
func (v *view) pick(p *planner, rr RangeRef, holders []string, needZone, move bool) (best, fenceWait string, blocked bool) {
	db := rr.DB
	has := map[string]bool{}
	for _, h := range holders {
		if v.isStaying[h] {
			has[v.in.Zones[h]] = true
		}
	}
	var bestKey, waitKey [5]int64
	// A move (the range keeps its live copies meanwhile) goes to a member a target-replicas drain
	// reaches later only when no member it keeps lacks the range: a copy put there moves again, and
	// the move waits for a kept member at its fill limit instead. A heal takes any member.
	keptLacks := move && slices.ContainsFunc(v.liveStaying(), func(n string) bool {
		return !v.leavesLater[n] && !slices.Contains(holders, n)
	})
	for _, n := range v.liveStaying() {
		if slices.Contains(holders, n) {
			continue
		}
		if keptLacks && v.leavesLater[n] {
			blocked = true
			continue
		}
		z := v.in.Zones[n]
		lacking := v.zonesOn && z != "" && !has[z]
		if needZone && !lacking {
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
		if n == p.resting {
			blocked = true
			continue
		}
		if !p.canFill(n) || !p.mayFill(rr, n, move) {
			blocked = true
			if p.canFill(n) && (fenceWait == "" || slices.Compare(key[:], waitKey[:]) < 0) {
				fenceWait, waitKey = n, key
			}
			continue
		}
		if best == "" || slices.Compare(key[:], bestKey[:]) < 0 {
			best, bestKey = n, key
		}
	}
	if best != "" && fenceWait != "" && slices.Compare(bestKey[:], waitKey[:]) < 0 {
		fenceWait = ""
	}
	return best, fenceWait, best == "" && blocked
}

// restFence picks the member fenced for fills that takes no new copy in this plan, or "". Fill
// fences exclude each other when most ranges are held by every staying member (a drain to n
// members): only some members can be fenced at once, and one kept fenced while it has copies to
// take keeps the others waiting until it has none. In one drain of 100 databases the two members
// fenced first had 49 and 48 copies to take and the third 23, which it filled alone, at its
// MaxFillsPerNode, after them: the last second of the 7. The shortest schedule (McNaughton's,
// for one member per fence and equal fills) has the waiting member start once its backlog (the
// ranges it is to take) is as large as the fenced members' together, in the place of the fenced
// one with the least left, which resumes when another fence lifts: all then end together. So
// a fenced one rests: it takes no new copy, its fills end, its fence lifts and the waiting member is
// fenced. Only moves wait for it; fences and drops are decided as before.
func (v *view) restFence(p *planner, backlog map[string]int) string {
	if v.drain == "" || v.drainDown {
		return "" // heals go unfenced: only a drain's moves wait for fences
	}
	f := p.fenceState()
	fenced := sortedKeys(f.set)
	if len(fenced) == 0 {
		return ""
	}
	// The member that rests is the one with the fewest fills in flight, then the least backlog: once
	// it rests, its fills only end, so the next plans pick it again until its fence lifts.
	filling := map[string]int{}
	for _, n := range v.filling {
		filling[n]++
	}
	sum, least := 0, fenced[0]
	for _, g := range fenced {
		sum += backlog[g]
		if filling[g] < filling[least] || filling[g] == filling[least] && backlog[g] < backlog[least] {
			least = g
		}
	}
	without := map[string]bool{}
	for _, g := range fenced {
		without[g] = g != least
	}
	for _, w := range v.liveStaying() {
		if f.set[w] || backlog[w] == 0 || backlog[w] < sum || v.leavesLater[w] || p.safeToFence(w, RangeRef{}, f.set) {
			continue
		}
		if p.safeToFence(w, RangeRef{}, without) {
			return least
		}
	}
	return ""
}

// takers are the live staying members without a copy of rng: those a copy it lacks may go to.
func (v *view) takers(db, rng string) []string {
	m := v.in.Maps[db]
	var out []string
	for _, n := range v.staying {
		if v.live[n] && !m.HasCopy(rng, n) {
			out = append(out, n)
		}
	}
	return out
}
