// Package placement decides where shard copies go when CouchDB membership changes. CouchDB never moves
// shards by itself: new nodes get no copies of existing databases, and nodes that leave stay in the
// shard maps. Plan is pure: it reads the shard maps, which nodes are live, leaving or draining, and the
// document counts of the copies it asked about, and returns the next few idempotent steps. The maps
// and _nodes are the only memory, so a controller restart between any two steps is harmless.
//
// Rules, in order:
//  1. A database with a range that has no live copy is frozen: nothing of it changes, and the ranges are
//     reported as at risk (scale back up to bring the copies back).
//  2. A leaving node (departed, or the node being drained) that is still in _nodes is marked
//     "decom": true there, so CouchDB places no copy of a database created from now on on it; a member
//     that is no longer leaving loses the mark. This comes before any database is created.
//  3. The node being drained is put in maintenance mode before anything of it moves, when it is up. A
//     drained node that is down serves nothing anyway, so its copies are re-created from the other live
//     copies without waiting for it (rule 5), but they are dropped only once it is back (rule 6).
//  4. Databases named in couchdb.io/replicate are created when absent, while every staying member is
//     up (a member that is down may hold the only copy of a newer _dbs).
//  5. Every range keeps n copies on staying members (n is the database's n, see DBN, capped by the
//     staying members; every staying member for replicated databases). A missing copy is added on the
//     staying live member with the fewest copies, then _sync_shards fills it.
//  6. A copy on a leaving node is dropped from the map only when the range has n copies on staying
//     members, each of them holds at least as many documents (doc_count + doc_del_count) as every
//     live copy of the range, and, when the dropped copy is live, mem3's checkpoint of a push from it
//     to each of them has reached its update_seq (equal counts alone can hide different documents). A
//     copy on a drained node that is down is kept until the node is back: it may hold writes no other
//     copy has, and unlike a departed node it is expected to return.
//  7. With couchdb.io/rebalance, when nothing else is in flight, one copy moves from the fullest member
//     to the emptiest until they differ by at most one; the extra copy is dropped (rule 6's check) from
//     the fullest holder.
//  8. A leaving node that no map references leaves _nodes; a drained node's StatefulSet then shrinks by
//     one.
//
// At most one range is being moved per cluster at a time.
package placement

import (
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"sort"

	"github.com/couchdb-controller/couchdb-controller/couch"
)

// Member is a node in _nodes that belongs to the StatefulSet with an ordinal below spec.replicas.
type Member struct {
	Name        string
	Ordinal     int
	Live        bool // answered and is connected to the coordinator
	Maintenance bool // [couchdb] maintenance_mode is "true"
}

// CopyKey names one shard copy.
type CopyKey struct{ DB, Range, Node string }

// CopyStat is what a copy's node-local info says: its document counts (doc_count and
// doc_del_count), update_seq and file uuid and, for a copy Plan may drop (SourcesNeeded), the
// internal-replication checkpoints it holds as a source.
type CopyStat struct {
	Docs, Deleted int64
	Seq           int64  // update_seq
	UUID          string // the copy file's uuid
	// Pushed maps a target copy's uuid to the update_seq of this copy that mem3's last push to it
	// reached (its _local/shard-sync-* checkpoint). Nil when not read.
	Pushed map[string]int64
}

func (s CopyStat) total() int64 { return s.Docs + s.Deleted }

