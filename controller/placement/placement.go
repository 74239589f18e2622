package placement

import (
	"fmt"

	"github.com/couchdb-controller/couchdb-controller/couch"
)

// Member is a node in _nodes that belongs to the StatefulSet with an ordinal below spec.replicas.
type Member struct {
	Name        string
	Ordinal     int
	Live        bool // answered and is connected to the coordinator
	Maintenance bool // [couchdb] maintenance_mode is "true" (or a leftover "nolb")
	// Fenced is maintenance_mode exactly "true": fabric refuses the node's workers, so none of its
	// copies takes a client write (mem3's internal-replication pushes still land); see Mark.
	Fenced bool
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
	// Marks holds, for copies to drop, what the controller recorded when each became one (Marks).
	// A copy to drop without a mark is checked against its current update_seq and counts.
	Marks map[CopyKey]Mark
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
	// Held are the databases whose copies added to the map wait for their _sync_shards: the plan
	// that added them held it back (Action.Held) and none has been posted since (held.go).
	Held map[string]bool
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
	// FenceTarget puts a member in maintenance mode while a new copy of a range fills on it, so
	// clients read the range from its complete copies (rule 10); ClearMaintenance ends it.
	FenceTarget Kind = "FenceTarget"
	RemoveNode  Kind = "RemoveNode"
	ScaleDown   Kind = "ScaleDown"
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
	// Held (AddCopy): the copy's _sync_shards is held back until a fill slot is free (held.go): the
	// plan has no SyncShards for its database, and Input.Held names it until one is planned.
	Held bool
}

func (a Action) String() string {
	switch a.Kind {
	case CreateDB:
		return fmt.Sprintf("CreateDB(%s n=%d)", a.DB, a.N)
	case SyncShards:
		return fmt.Sprintf("SyncShards(%s)", a.DB)
	case ClearMaintenance, FenceTarget, RemoveNode, SetDecom, ClearDecom:
		return fmt.Sprintf("%s(%s)", a.Kind, a.Node)
	case SetMaintenance, SetZone, SetPlacement:
		return fmt.Sprintf("%s(%s=%q)", a.Kind, a.Node, a.Value)
	case ScaleDown:
		return fmt.Sprintf("ScaleDown(replicas=%d)", a.Replicas)
	}
	if a.Held {
		return fmt.Sprintf("%s(%s/%s on %s, held)", a.Kind, a.DB, a.Range, a.Node)
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

// Plan returns the next steps. It is a pure function of in.
func Plan(in Input) Result {
	v := newView(in)
	var r Result
	r.Draining = v.drain
	v.health(&r)
	r.Placement = v.placementRule()
	// A rule naming a zone nobody can serve breaks every database creation through that node, so its
	// fix precedes everything, CreateDB included.
	fix, zoneSteps := v.zoneSteps(&r)
	r.Actions = append(r.Actions, fix...)
	r.Actions = append(r.Actions, zoneSteps...)
	for _, m := range in.Members {
		// A member filling a copy keeps its fill fence until fenceSteps decides.
		if m.Maintenance && m.Name != v.drain && m.Live && !v.filledBefore[m.Name] {
			r.Actions = append(r.Actions, Action{Kind: ClearMaintenance, Node: m.Name})
		}
	}
	r.Actions = append(r.Actions, v.decomSteps()...)
	if steps, done := v.drainModeSteps(); done {
		r.Actions = append(r.Actions, steps...)
		return r
	}
	if v.holdFills {
		r.Waiting = fmt.Sprintf("copies on drained node %s take writes: new moves wait for the fills under way, then it goes from maintenance mode %q to %q", v.drain, DrainModeServing, DrainModeFenced)
	}
	if a, wait := v.createReplicated(); a != nil {
		r.Actions = append(r.Actions, *a)
		return r
	} else if wait != "" && r.Waiting == "" {
		r.Waiting = wait
	}
	p := newPlanner(v)
	heldBack := v.planDrops(p)
	v.postHeld(p)
	v.planHeal(p)
	v.planZoneFix(p)
	if heldBack != "" && p.waiting == "" {
		p.waiting = fmt.Sprintf("drained node %s is down: its copies (%s first) have been re-created on staying members and are dropped once it is back and they are verified; if it is gone for good, lower spec.replicas instead of waiting", v.drain, heldBack)
	}
	if len(r.AtRisk) == 0 && in.Rebalance {
		v.planRebalance(p)
	}
	v.planHeld(p, len(r.AtRisk) == 0 && in.Rebalance)
	if p.waiting != "" && r.Waiting == "" {
		r.Waiting = p.waiting
	}
	shardSteps := p.actions()
	fenceSteps := v.fenceSteps(p)
	r.Actions = append(r.Actions, fenceSteps...)
	r.Actions = append(r.Actions, shardSteps...)
	if len(r.AtRisk) > 0 && r.Waiting == "" {
		r.Waiting = "some ranges have no live copy; their databases are left as they are"
	}
	if len(r.AtRisk) == 0 && len(shardSteps) > 0 && onlyDrops(fenceSteps, shardSteps) {
		// The drops that free a leaving node's last copies are followed by its removal from _nodes in
		// the same plan, applied after them (an apply stops at its first failure): a look less per
		// drained node, and a look takes 0.5-0.8 s on real nodes while moves run.
		r.Actions = append(r.Actions, v.unreferenced(afterEdits(in.Maps, shardSteps))...)
		return r
	}
	if len(shardSteps) > 0 || len(fenceSteps) > 0 || len(r.AtRisk) > 0 {
		return r
	}
	r.Actions = append(r.Actions, v.leaveSteps(len(r.Actions) > 0)...)
	return r
}

// onlyDrops says whether a plan's shard steps are all drops and its fence steps all unfences: no move
// is left in flight that a removal from _nodes could race.
func onlyDrops(fenceSteps, shardSteps []Action) bool {
	for _, a := range fenceSteps {
		if a.Kind != ClearMaintenance {
			return false
		}
	}
	for _, a := range shardSteps {
		if a.Kind != RemoveCopy {
			return false
		}
	}
	return true
}

// afterEdits is maps once edits are written (the maps edited are copies).
func afterEdits(maps map[string]couch.ShardMap, edits []Action) map[string]couch.ShardMap {
	out := make(map[string]couch.ShardMap, len(maps))
	for db, m := range maps {
		out[db] = m
	}
	cloned := map[string]bool{}
	for _, a := range edits {
		m, ok := out[a.DB]
		if !ok {
			continue
		}
		if !cloned[a.DB] {
			m, cloned[a.DB] = m.Clone(), true
		}
		_, _ = Edit(&m, a)
		out[a.DB] = m
	}
	return out
}
