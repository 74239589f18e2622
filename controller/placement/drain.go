package placement

import (
	"fmt"
	"hash/fnv"
	"slices"

	"github.com/couchdb-controller/couchdb-controller/couch"
)

// decomSteps marks leaving nodes "decom": true in _nodes (and unmarks members that stay after all),
// so CouchDB places no copy of a database created from now on on a node that is leaving.
func (v *view) decomSteps() []Action {
	var out []Action
	for _, node := range sortedKeys(v.in.Decom) {
		switch decom := v.in.Decom[node]; {
		case v.leaving[node] && !decom:
			out = append(out, Action{Kind: SetDecom, Node: node})
		case !v.leaving[node] && decom && v.isStaying[node]:
			out = append(out, Action{Kind: ClearDecom, Node: node})
		}
	}
	return out
}

// removable lists copies of rng that rule 7 would drop once the others have caught up.
func (v *view) removable(db string, m couch.ShardMap, rng string) []string {
	out, _ := v.droppable(db, m, rng)
	return out
}

// droppable is removable, and also whether a copy on the drained node was held back because that node
// is down. Copies on leaving nodes go first; a range with more staying copies than wanted then loses
// the one extraDrop picks.
func (v *view) droppable(db string, m couch.ShardMap, rng string) ([]string, bool) {
	staying := v.stayingCopies(m, rng)
	n := v.want(db)
	if len(staying) < n || n == 0 {
		return nil, false
	}
	var out []string
	held := false
	for _, node := range m.ByRange[rng] {
		switch {
		case node == v.drain && v.drainDown:
			held = true
		case v.leaving[node]:
			out = append(out, node)
		}
	}
	if len(out) == 0 && !held && len(staying) > n && !v.replicated(db) {
		out = append(out, v.extraDrops(db, m)[rng])
	}
	return out, held
}

// extraDrops picks the copy to drop of every range of db that holds one staying copy too many
// (extraDrop), range by range in order, each pick counted as gone for the next. Picked one range at
// a time from the counts the maps show, two moves of db in flight that were to empty two different
// members would both drop from whichever member the maps show with the most copies and leave it
// short, for another move to fix. Like extraDrop it reads only the maps.
func (v *view) extraDrops(db string, m couch.ShardMap) map[string]string {
	if d, ok := v.drops[db]; ok {
		return d
	}
	d := v.pickDrops(db, m)
	v.drops[db] = d
	return d
}

// pickDrops is extraDrops of any map of db (the one read, or one a plan would write), uncached.
func (v *view) pickDrops(db string, m couch.ShardMap) map[string]string {
	count := map[string]int{}
	for _, node := range m.Nodes() {
		if v.isStaying[node] {
			count[node] = len(m.ByNode[node])
		}
	}
	out := map[string]string{}
	n := v.want(db)
	for _, rng := range m.Ranges() {
		staying := v.stayingCopies(m, rng)
		if len(staying) <= n || n == 0 || v.replicated(db) || slices.ContainsFunc(m.ByRange[rng], func(node string) bool {
			return v.leaving[node] || node == v.drain && v.drainDown
		}) {
			continue
		}
		d := v.extraDrop(db, m, rng, staying, count)
		out[rng] = d
		count[d]--
	}
	return out
}

// extraDrop picks which of a range's staying copies a move in flight drops: the one whose loss keeps
// the most zones, then the one on the member with the most copies of db (the source the move meant
// to empty: the target has fewer, or the move would not have been planned), then not the copy added
// last (the one being filled), then the one dropTie ranks first. It reads only the maps, so it picks
// the same copy after a controller restart. count is the copies of db per member to compare.
//
// The last tie is not broken by the members' bytes, nor by their names: either picks the same member
// for every range where the members tie (all of them, when a rebalance starts), and every move in
// flight then drops from that one member, beyond its fill slots, while the planner counted each on
// the member it meant. The planner plans a move only from the member this picks (dropFor), and
// dropTie spreads those picks over the tied members.
func (v *view) extraDrop(db string, m couch.ShardMap, rng string, staying []string, count map[string]int) string {
	newest := newestCopy(m, rng)
	best := ""
	var bestKey [4]uint64
	for _, c := range staying {
		rest := slices.DeleteFunc(slices.Clone(staying), func(s string) bool { return s == c })
		notNewest := uint64(0)
		if c != newest {
			notNewest = 1
		}
		key := [4]uint64{uint64(v.coverage(db, rest)), uint64(max(count[c], 0)), notNewest, dropTie(db, rng, c)}
		if d := slices.Compare(key[:], bestKey[:]); best == "" || d > 0 || d == 0 && c > best {
			best, bestKey = c, key
		}
	}
	return best
}

// dropTie ranks a copy among tied ones by a hash of the database, range and member: fixed for a
// copy (a restarted controller ranks it the same), spread evenly over the members across ranges.
func dropTie(db, rng, node string) uint64 {
	h := fnv.New64a()
	for _, s := range []string{db, rng, node} {
		h.Write([]byte(s))
		h.Write([]byte{0})
	}
	return h.Sum64()
}

// dropFor is the copy of db/rng the next plan drops once this plan's edits and a new copy on to are
// written (extraDrops of that map): a move is planned only from that member, so its fill slot is
// counted where it will be taken.
func (v *view) dropFor(p *planner, db, rng, to string) string {
	m := v.in.Maps[db].Clone()
	for _, r := range m.Ranges() {
		rr := RangeRef{db, r}
		for _, n := range p.added[rr] {
			m.AddCopy(r, n)
		}
		for _, n := range p.removed[rr] {
			m.RemoveCopy(r, n)
		}
	}
	m.AddCopy(rng, to)
	return v.pickDrops(db, m)[rng]
}

