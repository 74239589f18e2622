package placement

import (
	"github.com/couchdb-controller/couchdb-controller/couch"
)

// findInFlight reads the moves in flight from the maps alone: a range with a copy to drop (on a
// leaving node, or one more than wanted on staying members) is one move per copy to drop. The copy
// to drop and the copy added last (the one being filled) each occupy a fill slot of their node, and
// the projected counts (what the members hold once these moves end) lose the copies to drop. A
// leaving node's copy takes no slot (countsAsFill).
func (v *view) findInFlight() {
	for _, db := range sortedDBs(v.in.Maps) {
		if v.frozen[db] {
			continue
		}
		m := v.in.Maps[db]
		for _, rng := range m.Ranges() {
			drop := v.removable(db, m, rng)
			if len(drop) == 0 {
				continue
			}
			rr := RangeRef{db, rng}
			v.busy[rr] = true
			v.dropping = append(v.dropping, rr)
			v.toDrop[rr] = drop
			// A held database's moves wait for a slot (held.go): counted apart until postHeld.
			inFlight, fills := &v.inFlight, v.fills
			if v.in.Held[db] {
				inFlight, fills = &v.held, v.heldFills
				v.heldRanges[db] = append(v.heldRanges[db], rr)
			}
			*inFlight += len(drop)
			for _, node := range drop {
				if v.countsAsFill(node) {
					fills[node]++
				}
				if v.isStaying[node] {
					v.proj[db][node]--
					v.projBytes[node] -= v.in.RangeBytes[rr]
				}
			}
			if n := newestCopy(m, rng); v.isStaying[n] {
				fills[n]++
				v.filling[rr] = n
				v.filledBefore[n] = true
			}
		}
	}
}

// planner collects one plan's shard steps: map edits in order, then one SyncShards per database
// that needs one (the controller batches one database's edits into one _dbs write).
type planner struct {
	v       *view
	edits   []Action
	syncs   []string
	synced  map[string]bool
	waiting string
	// added and removed are the copies this plan adds and drops, per range; fences its fill fences
	// (built on first use, fenceState).
	added, removed map[RangeRef][]string
	fences         *fences
	// resting is a member fenced for fills that takes no new copy in this plan (restFence).
	resting string
	// holding: the copies added now wait for a slot, their database's post held (planHeld); thaw
	// lists the databases planHeld froze for the pass.
	holding bool
	thaw    []string
	// heldPosts are the held databases this plan posts (postHeld), first in the plan.
	heldPosts []string
	// exposing holds, per member fenced for fills, the verified moves whose drop waits for its
	// fills to end (dropExposes), and exposingUsed how many of them postHeld has given a held copy
	// on it.
	exposing     map[string]map[RangeRef]bool
	exposingUsed map[string]int
}

func newPlanner(v *view) *planner {
	return &planner{v: v, synced: map[string]bool{}, added: map[RangeRef][]string{}, removed: map[RangeRef][]string{}}
}

func (p *planner) edit(a Action) {
	p.edits = append(p.edits, a)
	rr := RangeRef{a.DB, a.Range}
	switch a.Kind {
	case AddCopy:
		p.added[rr] = append(p.added[rr], a.Node)
	case RemoveCopy:
		p.removed[rr] = append(p.removed[rr], a.Node)
	}
}

func (p *planner) sync(db string) {
	if !p.synced[db] {
		p.synced[db] = true
		p.syncs = append(p.syncs, db)
	}
}

func (p *planner) wait(why string) {
	if p.waiting == "" {
		p.waiting = why
	}
}

// budget is how many more copies may start filling in this plan, or, while it holds, be held.
func (p *planner) budget() int {
	if p.holding {
		return p.v.maxMoves/2 - p.v.held
	}
	return p.v.maxMoves - p.v.inFlight
}

// countsAsFill says whether holding a copy to drop takes one of node's fill slots. A leaving node
// (departed, or being drained) serves no client any more, and in a drain it holds every copy that
// moves: counting it would cap a whole drain at MaxFillsPerNode moves, while the writes of each fill
// land on the staying targets, which are counted.
func (v *view) countsAsFill(node string) bool { return v.live[node] && !v.leaving[node] }

// canFill reports whether node may take part in one more move (while the plan holds, one more
// held move).
func (p *planner) canFill(node string) bool {
	if p.holding {
		// Not on a member a verified drop waits for: its fills must end (postHeld).
		return node == "" || p.v.heldFills[node] < p.v.maxFills/2 && len(p.exposing[node]) == 0
	}
	return node == "" || p.v.fills[node] < p.v.maxFills
}

// add plans a new copy of db/rng on target, to be filled by _sync_shards; src is the copy the move
// will drop (a leaving node's, or a staying member's for a rebalance or zone move; "" when none: a
// range short of copies). It updates the projected counts so later choices in this plan see it.
func (p *planner) add(m couch.ShardMap, db, rng, target, src string) {
	v := p.v
	rr := RangeRef{db, rng}
	if src != "" {
		// A heal (no copy to drop) is no move in flight once added, so nothing would tell when
		// its fill ends: it goes unfenced.
		p.fenceFor(rr, target)
	} else {
		p.fenceState().onNode[target] = append(p.fenceState().onNode[target], rr)
	}
	p.edit(Action{Kind: AddCopy, DB: db, Range: rng, Node: target, N: DBN(m), Held: p.holding})
	if p.holding {
		p.hold(db)
	} else {
		p.sync(db)
	}
	v.filling[rr] = target
	size := v.in.RangeBytes[rr]
	v.busy[rr] = true
	inFlight, fills := &v.inFlight, v.fills
	if p.holding {
		inFlight, fills = &v.held, v.heldFills
	}
	*inFlight++
	fills[target]++
	v.proj[db][target]++
	v.projBytes[target] += size
	if src != "" {
		if v.countsAsFill(src) {
			fills[src]++
		}
		if v.isStaying[src] {
			v.proj[db][src]--
			v.projBytes[src] -= size
		}
	}
}

// release gives back the slots of a move this plan completes by dropping the copies drop of rng
// (the range then has nothing left to drop), so the same plan can start the next move: a finished
// move no longer waits a sync to make room. Its new copy is full, so the slot it gives back is one
// no fill uses any more, whether its drop is written before, with or (if it fails) after the add
// that takes it. The range stays busy: it gets no second move
// in this plan. It undoes exactly what findInFlight counted for the range.
func (p *planner) release(db string, m couch.ShardMap, rng string, drop []string) {
	v := p.v
	v.inFlight -= len(drop)
	for _, node := range drop {
		if v.countsAsFill(node) {
			v.fills[node]--
		}
	}
	if n := newestCopy(m, rng); v.isStaying[n] {
		v.fills[n]--
	}
	delete(v.filling, RangeRef{db, rng})
}

// actions returns the posts of held copies whose maps the plan leaves alone (they start fills of
// copies in the maps already), the edits, then the other SyncShards.
func (p *planner) actions() []Action {
	edited := map[string]bool{}
	for _, a := range p.edits {
		edited[a.DB] = true
	}
	var out, last []Action
	for _, db := range p.heldPosts {
		if edited[db] {
			last = append(last, Action{Kind: SyncShards, DB: db})
		} else {
			out = append(out, Action{Kind: SyncShards, DB: db})
		}
	}
	out = append(out, p.edits...)
	for _, db := range p.syncs {
		out = append(out, Action{Kind: SyncShards, DB: db})
	}
	return append(out, last...)
}
