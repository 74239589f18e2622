package placement

// The drained node's maintenance mode.
//
// A drain starts by putting the drained node in maintenance mode "nolb": /_up answers 404, so its
// pod leaves the Service and no client connects to it, but fabric still runs its workers, so its
// copies keep serving the reads and writes other nodes coordinate. That matters for the fill fences
// (rule 10): a fenced target serves none of its copies, so a target may be fenced only while every
// range it holds is served elsewhere. With the drained node serving, a range whose other copies
// are on fenced targets is still served; with it fenced ("true"), it is not, and on a cluster
// draining to three members only one target at a time could be fenced (a range held by the
// drained node and two of the three), which halved the drain's concurrent fills.
//
// The cost of "nolb" is that the drained copies take client writes, so rule 7 holds each to its
// current update_seq (no Mark): under a steady write load a push checkpoint never catches up with
// it and the drain would not finish. So the first time a copy to drop on the drained node is seen
// to have moved on (its update_seq passed its serving mark: the range is being written), the drain
// switches to "true" for good, and the marks take over as before:
//   - no new move starts (holdFills), since its fence might rely on the drained node serving;
//   - once every new copy in flight holds what its range held (at the serving mark, or as any live
//     copy does now, for a range without one: readyToFence), the fences that relied on the drained
//     node are lifted, and only then is the drained node set to "true". A range never goes without
//     a serving copy, and no copy is shown to readers half filled.
//
// While it serves, a verified drop of one of its copies waits if it is the last serving copy of a
// range that a fenced member is still filling (dropExposes, fence.go). A drain without writes never
// switches, and each of its fills may be fenced.

// writesSeen says whether a copy to drop on the drained node, watched by a serving mark, took a
// write since the mark.
func (v *view) writesSeen() bool {
	for k, mk := range v.in.Marks {
		if !mk.Serving || k.Node != v.drain {
			continue
		}
		if s, read := v.in.Stats[k]; read && s.UUID == mk.UUID && s.Seq > mk.Seq {
			return true
		}
	}
	return false
}

// readyToFence says whether every new copy in flight has filled: it holds the documents its range
// held when the drained node's copy got its serving mark (a number writes do not move), or, for a
// range without one, as many as any other live copy holds now. Any fence may rely on the drained
// node serving, so every fill counts.
func (v *view) readyToFence() bool {
	for rr, target := range v.filling {
		if !v.live[target] {
			continue // down: it serves nothing, fenced or not
		}
		mk, marked := v.in.Marks[CopyKey{rr.DB, rr.Range, v.drain}]
		if !marked || !mk.Serving || !v.in.Maps[rr.DB].HasCopy(rr.Range, v.drain) {
			if !v.fillDone(rr, target) {
				return false
			}
			continue
		}
		if s, read := v.in.Stats[CopyKey{rr.DB, rr.Range, target}]; !read || s.total() < mk.Total {
			return false
		}
	}
	return true
}

// drainModeSteps sets the drained node's maintenance mode: "nolb" when the drain starts (or when
// the node came back without it), and "true" once writes are seen and the fills under way are done,
// after lifting the fences that relied on the node serving. done says Plan returns these alone.
func (v *view) drainModeSteps() (steps []Action, done bool) {
	d, ok := Draining(v.in)
	switch {
	case !ok || !d.Live:
		// A drained node that is down cannot be switched (its config API is down with it) and
		// serves no client either.
		return nil, false
	case !d.Maintenance:
		// Clients stop using the draining node before its copies move. The fences of fills already
		// under way (a rebalance's) are checked first, as in any plan: this one returns early.
		return append(v.fenceSteps(newPlanner(v)), Action{Kind: SetMaintenance, Node: d.Name, Value: DrainModeServing}), true
	case d.Fenced || !v.writesSeen():
		return nil, false
	}
	v.holdFills = true
	if !v.readyToFence() {
		return nil, false
	}
	v.drainServes = false
	steps = v.fenceSteps(newPlanner(v))
	return append(steps, Action{Kind: SetMaintenance, Node: d.Name, Value: DrainModeFenced}), true
}

// The drained node's maintenance modes (SetMaintenance's Value).
const (
	DrainModeServing = "nolb"
	DrainModeFenced  = "true"
)
