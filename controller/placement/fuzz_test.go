package placement

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/couchdb-controller/couchdb-controller/couch"
)

// FuzzPlan feeds Plan shard maps as CouchDB serves them (any JSON the map parser accepts) together
// with fuzzed membership, liveness, maintenance, target and document counts, and checks the safety
// rules on whatever it plans:
//   - a copy is removed only while another copy of its range stays on a live staying member that
//     holds at least as many documents, and, when the removed copy is live, only once each other
//     staying copy has a checkpoint of a push from it at its update_seq (never remove a copy live
//     data depends on);
//   - a node leaves _nodes only when no map references it;
//   - a copy is added only on a live staying member that lacks it;
//   - a database with a range at risk is not touched;
//   - ScaleDown lowers spec.replicas by exactly one, never below the target;
//   - a plan starts at most MaxMoves fills, at most MaxFillsPerNode on one node, and syncs each
//     database at most once, after its edits;
//   - no placement rule it sets names a zone without a live staying member whose _nodes doc carries
//     it and no decom mark, and a rule naming such a zone is replaced before any other step.
func FuzzPlan(f *testing.F) {
	seed := func(m couch.ShardMap) []byte { b, _ := json.Marshal(m); return b }
	three := smap("a", map[string][]int{"00000000-7fffffff": {0, 1, 2}, "80000000-ffffffff": {0, 1, 2}})
	lost := smap("a", map[string][]int{"00000000-7fffffff": {3, 4}, "80000000-ffffffff": {0, 1}})
	f.Add(seed(three), []byte{3, 0, 0b111, 0, 5, 5, 5, 5, 5, 5})
	f.Add(seed(three), []byte{5, 3, 0b11111, 0b10000, 9, 1, 9, 9, 0, 9, 9, 9})
	f.Add(seed(lost), []byte{3, 0, 0b111, 0, 1, 2, 3, 4})
	f.Add(seed(three), []byte{4, 0b10000011, 0b1101111, 0b1110000, 9, 9, 9, 9, 9, 9}) // zones, rebalance, 7 moves
	f.Add(seed(three), []byte{0b1011, 2, 0b0100111, 0b10100000, 5, 5, 5, 5, 5, 5})    // zones, a drain, unsafe rules
	f.Add(seed(three), []byte{4, 3, 0b1111, 0b1000, 9, 9, 9, 0x69, 9, 9, 9, 0x69})    // a fenced drain with marks and lagging checkpoints
	f.Add([]byte(`{"_id":"a","by_node":{"x":["00000000-ffffffff"]},"by_range":{"00000000-ffffffff":["x"]}}`), []byte{1, 1, 1})
	f.Fuzz(func(t *testing.T, mapJSON, ctl []byte) {
		var m couch.ShardMap
		if json.Unmarshal(mapJSON, &m) != nil || m.Validate() != nil {
			return
		}
		byte0 := func(i int) int {
			if i < len(ctl) {
				return int(ctl[i])
			}
			return 0
		}
		replicas := 1 + byte0(0)%6
		in := Input{Replicas: replicas, Maps: map[string]couch.ShardMap{"a": m}, DBs: []string{"a"}, Stats: map[CopyKey]CopyStat{}}
		if tgt := byte0(1) % 7; tgt > 0 {
			in.TargetReplicas = &tgt
		}
		live, maint := byte0(2), byte0(3)
		in.Rebalance = byte0(1)&0x80 != 0
		if byte0(1)&0x40 != 0 {
			in.Replicate = []string{"a"}
		}
		in.MaxMoves, in.MaxFillsPerNode = byte0(3)>>4&7, byte0(3)>>7+byte0(2)>>6
		if z := byte0(2) >> 5 & 1; z != 0 {
			// Zones on: member i in zone i%3, its doc in the same zone unless bit i of byte 1 says
			// it still carries another, and each member's placement one of a few rules.
			in.Zones, in.NodeZones, in.PlacementConfig = map[string]string{}, map[string]string{}, map[string]string{}
			in.Decom = map[string]bool{}
			rules := []string{"", "zone-0:1,zone-1:1,zone-2:1", "zone-0:1,zone-9:1", "zone-0:1,zone-1:1"}
			for i := 0; i < 8; i++ {
				in.Zones[name(i)] = fmt.Sprintf("zone-%d", i%3)
				in.NodeZones[name(i)] = in.Zones[name(i)]
				if byte0(1)&(1<<(i%6)) != 0 {
					in.NodeZones[name(i)] = "zone-9"
				}
				in.PlacementConfig[name(i)] = rules[(byte0(0)>>3+i)%len(rules)]
				in.Decom[name(i)] = byte0(3)&(1<<(i%4)) != 0 && i%2 == 0
			}
		}
		ordinal := map[string]int{}
		for i := 0; i < 8; i++ {
			ordinal[name(i)] = i
		}
		for i := 0; i < replicas; i++ {
			in.Members = append(in.Members, Member{Name: name(i), Ordinal: i, Live: live&(1<<i) != 0, Maintenance: maint&(1<<i) != 0,
				Fenced: maint&(1<<i) != 0 && byte0(0)&0x80 == 0})
		}
		for _, n := range m.Nodes() {
			if o, ok := ordinal[n]; !ok || o >= replicas {
				in.Departed = append(in.Departed, n)
			}
		}
		for i, k := range StatsNeeded(in) {
			if v := byte0(4 + i); v != 0 {
				in.Stats[k] = CopyStat{Docs: int64(v - 1), Seq: int64(v - 1), UUID: "u" + k.Node}
			}
		}
		// The high bit of a copy's byte says its pushes to the other copies reached its update_seq.
		for i, k := range StatsNeeded(in) {
			if s, ok := in.Stats[k]; ok && byte0(4+i)&0x80 != 0 {
				s.Pushed = map[string]int64{}
				for _, o := range m.ByRange[k.Range] {
					s.Pushed["u"+o] = s.Seq
				}
				in.Stats[k] = s
			}
		}
		// Bit 0x20 lags its checkpoints at half its update_seq (a push ended while mem3 kept pushing
		// into it), and bit 0x40 gives a copy to drop a mark at half its update_seq and counts.
		for i, k := range StatsNeeded(in) {
			if s, ok := in.Stats[k]; ok && byte0(4+i)&0xa0 == 0x20 {
				s.Pushed = map[string]int64{}
				for _, o := range m.ByRange[k.Range] {
					s.Pushed["u"+o] = s.Seq / 2
				}
				in.Stats[k] = s
			}
		}
		marks := Marks(in, nil)
		for i, k := range StatsNeeded(in) {
			if mk, ok := marks[k]; ok && byte0(4+i)&0x40 != 0 {
				mk.Seq, mk.Total = mk.Seq/2, mk.Total/2
				if in.Marks == nil {
					in.Marks = map[CopyKey]Mark{}
				}
				in.Marks[k] = mk
			}
		}
		if err := checkSafety(in, Plan(in)); err != nil {
			t.Fatal(err)
		}
	})
}

