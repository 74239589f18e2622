package placement

import (
	"fmt"
	"slices"
	"strings"
)

// zoneCount is the number of distinct known zones of nodes.
func (v *view) zoneCount(nodes []string) int {
	seen := map[string]bool{}
	for _, n := range nodes {
		if z := v.in.Zones[n]; z != "" {
			seen[z] = true
		}
	}
	return len(seen)
}

// zoneGoal is the number of distinct zones each range of db should cover: min(its wanted copies,
// zones with live staying members); 0 with zones off.
func (v *view) zoneGoal(db string) int {
	if !v.zonesOn {
		return 0
	}
	return min(v.want(db), len(v.zones))
}

// coverage is the zones nodes cover, counted up to what a range of db should cover: beyond that an
// extra zone is worth nothing, so it never outweighs balance.
func (v *view) coverage(db string, nodes []string) int {
	return min(v.zoneCount(nodes), v.zoneGoal(db))
}

// placementRule is the [cluster] placement every member should have: one copy in each zone with live
// staying members, the first n of them by name, or none with fewer zones than n.
func (v *view) placementRule() string {
	if !v.zonesOn {
		return ""
	}
	n := v.in.DefaultN
	if n <= 0 {
		n = 3
	}
	if len(v.zones) < n {
		return ""
	}
	parts := make([]string, 0, n)
	for _, z := range v.zones[:n] {
		parts = append(parts, z+":1")
	}
	return strings.Join(parts, ",")
}

// ruleSafe reports whether every zone a placement rule names has a live staying member whose _nodes
// doc already carries that zone and keeps it (its Node is in that zone too): otherwise CouchDB fails,
// or would fail once this plan's SetDecom or SetZone steps are applied, every creation through a
// node with that rule (500 no_nodes_in_zone). A rule that does not parse is not safe.
func (v *view) ruleSafe(rule string) bool {
	if rule == "" {
		return true
	}
	for _, part := range strings.Split(rule, ",") {
		zone, count, ok := strings.Cut(strings.TrimSpace(part), ":")
		if !ok || zone == "" || count == "" {
			return false
		}
		served := false
		for _, n := range v.liveStaying() {
			// A doc about to be rewritten to another zone (SetZone in this plan) serves it no more.
			// A decom mark still to be cleared (later in this plan) keeps the node out of allowed_nodes.
			if z, read := v.in.NodeZones[n]; read && z == zone && (v.in.Zones[n] == zone || v.in.Zones[n] == "") && !v.in.Decom[n] {
				served = true
				break
			}
		}
		if !served {
			return false
		}
	}
	return true
}

// zoneSteps returns, first, the placement changes that stop a member's current rule from naming a
// zone nobody serves (they precede every other step), then the _nodes zone writes and the placement
// changes toward Result.Placement. A new rule is set only once its zones are on the _nodes docs;
// meanwhile a member whose rule is unsafe loses it.
func (v *view) zoneSteps(r *Result) (fix, rest []Action) {
	if !v.zonesOn {
		return nil, nil
	}
	for _, node := range sortedKeys(v.in.NodeZones) {
		// An empty zone means the Node has no zone label (or is unknown): the doc keeps its zone
		// rather than being erased by a missing label.
		if z := v.in.Zones[node]; z != "" && v.in.NodeZones[node] != z {
			rest = append(rest, Action{Kind: SetZone, Node: node, Value: z})
		}
	}
	want := r.Placement
	wantSafe := v.ruleSafe(want)
	if !wantSafe && r.Waiting == "" {
		r.Waiting = fmt.Sprintf("[cluster] placement %q is set once the _nodes docs of its zones carry them", want)
	}
	members := slices.Clone(v.in.Members)
	slices.SortFunc(members, func(a, b Member) int { return strings.Compare(a.Name, b.Name) })
	for _, m := range members {
		cur, read := v.in.PlacementConfig[m.Name]
		if !m.Live || !read || cur == want {
			continue
		}
		curSafe := v.ruleSafe(cur)
		switch {
		case wantSafe && !curSafe:
			fix = append(fix, Action{Kind: SetPlacement, Node: m.Name, Value: want})
		case wantSafe:
			rest = append(rest, Action{Kind: SetPlacement, Node: m.Name, Value: want})
		case !curSafe:
			fix = append(fix, Action{Kind: SetPlacement, Node: m.Name, Value: ""})
		}
	}
	return fix, rest
}

// planZoneFix moves a copy of each range whose staying copies cover fewer zones than they could into
// a zone it lacks (rule 6): the new copy goes to a member of a missing zone, and the drop that
// completes the move takes a copy from a zone the range has twice. Ranges short of copies or with a
// move in flight wait for those.
func (v *view) planZoneFix(p *planner) {
	if !v.zonesOn {
		return
	}
	for _, db := range sortedDBs(v.in.Maps) {
		if v.frozen[db] {
			continue
		}
		m := v.in.Maps[db]
		for _, rng := range m.Ranges() {
			if v.frozen[db] {
				break // held: one move per database (held.go)
			}
			staying := v.stayingCopies(m, rng)
			if v.busy[RangeRef{db, rng}] || len(staying) != v.want(db) || v.coverage(db, staying) >= v.zoneGoal(db) {
				continue
			}
			if p.budget() <= 0 {
				return
			}
			target, _ := v.target(p, RangeRef{db, rng}, m.ByRange[rng], true, true)
			if target == "" {
				continue
			}
			src := v.dropFor(p, db, rng, target)
			if src == "" {
				// A copy on a leaving node goes first (droppable); the staying one after it.
				src = v.extraDrop(db, m, rng, append(slices.Clone(staying), target), v.count[db])
			}
			if src == target || !p.canFill(src) {
				continue
			}
			p.add(m, db, rng, target, src)
		}
	}
}
