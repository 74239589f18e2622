package controller

import (
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/couchdb-controller/couchdb-controller/controller/placement"
	"github.com/couchdb-controller/couchdb-controller/couch"
)

// ActionKind names one kind of change the controller can make.
type ActionKind string

// The actions. There is deliberately no EnableSingleNode: it pins [cluster] n=1, which would spoil
// every later scale-up, so a one-replica cluster is finished like any other.
const (
	ActEnableCluster      ActionKind = "EnableCluster"
	ActAddNode            ActionKind = "AddNode"
	ActFinishCluster      ActionKind = "FinishCluster"
	ActRemoveNode         ActionKind = "RemoveNode"
	ActSetMemberCondition ActionKind = "SetMemberCondition"
	ActCreateDB           ActionKind = "CreateDB"
	ActAddCopy            ActionKind = "AddCopy"
	ActSyncShards         ActionKind = "SyncShards"
	ActRemoveCopy         ActionKind = "RemoveCopy"
	ActSetMaintenance     ActionKind = "SetMaintenance"
	ActClearMaintenance   ActionKind = "ClearMaintenance"
	ActFenceTarget        ActionKind = "FenceTarget"
	ActScaleDown          ActionKind = "ScaleDown"
	ActSetDecom           ActionKind = "SetDecom"
	ActClearDecom         ActionKind = "ClearDecom"
	ActSetZone            ActionKind = "SetZone"
	ActSetPlacement       ActionKind = "SetPlacement"
	// ActCopyMaps copies into the _dbs of the member at From the shard maps it lacks
	// (Observed.MissingDBs), read through Via (joindbs.go).
	ActCopyMaps ActionKind = "CopyMaps"
)

// placementKinds maps the placement planner's steps to actions.
var placementKinds = map[placement.Kind]ActionKind{
	placement.CreateDB: ActCreateDB, placement.AddCopy: ActAddCopy, placement.SyncShards: ActSyncShards,
	placement.RemoveCopy: ActRemoveCopy, placement.SetMaintenance: ActSetMaintenance,
	placement.ClearMaintenance: ActClearMaintenance, placement.FenceTarget: ActFenceTarget, placement.RemoveNode: ActRemoveNode, placement.ScaleDown: ActScaleDown,
	placement.SetDecom: ActSetDecom, placement.ClearDecom: ActClearDecom,
	placement.SetZone: ActSetZone, placement.SetPlacement: ActSetPlacement,
}

// Action is one idempotent step. Via is the ordinal of the node the request is sent to.
type Action struct {
	Kind      ActionKind
	Via       int
	Node      string // the CouchDB node the action concerns
	Pod       string // the pod the action concerns
	Value     bool   // SetMemberCondition
	NodeCount int    // EnableCluster; CreateDB's n; AddCopy and RemoveCopy: the database's n (placement.NKey)
	DB        string // shard actions
	Range     string // shard actions
	Replicas  int    // ScaleDown: the new spec.replicas
	Text      string // SetZone, AddNode: the zone; SetPlacement: the rule ("" deletes it); CopyConfig: the key
	From      int    // CopyAdminHash, CopyConfig: the ordinal whose value is copied (read from Observed by apply)
	Held      bool   // AddCopy: its _sync_shards waits for a fill slot (placement/held.go)
}

func (a Action) String() string {
	switch a.Kind {
	case ActSetMemberCondition:
		return fmt.Sprintf("%s(%s=%t)", a.Kind, a.Pod, a.Value)
	case ActEnableCluster, ActFinishCluster:
		return fmt.Sprintf("%s(via %d)", a.Kind, a.Via)
	case ActCreateDB, ActSyncShards:
		return fmt.Sprintf("%s(%s)", a.Kind, a.DB)
	case ActAddCopy, ActRemoveCopy:
		if a.Held {
			return fmt.Sprintf("%s(%s/%s on %s, held)", a.Kind, a.DB, a.Range, a.Node)
		}
		return fmt.Sprintf("%s(%s/%s on %s)", a.Kind, a.DB, a.Range, a.Node)
	case ActSetMaintenance, ActClearMaintenance, ActFenceTarget, ActSetDecom, ActClearDecom:
		return fmt.Sprintf("%s(%s)", a.Kind, a.Node)
	case ActScaleDown:
		return fmt.Sprintf("%s(replicas=%d)", a.Kind, a.Replicas)
	case ActSetZone, ActSetPlacement:
		return fmt.Sprintf("%s(%s=%q)", a.Kind, a.Node, a.Text)
	case ActCopyAdminHash, ActCopyConfig:
		return copyString(a) // never the value
	case ActCopyMaps:
		return fmt.Sprintf("%s(into %s via %d)", a.Kind, a.Node, a.Via)
	}
	return fmt.Sprintf("%s(%s via %d)", a.Kind, a.Node, a.Via)
}