// Input is everything Plan reads.
type Input struct {
	Members        []Member
	Departed       []string // in _nodes or in a map, with an ordinal >= spec.replicas: gone for good
	Replicas       int
	TargetReplicas *int
	Replicate      []string
	Rebalance      bool
	DBs            []string
	Maps           map[string]couch.ShardMap
	Stats          map[CopyKey]CopyStat
	// Decom holds, for every node of the StatefulSet whose _nodes doc was read, whether the doc
	// carries "decom": true. Nodes absent from it have no doc (or were not asked) and get no decom step.
	Decom map[string]bool

	// Zones maps each member (and each departed node the controller still knows a pod for) to its
	// zone: the value of the cluster's zone label (couchdb.io/zone-label, by default
	// topology.kubernetes.io/zone) on the Kubernetes Node its pod runs on. Nil turns zones off. A
	// member whose Node has no such label (or is unknown) has zone "".
	Zones map[string]string
	// NodeZones is the "zone" field of each node's _nodes doc, for the nodes whose doc was read.
	NodeZones map[string]string
	// PlacementConfig is [cluster] placement of each live member whose config was read ("" = unset).
	PlacementConfig map[string]string
	// DefaultN is the cluster's [cluster] n (what a database created without n gets); 0 reads as 3.
	DefaultN int
	// RangeBytes is the size in bytes (sizes.file) of one copy of a range, where known.
	RangeBytes map[RangeRef]int64
	// MaxMoves bounds the copies being filled at once in the cluster (moves in flight); 0 means 1.
	MaxMoves int
	// MaxFillsPerNode bounds the fills one node takes part in at once, as the target of a new copy or
	// as the holder of a copy about to be dropped; 0 means 2.
	MaxFillsPerNode int
}

// Kind is a placement step.
type Kind string

// The steps.
const (
	CreateDB       Kind = "CreateDB"
	AddCopy        Kind = "AddCopy"
	SyncShards     Kind = "SyncShards"
	RemoveCopy     Kind = "RemoveCopy"
	SetMaintenance Kind = "SetMaintenance"
	// ClearMaintenance takes a node that is no longer being drained (the target was raised or removed)
	// back into service.
	ClearMaintenance Kind = "ClearMaintenance"
	RemoveNode       Kind = "RemoveNode"
	ScaleDown        Kind = "ScaleDown"
	// SetDecom marks a leaving node's _nodes doc "decom": true so new databases get no copy on it;
	// ClearDecom takes the mark off a node that stays after all.
	SetDecom   Kind = "SetDecom"
	ClearDecom Kind = "ClearDecom"
	// SetZone writes Value as the "zone" of Node's _nodes doc (read-modify-write, other fields kept).
	SetZone Kind = "SetZone"
	// SetPlacement sets Node's [cluster] placement to Value, or deletes it when Value is "".
	SetPlacement Kind = "SetPlacement"
)

// Action is one step.
type Action struct {
	Kind     Kind
	DB       string
	Range    string
	Node     string
	N        int    // CreateDB: n; AddCopy, RemoveCopy: the database's n, recorded in a map without NKey
	Replicas int    // ScaleDown: the new spec.replicas
	Value    string // SetZone: the zone; SetPlacement: the rule ("" deletes it)
}

func (a Action) String() string {
	switch a.Kind {
	case CreateDB:
		return fmt.Sprintf("CreateDB(%s n=%d)", a.DB, a.N)
	case SyncShards:
		return fmt.Sprintf("SyncShards(%s)", a.DB)
	case SetMaintenance, ClearMaintenance, RemoveNode, SetDecom, ClearDecom:
		return fmt.Sprintf("%s(%s)", a.Kind, a.Node)
	case SetZone, SetPlacement:
		return fmt.Sprintf("%s(%s=%q)", a.Kind, a.Node, a.Value)
	case ScaleDown:
		return fmt.Sprintf("ScaleDown(replicas=%d)", a.Replicas)
	}
	return fmt.Sprintf("%s(%s/%s on %s)", a.Kind, a.DB, a.Range, a.Node)
}

// RangeRef names one range of one database.
type RangeRef struct{ DB, Range string }

// Health counts ranges by how many live copies they have against their database's n (never capped
// by the member count), and ZoneViolation the ranges whose copies cover fewer distinct zones than
// min(n, zones with live staying members).
type Health struct{ Healthy, UnderReplicated, Unavailable, ZoneViolation int }

