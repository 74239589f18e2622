package placement

import "sort"

// Held moves: a copy added to its map ahead of its slot, its fill started when a slot frees.
//
// A move holds its fill slot from its map edit to the plan that drops the copy it replaces, but the
// copy fills only in between: before, the _sync_shards that fills it waits for the node's
// mem3_shards cache to list the new copy (15-25 ms on the emulator as on CouchDB 3.4.3, up to 56 ms
// on loaded real nodes: controller/listed.go); after, the look that sees the fill done and drops
// comes some milliseconds later. On the emulated move bench a move held its slot about 180 ms for
// a 132 ms fill, a quarter of it in the listing wait.
//
// So once every slot is taken, a plan may add up to MaxMoves/2 more copies (at most
// MaxFillsPerNode/2 more per node) whose post it holds back (Action.Held: no SyncShards for their
// database). Their maps are written and their nodes list them while the other fills run; the first
// plan with a free slot posts them (postHeld) before it starts any other move, and the fill starts
// at once. Only the post waits: the held copy is in the map, fenced like any new copy (rule 10),
// and the range counts as a move in flight for everything but the slot counts. A held database has
// no other move in flight or planned (so no post of it pushes to the held copy early) and one held
// move at a time; a heal (no copy to drop) is never held: nothing would find it in flight again.
//
// The controller names the held databases (Input.Held) while it watches their copies and has posted
// none of them; a controller that restarts has forgotten them and posts them at once, which fills
// up to MaxMoves/2 copies beyond the bound for one round of fills. A write to a held range makes
// mem3 push it into the held copy, as into any copy, before its post: the bound is on what the
// controller starts.
//
// Measured on the emulated move bench (100 databases, six runs each, alternating with the code
// before): the drain went from 1.68x-1.83x of the fill-time bound (mean 1.74x) to 1.61x-1.73x
// (mean 1.66x), the rebalance stayed where it was (1.48x-1.65x against 1.52x-1.64x). What is left
// of a slot's idle time is the look that sees a fill done: a look reads counts every 20-30 ms, and
// a fill that ends during one waits for the next.

// postHeld starts the held moves that fit the slots the moves in flight leave (after planDrops has
// given back those it completes): their database gets its SyncShards, first in the plan, and their
// slots count as taken from now on. The others' databases take no move in this plan.
//
// A verified move whose drop waits for the fills of a fenced member (dropExposes: the range's other
// copies are fenced or filling) fills nothing any more, yet holds its slot until that member's
// fills end; a copy held on that member would then wait for the slot while the drop waits for the
// copy: neither ends. So such a move lends its slot to one held copy on the member its drop waits
// for, and no new copy is held there (canFill).
func (v *view) postHeld(p *planner) {
	// A held database with no held move in flight (its move was undone, or its range is now short
	// of copies) has a copy nothing else would post.
	for _, db := range sortedKeys(v.in.Held) {
		if _, ok := v.in.Maps[db]; ok && v.in.Held[db] && v.heldRanges[db] == nil && !v.frozen[db] && !p.synced[db] {
			p.synced[db] = true
			p.heldPosts = append(p.heldPosts, db)
		}
	}
	dbs := make([]string, 0, len(v.heldRanges))
	for db := range v.heldRanges {
		dbs = append(dbs, db)
	}
	sort.Strings(dbs)
	for _, db := range dbs {
		moves, fills := v.heldNeeds(db)
		fits := v.inFlight+moves <= v.maxMoves
		for n, k := range fills {
			if v.fills[n]+k > v.maxFills {
				fits = false
			}
		}
		if !fits && !p.lendExposed(v.heldTargets(db)) {
			continue
		}
		v.inFlight += moves
		v.held -= moves
		for n, k := range fills {
			v.fills[n] += k
			v.heldFills[n] -= k
		}
		delete(v.heldRanges, db)
		p.synced[db] = true
		p.heldPosts = append(p.heldPosts, db)
		// No new copy of it in this plan: its post would wait for that copy's listing, and the held
		// one's fill with it (on the rebalance bench, the posts that started held fills took 30 ms
		// against 17 in the drain, where fewer activated databases took another move).
		p.freeze(db)
	}
	// The held databases left wait for a slot: no other move of theirs now, or a post of it would
	// start their held fills beyond the bounds.
	for db := range v.heldRanges {
		if !v.frozen[db] {
			p.freeze(db)
		}
	}
}

