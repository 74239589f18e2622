package placement

import (
	"slices"
	"sort"

	"github.com/couchdb-controller/couchdb-controller/couch"
)

// Draining returns the member being drained for couchdb.io/target-replicas: the highest ordinal.
func Draining(in Input) (Member, bool) {
	if in.TargetReplicas == nil || *in.TargetReplicas >= in.Replicas {
		return Member{}, false
	}
	for _, m := range in.Members {
		if m.Ordinal == in.Replicas-1 {
			return m, true
		}
	}
	return Member{}, false
}

// view is Input read once: who stays, who leaves, who is live, each member's zone and how many
// copies (of each database) and bytes it holds, and the moves already in flight.
type view struct {
	in        Input
	live      map[string]bool
	staying   []string // members not leaving, sorted
	isStaying map[string]bool
	leaving   map[string]bool
	// leavesLater are the staying members that a couchdb.io/target-replicas drain reaches after the
	// one it drains now: a copy put there would have to move again.
	leavesLater map[string]bool
	drain       string
	drainDown   bool // the drained node is not live: its copies are re-created but not dropped
	// drainServes says the drained node still serves the cluster's reads and writes: it is live
	// and in maintenance mode "nolb", which takes it out of the load balancer (/_up) but leaves
	// fabric's workers running (see DrainMode). Its copies then count as serving for fill fences.
	drainServes bool
	// holdFills stops new moves while the drained node is switched from "nolb" to "true".
	holdFills bool
	frozen    map[string]bool

	zonesOn bool
	zones   []string // distinct non-empty zones of live staying members, sorted

	load  map[string]int            // copies per staying member
	count map[string]map[string]int // db -> staying member -> copies, as the maps are now
	bytes map[string]int64          // staying member -> bytes of its copies, as the maps are now

	// The state once every move in flight has dropped its copy, updated as moves are planned.
	proj      map[string]map[string]int
	projBytes map[string]int64

	busy map[RangeRef]bool // ranges with a move in flight or planned
	// dropping lists the ranges of databases not frozen with copies rule 7 would drop once caught
	// up (removable), in database then range order, and toDrop those copies, as the maps read.
	dropping []RangeRef
	toDrop   map[RangeRef][]string
	drops    map[string]map[string]string // db -> range -> the staying copy its move drops (extraDrops)
	dbSize   map[string]int64             // dbBytes, cached
	inFlight int                          // copies being filled
	fills    map[string]int               // moves each node takes part in
	// held, heldFills and heldRanges are the moves in flight whose fill waits for a slot (held.go):
	// counted apart from inFlight and fills, by database.
	held       int
	heldFills  map[string]int
	heldRanges map[string][]RangeRef
	// filling is, per range with a move in flight or planned, the staying member whose new copy is
	// being filled (the newest copy), and filledBefore the members that were filling before the plan.
	filling            map[RangeRef]string
	filledBefore       map[string]bool
	maxMoves, maxFills int
}

func newView(in Input) *view {
	v := &view{in: in, live: map[string]bool{}, isStaying: map[string]bool{}, leaving: map[string]bool{}, leavesLater: map[string]bool{}, frozen: map[string]bool{},
		load: map[string]int{}, count: map[string]map[string]int{}, bytes: map[string]int64{},
		proj: map[string]map[string]int{}, projBytes: map[string]int64{}, busy: map[RangeRef]bool{}, toDrop: map[RangeRef][]string{}, fills: map[string]int{},
		heldFills: map[string]int{}, heldRanges: map[string][]RangeRef{},
		filling: map[RangeRef]string{}, filledBefore: map[string]bool{},
		drops: map[string]map[string]string{}, dbSize: map[string]int64{}, maxMoves: in.MaxMoves, maxFills: in.MaxFillsPerNode}
	if v.maxMoves <= 0 {
		v.maxMoves = 1
	}
	if v.maxFills <= 0 {
		v.maxFills = 2
	}
	for _, d := range in.Departed {
		v.leaving[d] = true
	}
	if d, ok := Draining(in); ok {
		v.drain = d.Name
		v.drainDown = !d.Live
		v.drainServes = d.Live && d.Maintenance && !d.Fenced
		v.leaving[d.Name] = true
	}
	zones := map[string]bool{}
	for _, m := range in.Members {
		if m.Live {
			v.live[m.Name] = true
		}
		if !v.leaving[m.Name] {
			v.staying = append(v.staying, m.Name)
			v.isStaying[m.Name] = true
			if in.TargetReplicas != nil && m.Ordinal >= *in.TargetReplicas {
				v.leavesLater[m.Name] = true
			}
			if z := in.Zones[m.Name]; m.Live && z != "" {
				zones[z] = true
			}
		}
	}
	sort.Strings(v.staying)
	if in.Zones != nil {
		v.zonesOn = true
		for z := range zones {
			v.zones = append(v.zones, z)
		}
		sort.Strings(v.zones)
	}
	for _, db := range sortedDBs(in.Maps) {
		m := in.Maps[db]
		v.count[db] = map[string]int{}
		for _, rng := range m.Ranges() {
			if !slices.ContainsFunc(m.ByRange[rng], func(n string) bool { return v.live[n] }) {
				v.frozen[db] = true
			}
		}
		for _, node := range m.Nodes() {
			if !v.isStaying[node] {
				continue
			}
			v.load[node] += len(m.ByNode[node])
			v.count[db][node] += len(m.ByNode[node])
			for _, rng := range m.ByNode[node] {
				v.bytes[node] += in.RangeBytes[RangeRef{db, rng}]
			}
		}
	}
	for db, c := range v.count {
		v.proj[db] = cloneCounts(c)
	}
	for n, b := range v.bytes {
		v.projBytes[n] = b
	}
	v.findInFlight()
	return v
}

