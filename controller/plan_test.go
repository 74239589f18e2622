package controller

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/couchdb-controller/couchdb-controller/couch"
)

const testSTS = "db"

func nodeName(ord int) string { return fmt.Sprintf("couchdb@db-%d.db.ns.svc.cluster.local", ord) }

func names(ords ...int) []string {
	out := make([]string, 0, len(ords))
	for _, o := range ords {
		out = append(out, nodeName(o))
	}
	return out
}

// world builds an Observed: every listed ordinal has a ready pod whose node answered; each node
// lists members (as its cluster_nodes) and is connected to connected.
type world struct {
	replicas  int
	members   []string
	connected []string
	setup     couch.SetupState
	notReady  []int
	unreached []int
	pods      []int
}

func (w world) observe() Observed {
	o := Observed{Namespace: "ns", Cluster: "db", StatefulSet: testSTS, Replicas: w.replicas, Pods: map[int]*PodObs{}, Nodes: map[int]*NodeObs{}}
	for _, ord := range w.pods {
		name := fmt.Sprintf("db-%d", ord)
		o.Pods[ord] = &PodObs{Name: name, Ordinal: ord, UID: name, IP: fmt.Sprintf("10.0.0.%d", ord+1), Port: 5984, ContainersReady: !slices.Contains(w.notReady, ord)}
		n := &NodeObs{Ordinal: ord, Pod: name}
		o.Nodes[ord] = n
		if slices.Contains(w.notReady, ord) {
			continue
		}
		if slices.Contains(w.unreached, ord) {
			n.Err = "dial tcp: connection refused"
			continue
		}
		n.Reached, n.Name = true, nodeName(ord)
		mem := w.members
		if !slices.Contains(mem, n.Name) {
			mem = []string{n.Name} // a fresh node knows only itself
		}
		n.Membership = &couch.Membership{ClusterNodes: slices.Clone(mem), AllNodes: slices.Clone(w.connected)}
		n.Setup = w.setup
		if n.Setup == "" {
			n.Setup = couch.StateClusterEnabled
		}
	}
	return o
}

func kinds(p Plan) []string {
	var out []string
	for _, a := range p.Actions {
		out = append(out, a.String())
	}
	return out
}

