package placement

import (
	"fmt"
	"net/http"
	"slices"
	"strings"

	"github.com/couchdb-controller/couchdb-controller/couch"
)

// The simulated controller's steps and the safety rules checked as they are applied.

// step is one sync: observe, plan (joins, as the controller's join rule does, then placement) and
// apply. With crash set, the controller dies after a random prefix of the plan; the next step
// starts from a fresh observation. It reports whether anything was planned.
func (c *propCluster) step(crash bool) bool {
	o, ok := c.observe()
	if !ok {
		return false
	}
	var actions []Action
	d, draining := c.draining()
	for ord := 0; ord < c.replicas; ord++ {
		if c.up[ord] && !(draining && d == ord) && !slices.Contains(o.members, name(ord)) {
			actions = append(actions, Action{Kind: "AddNode", Node: name(ord)})
		}
	}
	res := Plan(o.in)
	c.checkPlanShape(o.in, res)
	actions = append(actions, res.Actions...)
	planned := len(actions) > 0
	if crash && len(actions) > 0 {
		all := len(actions)
		actions = actions[:c.rng.Intn(all)]
		c.log = append(c.log, fmt.Sprintf("controller restart after %d of %v", len(actions), actions[:all]))
		c.marks, c.held = nil, nil // in memory only
	}
	for _, a := range actions {
		c.apply(o, a)
	}
	if len(actions) > 0 {
		c.checkLiveRanges(o)
	}
	if !crash {
		c.checkInFlight(o.in, res)
		c.checkFences(res)
	}
	return planned
}

// checkInFlight: once a plan that starts fills is applied, the moves in flight, read from the maps
// as a fresh controller would, are within the bounds: a plan may complete moves and start others in
// their slots, never more. Ranges that became moves without this plan adding to them (a pod came
// back, so a departed node's copy of a range at n became droppable) are the world's doing, and
// not counted. A range is one move, however many leaving copies it then drops. Per node, the copies being filled are counted: which staying copy a move drops is
// chosen when it is dropped (extraDrop), so the source side of the bound is the planner's estimate.
func (c *propCluster) checkInFlight(before Input, res Result) {
	added := map[RangeRef]bool{}
	for _, a := range res.Actions {
		if a.Kind == AddCopy {
			added[RangeRef{a.DB, a.Range}] = true
		}
	}
	if len(added) == 0 {
		return
	}
	after, ok := c.observe()
	if !ok {
		return
	}
	vb, va := newView(before), newView(after.in)
	// Held moves (their post held back, held.go) are bounded apart: half the bounds again.
	type count struct {
		moves int
		fills map[string]int
	}
	posted, held := count{fills: map[string]int{}}, count{fills: map[string]int{}}
	for rr := range va.busy {
		if !vb.busy[rr] && !added[rr] {
			continue
		}
		cn := &posted
		if after.in.Held[rr.DB] {
			cn = &held
		}
		m := after.in.Maps[rr.DB]
		if n := newestCopy(m, rr.Range); va.filling[rr] == n && va.fillDone(rr, n) {
			continue // filled: a move waiting for its drop fills nothing (held.go lends its slot)
		}
		drop := va.removable(rr.DB, m, rr.Range)
		if len(drop) > 0 {
			cn.moves++ // one range, one copy being filled (a heal can free two leaving copies at once)
		}
		for _, n := range drop {
			if va.countsAsFill(n) {
				cn.fills[n]++ // the member the move drops from, where the plan counted it
			}
		}
		if n := newestCopy(m, rr.Range); va.isStaying[n] {
			cn.fills[n]++
		}
	}
	for _, b := range []struct {
		what         string
		c            count
		moves, fills int
		movesBefore  int
		before       map[string]int
	}{
		{"filling", posted, after.in.MaxMoves, after.in.MaxFillsPerNode, vb.inFlight, vb.fills},
		{"held", held, after.in.MaxMoves / 2, after.in.MaxFillsPerNode / 2, vb.held, vb.heldFills},
	} {
		if b.c.moves > b.moves && b.c.moves > b.movesBefore {
			c.fatalf("plan %v left %d ranges %s at once, bound %d", res.Actions, b.c.moves, b.what, b.moves)
		}
		for n, f := range b.c.fills {
			if f > b.fills && f > b.before[n] {
				c.fatalf("plan %v left %s with %d copies %s at once, bound %d", res.Actions, n, f, b.what, b.fills)
			}
		}
	}
}