func cloneCounts(m map[string]int) map[string]int {
	out := make(map[string]int, len(m))
	for k, x := range m {
		out[k] = x
	}
	return out
}

func sortedDBs(m map[string]couch.ShardMap) []string {
	out := make([]string, 0, len(m))
	for db := range m {
		out = append(out, db)
	}
	sort.Strings(out)
	return out
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func (v *view) replicated(db string) bool { return slices.Contains(v.in.Replicate, db) }

// want is the number of copies each range of db should have on staying members.
func (v *view) want(db string) int {
	if v.replicated(db) {
		return len(v.staying)
	}
	return min(DBN(v.in.Maps[db]), len(v.staying))
}

// healthN is the number of live copies a range of db must have to count as healthy: the database's
// n, not capped by the members there are (every staying member for a replicated database).
func (v *view) healthN(db string) int {
	if v.replicated(db) {
		return len(v.staying)
	}
	return DBN(v.in.Maps[db])
}

func (v *view) liveCopies(m couch.ShardMap, rng string) []string {
	var out []string
	for _, n := range m.ByRange[rng] {
		if v.live[n] {
			out = append(out, n)
		}
	}
	return out
}

func (v *view) stayingCopies(m couch.ShardMap, rng string) []string {
	var out []string
	for _, n := range m.ByRange[rng] {
		if v.isStaying[n] {
			out = append(out, n)
		}
	}
	return out
}

func (v *view) liveStaying() []string {
	var out []string
	for _, n := range v.staying {
		if v.live[n] {
			out = append(out, n)
		}
	}
	return out
}

// downStaying names a staying member that is not live, if any.
func (v *view) downStaying() string {
	for _, n := range v.staying {
		if !v.live[n] {
			return n
		}
	}
	return ""
}

// newestCopy is the node of the last "add" of rng in the map's changelog: the copy a move in flight
// is filling.
func newestCopy(m couch.ShardMap, rng string) string {
	for i := len(m.Changelog) - 1; i >= 0; i-- {
		if e := m.Changelog[i]; len(e) == 3 && e[0] == "add" && e[1] == rng {
			if m.HasCopy(rng, e[2]) {
				return e[2]
			}
		}
	}
	return ""
}

// SizesNeeded lists the ranges whose copy size (Input.RangeBytes) Plan needs: with rebalance on and
// ready to move (nothing to heal or drain first), every range of every database it may move (not
// frozen, not replicated to every member). Sizes only steer where copies go, never whether one may
// be dropped, so a size read a while ago (a cache) does as well.
func SizesNeeded(in Input) []RangeRef {
	if !in.Rebalance {
		return nil
	}
	v := newView(in)
	if !v.rebalanceReady() {
		return nil
	}
	var out []RangeRef
	for _, db := range sortedDBs(in.Maps) {
		if v.frozen[db] || v.replicated(db) {
			continue
		}
		for _, rng := range in.Maps[db].Ranges() {
			out = append(out, RangeRef{db, rng})
		}
	}
	return out
}

// StatsNeeded lists the copies whose document counts Plan needs now: every live copy of the ranges
// that have a copy to drop.
func StatsNeeded(in Input) []CopyKey { return newView(in).statsNeeded() }

// SourcesNeeded lists the live copies Plan may drop now, whose internal-replication checkpoints it
// needs (CopyStat.Pushed) to know that every staying copy holds what they hold.
func SourcesNeeded(in Input) []CopyKey { return newView(in).sourcesNeeded() }

// Needed is StatsNeeded and SourcesNeeded from one reading of in. A sync asks for both, and
// building the view (every map, every range) made half of a sync's CPU during concurrent moves
// when each list built its own.
func Needed(in Input) (stats, sources []CopyKey) {
	v := newView(in)
	return v.statsNeeded(), v.sourcesNeeded()
}

func (v *view) statsNeeded() []CopyKey {
	var out []CopyKey
	for _, rr := range v.dropping {
		for _, n := range v.liveCopies(v.in.Maps[rr.DB], rr.Range) {
			out = append(out, CopyKey{rr.DB, rr.Range, n})
		}
	}
	return out
}

func (v *view) sourcesNeeded() []CopyKey {
	var out []CopyKey
	for _, rr := range v.dropping {
		for _, n := range v.toDrop[rr] {
			if v.live[n] {
				out = append(out, CopyKey{rr.DB, rr.Range, n})
			}
		}
	}
	return out
}
