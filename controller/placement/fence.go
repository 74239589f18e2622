package placement

import (
	"slices"
	"sort"
)

// Fill fences (rule 10). CouchDB serves each range of a clustered read (_all_docs, views, _changes)
// from whichever copy answers first (fabric_streams keeps the first worker per range), and a copy
// that was just added to the map answers at once, before _sync_shards has pushed it the range's
// documents. A read during a move can then miss documents: seen on real CouchDB 3.4.3 nodes on
// 17-70% of a reader's passes. CouchDB's documented procedure for moving a shard puts the target
// node in maintenance mode while its copy fills: fabric_rpc refuses the node's workers for client
// requests, so reads and writes use the other copies, while mem3's internal-replication pushes (not
// client requests) still land and fill it.
//
// The cost is that the fenced node serves none of its copies meanwhile, so a node is fenced only
// when every range it holds keeps at least one serving copy elsewhere: live, not fenced, not being
// dropped, not itself filling. A move (a range that keeps its live copies meanwhile) whose target
// could be fenced but for other fences waits until those fills end; a move whose target can never be
// fenced this way (say a database with n=1, or n=2 while draining its other holder) and a heal (a
// range short of live copies, where the copy matters more than the read) go ahead unfenced. A fence
// lasts while the range has a copy to drop (the fill is verified when it is dropped, rule 7), so a
// copy added with nothing to drop (a replicated database's copy on a new member) is not fenced:
// nothing in the maps would tell when its fill ends.

// fences is one plan's view of the fill fences.
type fences struct {
	set     map[string]bool       // members fenced once this plan is applied
	onNode  map[string][]RangeRef // ranges with a copy on a node, planned adds included
	added   map[RangeRef][]string // copies this plan adds
	removed map[RangeRef][]string // copies this plan drops
}

// fenceState builds the fences on first use, after planDrops: the members filling a copy of a
// range with a move still in flight, those already fenced first, each kept while it is safe.
func (p *planner) fenceState() *fences {
	if p.fences != nil {
		return p.fences
	}
	v := p.v
	f := &fences{set: map[string]bool{}, onNode: map[string][]RangeRef{}, added: p.added, removed: p.removed}
	for _, db := range sortedDBs(v.in.Maps) {
		m := v.in.Maps[db]
		for node, rngs := range m.ByNode {
			for _, rng := range rngs {
				f.onNode[node] = append(f.onNode[node], RangeRef{db, rng})
			}
		}
	}
	for rr, nodes := range p.added {
		for _, n := range nodes {
			f.onNode[n] = append(f.onNode[n], rr)
		}
	}
	p.fences = f
	var cands []string
	for _, n := range v.filling {
		if v.fenceable(n) && !slices.Contains(cands, n) {
			cands = append(cands, n)
		}
	}
	sort.Slice(cands, func(i, j int) bool {
		fi, fj := v.fenced(cands[i]), v.fenced(cands[j])
		if fi != fj {
			return fi
		}
		return cands[i] < cands[j]
	})
	for _, n := range cands {
		if p.safeToFence(n, RangeRef{}, f.set) {
			f.set[n] = true
		}
	}
	return f
}

// fenceable says whether node is a member a fill fence may apply to: live and staying (the drained
// node has its own maintenance mode).
func (v *view) fenceable(node string) bool { return v.live[node] && v.isStaying[node] }

// safeToFence reports whether fencing node (about to take a new copy of rr, when rr is set), on top
// of set, leaves every range it holds a serving copy on another node.
func (p *planner) safeToFence(node string, rr RangeRef, set map[string]bool) bool {
	f := p.fences
	rngs := f.onNode[node]
	if rr.DB != "" {
		rngs = append(slices.Clip(rngs), rr)
	}
	for _, r := range rngs {
		if !p.servedElsewhere(r, node, set) {
			return false
		}
	}
	return true
}