// checkFences: once a plan that fences is applied, every range held by a member in maintenance mode
// for a fill (not the drained node) keeps a copy on a live member whose fabric workers run: any
// maintenance mode but "true", so the drained node in "nolb" counts (rule 10). The plans that set
// the drained node's mode are checked too.
func (c *propCluster) checkFences(res Result) {
	if !slices.ContainsFunc(res.Actions, func(a Action) bool { return a.Kind == FenceTarget || a.Kind == SetMaintenance }) {
		return
	}
	after, ok := c.observe()
	if !ok {
		return
	}
	v := newView(after.in)
	serving := map[string]bool{}
	for _, m := range after.in.Members {
		serving[m.Name] = m.Live && !m.Fenced
	}
	for _, m := range after.in.Members {
		if !m.Live || !m.Fenced || v.leaving[m.Name] {
			continue
		}
		for db, sm := range after.in.Maps {
			for _, rng := range sm.ByNode[m.Name] {
				if !slices.ContainsFunc(sm.ByRange[rng], func(n string) bool { return serving[n] }) {
					c.fatalf("plan %v fenced %s while %s/%s has no serving copy elsewhere: %v", res.Actions, m.Name, db, rng, sm.ByRange[rng])
				}
			}
		}
	}
	c.seen["fill fences checked"]++
}

// checkLiveRanges: no range that had a live copy before the step's actions has none after them.
// (Only the controller acts within a step; pods go down between steps.)
func (c *propCluster) checkLiveRanges(before observation) {
	var mem couch.Membership
	if code := c.get(before.coord, "/_membership", &mem); code != http.StatusOK {
		c.fatalf("membership: %d", code)
	}
	for db, m := range before.in.Maps {
		after, ok := c.nodes[before.coord].ShardMap(db)
		if !ok {
			c.fatalf("%s's map is gone", db)
		}
		for _, rng := range m.Ranges() {
			had, has := false, false
			for _, n := range m.ByRange[rng] {
				had = had || c.up[ordinalOf(n)] && slices.Contains(before.connected, n)
			}
			for _, n := range after.ByRange[rng] {
				has = has || c.up[ordinalOf(n)] && slices.Contains(mem.AllNodes, n)
			}
			if had && !has {
				c.fatalf("%s/%s lost its last live copy: %v -> %v", db, rng, m.ByRange[rng], after.ByRange[rng])
			}
		}
	}
}