// Shortfall is a database with ranges below its n because the cluster has fewer staying members
// than n: no move can fix it, only scaling up or lowering n.
type Shortfall struct {
	DB      string
	N       int // the database's n
	Copies  int // the fewest live copies of any of its ranges
	Members int // staying members
}

// Result is Plan's answer.
type Result struct {
	Actions  []Action
	Waiting  string
	AtRisk   []RangeRef
	Health   Health
	Draining string // the node being drained, if any
	// Shortfalls lists the databases under-replicated because members < n, for the UnderReplicated
	// Warning.
	Shortfalls []Shortfall
	// Placement is the [cluster] placement rule every member should have ("" = none).
	Placement string
}

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

type view struct {
	in        Input
	live      map[string]bool
	staying   []string // members not leaving, sorted
	leaving   map[string]bool
	load      map[string]int // copies per staying member
	drain     string
	drainDown bool // the drained node is not live: its copies are re-created but not dropped
	frozen    map[string]bool
}

func newView(in Input) *view {
	v := &view{in: in, live: map[string]bool{}, leaving: map[string]bool{}, load: map[string]int{}, frozen: map[string]bool{}}
	for _, d := range in.Departed {
		v.leaving[d] = true
	}
	if d, ok := Draining(in); ok {
		v.drain = d.Name
		v.drainDown = !d.Live
		v.leaving[d.Name] = true
	}
	for _, m := range in.Members {
		if m.Live {
			v.live[m.Name] = true
		}
		if !v.leaving[m.Name] {
			v.staying = append(v.staying, m.Name)
		}
	}
	sort.Strings(v.staying)
	for _, db := range sortedDBs(in.Maps) {
		for _, node := range in.Maps[db].Nodes() {
			if !v.leaving[node] {
				v.load[node] += len(in.Maps[db].ByNode[node])
			}
		}
	}
	return v
}

func sortedDBs(m map[string]couch.ShardMap) []string {
	out := make([]string, 0, len(m))
	for db := range m {
		out = append(out, db)
	}
	sort.Strings(out)
	return out
}

// want is the number of copies each range of db should have on staying members.
func (v *view) want(db string) int {
	if slices.Contains(v.in.Replicate, db) {
		return len(v.staying)
	}
	return min(DBN(v.in.Maps[db]), len(v.staying))
}

// NKey is the field of a database's shard map document in which the controller records the
// database's n the first time it edits the map. CouchDB keeps no n of its own: the map lists the
// copies there are now, and GET /{db} cluster.n is computed from it (it counts a copy being added at
// once, and copies on departed nodes), so during a move the map alone cannot tell a database with
// n=3 and one copy in flight from one with n=4. mem3 ignores fields it does not know, and every edit
// re-reads the map and keeps them. Set it by hand to change a database's n.
const NKey = "couchdb.io/n"

// DBN is the database's n: NKey when the map carries a valid one; otherwise, for a map the controller
// has never edited (so no move of its own is in flight), the number of copies per range CouchDB gave
// it: the most common count, the smaller on a tie, copies on departed nodes included.
func DBN(m couch.ShardMap) int {
	if n, ok := recordedN(m); ok {
		return n
	}
	return copyCount(m)
}

func recordedN(m couch.ShardMap) (int, bool) {
	var f float64
	switch x := m.Extra[NKey].(type) {
	case float64:
		f = x
	case int:
		f = float64(x)
	case json.Number:
		var err error
		if f, err = x.Float64(); err != nil {
			return 0, false
		}
	default:
		return 0, false
	}
	if f < 1 || f != math.Trunc(f) || f > 1000 {
		return 0, false
	}
	return int(f), true
}