// checkSafety returns the first safety rule res breaks, if any.
func checkSafety(in Input, res Result) error {
	staying := map[string]bool{}
	for _, mem := range in.Members {
		d, draining := Draining(in)
		if mem.Live && !(draining && d.Name == mem.Name) {
			staying[mem.Name] = true
		}
	}
	atRisk := map[string]bool{}
	for _, r := range res.AtRisk {
		atRisk[r.DB] = true
	}
	if err := checkShape(in, res); err != nil {
		return err
	}
	for _, a := range res.Actions {
		if atRisk[a.DB] && a.DB != "" {
			return fmt.Errorf("%s touches %s, which has a range at risk", a, a.DB)
		}
		m := in.Maps[a.DB]
		switch a.Kind {
		case RemoveCopy:
			src, ok := in.Stats[CopyKey{a.DB, a.Range, a.Node}]
			// A fenced copy may be held to its mark instead (see Mark): what it held then, pushed.
			wantSeq, wantTotal := src.Seq, src.total()
			if mk, marked := in.Marks[CopyKey{a.DB, a.Range, a.Node}]; marked && ok && mk.UUID == src.UUID && mk.Seq <= src.Seq && fencedMember(in, a.Node) {
				wantSeq, wantTotal = mk.Seq, mk.Total
			}
			safe := false
			for _, o := range m.ByRange[a.Range] {
				st, known := in.Stats[CopyKey{a.DB, a.Range, o}]
				if o != a.Node && staying[o] && known && (!ok || st.total() >= wantTotal) {
					safe = true
				}
				if o != a.Node && staying[o] && ok && src.total() > 0 && (!known || src.Pushed[st.UUID] < wantSeq) {
					return fmt.Errorf("%s before the copy on %s is known to hold everything it holds (stats %v)", a, o, in.Stats)
				}
			}
			if !safe {
				return fmt.Errorf("%s with no caught-up copy left on a live staying member (map %v, stats %v)", a, m.ByRange, in.Stats)
			}
		case RemoveNode:
			// Against the maps as the plan's edits before it leave them (applied in order, an apply
			// stopping at its first failure).
			for db, mm := range afterEdits(in.Maps, editsBefore(res.Actions, a)) {
				if slices.Contains(mm.Nodes(), a.Node) {
					return fmt.Errorf("%s while %s still references it", a, db)
				}
			}
		case AddCopy:
			if !staying[a.Node] || slices.Contains(m.ByRange[a.Range], a.Node) {
				return fmt.Errorf("%s: target not a live staying member, or it already holds the range (%v)", a, m.ByRange[a.Range])
			}
		case ScaleDown:
			if a.Replicas != in.Replicas-1 || in.TargetReplicas == nil || a.Replicas < *in.TargetReplicas {
				return fmt.Errorf("%s from %d replicas, target %v", a, in.Replicas, in.TargetReplicas)
			}
		}
	}
	return nil
}