// Plan is what the planner decided: actions to apply in order, or why it waits.
type Plan struct {
	Actions    []Action
	Wait       string            // why nothing (more) is done now; empty when converged or acting
	Warnings   []Problem         // actionable problems found while planning (e.g. invalid node names)
	Formed     bool              // setup finished
	Members    []string          // the coordinator's cluster_nodes
	Departed   []string          // members whose pod ordinal is >= spec.replicas: gone for good
	Foreign    []string          // members that name no pod of this StatefulSet: never touched
	NodeStates map[string]string // pod -> state (metrics.NodeStates)
	Phase      string
	Requeue    time.Duration     // sooner than the resync period when something is in flight; 0 = resync
	Shards     *placement.Health // shard range health, when the maps were read
	Draining   string            // the node a target-replicas drain is emptying
	Shortfalls []Shortfall       // databases under-replicated because members < n, when the maps were read
	Config     *configPlan       // admin hash and config copies and drift, when the config was read (adminhash.go)
	CatchUp    map[string]string // pod -> why its couchdb.io/member condition waits for catch-up (catchup.go)
	// Filling: the only work left is waiting for new copies to fill (every action is a SyncShards);
	// the next look is scheduled from how long they have been filling (fillRequeue).
	Filling bool
}

// Node states, as the node_state metric reports them.
const (
	statePending  = "pending"
	stateJoining  = "joining"
	stateMember   = "member"
	stateDraining = "draining"
	// stateFilling: a member in maintenance mode while new shard copies fill on it (placement rule 10).
	stateFilling     = "filling"
	stateDeparted    = "departed"
	stateUnreachable = "unreachable"
	stateInvalid     = "invalid"
)

// Phases.
const (
	PhaseForming  = "Forming"
	PhaseReady    = "Ready"
	PhaseScaling  = "Scaling"
	PhaseDegraded = "Degraded"
	PhasePaused   = "Paused"
)

// quickRequeue is how soon to look again after acting: a join is verified in _membership by the
// next sync, and the join latency target is measured in tens of milliseconds.
const quickRequeue = 50 * time.Millisecond

// stepRequeue is how soon to look again after a plan of placement's steps only (map edits, pushes,
// fences, drain marks and modes, a drained node leaving _nodes, the StatefulSet shrinking): each
// reads back at once from the node or API it was sent to, and the steps of a drain follow one
// another in consecutive syncs (a member is fenced only once the one before it reads unfenced; a
// drained node leaves _nodes in the sync after its last copy is dropped). With quickRequeue between
// them the 0.17 s from one drained node's last drop to the next one's first copies was mostly those
// waits (emulated, 100 databases). A plan with moves in flight is still looked at again when the
// fill clock says (sync), not this soon.
const stepRequeue = 5 * time.Millisecond

// onlySteps says whether every action is one of placement's steps.
func onlySteps(actions []Action) bool {
	for _, a := range actions {
		if !slices.Contains(placementSteps, a.Kind) {
			return false
		}
	}
	return true
}

// placementSteps are the actions placement plans (placementKinds), but CreateDB: a database created
// through one node reaches the others' _dbs by mem3's push, not at once.
var placementSteps = []ActionKind{ActAddCopy, ActSyncShards, ActRemoveCopy, ActSetMaintenance, ActClearMaintenance,
	ActFenceTarget, ActRemoveNode, ActScaleDown, ActSetDecom, ActClearDecom, ActSetZone, ActSetPlacement}

// PlanCluster is the pure decision function: everything it knows is in o.
func PlanCluster(o Observed) Plan {
	p := planCluster(o)
	// The phase is decided last: shard planning may add a Warning (DataAtRisk) that makes the
	// cluster Degraded.
	p.Phase = phase(o, p)
	return p
}