// Edit applies an AddCopy or RemoveCopy to a freshly read map with the documented procedure, and
// records a.N under NKey when the map has no n recorded yet, in the same write: from then on the
// database's n no longer depends on what is in flight. It reports whether m changed; dropping a
// range's last copy is refused.
func Edit(m *couch.ShardMap, a Action) (bool, error) {
	changed := false
	switch a.Kind {
	case AddCopy:
		changed = m.AddCopy(a.Range, a.Node)
	case RemoveCopy:
		if m.HasCopy(a.Range, a.Node) && len(m.ByRange[a.Range]) <= 1 {
			return false, fmt.Errorf("refusing to remove the last copy of %s/%s", a.DB, a.Range)
		}
		changed = m.RemoveCopy(a.Range, a.Node)
	default:
		return false, fmt.Errorf("%s is not a shard map edit", a.Kind)
	}
	if _, ok := recordedN(*m); !ok && a.N > 0 {
		if m.Extra == nil {
			m.Extra = map[string]any{}
		}
		m.Extra[NKey] = a.N
		changed = true
	}
	return changed, nil
}

// copyCount counts a database's copies per range: the most common number (the smaller on a tie).
func copyCount(m couch.ShardMap) int {
	counts := map[int]int{}
	for _, nodes := range m.ByRange {
		counts[len(nodes)]++
	}
	n, best := 0, 0
	for c, k := range counts {
		if k > best || k == best && c < n {
			n, best = c, k
		}
	}
	return n
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
		if !v.leaving[n] && slices.Contains(v.staying, n) {
			out = append(out, n)
		}
	}
	return out
}

// SizesNeeded lists the ranges whose copy size (Input.RangeBytes) Plan needs: with rebalance on, those
// of the databases it may move.
func SizesNeeded(in Input) []RangeRef {
	return nil
}

// StatsNeeded lists the copies whose document counts Plan needs now: every live copy of the ranges
// that have a copy to drop.
func StatsNeeded(in Input) []CopyKey {
	v := newView(in)
	var out []CopyKey
	for _, db := range sortedDBs(in.Maps) {
		m := in.Maps[db]
		for _, rng := range m.Ranges() {
			if len(v.removable(db, m, rng)) == 0 {
				continue
			}
			for _, n := range v.liveCopies(m, rng) {
				out = append(out, CopyKey{db, rng, n})
			}
		}
	}
	return out
}

// SourcesNeeded lists the live copies Plan may drop now, whose internal-replication checkpoints it
// needs (CopyStat.Pushed) to know that every staying copy holds what they hold.
func SourcesNeeded(in Input) []CopyKey {
	v := newView(in)
	var out []CopyKey
	for _, db := range sortedDBs(in.Maps) {
		m := in.Maps[db]
		for _, rng := range m.Ranges() {
			for _, n := range v.removable(db, m, rng) {
				if v.live[n] {
					out = append(out, CopyKey{db, rng, n})
				}
			}
		}
	}
	return out
}

// removable lists copies of rng that rule 6 or 7 would drop once the others have caught up.
func (v *view) removable(db string, m couch.ShardMap, rng string) []string {
	out, _ := v.droppable(db, m, rng)
	return out
}

// droppable is removable, and also whether a copy on the drained node was held back because that node
// is down.
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
	if len(out) == 0 && !held && len(staying) > n && !slices.Contains(v.in.Replicate, db) {
		// An extra copy (a rebalance move in flight, or n lowered): drop it from the fullest holder.
		out = append(out, v.fullest(staying))
	}
	return out, held
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

func (v *view) fullest(nodes []string) string {
	best := ""
	for _, n := range nodes {
		if best == "" || v.load[n] > v.load[best] || v.load[n] == v.load[best] && n > best {
			best = n
		}
	}
	return best
}

func (v *view) emptiest(exclude []string) string {
	best := ""
	for _, n := range v.staying {
		if !v.live[n] || slices.Contains(exclude, n) {
			continue
		}
		if best == "" || v.load[n] < v.load[best] {
			best = n
		}
	}
	return best
}