// apply performs a through the coordinator as the controller's apply does, asserting the safety
// rules on the way. Any error fails the test: the planner must only plan what can be applied.
func (c *propCluster) apply(o observation, a Action) {
	c.kinds[a.Kind]++
	api := c.clients[o.coord]
	var err error
	switch a.Kind {
	case "AddNode":
		// As the controller's join does: the empty doc, then its zone.
		if err = api.AddNodeDoc(c.ctx, a.Node); err == nil && c.zones()[a.Node] != "" {
			err = c.setZone(api, a.Node, c.zones()[a.Node])
		}
	case CreateDB:
		c.checkDecomBeforeCreate(api)
		c.checkPlacementServed(api, a)
		if err = api.CreateDB(c.ctx, a.DB, 0, a.N); err == nil {
			c.checkCreated(api, a.DB)
		}
	case AddCopy, RemoveCopy:
		if err = c.editMap(api, o, a); err == nil && a.Held {
			if c.held == nil {
				c.held = map[CopyKey]bool{}
			}
			c.held[CopyKey{a.DB, a.Range, a.Node}] = true
			c.seen["held moves"]++
		}
	case SyncShards:
		for k := range c.held {
			if k.DB == a.DB {
				delete(c.held, k) // as the controller does when the post starts
			}
		}
		err = api.SyncShards(c.ctx, a.DB)
	case SetMaintenance, ClearMaintenance, FenceTarget:
		v := "true"
		switch {
		case a.Kind == ClearMaintenance:
			v = "false"
		case a.Value != "":
			v = a.Value
		}
		if a.Kind == SetMaintenance {
			c.seen["drained node set to "+v]++
		}
		_, err = api.SetMaintenanceMode(c.ctx, a.Node, v)
	case SetDecom, ClearDecom:
		err = c.setDecom(api, a.Node, a.Kind == SetDecom)
	case SetZone:
		err = c.setZone(api, a.Node, a.Value)
	case SetPlacement:
		if a.Value == "" {
			if _, err = api.DeleteConfig(c.ctx, a.Node, "cluster", "placement"); couch.IsNotFound(err) {
				err = nil
			}
		} else {
			_, err = api.SetConfig(c.ctx, a.Node, "cluster", "placement", a.Value)
		}
	case RemoveNode:
		for _, db := range c.dbs() {
			if m, err := api.GetShardMap(c.ctx, db); err == nil && slices.Contains(m.Nodes(), a.Node) {
				c.fatalf("%s while %s still places copies on it", a, db)
			}
		}
		_, err = api.RemoveNodeDoc(c.ctx, a.Node)
	case ScaleDown:
		if a.Replicas != c.replicas-1 || c.target == nil || a.Replicas < *c.target {
			c.fatalf("%s from %d replicas, target %v", a, c.replicas, c.target)
		}
		c.replicas--
		c.stopPod(c.replicas)
		c.log = append(c.log, fmt.Sprintf("scaled down to %d", c.replicas))
	default:
		c.fatalf("unknown action %s", a)
	}
	if err != nil {
		c.fatalf("%s: %v", a, err)
	}
	switch a.Kind {
	case SetZone, SetPlacement, SetDecom, RemoveNode:
		c.checkPlacementServed(api, a)
	}
}

// placementOf reads [cluster] placement of a running pod ("" when unset).
func (c *propCluster) placementOf(ord int) string {
	var v string
	if c.get(ord, "/_node/_local/_config/cluster/placement", &v) != http.StatusOK {
		return ""
	}
	return v
}

func (c *propCluster) setZone(api *couch.Client, node, zone string) error {
	d, err := api.GetNodeDoc(c.ctx, node)
	if err != nil || d.Zone == zone {
		return err
	}
	d.Zone = zone
	_, err = api.PutNodeDoc(c.ctx, d)
	return err
}

// checkPlacementServed: no running member's [cluster] placement names a zone without a node in
// _nodes whose doc carries that zone and no decom mark: CouchDB would fail every database creation
// through that member with 500 no_nodes_in_zone. Only the controller changes _nodes docs and
// placement, so this holds after each of its steps, whatever pods do.
func (c *propCluster) checkPlacementServed(api *couch.Client, after Action) {
	if c.zoneCount == 0 {
		return
	}
	mem, err := api.Membership(c.ctx)
	if err != nil {
		c.fatalf("membership: %v", err)
	}
	served := map[string]bool{}
	for _, n := range mem.ClusterNodes {
		d, err := api.GetNodeDoc(c.ctx, n)
		if err != nil {
			c.fatalf("_nodes doc %s: %v", n, err)
		}
		if !d.Decom && d.Zone != "" {
			served[d.Zone] = true
		}
	}
	for ord := range c.nodes {
		if !c.up[ord] || !slices.Contains(mem.ClusterNodes, name(ord)) {
			continue
		}
		rule := c.placementOf(ord)
		if rule == "" {
			continue
		}
		for _, part := range strings.Split(rule, ",") {
			if z, _, _ := strings.Cut(part, ":"); !served[z] {
				c.fatalf("after %s, %s's placement %q names %s, which no allowed node serves (creations through it fail with no_nodes_in_zone)", after, name(ord), rule, z)
			}
		}
	}
}