func TestPlanRules(t *testing.T) {
	finished := couch.StateClusterFinished
	cases := map[string]struct {
		obs         Observed
		wantActions []string
		wantWait    bool
		wantWarn    string
	}{
		"no pods yet: wait": {
			obs: world{replicas: 3}.observe(), wantWait: true,
		},
		"formation adds every answering node through ordinal 0": {
			obs:         world{replicas: 3, pods: []int{0, 1, 2}, connected: names(0)}.observe(),
			wantActions: []string{"AddNode(" + nodeName(1) + " via 0)", "AddNode(" + nodeName(2) + " via 0)"},
		},
		"formation adds a node that answers before the others exist (OrderedReady)": {
			obs:         world{replicas: 3, pods: []int{0, 1}, connected: names(0)}.observe(),
			wantActions: []string{"AddNode(" + nodeName(1) + " via 0)"},
		},
		"all members and connected: finish through the coordinator": {
			obs:         world{replicas: 3, pods: []int{0, 1, 2}, members: names(0, 1, 2), connected: names(0, 1, 2)}.observe(),
			wantActions: []string{"FinishCluster(via 0)"},
		},
		"a member not yet connected: wait, no finish (finish_cluster would time out)": {
			obs:      world{replicas: 3, pods: []int{0, 1, 2}, members: names(0, 1, 2), connected: names(0, 1)}.observe(),
			wantWait: true,
		},
		"a pod below replicas missing: no finish": {
			obs:      world{replicas: 3, pods: []int{0, 1}, members: names(0, 1), connected: names(0, 1)}.observe(),
			wantWait: true,
		},
		"single replica is finished like any other, never single-node mode": {
			obs:         world{replicas: 1, pods: []int{0}, members: names(0), connected: names(0)}.observe(),
			wantActions: []string{"FinishCluster(via 0)"},
		},
		"cluster_disabled node gets enable_cluster first": {
			obs:         world{replicas: 1, pods: []int{0}, members: names(0), connected: names(0), setup: couch.StateClusterDisabled}.observe(),
			wantActions: []string{"EnableCluster(via 0)"},
		},
		"formed: a new ready pod joins": {
			obs:         world{replicas: 4, pods: []int{0, 1, 2, 3}, members: names(0, 1, 2), connected: names(0, 1, 2), setup: finished}.observe(),
			wantActions: []string{"AddNode(" + nodeName(3) + " via 0)"},
		},
		"formed: a pod whose containers are not ready does not join": {
			obs: world{replicas: 4, pods: []int{0, 1, 2, 3}, notReady: []int{3}, members: names(0, 1, 2), connected: names(0, 1, 2), setup: finished}.observe(),
		},
		"formed and converged: nothing to do": {
			obs: world{replicas: 3, pods: []int{0, 1, 2}, members: names(0, 1, 2), connected: names(0, 1, 2), setup: finished}.observe(),
		},
		"unreachable member below replicas is never removed": {
			obs: world{replicas: 3, pods: []int{0, 1, 2}, unreached: []int{1}, members: names(0, 1, 2), connected: names(0, 2), setup: finished}.observe(),
		},
		"nothing reachable: wait": {
			obs:      world{replicas: 3, pods: []int{0, 1, 2}, unreached: []int{0, 1, 2}}.observe(),
			wantWait: true,
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			p := PlanCluster(tc.obs)
			if diff := cmp.Diff(tc.wantActions, kinds(p)); diff != "" {
				t.Errorf("actions (-want +got):\n%s\nwait: %s", diff, p.Wait)
			}
			if tc.wantWait != (p.Wait != "") {
				t.Errorf("wait = %q, want wait=%t", p.Wait, tc.wantWait)
			}
			for _, a := range p.Actions {
				if a.Kind == ActRemoveNode && a.Node != "" {
					if ord, ok := nodeOrdinal(a.Node, testSTS); !ok || ord < tc.obs.Replicas {
						t.Errorf("removes %s whose ordinal is below replicas", a.Node)
					}
				}
			}
		})
	}
}