// heldTargets lists the members filling db's held copies.
func (v *view) heldTargets(db string) []string {
	var out []string
	for _, rr := range v.heldRanges[db] {
		if t, ok := v.filling[rr]; ok {
			out = append(out, t)
		}
	}
	return out
}

// lendExposed takes, for each of targets, the slot of a verified move whose drop waits for its
// fills, if every one has a slot left to lend.
func (p *planner) lendExposed(targets []string) bool {
	if len(targets) == 0 {
		return false
	}
	need := map[string]int{}
	for _, t := range targets {
		need[t]++
	}
	for t, k := range need {
		if len(p.exposing[t])-p.exposingUsed[t] < k {
			return false
		}
	}
	if p.exposingUsed == nil {
		p.exposingUsed = map[string]int{}
	}
	for t, k := range need {
		p.exposingUsed[t] += k
	}
	return true
}

// exposedBy records that rr's verified drop waits for t's fills (dropExposes).
func (p *planner) exposedBy(t string, rr RangeRef) {
	if p.exposing == nil {
		p.exposing = map[string]map[RangeRef]bool{}
	}
	if p.exposing[t] == nil {
		p.exposing[t] = map[RangeRef]bool{}
	}
	p.exposing[t][rr] = true
}

// heldNeeds counts the slots db's held moves take: one per copy to drop, and per node as
// findInFlight counts them.
func (v *view) heldNeeds(db string) (int, map[string]int) {
	m := v.in.Maps[db]
	moves, fills := 0, map[string]int{}
	for _, rr := range v.heldRanges[db] {
		drop := v.toDrop[rr]
		moves += len(drop)
		for _, node := range drop {
			if v.countsAsFill(node) {
				fills[node]++
			}
		}
		if n := newestCopy(m, rr.Range); v.isStaying[n] {
			fills[n]++
		}
	}
	return moves, fills
}

// planHeld plans the held moves: the moves the slots left out, chosen as they would be, up to
// MaxMoves/2 held in the cluster and MaxFillsPerNode/2 per node, on databases with nothing in
// flight, planned or held.
func (v *view) planHeld(p *planner, rebalance bool) {
	defer p.thawAll()
	if v.maxMoves/2 == 0 || v.maxFills/2 == 0 {
		return
	}
	for _, db := range sortedDBs(v.in.Maps) {
		if !v.frozen[db] && (p.synced[db] || v.in.Held[db] || v.anyBusy(db)) {
			p.freeze(db)
		}
	}
	p.holding = true
	v.planHeal(p)
	v.planZoneFix(p)
	if rebalance {
		v.planRebalance(p)
	}
	p.holding = false
}

// thawAll undoes the plan's freeze calls: the view is as read again.
func (p *planner) thawAll() {
	for _, db := range p.thaw {
		delete(p.v.frozen, db)
	}
	p.thaw = nil
}

// hold records a held add of db: the database takes no second one in this pass.
func (p *planner) hold(db string) {
	if !p.v.frozen[db] {
		p.freeze(db)
	}
}

func (p *planner) freeze(db string) {
	p.v.frozen[db] = true
	p.thaw = append(p.thaw, db)
}

func (v *view) anyBusy(db string) bool {
	for _, rng := range v.in.Maps[db].Ranges() {
		if v.busy[RangeRef{db, rng}] {
			return true
		}
	}
	return false
}