func planCluster(o Observed) Plan {
	p := Plan{NodeStates: map[string]string{}}
	coord := coordinator(o)
	var members, connected []string
	if coord != nil {
		members, connected = coord.Membership.ClusterNodes, coord.Membership.AllNodes
		p.Members = slices.Clone(members)
		p.Formed = coord.Setup == couch.StateClusterFinished
	} else {
		// Nothing answered (or nothing was asked, because of a Problem): setup state lives on the
		// nodes' disks, so what was finished stays finished for reporting. No action depends on it.
		p.Formed = o.WasFormed
	}
	p.NodeStates = nodeStates(o, members, connected)
	for _, m := range members {
		ord, ok := nodeOrdinal(m, o.StatefulSet)
		switch {
		case !ok:
			p.Foreign = append(p.Foreign, m)
		case ord >= o.Replicas:
			p.Departed = append(p.Departed, m)
		}
	}
	for _, ord := range sortedOrdinals(o.Nodes) {
		n := o.Nodes[ord]
		switch {
		case n.Reached && n.NameErr != "":
			p.Warnings = append(p.Warnings, Problem{ReasonNodeNameInvalid, fmt.Sprintf("pod %s reports CouchDB node name %q: %s; it will not be joined", n.Pod, n.Name, n.NameErr)})
		case n.Reached && n.VersionErr != "":
			p.Warnings = append(p.Warnings, Problem{ReasonCouchDBVersionUnsupported, fmt.Sprintf("pod %s: %s; the controller will not change this node's cluster", n.Pod, n.VersionErr)})
		}
	}
	switch {
	case len(o.Problems) > 0:
		p.Wait = "waiting for a human to fix: " + o.Problems[0].Message
		return p
	case o.CredentialsRejected:
		p.Wait = "CouchDB rejected the admin credentials; waiting for them to change"
		return p
	case coord == nil:
		p.Wait = "no pod below spec.replicas has answered with a valid node name yet"
		return p
	}
	disagree := disagreement(o, members)
	if !p.Formed {
		planFormation(o, coord, members, connected, disagree, &p)
	} else if disagree != "" {
		p.Wait = disagree
		p.Requeue = quickRequeue
	} else {
		planJoins(o, coord, members, &p)
		planShards(o, coord, members, connected, &p)
		planDayTwo(o, coord, connected, &p)
	}
	planMemberConditions(o, members, connected, &p)
	if p.Formed && disagree == "" {
		planUnsynced(o, coord, &p)
	}
	if len(p.CatchUp) > 0 && len(p.Actions) > 0 && countKind(p.Actions, ActSyncShards) == len(p.Actions) {
		p.Filling = true // only catch-up pushes left: looked at again as fills are (fillRequeue)
	}
	switch {
	case len(p.Actions) > 0 && onlySteps(p.Actions):
		p.Requeue = stepRequeue
	case len(p.Actions) > 0:
		p.Requeue = quickRequeue
	case p.Wait != "" && p.Requeue == 0 && !p.Formed:
		// Formation waits on things that raise no Kubernetes event (Erlang connections, setup state).
		p.Requeue = time.Second
	}
	if o.Paused {
		// Observe and report only.
		p.Actions = nil
		p.Requeue = 0
	}
	return p
}

// coordinator picks the lowest ordinal below spec.replicas whose node answered with a valid name and
// lists itself in its own _nodes: the node every write goes through.
func coordinator(o Observed) *NodeObs {
	for _, ord := range sortedOrdinals(o.Nodes) {
		n := o.Nodes[ord]
		if ord >= o.Replicas || !n.Valid() || n.Membership == nil {
			continue
		}
		if slices.Contains(n.Membership.ClusterNodes, n.Name) {
			return n
		}
	}
	return nil
}

// disagreement reports member nodes whose _nodes differ from the coordinator's: _nodes changes
// propagate between nodes, and acting on half-propagated membership could add twice or remove wrongly.
// Nodes outside the coordinator's view (a joining node, or a removed one that keeps its stale view,
// as real CouchDB does) are not asked to agree.
func disagreement(o Observed, members []string) string {
	want := sortedCopy(members)
	for _, ord := range sortedOrdinals(o.Nodes) {
		n := o.Nodes[ord]
		if !n.Valid() || n.Membership == nil || !slices.Contains(members, n.Name) {
			continue
		}
		if got := sortedCopy(n.Membership.ClusterNodes); !slices.Equal(got, want) {
			return fmt.Sprintf("nodes disagree about membership: %s lists %v, the coordinator %v", n.Pod, got, want)
		}
	}
	return ""
}