func TestPlanSafetyRules(t *testing.T) {
	finished := couch.StateClusterFinished
	t.Run("members disagree: wait, no join", func(t *testing.T) {
		o := world{replicas: 4, pods: []int{0, 1, 2, 3}, members: names(0, 1, 2), connected: names(0, 1, 2, 3), setup: finished}.observe()
		o.Nodes[1].Membership.ClusterNodes = names(0, 1) // node 1 has not seen node 2 yet
		p := PlanCluster(o)
		if len(p.Actions) != 0 || p.Wait == "" {
			t.Errorf("got actions %v wait %q, want a wait and nothing else", kinds(p), p.Wait)
		}
	})
	t.Run("a 201 from add_node is not success: the node is added again until _membership shows it", func(t *testing.T) {
		o := world{replicas: 4, pods: []int{0, 1, 2, 3}, members: names(0, 1, 2), connected: names(0, 1, 2), setup: finished}.observe()
		first := PlanCluster(o)
		// The add "succeeded" (201) but CouchDB wrote nothing: the next observation is the same.
		second := PlanCluster(o)
		if diff := cmp.Diff(kinds(first), kinds(second)); diff != "" || len(second.Actions) != 1 {
			t.Errorf("plans differ or empty: %v / %v", kinds(first), kinds(second))
		}
		if second.NodeStates["db-3"] != stateJoining {
			t.Errorf("db-3 state %q, want joining until _membership shows it", second.NodeStates["db-3"])
		}
	})
	t.Run("invalid node name: warning, never joined", func(t *testing.T) {
		o := world{replicas: 4, pods: []int{0, 1, 2, 3}, members: names(0, 1, 2), connected: names(0, 1, 2), setup: finished}.observe()
		o.Nodes[3].Name = "nonode@nohost"
		o.Nodes[3].NameErr = validateNodeName("nonode@nohost", "db-3")
		p := PlanCluster(o)
		if len(p.Actions) != 0 || len(p.Warnings) != 1 || p.Warnings[0].Reason != ReasonNodeNameInvalid {
			t.Errorf("actions %v warnings %v", kinds(p), p.Warnings)
		}
		if p.NodeStates["db-3"] != stateInvalid {
			t.Errorf("state %s", p.NodeStates["db-3"])
		}
	})
	t.Run("paused: observe only", func(t *testing.T) {
		o := world{replicas: 3, pods: []int{0, 1, 2}, connected: names(0)}.observe()
		o.Paused = true
		if p := PlanCluster(o); len(p.Actions) != 0 || p.Phase != PhasePaused {
			t.Errorf("paused plan %v phase %s", kinds(p), p.Phase)
		}
	})
	t.Run("a problem a human must fix blocks every action", func(t *testing.T) {
		o := world{replicas: 3, pods: []int{0, 1, 2}, connected: names(0)}.observe()
		o.Problems = []Problem{{ReasonServiceNotLabelled, "label it"}}
		if p := PlanCluster(o); len(p.Actions) != 0 || p.Wait == "" {
			t.Errorf("plan %v", kinds(p))
		}
	})
	t.Run("rejected credentials block every action", func(t *testing.T) {
		o := world{replicas: 3, pods: []int{0, 1, 2}, connected: names(0)}.observe()
		o.CredentialsRejected = true
		if p := PlanCluster(o); len(p.Actions) != 0 {
			t.Errorf("plan %v", kinds(p))
		}
	})
	departed := world{replicas: 3, pods: []int{0, 1, 2}, members: names(0, 1, 2, 3), connected: names(0, 1, 2), setup: finished}
	t.Run("departed node kept while the shard maps are unknown", func(t *testing.T) {
		if p := PlanCluster(departed.observe()); len(p.Actions) != 0 || !slices.Equal(p.Departed, names(3)) {
			t.Errorf("plan %v departed %v", kinds(p), p.Departed)
		}
	})
	shardMap := func(db string, byRange map[string][]string) couch.ShardMap {
		m := couch.ShardMap{ID: db, ByNode: map[string][]string{}, ByRange: map[string][]string{}}
		for r, nodes := range byRange {
			for _, n := range nodes {
				m.AddCopy(r, n)
			}
		}
		return m
	}
	t.Run("departed node whose copies are the last ones: kept, DataAtRisk", func(t *testing.T) {
		o := departed.observe()
		o.Shards = &ShardObs{DBs: []string{"db1"}, Maps: map[string]couch.ShardMap{"db1": shardMap("db1", map[string][]string{"00000000-ffffffff": names(3)})}}
		p := PlanCluster(o)
		if len(p.Actions) != 0 || len(p.Warnings) != 1 || p.Warnings[0].Reason != ReasonDataAtRisk {
			t.Errorf("plan %v warnings %v", kinds(p), p.Warnings)
		}
		if p.Shards == nil || p.Shards.Unavailable != 1 {
			t.Errorf("health %+v", p.Shards)
		}
	})
	t.Run("departed node's copies are re-created on a staying member before anything is removed", func(t *testing.T) {
		o := departed.observe()
		o.Shards = &ShardObs{DBs: []string{"db1"}, Maps: map[string]couch.ShardMap{"db1": shardMap("db1", map[string][]string{"00000000-ffffffff": names(1, 3)})}}
		p := PlanCluster(o)
		want := []string{"AddCopy(db1/00000000-ffffffff on " + nodeName(0) + ")", "SyncShards(db1)"}
		if diff := cmp.Diff(want, kinds(p)); diff != "" {
			t.Error(diff)
		}
	})
	// Scaled down after every node listed every member but before finish_cluster: the removed pods
	// are still in _nodes, and finish_cluster would wait on them for ever.
	unfinished := world{replicas: 3, pods: []int{0, 1, 2}, members: names(0, 1, 2, 3, 4), connected: names(0, 1, 2)}
	t.Run("unfinished cluster: departed entries kept while the shard maps are unknown", func(t *testing.T) {
		if p := PlanCluster(unfinished.observe()); len(p.Actions) != 0 || p.Wait == "" || p.Formed {
			t.Errorf("plan %v wait %q", kinds(p), p.Wait)
		}
	})
	t.Run("unfinished cluster: unreferenced departed entries leave _nodes, then setup finishes", func(t *testing.T) {
		o := unfinished.observe()
		o.Shards = &ShardObs{}
		p := PlanCluster(o)
		want := []string{"RemoveNode(" + nodeName(3) + " via 0)", "RemoveNode(" + nodeName(4) + " via 0)"}
		if diff := cmp.Diff(want, kinds(p)); diff != "" {
			t.Errorf("actions (-want +got):\n%s\nwait: %s", diff, p.Wait)
		}
		after := world{replicas: 3, pods: []int{0, 1, 2}, members: names(0, 1, 2), connected: names(0, 1, 2)}.observe()
		if got := kinds(PlanCluster(after)); !slices.Equal(got, []string{"FinishCluster(via 0)"}) {
			t.Errorf("after the removals: %v", got)
		}
	})
	t.Run("unfinished cluster: a departed entry holding a copy is kept", func(t *testing.T) {
		o := unfinished.observe()
		o.Shards = &ShardObs{DBs: []string{"db1"}, Maps: map[string]couch.ShardMap{"db1": shardMap("db1", map[string][]string{"00000000-ffffffff": names(0, 1, 4)})}}
		p := PlanCluster(o)
		if len(p.Actions) != 0 || !strings.Contains(p.Wait, "holds shard copies") {
			t.Errorf("plan %v wait %q", kinds(p), p.Wait)
		}
	})
	t.Run("departed node that no map references is removed from _nodes", func(t *testing.T) {
		o := departed.observe()
		o.Shards = &ShardObs{DBs: []string{"db1"}, Maps: map[string]couch.ShardMap{"db1": shardMap("db1", map[string][]string{"00000000-ffffffff": names(0, 1, 2)})}}
		p := PlanCluster(o)
		if diff := cmp.Diff([]string{"RemoveNode(" + nodeName(3) + " via 0)"}, kinds(p)); diff != "" {
			t.Error(diff)
		}
	})
	t.Run("a member fenced for a fill that is still short stays fenced and shows as filling", func(t *testing.T) {
		w := world{replicas: 4, pods: []int{0, 1, 2, 3}, members: names(0, 1, 2, 3), connected: names(0, 1, 2, 3), setup: finished}
		o := w.observe()
		o.FillFenced = map[int]bool{3: true}
		m := shardMap("db1", map[string][]string{"00000000-ffffffff": names(0, 1, 2, 3)})
		m.Extra = map[string]any{"couchdb.io/n": float64(3)}
		m.Changelog = append(m.Changelog, []string{"add", "00000000-ffffffff", nodeName(3)})
		o.Shards = &ShardObs{DBs: []string{"db1"}, Maps: map[string]couch.ShardMap{"db1": m},
			Maintenance: map[string]bool{nodeName(3): true}, Fenced: map[string]bool{nodeName(3): true}}
		p := PlanCluster(o)
		for _, a := range p.Actions {
			if a.Kind == ActClearMaintenance {
				t.Errorf("plan %v unfences a member whose fill is not verified", kinds(p))
			}
		}
		if p.NodeStates["db-3"] != stateFilling {
			t.Errorf("state %s, want %s", p.NodeStates["db-3"], stateFilling)
		}
	})
	t.Run("target-replicas drains the highest ordinal: maintenance first, never re-joined", func(t *testing.T) {
		w := world{replicas: 3, pods: []int{0, 1, 2}, members: names(0, 1, 2), connected: names(0, 1, 2), setup: finished}
		o := w.observe()
		two := 2
		o.TargetReplicas = &two
		o.Shards = &ShardObs{DBs: []string{"db1"}, Maps: map[string]couch.ShardMap{"db1": shardMap("db1", map[string][]string{"00000000-ffffffff": names(0, 2)})}, Maintenance: map[string]bool{}}
		p := PlanCluster(o)
		if diff := cmp.Diff([]string{"SetMaintenance(" + nodeName(2) + ")"}, kinds(p)); diff != "" {
			t.Error(diff)
		}
		if p.NodeStates["db-2"] != stateDraining {
			t.Errorf("state %s", p.NodeStates["db-2"])
		}
		// A drain's steps read back at once: the next look comes without the join's wait.
		if p.Requeue != stepRequeue {
			t.Errorf("requeue %v after %v, want %v", p.Requeue, kinds(p), stepRequeue)
		}
		// Drained and removed from _nodes: the planner must not add it back, and scales down.
		w.members = names(0, 1)
		o = w.observe()
		o.TargetReplicas = &two
		o.Shards = &ShardObs{DBs: []string{"db1"}, Maps: map[string]couch.ShardMap{"db1": shardMap("db1", map[string][]string{"00000000-ffffffff": names(0, 1)})}, Maintenance: map[string]bool{}}
		p = PlanCluster(o)
		if diff := cmp.Diff([]string{"ScaleDown(replicas=2)"}, kinds(p)); diff != "" {
			t.Error(diff)
		}
		if p.Requeue != stepRequeue {
			t.Errorf("requeue %v after %v, want %v", p.Requeue, kinds(p), stepRequeue)
		}
	})
	t.Run("a join is looked at again after quickRequeue, a join beside placement's steps too", func(t *testing.T) {
		o := world{replicas: 4, pods: []int{0, 1, 2, 3}, members: names(0, 1, 2), connected: names(0, 1, 2), setup: finished}.observe()
		p := PlanCluster(o)
		if p.Requeue != quickRequeue || len(p.Actions) != 1 || p.Actions[0].Kind != ActAddNode {
			t.Errorf("plan %v requeue %v, want AddNode and %v", kinds(p), p.Requeue, quickRequeue)
		}
		mixed := append(p.Actions, Action{Kind: ActSetDecom, Node: nodeName(2)})
		if onlySteps(mixed) || !onlySteps(mixed[1:]) || onlySteps([]Action{{Kind: ActCreateDB, DB: "db1"}}) {
			t.Errorf("onlySteps: %v with a join, %v alone, CreateDB", onlySteps(mixed), onlySteps(mixed[1:]))
		}
	})
	t.Run("foreign _nodes entries are never touched", func(t *testing.T) {
		w := departed
		w.members = append(names(0, 1, 2), "couchdb@elsewhere.example")
		o := w.observe()
		o.Shards = &ShardObs{Maps: map[string]couch.ShardMap{}}
		p := PlanCluster(o)
		if len(p.Actions) != 0 || !slices.Equal(p.Foreign, []string{"couchdb@elsewhere.example"}) {
			t.Errorf("plan %v foreign %v", kinds(p), p.Foreign)
		}
	})
	t.Run("member gate: true for connected members, false otherwise", func(t *testing.T) {
		o := world{replicas: 4, pods: []int{0, 1, 2, 3}, members: names(0, 1, 2), connected: names(0, 1, 2), setup: finished}.observe()
		for _, p := range o.Pods {
			p.HasMemberGate = true
		}
		tr := true
		o.Pods[0].MemberCondition = &tr
		p := PlanCluster(o)
		want := []string{"AddNode(" + nodeName(3) + " via 0)", "SetMemberCondition(db-1=true)", "SetMemberCondition(db-2=true)", "SetMemberCondition(db-3=false)"}
		if diff := cmp.Diff(want, kinds(p)); diff != "" {
			t.Error(diff)
		}
	})
}