func (c *propCluster) setDecom(api *couch.Client, node string, decom bool) error {
	d, err := api.GetNodeDoc(c.ctx, node)
	if couch.IsNotFound(err) || err == nil && d.Decom == decom {
		return nil
	}
	if err != nil {
		return err
	}
	d.Decom = decom
	_, err = api.PutNodeDoc(c.ctx, d)
	return err
}

// editMap re-reads the map and applies the edit with Edit, as the controller's apply does. Before a
// RemoveCopy it asserts the data rules on the copies as they are (read from each copy's own node):
// a copy on a live node leaves the map only when every other live copy on a staying member holds
// every document it held at its mark (every document it holds, without a mark) and each document
// it received since is on a live staying copy, a copy on a down node leaves only when its node is
// gone for good, and no document any live copy holds is left without a live copy.
func (c *propCluster) editMap(api *couch.Client, o observation, a Action) error {
	m, ok := c.nodes[o.coord].ShardMap(a.DB) // what GET /_node/_local/_dbs/{db} answers, read in process
	if !ok {
		return fmt.Errorf("no map of %s", a.DB)
	}
	if a.Kind == AddCopy {
		ord := ordinalOf(a.Node)
		d, draining := c.draining()
		if ord >= c.replicas || draining && d == ord || !c.up[ord] {
			c.fatalf("%s: not a live staying member", a)
		}
	}
	if a.Kind == RemoveCopy && m.HasCopy(a.Range, a.Node) {
		k := CopyKey{a.DB, a.Range, a.Node}
		mk, marked := o.in.Marks[k]
		if marked && mk.UUID != o.in.Stats[k].UUID {
			marked = false
		}
		c.checkRemove(m, a, mk, marked)
	}
	changed, err := Edit(&m, a)
	if err != nil || !changed {
		return err
	}
	_, err = api.PutShardMap(c.ctx, m)
	return err
}

func (c *propCluster) checkRemove(m couch.ShardMap, a Action, mk Mark, marked bool) {
	before := map[string]bool{}
	docs := map[string]map[string]bool{}
	for _, n := range m.ByRange[a.Range] {
		if d, ok := c.copyDocs(m, a.Range, n); ok {
			docs[n] = d
			for id := range d {
				before[id] = true
			}
		}
	}
	src, srcLive := c.copySeqs(m, a.Range, a.Node)
	d, draining := c.draining()
	switch ord := ordinalOf(a.Node); {
	case !srcLive && ord < c.replicas:
		c.fatalf("%s: the copy's node is down but not gone (drained: %v)", a, draining && d == ord)
	case srcLive:
		onStaying := map[string]bool{}
		for n, held := range docs {
			o := ordinalOf(n)
			if n == a.Node || o >= c.replicas || draining && d == o {
				continue
			}
			for id, seq := range src {
				onStaying[id] = onStaying[id] || held[id]
				if !held[id] && (!marked || seq <= mk.Seq) {
					c.fatalf("%s before the copy on %s holds %s (source %d docs, target %d; its seq %d, mark %v)", a, n, id, len(src), len(held), seq, mk)
				}
			}
		}
		for id := range src {
			if !onStaying[id] {
				c.fatalf("%s: %s, which it received after its mark %v, is on no staying copy", a, id, mk)
			}
		}
		if marked {
			c.seen["drops at a mark"]++
		}
	}
	after := map[string]bool{}
	liveLeft := 0
	for n, held := range docs {
		if n == a.Node {
			continue
		}
		liveLeft++
		for id := range held {
			after[id] = true
		}
	}
	if len(docs) > 0 && liveLeft == 0 {
		c.fatalf("%s removes the last live copy of %s/%s", a, a.DB, a.Range)
	}
	for id := range before {
		if !after[id] {
			c.fatalf("%s leaves %s of %s/%s without a live copy", a, id, a.DB, a.Range)
		}
	}
}

// checkDecomBeforeCreate: every leaving node still in _nodes carries "decom": true by the time a
// database is created.
func (c *propCluster) checkDecomBeforeCreate(api *couch.Client) {
	mem, err := api.Membership(c.ctx)
	if err != nil {
		c.fatalf("membership: %v", err)
	}
	d, draining := c.draining()
	for _, n := range mem.ClusterNodes {
		if o := ordinalOf(n); o >= c.replicas || draining && d == o {
			doc, err := api.GetNodeDoc(c.ctx, n)
			if err != nil || !doc.Decom {
				c.fatalf("database created while leaving node %s is not decommissioned (%v)", n, err)
			}
		}
	}
}