// caughtUp reports whether every staying copy of rng holds at least as many documents as every live
// copy held at the mark, and, when the copy to drop is live, whether each staying copy is known to
// hold everything it held at the mark; or why not yet. A copy without a mark (Input.Marks, see Mark)
// is held to its current update_seq and the current counts: a mark taken now. Equal counts alone
// prove nothing: a drained copy in maintenance mode misses the writes a staying copy took while the
// drained one took writes the staying one missed while it was down, and the counts can match. Only
// mem3's checkpoint of a push from the dropped copy to the staying one, at the mark, says the
// staying copy holds all of it.
func (v *view) caughtUp(db string, m couch.ShardMap, rng, drop string) (bool, string) {
	maxTotal, ok := v.maxLiveTotal(db, m, rng)
	if !ok {
		for _, n := range v.liveCopies(m, rng) {
			if _, read := v.in.Stats[CopyKey{db, rng, n}]; !read {
				return false, fmt.Sprintf("no document counts yet for %s/%s on %s", db, rng, n)
			}
		}
	}
	src := v.in.Stats[CopyKey{db, rng, drop}]
	wantSeq, at := src.Seq, "its update_seq"
	if mk, marked := v.markOf(CopyKey{db, rng, drop}, m); marked && v.live[drop] {
		wantSeq, maxTotal, at = mk.Seq, mk.Total, "the update_seq marked when it became a copy to drop"
	}
	for _, n := range v.stayingCopies(m, rng) {
		if !v.live[n] {
			return false, fmt.Sprintf("copy %s/%s on %s is not reachable", db, rng, n)
		}
		if s := v.in.Stats[CopyKey{db, rng, n}]; s.total() < maxTotal {
			return false, fmt.Sprintf("copy %s/%s on %s is catching up (%d of %d documents)", db, rng, n, s.total(), maxTotal)
		}
	}
	switch {
	case !v.live[drop]:
		return true, "" // a departed node that is down: its copy is unreadable, the live ones are the sources
	case src.Seq == 0 && src.total() == 0:
		return true, "" // never written to: nothing of it can be missing elsewhere
	case src.Seq <= 0:
		return false, fmt.Sprintf("no update_seq yet for %s/%s on %s", db, rng, drop)
	}
	for _, n := range v.stayingCopies(m, rng) {
		if n == drop {
			continue
		}
		t := v.in.Stats[CopyKey{db, rng, n}]
		if t.UUID == "" || src.Pushed == nil || src.Pushed[t.UUID] < wantSeq {
			return false, fmt.Sprintf("copy %s/%s on %s is not yet known to hold everything the copy on %s holds (no internal-replication checkpoint at %s %d)", db, rng, n, drop, at, wantSeq)
		}
	}
	return true, ""
}

// planDrops completes the moves in flight: every copy to drop whose staying copies are verified to
// hold all of it is removed (several ranges at once), and a database with a copy still catching up
// gets a SyncShards. It returns the first range whose copy on a drained node that is down is held.
func (v *view) planDrops(p *planner) string {
	heldBack := ""
	for _, db := range sortedDBs(v.in.Maps) {
		if v.frozen[db] {
			continue
		}
		m := v.in.Maps[db]
		for _, rng := range m.Ranges() {
			drop, held := v.droppable(db, m, rng)
			if held && heldBack == "" {
				heldBack = fmt.Sprintf("%s/%s", db, rng)
			}
			dropped := 0
			for _, node := range drop {
				ok, why := v.caughtUp(db, m, rng, node)
				if !ok {
					p.wait(why)
					if v.heldRanges[db] == nil {
						p.sync(db) // a held database is posted when a slot frees (postHeld)
					}
					continue
				}
				if t := p.dropExposes(RangeRef{db, rng}, node); t != "" {
					p.exposedBy(t, RangeRef{db, rng})
					p.wait(fmt.Sprintf("copy %s/%s on %s is dropped once %s, fenced while a copy fills there, is done filling: it is the range's last serving copy besides %s", db, rng, node, t, t))
					continue
				}
				p.edit(Action{Kind: RemoveCopy, DB: db, Range: rng, Node: node, N: DBN(m)})
				dropped++
			}
			if dropped > 0 && dropped == len(drop) {
				after := m.Clone()
				for _, node := range drop {
					after.RemoveCopy(rng, node)
				}
				if len(v.removable(db, after, rng)) == 0 {
					p.release(db, m, rng, drop)
				}
			}
		}
	}
	return heldBack
}

// unreferenced removes from _nodes the leaving nodes (departed, or the drained one) that no map of
// maps references.
func (v *view) unreferenced(maps map[string]couch.ShardMap) []Action {
	referenced := map[string]bool{}
	for _, m := range maps {
		for _, node := range m.Nodes() {
			referenced[node] = true
		}
	}
	var out []Action
	for _, d := range v.in.Departed {
		if !referenced[d] {
			out = append(out, Action{Kind: RemoveNode, Node: d})
		}
	}
	if v.drain != "" && !referenced[v.drain] {
		out = append(out, Action{Kind: RemoveNode, Node: v.drain})
	}
	return out
}

// leaveSteps removes leaving nodes that no map references from _nodes and, once the drained node is
// gone from _nodes (and nothing else was planned), shrinks the StatefulSet by one.
func (v *view) leaveSteps(planned bool) []Action {
	out := v.unreferenced(v.in.Maps)
	if len(out) > 0 || planned {
		return out
	}
	in := v.in
	if in.TargetReplicas != nil && *in.TargetReplicas < in.Replicas {
		if _, stillMember := Draining(in); !stillMember {
			out = append(out, Action{Kind: ScaleDown, Replicas: in.Replicas - 1})
		}
	}
	return out
}