func TestValidateNodeName(t *testing.T) {
	cases := map[string]bool{
		"couchdb@db-0.db.ns.svc.cluster.local": true,
		"couchdb@db-0":                         true,
		"nonode@nohost":                        false,
		"couchdb@127.0.0.1":                    false,
		"couchdb@localhost":                    false,
		"couchdb@10.1.2.3":                     false,
		"couchdb@db-1.db.ns.svc.cluster.local": false, // names another pod
		"db-0.db":                              false,
		"@db-0":                                false,
	}
	for name, valid := range cases {
		if got := validateNodeName(name, "db-0") == ""; got != valid {
			t.Errorf("%s: valid=%t, want %t (%s)", name, got, valid, validateNodeName(name, "db-0"))
		}
	}
}

// TestPlanFixpoint applies plans to a small model of CouchDB until nothing is left to do, then checks
// the cluster is formed, every pod a member, and that planning again yields no action.
func TestPlanFixpoint(t *testing.T) {
	for _, replicas := range []int{1, 3, 5} {
		t.Run(fmt.Sprint(replicas), func(t *testing.T) {
			m := newModel(replicas)
			for i := 0; i < 20; i++ {
				p := PlanCluster(m.observe())
				if len(p.Actions) == 0 && p.Wait == "" {
					break
				}
				m.apply(p.Actions)
				m.connect()
			}
			p := PlanCluster(m.observe())
			if len(p.Actions) != 0 || p.Wait != "" || !p.Formed || p.Phase != PhaseReady {
				t.Fatalf("not converged: actions %v wait %q formed %t phase %s", kinds(p), p.Wait, p.Formed, p.Phase)
			}
			for pod, s := range p.NodeStates {
				if s != stateMember {
					t.Errorf("%s is %s", pod, s)
				}
			}
		})
	}
}