// checkCreated: CouchDB placed the new database on staying members only (it honours decom), and its
// n as created becomes the oracle.
func (c *propCluster) checkCreated(api *couch.Client, db string) {
	m, err := api.GetShardMap(c.ctx, db)
	if err != nil {
		c.fatalf("map of new %s: %v", db, err)
	}
	d, draining := c.draining()
	for _, n := range m.Nodes() {
		if o := ordinalOf(n); o >= c.replicas || draining && d == o {
			c.fatalf("new database %s has a copy on leaving node %s", db, n)
		}
	}
	if _, ok := c.nTrue[db]; ok {
		if !c.plainDown {
			c.fatalf("database %s created a second time", db)
		}
		// Its map lived only on nodes kubectl scale removed. If one of them comes back, _dbs holds two
		// first revisions of the map and CouchDB keeps one: n is then whichever it kept.
		c.recreated[db] = true
	}
	c.nTrue[db] = copyCount(m)
	if c.size[db] == 0 {
		c.size[db] = c.sizeFor(db)
	}
	c.log = append(c.log, fmt.Sprintf("created %s n=%d", db, c.nTrue[db]))
}

// checkPlanShape: a plan starts at most MaxMoves fills, a node is the target of at most
// MaxFillsPerNode of them, and each database gets at most one SyncShards, after all its edits. Its
// held adds (held.go) are at most half those bounds again, one per database, and their database
// gets no SyncShards and no other add.
func (c *propCluster) checkPlanShape(in Input, res Result) {
	adds, targets, synced := 0, map[string]int{}, map[string]bool{}
	held, heldOn, heldDB := 0, map[string]int{}, map[string]bool{}
	dbs := map[string]bool{}
	for _, a := range res.Actions {
		switch a.Kind {
		case AddCopy, RemoveCopy:
			if synced[a.DB] {
				c.fatalf("plan %v edits %s after its SyncShards", res.Actions, a.DB)
			}
			dbs[a.DB] = true
			switch {
			case a.Kind == AddCopy && a.Held:
				held++
				heldOn[a.Node]++
				if heldDB[a.DB] {
					c.fatalf("plan %v holds two adds of %s", res.Actions, a.DB)
				}
				heldDB[a.DB] = true
				if heldOn[a.Node] > in.MaxFillsPerNode/2 {
					c.fatalf("plan %v holds %d copies on %s, bound %d", res.Actions, heldOn[a.Node], a.Node, in.MaxFillsPerNode/2)
				}
			case a.Kind == AddCopy:
				adds++
				targets[a.Node]++
				if targets[a.Node] > in.MaxFillsPerNode {
					c.fatalf("plan %v fills %d copies on %s at once, bound %d", res.Actions, targets[a.Node], a.Node, in.MaxFillsPerNode)
				}
			}
		case SyncShards:
			if synced[a.DB] {
				c.fatalf("plan %v syncs %s twice", res.Actions, a.DB)
			}
			synced[a.DB] = true
		}
	}
	for _, a := range res.Actions {
		if heldDB[a.DB] && (a.Kind == SyncShards || a.Kind == AddCopy && !a.Held) {
			c.fatalf("plan %v holds the post of %s and %s", res.Actions, a.DB, a)
		}
	}
	if adds > in.MaxMoves {
		c.fatalf("plan %v starts %d fills, bound %d", res.Actions, adds, in.MaxMoves)
	}
	if held > in.MaxMoves/2 {
		c.fatalf("plan %v holds %d adds, bound %d", res.Actions, held, in.MaxMoves/2)
	}
	if held > 0 {
		c.seen["plans holding adds"]++
	}
	if adds > 1 {
		c.seen["plans filling several copies"]++
	}
	if len(dbs) > 1 {
		c.seen["plans editing several databases"]++
	}
}