// editsBefore lists the map edits of actions before a.
func editsBefore(actions []Action, a Action) []Action {
	var out []Action
	for _, b := range actions {
		if b == a {
			break
		}
		if b.Kind == AddCopy || b.Kind == RemoveCopy {
			out = append(out, b)
		}
	}
	return out
}

func fencedMember(in Input, node string) bool {
	for _, m := range in.Members {
		if m.Name == node {
			return m.Live && m.Fenced
		}
	}
	return false
}

// TestFuzzPlanSeedsExercise keeps the seed corpus honest: the checker must see destructive steps,
// otherwise FuzzPlan could pass without checking anything.
func TestFuzzPlanSeedsExercise(t *testing.T) {
	drain := 3
	m := smap("a", map[string][]int{"00000000-7fffffff": {0, 1, 2, 3}, "80000000-ffffffff": {0, 1, 2, 3}})
	in := Input{Replicas: 4, TargetReplicas: &drain, Maps: map[string]couch.ShardMap{"a": m}, DBs: []string{"a"},
		Members: []Member{{Name: name(0), Ordinal: 0, Live: true}, {Name: name(1), Ordinal: 1, Live: true}, {Name: name(2), Ordinal: 2, Live: true}, {Name: name(3), Ordinal: 3, Live: true, Maintenance: true}},
		Stats:   map[CopyKey]CopyStat{}}
	for _, k := range StatsNeeded(in) {
		in.Stats[k] = CopyStat{Docs: 7, Seq: 7, UUID: "u" + k.Node, Pushed: map[string]int64{"u" + name(0): 7, "u" + name(1): 7, "u" + name(2): 7, "u" + name(3): 7}}
	}
	res := Plan(in)
	if len(res.Actions) == 0 || res.Actions[0].Kind != RemoveCopy {
		t.Fatalf("a drain with caught-up copies elsewhere did not remove the drained copy: %v", res.Actions)
	}
	if err := checkSafety(in, res); err != nil {
		t.Fatal(err)
	}
	// The same step must be refused by the checker with the drained copy's last push to one staying
	// copy older than its update_seq (equal counts prove nothing), and with the staying copies behind.
	k3 := CopyKey{"a", res.Actions[0].Range, name(3)}
	s := in.Stats[k3]
	s.Pushed = map[string]int64{"u" + name(0): 7, "u" + name(1): 6, "u" + name(2): 7}
	in.Stats[k3] = s
	if checkSafety(in, res) == nil {
		t.Fatal("checkSafety accepted removing a copy whose push to a staying copy is unconfirmed")
	}
	for _, k := range StatsNeeded(in) {
		if k.Node != name(3) {
			in.Stats[k] = CopyStat{Docs: 6}
		}
	}
	if checkSafety(in, res) == nil {
		t.Fatal("checkSafety accepted removing the only caught-up copy")
	}
}