// model is a tiny CouchDB: each node's _nodes, connections, setup state and the pods' gate conditions.
type model struct {
	replicas int
	nodes    []map[string]bool
	finished bool
	enabled  []bool
	gate     map[string]bool
}

func newModel(replicas int) *model {
	m := &model{replicas: replicas, gate: map[string]bool{}}
	for i := 0; i < replicas; i++ {
		m.nodes = append(m.nodes, map[string]bool{nodeName(i): true})
		m.enabled = append(m.enabled, i%2 == 1) // some nodes boot cluster_disabled
	}
	return m
}

func (m *model) observe() Observed {
	o := Observed{StatefulSet: testSTS, Replicas: m.replicas, Pods: map[int]*PodObs{}, Nodes: map[int]*NodeObs{}}
	for i := range m.nodes {
		name := fmt.Sprintf("db-%d", i)
		pod := &PodObs{Name: name, Ordinal: i, IP: "10.0.0.1", ContainersReady: true, HasMemberGate: true}
		if v, ok := m.gate[name]; ok {
			pod.MemberCondition = &v
		}
		o.Pods[i] = pod
		var members, conn []string
		for n := range m.nodes[i] {
			members = append(members, n)
		}
		for j := range m.nodes {
			if j == i || m.nodes[i][nodeName(j)] || m.nodes[j][nodeName(i)] {
				conn = append(conn, nodeName(j))
			}
		}
		setup := couch.StateClusterEnabled
		switch {
		case !m.enabled[i]:
			setup = couch.StateClusterDisabled
		case m.finished:
			setup = couch.StateClusterFinished
		}
		o.Nodes[i] = &NodeObs{Ordinal: i, Pod: name, Reached: true, Name: nodeName(i), Setup: setup,
			Membership: &couch.Membership{ClusterNodes: sortedCopy(members), AllNodes: sortedCopy(conn)}}
	}
	return o
}

func (m *model) apply(actions []Action) {
	for _, a := range actions {
		switch a.Kind {
		case ActEnableCluster:
			m.enabled[a.Via] = true
		case ActAddNode:
			m.nodes[a.Via][a.Node] = true
		case ActFinishCluster:
			m.finished = true
		case ActSetMemberCondition:
			m.gate[a.Pod] = a.Value
		}
	}
}

// connect plays mem3: _nodes propagate among the members a node lists.
func (m *model) connect() {
	for changed := true; changed; {
		changed = false
		for i := range m.nodes {
			for j := range m.nodes {
				if i == j || !m.nodes[i][nodeName(j)] {
					continue
				}
				for n := range m.nodes[i] {
					if !m.nodes[j][n] {
						m.nodes[j][n], changed = true, true
					}
				}
			}
		}
	}
}
