// Package placement decides where shard copies go when CouchDB membership changes. CouchDB never moves
// shards by itself: new nodes get no copies of existing databases, and nodes that leave stay in the
// shard maps. Plan is pure: it reads the shard maps, which nodes are live, leaving or draining, and the
// document counts of the copies it asked about, and returns the next few idempotent steps. The maps
// and _nodes are the only memory, so a controller restart between any two steps is harmless.
//
// Rules, in order:
//  1. A database with a range that has no live copy is frozen: nothing of it changes, and the ranges are
//     reported as at risk (scale back up to bring the copies back).
//  2. Databases named in couchdb.io/replicate are created when absent.
//  3. Every range keeps n copies on staying members (n is the database's copy count, capped by the
//     staying members; every staying member for replicated databases). A missing copy is added on the
//     staying live member with the fewest copies, then _sync_shards fills it.
//  4. A copy on a leaving node (departed, or the node being drained) is dropped from the map only when
//     the range has n copies on staying members and each of them holds at least as many documents
//     (doc_count + doc_del_count) as every live copy of the range.
//  5. With couchdb.io/rebalance, when nothing else is in flight, one copy moves from the fullest member
//     to the emptiest until they differ by at most one; the extra copy is dropped (rule 4's check) from
//     the fullest holder.
//  6. A leaving node that no map references leaves _nodes; a drained node's StatefulSet then shrinks by
//     one.
//
// At most one range is being moved per cluster at a time.
package placement

import (
	"fmt"
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

// CopyStat is a copy's node-local document counts.
type CopyStat struct{ Docs, Deleted int64 }

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
)

// Action is one step.
type Action struct {
	Kind     Kind
	DB       string
	Range    string
	Node     string
	N        int // CreateDB
	Replicas int // ScaleDown: the new spec.replicas
}

func (a Action) String() string {
	switch a.Kind {
	case CreateDB:
		return fmt.Sprintf("CreateDB(%s n=%d)", a.DB, a.N)
	case SyncShards:
		return fmt.Sprintf("SyncShards(%s)", a.DB)
	case SetMaintenance, ClearMaintenance, RemoveNode:
		return fmt.Sprintf("%s(%s)", a.Kind, a.Node)
	case ScaleDown:
		return fmt.Sprintf("ScaleDown(replicas=%d)", a.Replicas)
	}
	return fmt.Sprintf("%s(%s/%s on %s)", a.Kind, a.DB, a.Range, a.Node)
}

// RangeRef names one range of one database.
type RangeRef struct{ DB, Range string }

// Health counts ranges by how many live copies they have against n.
type Health struct{ Healthy, UnderReplicated, Unavailable int }

// Result is Plan's answer.
type Result struct {
	Actions  []Action
	Waiting  string
	AtRisk   []RangeRef
	Health   Health
	Draining string // the node being drained, if any
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
	in      Input
	live    map[string]bool
	staying []string // members not leaving, sorted
	leaving map[string]bool
	load    map[string]int // copies per staying member
	drain   string
	frozen  map[string]bool
}

func newView(in Input) *view {
	v := &view{in: in, live: map[string]bool{}, leaving: map[string]bool{}, load: map[string]int{}, frozen: map[string]bool{}}
	for _, d := range in.Departed {
		v.leaving[d] = true
	}
	if d, ok := Draining(in); ok {
		v.drain = d.Name
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
	return min(copyCount(v.in.Maps[db]), len(v.staying))
}

// copyCount infers a database's n from its map: the most common number of copies per range (the
// smaller on a tie). A move in flight gives one range an extra copy, which must not read as a larger
// n; that is also why rebalance moves only databases with more than one range.
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

// removable lists copies of rng that rule 4 or 5 would drop once the others have caught up.
func (v *view) removable(db string, m couch.ShardMap, rng string) []string {
	staying := v.stayingCopies(m, rng)
	n := v.want(db)
	if len(staying) < n || n == 0 {
		return nil
	}
	var out []string
	for _, node := range m.ByRange[rng] {
		if v.leaving[node] {
			out = append(out, node)
		}
	}
	if len(out) == 0 && len(staying) > n && !slices.Contains(v.in.Replicate, db) {
		// An extra copy (a rebalance move in flight, or n lowered): drop it from the fullest holder.
		out = append(out, v.fullest(staying))
	}
	return out
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

// caughtUp reports whether every staying copy of rng holds at least what every live copy holds, or
// which copy's counts are still missing.
func (v *view) caughtUp(db string, m couch.ShardMap, rng string) (bool, string) {
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
	if d, ok := Draining(in); ok && !d.Maintenance {
		// Clients stop using the draining node before its copies move.
		r.Actions = append(r.Actions, Action{Kind: SetMaintenance, Node: d.Name})
		return r
	}
	for _, db := range in.Replicate {
		if _, ok := in.Maps[db]; !ok && !slices.Contains(in.DBs, db) && len(v.staying) > 0 {
			r.Actions = append(r.Actions, Action{Kind: CreateDB, DB: db, N: len(v.staying)})
			return r
		}
	}
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
				r.Actions = append(r.Actions, Action{Kind: AddCopy, DB: db, Range: rng, Node: target}, Action{Kind: SyncShards, DB: db})
				return r
			}
			if drop := v.removable(db, m, rng); len(drop) > 0 {
				ok, why := v.caughtUp(db, m, rng)
				if !ok {
					r.Waiting = why
					r.Actions = append(r.Actions, Action{Kind: SyncShards, DB: db})
					return r
				}
				r.Actions = append(r.Actions, Action{Kind: RemoveCopy, DB: db, Range: rng, Node: drop[0]})
				return r
			}
		}
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
		if v.frozen[db] || slices.Contains(v.in.Replicate, db) || len(m.ByRange) < 2 {
			continue
		}
		for _, rng := range m.ByNode[full] {
			if !m.HasCopy(rng, empty) {
				return Action{Kind: AddCopy, DB: db, Range: rng, Node: empty}, true
			}
		}
	}
	return Action{}, false
}