// planFormation adds every answering pod's node as soon as it answers (an OrderedReady StatefulSet
// creates pod N+1 only after pod N is Ready, and a readiness gate makes Ready wait for membership), and
// finishes setup once every ordinal below spec.replicas is a connected member all members agree on.
func planFormation(o Observed, coord *NodeObs, members, connected []string, disagree string, p *Plan) {
	for _, ord := range sortedOrdinals(o.Nodes) {
		if n := o.Nodes[ord]; ord < o.Replicas && n.Valid() && n.Setup == couch.StateClusterDisabled {
			p.Actions = append(p.Actions, Action{Kind: ActEnableCluster, Via: ord, Node: n.Name, NodeCount: o.Replicas})
		}
	}
	if len(p.Actions) > 0 {
		return
	}
	if disagree != "" {
		p.Wait = disagree
		return
	}
	planJoins(o, coord, members, p)
	if len(p.Actions) > 0 {
		return
	}
	var names []string
	for ord := 0; ord < o.Replicas; ord++ {
		pod, n := o.Pods[ord], o.Nodes[ord]
		switch {
		case pod == nil:
			p.Wait = fmt.Sprintf("waiting for pod %s-%d to exist", o.StatefulSet, ord)
			return
		case !pod.ContainersReady || n == nil || !n.Reached:
			p.Wait = fmt.Sprintf("waiting for pod %s to answer", pod.Name)
			return
		case n.NameErr != "":
			p.Wait = fmt.Sprintf("pod %s has an invalid node name", pod.Name)
			return
		case n.VersionErr != "":
			p.Wait = fmt.Sprintf("pod %s runs an unsupported CouchDB", pod.Name)
			return
		case !slices.Contains(connected, n.Name):
			p.Wait = fmt.Sprintf("waiting for %s to connect to %s", n.Name, coord.Name)
			return
		}
		names = append(names, n.Name)
	}
	for _, m := range members {
		if slices.Contains(names, m) {
			continue
		}
		// finish_cluster waits for every _nodes entry to answer, so a foreign or departed entry
		// would make it fail after 5 s on every attempt. A departed pod of this StatefulSet (scaled
		// down before setup finished) leaves _nodes when no shard map references it: it holds no data.
		if slices.Contains(departedMembers(o, members), m) && o.Shards != nil && !referenced(o.Shards, m) {
			p.Actions = append(p.Actions, Action{Kind: ActRemoveNode, Via: coord.Ordinal, Node: m})
			continue
		}
		p.Wait = fmt.Sprintf("_nodes lists %s, which is not one of the first %d pods; remove it or scale up", m, o.Replicas)
		if slices.Contains(departedMembers(o, members), m) && o.Shards != nil {
			p.Wait = fmt.Sprintf("_nodes lists %s, which is not one of the first %d pods and holds shard copies; scale back up so its data can move", m, o.Replicas)
		}
		p.Actions = nil
		return
	}
	if len(p.Actions) > 0 {
		return // finish once the departed entries are gone and every node agrees again
	}
	p.Actions = append(p.Actions, Action{Kind: ActFinishCluster, Via: coord.Ordinal})
}

// departedMembers are the entries of members that name a pod of this StatefulSet at an ordinal
// >= spec.replicas.
func departedMembers(o Observed, members []string) []string {
	var out []string
	for _, m := range members {
		if ord, ok := nodeOrdinal(m, o.StatefulSet); ok && ord >= o.Replicas {
			out = append(out, m)
		}
	}
	return out
}

// referenced says whether any shard map lists a copy on node.
func referenced(s *ShardObs, node string) bool {
	for _, m := range s.Maps {
		if len(m.ByNode[node]) > 0 {
			return true
		}
	}
	return false
}

func planJoins(o Observed, coord *NodeObs, members []string, p *Plan) {
	for _, ord := range sortedOrdinals(o.Nodes) {
		n, pod := o.Nodes[ord], o.Pods[ord]
		if d, ok := drainingOrdinal(o); ok && d == ord {
			continue // being drained: it leaves _nodes on purpose
		}
		if ord >= o.Replicas || pod == nil || pod.Terminating || !pod.ContainersReady || !n.Valid() {
			continue
		}
		if !slices.Contains(members, n.Name) {
			// With zones on, apply gives the new doc the pod's zone at once (its Text).
			p.Actions = append(p.Actions, Action{Kind: ActAddNode, Via: coord.Ordinal, Node: n.Name, Pod: n.Pod, Text: o.Zones[ord]})
		}
	}
}