// caughtUp reports whether every staying copy of rng holds at least as many documents as every live
// copy, and, when the copy to drop is live, whether each staying copy is known to hold everything it
// holds; or why not yet. Equal counts alone prove nothing: a drained copy in maintenance mode misses
// the writes a staying copy took while the drained one took writes the staying one missed while it
// was down, and the counts can match. Only mem3's checkpoint of a push from the dropped copy to the
// staying one, at the dropped copy's current update_seq, says the staying copy holds all of it.
func (v *view) caughtUp(db string, m couch.ShardMap, rng, drop string) (bool, string) {
	var maxTotal int64
	for _, n := range v.liveCopies(m, rng) {
		s, ok := v.in.Stats[CopyKey{db, rng, n}]
		if !ok {
			return false, fmt.Sprintf("no document counts yet for %s/%s on %s", db, rng, n)
		}
		maxTotal = max(maxTotal, s.total())
	}
	for _, n := range v.stayingCopies(m, rng) {
		if !v.live[n] {
			return false, fmt.Sprintf("copy %s/%s on %s is not reachable", db, rng, n)
		}
		if s := v.in.Stats[CopyKey{db, rng, n}]; s.total() < maxTotal {
			return false, fmt.Sprintf("copy %s/%s on %s is catching up (%d of %d documents)", db, rng, n, s.total(), maxTotal)
		}
	}
	src := v.in.Stats[CopyKey{db, rng, drop}]
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
		if t.UUID == "" || src.Pushed == nil || src.Pushed[t.UUID] < src.Seq {
			return false, fmt.Sprintf("copy %s/%s on %s is not yet known to hold everything the copy on %s holds (no internal-replication checkpoint at its update_seq %d)", db, rng, n, drop, src.Seq)
		}
	}
	return true, ""
}