// servedElsewhere says whether rr keeps a serving copy on a node other than node once set is fenced.
func (p *planner) servedElsewhere(rr RangeRef, node string, set map[string]bool) bool {
	v, f := p.v, p.fences
	// A fenced staying member outside set is one this plan unfences, before its map edits.
	serves := func(x string) bool {
		return x != node && v.live[x] && (!v.leaving[x] || x == v.drain && v.drainServes) && !set[x] && v.filling[rr] != x &&
			!slices.Contains(f.removed[rr], x) && !slices.Contains(f.added[rr], x)
	}
	m := v.in.Maps[rr.DB]
	return slices.ContainsFunc(m.ByRange[rr.Range], serves)
}

// mayFill reports whether a new copy of rr may start filling on target in this plan. move says the
// range keeps its live copies meanwhile (not a heal).
func (p *planner) mayFill(rr RangeRef, target string, move bool) bool {
	f := p.fenceState()
	if move && p.v.holdFills {
		return false
	}
	if f.set[target] || p.safeToFence(target, rr, f.set) || !move {
		return true
	}
	// Fenceable once the other fills end: wait for them, so the read stays whole.
	return len(f.set) == 0 || !p.safeToFence(target, rr, map[string]bool{})
}

// fencedForFill says whether node is fenced for a fill: in this plan already, or since an earlier
// plan whose fill it was taking (its fence lasts if it takes another fill now).
func (p *planner) fencedForFill(node string) bool {
	v := p.v
	return p.fenceState().set[node] || v.fenced(node) && v.filledBefore[node] && v.fenceable(node)
}

// fenceFor records a new copy of rr on target and fences target when that is safe.
func (p *planner) fenceFor(rr RangeRef, target string) {
	f := p.fenceState()
	if !f.set[target] && p.v.fenceable(target) && p.safeToFence(target, rr, f.set) {
		f.set[target] = true
	}
	f.onNode[target] = append(f.onNode[target], rr)
}

// fenceSteps returns the steps that must precede this plan's map edits: ClearMaintenance of the
// members that were filling and are fenced no more (their fills ended, or their fence is no longer
// safe), then FenceTarget of the members fenced now. Plan clears any other maintenance mode of a
// live staying member up front, so a member fenced there is fenced again here.
func (v *view) fenceSteps(p *planner) []Action {
	f := p.fenceState()
	var clear, set []Action
	for _, m := range v.in.Members {
		switch {
		case f.set[m.Name] && !(m.Fenced && v.filledBefore[m.Name]):
			set = append(set, Action{Kind: FenceTarget, Node: m.Name})
		case !f.set[m.Name] && m.Maintenance && m.Live && m.Name != v.drain && v.filledBefore[m.Name]:
			clear = append(clear, Action{Kind: ClearMaintenance, Node: m.Name})
		}
	}
	return append(clear, set...)
}

// dropExposes returns a member fenced for a fill that is not done yet whose range rr would have no
// serving copy once node's copy of rr is dropped in this plan, or "" when there is none. The fence
// relied on that copy: dropping it would lift the fence (fenceSteps) and show readers the member's
// copies half filled. The fill goes on regardless, so the drop only waits for it.
func (p *planner) dropExposes(rr RangeRef, node string) string {
	v := p.v
	holders := v.in.Maps[rr.DB].ByRange[rr.Range]
	for _, t := range holders {
		if t == node || !v.fenced(t) || !v.filledBefore[t] || !v.isStaying[t] || v.fillsDone(t) {
			continue
		}
		served := slices.ContainsFunc(holders, func(y string) bool {
			return y != node && y != t && v.live[y] && !v.fenced(y) && (!v.leaving[y] || y == v.drain && v.drainServes) &&
				(v.filling[rr] != y || v.fillDone(rr, y)) && !slices.Contains(p.removed[rr], y)
		})
		if !served {
			return t
		}
	}
	return ""
}

// fillsDone says whether every copy node is filling holds as many documents as any live copy of its
// range (read this sync).
func (v *view) fillsDone(node string) bool {
	for rr, t := range v.filling {
		if t == node && !v.fillDone(rr, t) {
			return false
		}
	}
	return true
}

func (v *view) fillDone(rr RangeRef, node string) bool {
	want, ok := v.maxLiveTotal(rr.DB, v.in.Maps[rr.DB], rr.Range)
	s, read := v.in.Stats[CopyKey{rr.DB, rr.Range, node}]
	return ok && read && s.total() >= want
}