// drainingOrdinal is the pod a couchdb.io/target-replicas below spec.replicas is draining.
func drainingOrdinal(o Observed) (int, bool) {
	if o.TargetReplicas == nil || *o.TargetReplicas >= o.Replicas {
		return 0, false
	}
	return o.Replicas - 1, true
}

// placementInput describes the cluster to the shard-placement planner: members are the nodes in the
// coordinator's _nodes that are pods of this StatefulSet below spec.replicas; departed are names
// (in _nodes or in a shard map) of pods at or above spec.replicas.
func placementInput(o Observed, members, connected []string) placement.Input {
	in := placement.Input{Replicas: o.Replicas, TargetReplicas: o.TargetReplicas, Replicate: o.Replicate, Rebalance: o.Rebalance,
		MaxMoves: o.MaxMoves, MaxFillsPerNode: o.MaxFillsPerNode}
	if o.Shards != nil {
		in.DBs, in.Maps, in.Stats, in.Decom, in.Marks = o.Shards.DBs, o.Shards.Maps, o.Shards.Stats, o.Shards.Decom, o.Shards.Marks
		in.NodeZones, in.PlacementConfig, in.DefaultN, in.RangeBytes = o.Shards.NodeZones, o.Shards.PlacementConfig, o.Shards.DefaultN, o.Shards.RangeBytes
		in.Held = o.Shards.Held
	}
	reached := map[string]bool{}
	for _, n := range o.Nodes {
		if n.Valid() {
			reached[n.Name] = true
		}
	}
	departed := map[string]bool{}
	for _, m := range members {
		ord, ok := nodeOrdinal(m, o.StatefulSet)
		switch {
		case !ok:
		case ord >= o.Replicas:
			departed[m] = true
		default:
			mem := placement.Member{Name: m, Ordinal: ord, Live: reached[m] && slices.Contains(connected, m)}
			if o.Shards != nil {
				mem.Maintenance, mem.Fenced = o.Shards.Maintenance[m], o.Shards.Fenced[m]
			}
			in.Members = append(in.Members, mem)
		}
	}
	for _, sm := range in.Maps {
		for _, n := range sm.Nodes() {
			if ord, ok := nodeOrdinal(n, o.StatefulSet); ok && ord >= o.Replicas {
				departed[n] = true
			}
		}
	}
	for n := range departed {
		in.Departed = append(in.Departed, n)
	}
	sortStrings(in.Departed)
	names := slices.Clone(in.Departed)
	for _, m := range in.Members {
		names = append(names, m.Name)
	}
	in.Zones = memberZones(o, names)
	return in
}

// planShards asks the placement planner for the next shard steps. Without an observation of the maps
// nothing that depends on them (removing a node, moving a copy) is done.
func planShards(o Observed, coord *NodeObs, members, connected []string, p *Plan) {
	if o.Shards == nil {
		if len(p.Departed) > 0 && p.Wait == "" {
			p.Wait = fmt.Sprintf("departed nodes %v are kept until the shard maps are known not to reference them", p.Departed)
		}
		return
	}
	res := placement.Plan(placementInput(o, members, connected))
	health := res.Health
	p.Shards = &health
	p.Draining = res.Draining
	if len(res.AtRisk) > 0 {
		byDB := map[string][]string{}
		var dbs []string
		for _, r := range res.AtRisk {
			if _, ok := byDB[r.DB]; !ok {
				dbs = append(dbs, r.DB)
			}
			byDB[r.DB] = append(byDB[r.DB], r.Range)
		}
		var parts []string
		for _, db := range dbs {
			parts = append(parts, fmt.Sprintf("%s %v", db, byDB[db]))
		}
		p.Warnings = append(p.Warnings, Problem{ReasonDataAtRisk, fmt.Sprintf(
			"shard ranges with no live copy: %s; every reference is kept and those databases are left unchanged: scale the StatefulSet back up (to at least its former size) so the nodes holding them return",
			strings.Join(parts, "; "))})
	}
	if len(res.Shortfalls) > 0 {
		p.Shortfalls = shortfalls(res.Shortfalls)
		p.Warnings = append(p.Warnings, underReplicated(o, p.Shortfalls))
	}
	if res.Waiting != "" && p.Wait == "" {
		p.Wait = res.Waiting
	}
	for _, a := range res.Actions {
		p.Actions = append(p.Actions, Action{Kind: placementKinds[a.Kind], Via: coord.Ordinal, Node: a.Node,
			DB: a.DB, Range: a.Range, NodeCount: a.N, Replicas: a.Replicas, Text: a.Value, Held: a.Held})
	}
	if len(res.Actions) > 0 || res.Waiting != "" {
		p.Requeue = quickRequeue
	}
	p.Filling = res.Waiting != ""
	for _, a := range res.Actions {
		if a.Kind != placement.SyncShards {
			p.Filling = false
		}
	}
}