// Plan returns the next steps.
func Plan(in Input) Result {
	v := newView(in)
	var r Result
	r.Draining = v.drain
	for _, db := range sortedDBs(in.Maps) {
		m := in.Maps[db]
		n := v.want(db)
		for _, rng := range m.Ranges() {
			live := len(v.liveCopies(m, rng))
			switch {
			case live == 0:
				r.Health.Unavailable++
				r.AtRisk = append(r.AtRisk, RangeRef{db, rng})
				v.frozen[db] = true
			case live < max(n, 1) || len(v.stayingCopies(m, rng)) < n:
				r.Health.UnderReplicated++
			default:
				r.Health.Healthy++
			}
		}
	}
	for _, m := range in.Members {
		if m.Maintenance && m.Name != v.drain && m.Live {
			r.Actions = append(r.Actions, Action{Kind: ClearMaintenance, Node: m.Name})
		}
	}
	// Before anything else, and so before any database is created: CouchDB must not place new copies
	// on a node that is leaving.
	for _, node := range sortedKeys(in.Decom) {
		switch decom := in.Decom[node]; {
		case v.leaving[node] && !decom:
			r.Actions = append(r.Actions, Action{Kind: SetDecom, Node: node})
		case !v.leaving[node] && decom && slices.Contains(v.staying, node):
			r.Actions = append(r.Actions, Action{Kind: ClearDecom, Node: node})
		}
	}
	if d, ok := Draining(in); ok && !d.Maintenance && d.Live {
		// Clients stop using the draining node before its copies move. A drained node that is down
		// cannot be switched (its config API is down with it) and serves no client either.
		r.Actions = append(r.Actions, Action{Kind: SetMaintenance, Node: d.Name})
		return r
	}
	for _, db := range in.Replicate {
		if _, ok := in.Maps[db]; ok || slices.Contains(in.DBs, db) || len(v.staying) == 0 {
			continue
		}
		if down := v.downStaying(); down != "" {
			// The coordinator's _dbs may be stale: the database may have been created while it was down,
			// through a member that is down now. Creating it again would give _dbs two first revisions of
			// its map, and the losing one's copies would be dropped with whatever was written to them.
			if r.Waiting == "" {
				r.Waiting = fmt.Sprintf("database %s (%s) is created once every member is up: %s is not", db, "couchdb.io/replicate", down)
			}
			continue
		}
		r.Actions = append(r.Actions, Action{Kind: CreateDB, DB: db, N: len(v.staying)})
		return r
	}
	heldBack := ""
	for _, db := range sortedDBs(in.Maps) {
		if v.frozen[db] {
			continue
		}
		m := in.Maps[db]
		n := v.want(db)
		for _, rng := range m.Ranges() {
			staying := v.stayingCopies(m, rng)
			if len(staying) < n {
				target := v.emptiest(m.ByRange[rng])
				if target == "" {
					r.Waiting = fmt.Sprintf("no live member can take a copy of %s/%s", db, rng)
					continue
				}
				r.Actions = append(r.Actions, Action{Kind: AddCopy, DB: db, Range: rng, Node: target, N: DBN(m)}, Action{Kind: SyncShards, DB: db})
				return r
			}
			drop, held := v.droppable(db, m, rng)
			if held && heldBack == "" {
				heldBack = fmt.Sprintf("%s/%s", db, rng)
			}
			if len(drop) > 0 {
				ok, why := v.caughtUp(db, m, rng, drop[0])
				if !ok {
					r.Waiting = why
					r.Actions = append(r.Actions, Action{Kind: SyncShards, DB: db})
					return r
				}
				r.Actions = append(r.Actions, Action{Kind: RemoveCopy, DB: db, Range: rng, Node: drop[0], N: DBN(m)})
				return r
			}
		}
	}
	if heldBack != "" && r.Waiting == "" {
		r.Waiting = fmt.Sprintf("drained node %s is down: its copies (%s first) have been re-created on staying members and are dropped once it is back and they are verified; if it is gone for good, lower spec.replicas instead of waiting", v.drain, heldBack)
	}
	if len(r.AtRisk) > 0 {
		r.Waiting = "some ranges have no live copy; their databases are left as they are"
		return r
	}
	if in.Rebalance && len(v.staying) > 1 {
		if a, ok := v.rebalanceMove(); ok {
			r.Actions = append(r.Actions, a, Action{Kind: SyncShards, DB: a.DB})
			return r
		}
	}
	referenced := map[string]bool{}
	for _, m := range in.Maps {
		for _, node := range m.Nodes() {
			referenced[node] = true
		}
	}
	for _, d := range in.Departed {
		if !referenced[d] {
			r.Actions = append(r.Actions, Action{Kind: RemoveNode, Node: d})
		}
	}
	if v.drain != "" && !referenced[v.drain] {
		r.Actions = append(r.Actions, Action{Kind: RemoveNode, Node: v.drain})
	}
	if len(r.Actions) > 0 {
		return r
	}
	if in.TargetReplicas != nil && *in.TargetReplicas < in.Replicas {
		if _, stillMember := Draining(in); !stillMember {
			r.Actions = append(r.Actions, Action{Kind: ScaleDown, Replicas: in.Replicas - 1})
		}
	}
	return r
}

// rebalanceMove picks one copy to add on the emptiest member, from a range the fullest member holds.
func (v *view) rebalanceMove() (Action, bool) {
	var liveStaying []string
	for _, n := range v.staying {
		if v.live[n] {
			liveStaying = append(liveStaying, n)
		}
	}
	if len(liveStaying) < 2 {
		return Action{}, false
	}
	full, empty := v.fullest(liveStaying), v.emptiest(nil)
	if v.load[full]-v.load[empty] <= 1 {
		return Action{}, false
	}
	for _, db := range sortedDBs(v.in.Maps) {
		m := v.in.Maps[db]
		if v.frozen[db] || slices.Contains(v.in.Replicate, db) {
			continue
		}
		for _, rng := range m.ByNode[full] {
			if !m.HasCopy(rng, empty) {
				// The copy about to be dropped is an extra one only while n is recorded (Edit does it).
				return Action{Kind: AddCopy, DB: db, Range: rng, Node: empty, N: DBN(m)}, true
			}
		}
	}
	return Action{}, false
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