// checkShape checks the bounds on concurrent moves and the order of zone steps.
func checkShape(in Input, res Result) error {
	maxMoves, maxFills := max(in.MaxMoves, 1), in.MaxFillsPerNode
	if maxFills <= 0 {
		maxFills = 2
	}
	adds, targets, synced := 0, map[string]int{}, map[string]bool{}
	held, heldOn := map[string]bool{}, map[string]int{}
	served := map[string]bool{}
	d, draining := Draining(in)
	for _, m := range in.Members {
		if z, ok := in.NodeZones[m.Name]; ok && m.Live && !in.Decom[m.Name] && !(draining && d.Name == m.Name) && in.Zones[m.Name] == z {
			served[z] = true
		}
	}
	safe := func(rule string) bool {
		for _, part := range strings.Split(rule, ",") {
			if z, _, _ := strings.Cut(part, ":"); rule != "" && !served[z] {
				return false
			}
		}
		return true
	}
	pending := map[string]bool{} // live members whose rule names a zone nobody serves
	for _, m := range in.Members {
		if r, ok := in.PlacementConfig[m.Name]; ok && m.Live && in.Zones != nil && !safe(r) && r != res.Placement {
			pending[m.Name] = true
		}
	}
	for _, a := range res.Actions {
		switch a.Kind {
		case SetPlacement:
			if !safe(a.Value) {
				return fmt.Errorf("%s names a zone no allowed node serves (docs %v, decom %v)", a, in.NodeZones, in.Decom)
			}
			delete(pending, a.Node)
			continue
		case AddCopy, RemoveCopy:
			if synced[a.DB] {
				return fmt.Errorf("%s after SyncShards(%s)", a, a.DB)
			}
			switch {
			case a.Kind == AddCopy && a.Held:
				// A held add (held.go): half the bounds again, one per database, which gets no post.
				if held[a.DB] {
					return fmt.Errorf("two held adds of %s: %v", a.DB, res.Actions)
				}
				held[a.DB] = true
				if heldOn[a.Node]++; heldOn[a.Node] > maxFills/2 {
					return fmt.Errorf("%d held adds on %s, bound %d: %v", heldOn[a.Node], a.Node, maxFills/2, res.Actions)
				}
			case a.Kind == AddCopy:
				adds++
				if targets[a.Node]++; targets[a.Node] > maxFills {
					return fmt.Errorf("%d fills on %s, bound %d: %v", targets[a.Node], a.Node, maxFills, res.Actions)
				}
			}
		case SyncShards:
			if synced[a.DB] {
				return fmt.Errorf("two SyncShards(%s)", a.DB)
			}
			synced[a.DB] = true
		}
		if len(pending) > 0 && a.Kind != SetZone {
			return fmt.Errorf("%s before the unsafe placement of %v is replaced: %v", a, pending, res.Actions)
		}
	}
	if adds > maxMoves {
		return fmt.Errorf("%d fills started, bound %d: %v", adds, maxMoves, res.Actions)
	}
	if len(held) > maxMoves/2 {
		return fmt.Errorf("%d adds held, bound %d: %v", len(held), maxMoves/2, res.Actions)
	}
	for _, a := range res.Actions {
		if held[a.DB] && (a.Kind == SyncShards || a.Kind == AddCopy && !a.Held) {
			return fmt.Errorf("%s with a held add of %s: %v", a, a.DB, res.Actions)
		}
	}
	return nil
}

// TestCheckShapeRejects keeps checkShape honest: it must refuse a rule naming a zone nobody serves, a
// step before an unsafe rule is replaced, and too many fills.
func TestCheckShapeRejects(t *testing.T) {
	in := Input{Replicas: 3, Members: members(0, 1, 2), Zones: zoned("zone-a", "zone-b", "zone-c"), NodeZones: zoned("zone-a", "zone-b", "zone-x"),
		PlacementConfig: map[string]string{name(0): "zone-a:1,zone-b:1,zone-c:1"}, Maps: map[string]couch.ShardMap{}}
	for name, res := range map[string]Result{
		"unserved zone": {Placement: "zone-a:1,zone-b:1,zone-c:1", Actions: []Action{{Kind: SetPlacement, Node: name(1), Value: "zone-a:1,zone-b:1,zone-c:1"}}},
		"step first":    {Actions: []Action{{Kind: SetDecom, Node: name(2)}, {Kind: SetPlacement, Node: name(0), Value: ""}}},
		"two fills":     {Actions: []Action{{Kind: SetPlacement, Node: name(0), Value: ""}, {Kind: AddCopy, DB: "a", Range: r0, Node: name(1)}, {Kind: AddCopy, DB: "a", Range: r1, Node: name(2)}}},
		"sync twice":    {Actions: []Action{{Kind: SetPlacement, Node: name(0), Value: ""}, {Kind: SyncShards, DB: "a"}, {Kind: SyncShards, DB: "a"}}},
		"held posted":   {Actions: []Action{{Kind: SetPlacement, Node: name(0), Value: ""}, {Kind: AddCopy, DB: "a", Range: r0, Node: name(1), Held: true}, {Kind: SyncShards, DB: "a"}}},
		"held twice":    {Actions: []Action{{Kind: SetPlacement, Node: name(0), Value: ""}, {Kind: AddCopy, DB: "a", Range: r0, Node: name(1), Held: true}, {Kind: AddCopy, DB: "a", Range: r1, Node: name(2), Held: true}}},
	} {
		if checkShape(in, res) == nil {
			t.Errorf("%s: accepted %v", name, res.Actions)
		}
	}
	if err := checkShape(in, Plan(in)); err != nil {
		t.Errorf("Plan's own answer: %v", err)
	}
}