// planMemberConditions keeps the couchdb.io/member condition of pods that declare the readiness gate
// equal to "this node is a connected member", so Services route only to members.
func planMemberConditions(o Observed, members, connected []string, p *Plan) {
	for _, ord := range sortedOrdinals(o.Pods) {
		pod := o.Pods[ord]
		if !pod.HasMemberGate || pod.Terminating {
			continue
		}
		want := false
		d, draining := drainingOrdinal(o)
		// Not gated on formation: with OrderedReady, pod 1 is only created once pod 0 is Ready.
		if n := o.Nodes[ord]; n.Valid() && ord < o.Replicas && !(draining && d == ord) &&
			slices.Contains(members, n.Name) && slices.Contains(connected, n.Name) {
			want = !p.holdForCatchUp(o, ord) && !p.holdForDBs(o, ord)
		}
		if pod.MemberCondition == nil || *pod.MemberCondition != want {
			p.Actions = append(p.Actions, Action{Kind: ActSetMemberCondition, Pod: pod.Name, Value: want})
		}
	}
}

func nodeStates(o Observed, members, connected []string) map[string]string {
	out := map[string]string{}
	for _, ord := range sortedOrdinals(o.Pods) {
		pod, n := o.Pods[ord], o.Nodes[ord]
		var s string
		switch {
		case n != nil && n.Reached && (n.NameErr != "" || n.VersionErr != ""):
			s = stateInvalid
		case ord >= o.Replicas:
			s = stateDeparted
		case o.TargetReplicas != nil && *o.TargetReplicas < o.Replicas && ord == o.Replicas-1:
			s = stateDraining
		case o.FillFenced[ord] && n != nil && n.Reached:
			s = stateFilling
		case !pod.ContainersReady || pod.IP == "":
			s = statePending
		case n == nil || !n.Reached:
			s = stateUnreachable
			if n != nil && n.Err == "" {
				s = statePending // not asked (credentials withheld)
			}
		case slices.Contains(members, n.Name) && slices.Contains(connected, n.Name):
			s = stateMember
		default:
			s = stateJoining
		}
		out[pod.Name] = s
	}
	return out
}

func phase(o Observed, p Plan) string {
	// Something a human must fix comes first: it is why nothing else moves.
	if len(o.Problems) > 0 || o.CredentialsRejected {
		return PhaseDegraded
	}
	if o.Paused {
		return PhasePaused
	}
	if !p.Formed {
		return PhaseForming
	}
	if len(p.Warnings) > 0 {
		return PhaseDegraded
	}
	for _, s := range p.NodeStates {
		if s == stateUnreachable || s == stateInvalid {
			return PhaseDegraded
		}
	}
	for _, s := range p.NodeStates {
		if s != stateMember {
			return PhaseScaling
		}
	}
	if len(p.Members) != o.Replicas || o.TargetReplicas != nil && *o.TargetReplicas != o.Replicas {
		return PhaseScaling
	}
	return PhaseReady
}

func sortedOrdinals[V any](m map[int]V) []int {
	out := make([]int, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Ints(out)
	return out
}

func sortedCopy(s []string) []string {
	out := slices.Clone(s)
	sort.Strings(out)
	return out
}

// summary is a short human description of a plan for logs.
func (p Plan) summary() string {
	parts := make([]string, 0, len(p.Actions))
	for _, a := range p.Actions {
		parts = append(parts, a.String())
	}
	return strings.Join(parts, ", ")
}
