package placement

import (
	"slices"

	"github.com/couchdb-controller/couchdb-controller/couch"
)

// Mark is what a live copy to drop looked like when it first became one (it appeared in
// SourcesNeeded) on a fenced node: its update_seq and file uuid, and the most documents
// (doc_count + doc_del_count) any live copy of its range held then. Rule 7 then asks mem3's push
// checkpoints from the copy to each staying copy to reach the mark's update_seq, and the staying
// copies' counts to reach the mark's total, instead of the copy's current ones.
//
// Why: under a constant write load, a drained copy's update_seq never stands still. mem3 keeps
// pushing the staying copies' new writes into it, and mem3 writes a push's checkpoint only when
// the push ends, at the sequence where the push started. So a checkpoint at the current update_seq
// is true at no single instant, and the drain would never finish (seen on real CouchDB 3.4.3 nodes).
//
// Why dropping at the mark loses nothing: everything the copy held at the mark is on every
// staying copy (each staying copy's checkpoint has reached the mark). After the mark, the copy
// took no client write, whatever w the client asked for: its node was fenced (maintenance_mode
// "true", where fabric_rpc refuses every worker, including those of requests its own node
// coordinates). So all it received after the mark came from mem3's pushes, from the other copies
// of the range. Those are the staying copies of the mark (a range has one move at a time, so none
// of them is dropped meanwhile, and a mark whose staying copies changed counts as no mark), or
// departed copies, which rule 7 drops without reading anyway. So each document it received after
// the mark is on the staying copy that pushed it, which stays. The counts of the
// mark stand in for the counts of now for the same reason: writes after the mark went to the
// staying copies, and counts only grow (until a purge).
//
// When marks are forgotten: a copy whose node is not fenced gets no mark. That covers the source
// of a rebalance or zone move, which is a staying member still serving clients. With w=1, such a
// copy may acknowledge a write alone after any mark, so its drop waits for a checkpoint at its
// current update_seq, as without marks. A mark is also forgotten when its copy stops being a
// live copy to drop on a fenced node: the move completed, was called off, or the node went down or
// lost its maintenance mode. A node that restarts comes back unfenced, because runtime config does
// not survive the restart, and it may take writes until the controller fences it again. The mark
// is then taken again at a later update_seq, which is stricter and so still sound. The same holds
// after a controller restart, which starts with no marks. A mark whose uuid no longer matches the
// copy's file (the file was re-created) counts as no mark.
//
// A serving mark (Serving) is taken instead of a copy to drop on the drained node while that node
// is in maintenance mode "nolb" (DrainMode): it still takes client writes, so rule 7 never uses the
// mark, and holds the copy to its current update_seq. The mark only tells whether the copy's
// update_seq moved since (writesSeen) and how many documents the range held when its new copy began
// to fill (readyToFence).
type Mark struct {
	Seq     int64    // the copy's update_seq at the mark
	UUID    string   // the copy file's uuid at the mark
	Total   int64    // the most doc_count + doc_del_count of any live copy of the range at the mark
	Staying []string // the range's copies on staying members at the mark, sorted
	Serving bool     // taken while the copy's node served clients ("nolb"): never a drop's bar
}

// Marks returns the marks Plan may use after this observation (in, with Stats and their Pushed
// read): prev's marks of the copies still to drop on a fenced node, and new marks, at their current
// update_seq, of such copies seen for the first time. A copy whose counts were not read keeps its
// previous mark; a database whose map is not in in.Maps keeps its marks untouched. Pure: the
// controller keeps the result in memory, per cluster, and passes it back as prev and as
// Input.Marks.
func Marks(in Input, prev map[CopyKey]Mark) map[CopyKey]Mark {
	v := newView(in)
	out := map[CopyKey]Mark{}
	for k, mk := range prev {
		if _, read := in.Maps[k.DB]; !read {
			out[k] = mk
		}
	}
	for _, k := range v.sourcesNeeded() {
		serving := k.Node == v.drain && v.drainServes
		if !v.fenced(k.Node) && !serving {
			continue
		}
		s, read := in.Stats[k]
		// A serving mark keeps its update_seq as the copy's moves on: that is what it watches for.
		if p, had := prev[k]; had && p.Serving == serving && (!read || s.UUID == p.UUID && (serving || s.Seq >= p.Seq)) &&
			v.sameStaying(p, in.Maps[k.DB], k.Range) {
			out[k] = p
			continue
		}
		if !read || s.Seq < 0 || s.UUID == "" {
			continue
		}
		m := in.Maps[k.DB]
		if total, ok := v.maxLiveTotal(k.DB, m, k.Range); ok {
			out[k] = Mark{Seq: s.Seq, UUID: s.UUID, Total: total, Staying: sortedNames(v.stayingCopies(m, k.Range)), Serving: serving}
		}
	}
	return out
}

// maxLiveTotal is the most documents (doc_count + doc_del_count) of any live copy of rng, or false
// while one of them was not read.
func (v *view) maxLiveTotal(db string, m couch.ShardMap, rng string) (int64, bool) {
	var total int64
	for _, n := range v.liveCopies(m, rng) {
		s, ok := v.in.Stats[CopyKey{db, rng, n}]
		if !ok {
			return 0, false
		}
		total = max(total, s.total())
	}
	return total, true
}

// markOf is the mark rule 7 holds the copy to drop to, when it has one that still describes it:
// the same file (uuid), an update_seq at most the current one, and the same staying copies.
func (v *view) markOf(k CopyKey, m couch.ShardMap) (Mark, bool) {
	mk, ok := v.in.Marks[k]
	if !ok {
		return Mark{}, false
	}
	s, read := v.in.Stats[k]
	if !read || mk.Serving || s.UUID != mk.UUID || s.Seq < mk.Seq || mk.Seq < 0 || !v.sameStaying(mk, m, k.Range) || !v.fenced(k.Node) {
		return Mark{}, false
	}
	return mk, true
}

// fenced says whether node is a live member whose maintenance mode refuses fabric's workers.
func (v *view) fenced(node string) bool {
	for _, m := range v.in.Members {
		if m.Name == node {
			return m.Live && m.Fenced
		}
	}
	return false
}

func (v *view) sameStaying(mk Mark, m couch.ShardMap, rng string) bool {
	return slices.Equal(mk.Staying, sortedNames(v.stayingCopies(m, rng)))
}

func sortedNames(s []string) []string {
	out := slices.Clone(s)
	slices.Sort(out)
	return out
}
