package placement

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math/rand"
	"net/http"
	"net/http/httptest"
	"net/url"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/couchdb-controller/couchdb-controller/couch"
	"github.com/couchdb-controller/couchdb-controller/couch/couchtest"
)

// The property test drives Plan against the couchtest emulator's shard model: real shard map
// documents, real shard copies that a new copy's node creates empty and that internal replication
// fills only from live copies (on _sync_shards, or on a later write after the sync delay), pods that
// stop and start again with their data, and a simulated controller whose only memory is what it
// observes each step (the shard maps and _nodes), which restarts at random between the steps of a
// plan.
//
// The controller's actions go through couch.Client, and its reads through the emulator's HTTP
// handler or its in-process accessors, all in process (no sockets). Each sequence runs in a
// testing/synctest bubble, so the emulator's replication timers run on a fake clock: a sequence is a
// pure function of its seed, and waiting for replication costs nothing.

var (
	propSeed = flag.Int64("placement.seed", 20261124, "first seed of TestPlacementProperty")
	propSeqs = flag.Int("placement.sequences", 0, "sequences TestPlacementProperty runs (0: 1000, or 150 with -short)")
)

func name(i int) string { return fmt.Sprintf("couchdb@db-%d.db", i) }

func ordinalOf(n string) int {
	var i int
	if _, err := fmt.Sscanf(n, "couchdb@db-%d.db", &i); err != nil {
		return -1
	}
	return i
}

const (
	propMaxReplicas = 5
	propSyncDelay   = time.Hour // mem3's sync_delay; an hour of fake time passes only when a step says so
	propPassword    = "prop-pass"
)

// outsider runs functions on a goroutine outside the sequence's bubble. A node's Start opens a real
// listener whose accept loop would stop the bubble's clock (a goroutine waiting on the network is not
// durably blocked), so nodes are started and stopped from here. Requests never use the listeners.
type outsider struct {
	req  chan func()
	done chan struct{}
}

func newOutsider() *outsider {
	o := &outsider{req: make(chan func()), done: make(chan struct{})}
	go func() {
		for f := range o.req {
			f()
			o.done <- struct{}{}
		}
	}()
	return o
}

func (o *outsider) run(f func()) { o.req <- f; <-o.done }

func (o *outsider) close() { close(o.req) }

// loopback hands every emulated node its own 127.x.y.z address, so a node restarting on its old port
// never finds it taken by a node of another sequence.
var loopback atomic.Uint32

func nextLoopback() string {
	n := loopback.Add(1)
	return fmt.Sprintf("127.%d.%d.%d:0", 1+n/62500%250, 1+n/250%250, 1+n%250)
}

func jsonDecode(resp *http.Response, v any) error { return json.NewDecoder(resp.Body).Decode(v) }

// propCluster is one emulated CouchDB cluster under a simulated StatefulSet and controller.
type propCluster struct {
	t         *testing.T
	ctx       context.Context
	rng       *rand.Rand
	out       *outsider
	nw        *couchtest.Network
	nodes     map[int]*couchtest.Node // every pod that ever existed, by ordinal (a PVC keeps its data)
	handlers  map[int]http.Handler
	clients   map[int]*couch.Client
	up        map[int]bool // the pod exists and its CouchDB runs
	replicas  int
	target    *int
	replicate []string
	rebalance bool

	nTrue     map[string]int             // each database's n as created: the oracle for convergence
	acked     map[string]map[string]bool // db -> documents a write acknowledged
	docSeq    int
	plainDown bool // a kubectl scale down happened: data only a removed pod held may be gone
	log       []string
	kinds     map[Kind]int
	nodeDocs  map[string]couch.NodeDoc // _nodes docs by id, as last read (a doc is re-read when its rev changes)
	recreated map[string]bool

	// Drawn per sequence: the number of zones (0: zones off), the zone of each pod's Node (a pod may
	// come back on a Node of another zone), each database's copy size, and the move bounds.
	zoneCount          int
	seen               map[string]int // what the sequence exercised, for the summary
	zoneOf             map[int]string
	size               map[string]int64
	maxMoves, maxFills int
}

// sizeFor draws the size of one copy of a new database: the user database a dwarfs the others, as
// user data dwarfs _users and _replicator in a real cluster.
func (c *propCluster) sizeFor(db string) int64 {
	if db == "a" {
		return int64(1+c.rng.Intn(4)) << 20
	}
	return int64(1+c.rng.Intn(64)) << 10
}

// zones is what Kubernetes says: each pod's Node's zone label, or nil with zones off.
func (c *propCluster) zones() map[string]string {
	if c.zoneCount == 0 {
		return nil
	}
	out := map[string]string{}
	for ord := range c.nodes {
		out[name(ord)] = c.zoneOf[ord]
	}
	return out
}

func (c *propCluster) zoneName(i int) string { return fmt.Sprintf("zone-%c", 'a'+i) }

func (c *propCluster) fatalf(format string, args ...any) {
	c.t.Helper()
	c.t.Fatalf(format+"\nops: %s", append(args, strings.Join(c.log, "; "))...)
}

// RoundTrip serves a request with the addressed pod's handler, or fails like a refused connection
// when the pod is down.
func (c *propCluster) RoundTrip(req *http.Request) (*http.Response, error) {
	var ord int
	if _, err := fmt.Sscanf(req.URL.Host, "db-%d.test", &ord); err != nil || c.handlers[ord] == nil {
		return nil, fmt.Errorf("no pod at %s", req.URL.Host)
	}
	if !c.up[ord] {
		return nil, errors.New("connection refused")
	}
	if req.Body == nil {
		req.Body = http.NoBody // a server request always has a body
	}
	rec := httptest.NewRecorder()
	c.handlers[ord].ServeHTTP(rec, req)
	resp := rec.Result()
	resp.Request = req
	return resp, nil
}

// get asks a running pod's HTTP API directly, without couch.Client: for the reads every step makes,
// whose decoding couch's own tests cover. It reports the status code and decodes a 2xx body into out.
func (c *propCluster) get(ord int, path string, out any) int {
	req := httptest.NewRequest(http.MethodGet, fmt.Sprintf("http://db-%d.test%s", ord, path), nil)
	req.SetBasicAuth("admin", propPassword)
	rec := httptest.NewRecorder()
	c.handlers[ord].ServeHTTP(rec, req)
	if rec.Code/100 == 2 {
		if err := json.Unmarshal(rec.Body.Bytes(), out); err != nil {
			c.fatalf("GET %s on db-%d: %v", path, ord, err)
		}
	}
	return rec.Code
}

func (c *propCluster) startPod(ord int) {
	n := c.nodes[ord]
	if n == nil {
		var err error
		n, err = c.nw.AddNode(couchtest.NodeConfig{Name: name(ord), AdminUser: "admin", AdminPassword: propPassword, BindAddress: "any", Addr: nextLoopback(), Q: 1})
		if err != nil {
			c.fatalf("add node: %v", err)
		}
		c.nodes[ord], c.handlers[ord] = n, n.Handler()
		cl, err := couch.New(couch.Options{BaseURL: fmt.Sprintf("http://db-%d.test", ord), Username: "admin", Password: propPassword,
			HTTPClient: &http.Client{Transport: c}, RetryMax: -1})
		if err != nil {
			c.fatalf("client: %v", err)
		}
		c.clients[ord] = cl
	}
	var err error
	c.out.run(func() { err = n.Start() })
	if err != nil {
		c.fatalf("start %s: %v", n.Name(), err)
	}
	c.up[ord] = true
}

func (c *propCluster) stopPod(ord int) {
	if n := c.nodes[ord]; n != nil && c.up[ord] {
		c.out.run(n.Stop)
	}
	c.up[ord] = false
}

func (c *propCluster) stopAll() {
	for ord := range c.nodes {
		c.stopPod(ord)
	}
}

// newPropCluster forms a three-node cluster ([cluster] q=1, n=3) with _users and _replicator and
// three databases: a (q=2, n=3), b (q=1, n=2) and d (q=1, n=3), with a few documents.
func newPropCluster(t *testing.T, seed int64, out *outsider) *propCluster {
	c := &propCluster{t: t, ctx: context.Background(), rng: rand.New(rand.NewSource(seed)), out: out,
		nw:    couchtest.NewNetwork(couchtest.NetworkOptions{SyncDelay: propSyncDelay}),
		nodes: map[int]*couchtest.Node{}, handlers: map[int]http.Handler{}, clients: map[int]*couch.Client{}, up: map[int]bool{},
		replicas: 3, nTrue: map[string]int{}, acked: map[string]map[string]bool{}, kinds: map[Kind]int{}, nodeDocs: map[string]couch.NodeDoc{}, recreated: map[string]bool{},
		zoneOf: map[int]string{}, size: map[string]int64{}, seen: map[string]int{}}
	c.zoneCount = []int{0, 0, 2, 3}[c.rng.Intn(4)]
	c.maxMoves, c.maxFills = 1+c.rng.Intn(8), 1+c.rng.Intn(3)
	for ord := 0; ord < propMaxReplicas; ord++ {
		if c.zoneCount > 0 {
			c.zoneOf[ord] = c.zoneName(ord % c.zoneCount)
		}
	}
	for i := 0; i < 3; i++ {
		c.startPod(i)
	}
	for i := 1; i < 3; i++ {
		if err := c.clients[0].AddNodeDoc(c.ctx, name(i)); err != nil {
			c.fatalf("join %d: %v", i, err)
		}
	}
	// finish_cluster creates _users and _replicator (q=1 here, n=3): databases placement heals like any other.
	if err := c.clients[0].FinishCluster(c.ctx); err != nil {
		c.fatalf("finish_cluster: %v", err)
	}
	for _, db := range []string{"_replicator", "_users"} {
		c.nTrue[db] = 3
		c.size[db] = c.sizeFor(db)
	}
	for _, db := range []struct {
		name string
		q, n int
	}{{"a", 2, 3}, {"b", 1, 2}, {"d", 1, 3}} {
		if err := c.clients[0].CreateDB(c.ctx, db.name, db.q, db.n); err != nil {
			c.fatalf("create %s: %v", db.name, err)
		}
		c.nTrue[db.name] = db.n
		c.size[db.name] = c.sizeFor(db.name)
	}
	for i := 0; i < 6; i++ {
		c.write()
	}
	return c
}

func sortedCopy(s []string) []string {
	out := slices.Clone(s)
	sort.Strings(out)
	return out
}

func (c *propCluster) dbs() []string {
	out := make([]string, 0, len(c.nTrue))
	for db := range c.nTrue {
		out = append(out, db)
	}
	sort.Strings(out)
	return out
}

// userDBs are the databases clients write to (not _users and _replicator, whose documents CouchDB
// validates).
func (c *propCluster) userDBs() []string {
	return slices.DeleteFunc(c.dbs(), func(db string) bool { return strings.HasPrefix(db, "_") })
}

// write stores one new document in a random database through a random running member; the write
// counts as acknowledged when CouchDB answered 201 or 202.
func (c *propCluster) write() {
	var via []int
	for ord := 0; ord < c.replicas; ord++ {
		if c.up[ord] {
			via = append(via, ord)
		}
	}
	dbs := c.userDBs()
	if len(via) == 0 || len(dbs) == 0 {
		return
	}
	db := dbs[c.rng.Intn(len(dbs))]
	c.writeTo(via[c.rng.Intn(len(via))], db)
}

func (c *propCluster) writeTo(via int, db string) {
	c.docSeq++
	id := fmt.Sprintf("doc%05d", c.docSeq)
	req, _ := http.NewRequest(http.MethodPut, fmt.Sprintf("http://db-%d.test/%s/%s", via, url.PathEscape(db), id), strings.NewReader(`{"v":1}`))
	req.SetBasicAuth("admin", propPassword)
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.RoundTrip(req)
	if err != nil {
		return
	}
	_ = resp.Body.Close()
	if resp.StatusCode == http.StatusCreated || resp.StatusCode == http.StatusAccepted {
		if c.acked[db] == nil {
			c.acked[db] = map[string]bool{}
		}
		c.acked[db][id] = true
	}
}

// copyDocs lists the documents of node's copy of rng, read through that node's node-local API, or
// reports false when the node is down.
func (c *propCluster) copyDocs(m couch.ShardMap, rng, node string) (map[string]bool, bool) {
	ord := ordinalOf(node)
	if !c.up[ord] {
		return nil, false
	}
	req, _ := http.NewRequest(http.MethodGet, fmt.Sprintf("http://db-%d.test/_node/_local/%s/_changes", ord, url.PathEscape(m.ShardName(rng))), nil)
	req.SetBasicAuth("admin", propPassword)
	resp, err := c.RoundTrip(req)
	if err != nil {
		c.fatalf("changes of %s on %s: %v", m.ShardName(rng), node, err)
	}
	defer resp.Body.Close()
	out := map[string]bool{}
	if resp.StatusCode == http.StatusNotFound {
		return out, true // no file yet: an empty copy
	}
	var body struct {
		Results []struct {
			ID string `json:"id"`
		} `json:"results"`
	}
	if err := jsonDecode(resp, &body); err != nil {
		c.fatalf("changes of %s on %s: %v", m.ShardName(rng), node, err)
	}
	for _, r := range body.Results {
		out[r.ID] = true
	}
	return out, true
}

// draining is the ordinal a target-replicas drain empties.
func (c *propCluster) draining() (int, bool) {
	if c.target == nil || *c.target >= c.replicas {
		return 0, false
	}
	return c.replicas - 1, true
}

// observation is what the simulated controller learned in one sync.
type observation struct {
	coord     int
	members   []string // the coordinator's cluster_nodes
	connected []string // the coordinator's all_nodes
	in        Input
}

// observe reads what the controller reads: _membership, the databases and their maps, the members'
// maintenance mode, the _nodes docs' decom marks, the counts of the copies StatsNeeded names and the
// checkpoints of those SourcesNeeded names. Like the controller, it does nothing without a
// coordinator whose setup is finished (a lone new pod lists only itself) or while the members'
// _nodes disagree. What every step reads (the maps, maintenance mode, the other nodes' _nodes) is
// read from the emulated nodes in process, the rest over the HTTP API: the same state either way,
// and it keeps 1,000 sequences fast under -race.
func (c *propCluster) observe() (observation, bool) {
	o := observation{coord: -1}
	var mem couch.Membership
	views := map[int][]string{}
	for ord := 0; ord < c.replicas; ord++ {
		if !c.up[ord] {
			continue
		}
		views[ord] = c.nodes[ord].ClusterNodes()
		if o.coord >= 0 || !slices.Contains(views[ord], name(ord)) {
			continue
		}
		var st struct {
			State couch.SetupState `json:"state"`
		}
		if c.get(ord, "/_cluster_setup", &st) != http.StatusOK || st.State != couch.StateClusterFinished {
			continue
		}
		if code := c.get(ord, "/_membership", &mem); code != http.StatusOK {
			c.fatalf("membership of %d: %d", ord, code)
		}
		o.coord = ord
	}
	if o.coord < 0 {
		return o, false
	}
	for ord, v := range views {
		if slices.Contains(mem.ClusterNodes, name(ord)) && !slices.Equal(sortedCopy(v), sortedCopy(mem.ClusterNodes)) {
			return o, false
		}
	}
	api := c.clients[o.coord]
	o.members, o.connected = mem.ClusterNodes, mem.AllNodes
	in := Input{Replicas: c.replicas, TargetReplicas: c.target, Replicate: slices.Clone(c.replicate), Rebalance: c.rebalance,
		Maps: map[string]couch.ShardMap{}, Stats: map[CopyKey]CopyStat{}, Decom: map[string]bool{},
		Zones: c.zones(), DefaultN: 3, MaxMoves: c.maxMoves, MaxFillsPerNode: c.maxFills}
	if in.Zones != nil {
		in.NodeZones, in.PlacementConfig = map[string]string{}, map[string]string{}
	}
	departed := map[string]bool{}
	for _, n := range mem.ClusterNodes {
		ord := ordinalOf(n)
		if ord >= c.replicas {
			departed[n] = true
			continue
		}
		live := c.up[ord] && slices.Contains(mem.AllNodes, n)
		mm := Member{Name: n, Ordinal: ord, Live: live}
		if live {
			mm.Maintenance = c.nodes[ord].MaintenanceMode() == "true"
			if in.Zones != nil {
				in.PlacementConfig[n] = c.placementOf(ord)
			}
		}
		in.Members = append(in.Members, mm)
	}
	// The _nodes docs, re-read only when _all_docs shows a new revision (revisions are content hashes).
	var all struct {
		Rows []struct {
			ID    string `json:"id"`
			Value struct {
				Rev string `json:"rev"`
			} `json:"value"`
		} `json:"rows"`
	}
	if code := c.get(o.coord, "/_node/_local/_nodes/_all_docs", &all); code != http.StatusOK {
		c.fatalf("_nodes/_all_docs: %d", code)
	}
	for _, r := range all.Rows {
		d, ok := c.nodeDocs[r.ID]
		if !ok || d.Rev != r.Value.Rev {
			d = couch.NodeDoc{}
			if code := c.get(o.coord, "/_node/_local/_nodes/"+url.PathEscape(r.ID), &d); code != http.StatusOK {
				c.fatalf("_nodes doc %s: %d", r.ID, code)
			}
			c.nodeDocs[r.ID] = d
		}
		in.Decom[r.ID] = d.Decom
		if in.NodeZones != nil {
			in.NodeZones[r.ID] = d.Zone
		}
	}
	var dbs []string
	if code := c.get(o.coord, "/_all_dbs", &dbs); code != http.StatusOK {
		c.fatalf("all_dbs: %d", code)
	}
	for _, db := range dbs {
		m, ok := c.nodes[o.coord].ShardMap(db)
		if !ok {
			c.fatalf("no map of %s", db)
		}
		in.DBs = append(in.DBs, db)
		in.Maps[db] = m
		for _, n := range m.Nodes() {
			if ordinalOf(n) >= c.replicas {
				departed[n] = true
			}
		}
	}
	for n := range departed {
		in.Departed = append(in.Departed, n)
	}
	sort.Strings(in.Departed)
	if sizes := SizesNeeded(in); len(sizes) > 0 {
		in.RangeBytes = map[RangeRef]int64{}
		for _, k := range sizes {
			in.RangeBytes[k] = c.size[k.DB]
		}
	}
	for _, k := range StatsNeeded(in) {
		var info couch.DBInfo
		if c.get(o.coord, "/_node/"+url.PathEscape(k.Node)+"/"+url.PathEscape(in.Maps[k.DB].ShardName(k.Range)), &info) != http.StatusOK {
			continue // a copy whose node is down: Plan waits for it
		}
		seq, _ := info.UpdateSeq.(float64)
		in.Stats[k] = CopyStat{Docs: info.DocCount, Deleted: info.DocDelCount, Seq: int64(seq), UUID: info.UUID}
	}
	for _, k := range SourcesNeeded(in) {
		st, ok := in.Stats[k]
		if !ok {
			continue
		}
		cps, err := api.ShardCheckpoints(c.ctx, k.Node, in.Maps[k.DB].ShardName(k.Range))
		if err != nil {
			c.fatalf("checkpoints of %v: %v", k, err)
		}
		st.Pushed = map[string]int64{}
		for _, cp := range cps {
			if cp.SourceUUID == st.UUID {
				st.Pushed[cp.TargetUUID] = max(st.Pushed[cp.TargetUUID], cp.Seq)
			}
		}
		in.Stats[k] = st
	}
	o.in = in
	return o, true
}

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
	}
	for _, a := range actions {
		c.apply(o, a)
	}
	if len(actions) > 0 {
		c.checkLiveRanges(o)
	}
	return planned
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
		err = api.AddNodeDoc(c.ctx, a.Node)
	case CreateDB:
		c.checkDecomBeforeCreate(api)
		c.checkPlacementServed(api, a)
		if err = api.CreateDB(c.ctx, a.DB, 0, a.N); err == nil {
			c.checkCreated(api, a.DB)
		}
	case AddCopy, RemoveCopy:
		err = c.editMap(api, o.coord, a)
	case SyncShards:
		err = api.SyncShards(c.ctx, a.DB)
	case SetMaintenance, ClearMaintenance:
		v := "true"
		if a.Kind == ClearMaintenance {
			v = "false"
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
		err = api.RemoveNodeDoc(c.ctx, a.Node)
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
// every document it holds, a copy on a down node leaves only when its node is gone for good, and no
// document any live copy holds is left without a live copy.
func (c *propCluster) editMap(api *couch.Client, coord int, a Action) error {
	m, ok := c.nodes[coord].ShardMap(a.DB) // what GET /_node/_local/_dbs/{db} answers, read in process
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
		c.checkRemove(m, a)
	}
	changed, err := Edit(&m, a)
	if err != nil || !changed {
		return err
	}
	_, err = api.PutShardMap(c.ctx, m)
	return err
}

func (c *propCluster) checkRemove(m couch.ShardMap, a Action) {
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
	src, srcLive := docs[a.Node]
	d, draining := c.draining()
	switch ord := ordinalOf(a.Node); {
	case !srcLive && ord < c.replicas:
		c.fatalf("%s: the copy's node is down but not gone (drained: %v)", a, draining && d == ord)
	case srcLive:
		for n, held := range docs {
			o := ordinalOf(n)
			if n == a.Node || o >= c.replicas || draining && d == o {
				continue
			}
			for id := range src {
				if !held[id] {
					c.fatalf("%s before the copy on %s holds %s (source %d docs, target %d)", a, n, id, len(src), len(held))
				}
			}
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

// op is one thing a human, Kubernetes or a client does.
func (c *propCluster) op() {
	switch c.rng.Intn(11) {
	case 0, 1:
		k := 1 + c.rng.Intn(4)
		for i := 0; i < k; i++ {
			c.write()
		}
		c.log = append(c.log, fmt.Sprintf("write %d", k))
	case 2:
		if c.replicas < propMaxReplicas {
			c.replicas++
			c.target = nil // scaling up by hand ends a drain
			c.startPod(c.replicas - 1)
			c.log = append(c.log, fmt.Sprintf("scale up to %d", c.replicas))
		}
	case 3:
		if c.replicas > 1 && c.target == nil {
			t := 1 + c.rng.Intn(c.replicas-1)
			c.target = &t
			c.log = append(c.log, fmt.Sprintf("target-replicas %d", t))
		}
	case 4:
		if c.replicas > 1 && c.target == nil {
			c.replicas-- // kubectl scale: the highest pod goes, with its node
			c.stopPod(c.replicas)
			c.plainDown = true
			c.log = append(c.log, fmt.Sprintf("kubectl scale to %d", c.replicas))
		}
	case 5, 6:
		ord := c.rng.Intn(c.replicas)
		if c.up[ord] {
			c.stopPod(ord)
			c.log = append(c.log, fmt.Sprintf("pod %d down", ord))
		} else {
			c.restart(ord)
		}
	case 7:
		c.rebalance = !c.rebalance
		c.log = append(c.log, fmt.Sprintf("rebalance %t", c.rebalance))
	case 8:
		if len(c.replicate) == 0 {
			c.replicate = []string{"b", "c"}
		} else {
			c.replicate = nil
		}
		c.log = append(c.log, fmt.Sprintf("replicate %v", c.replicate))
	case 9:
		if c.target != nil {
			c.target = nil
			c.log = append(c.log, "target-replicas removed")
		}
	default:
		time.Sleep(propSyncDelay + time.Millisecond) // mem3's delayed pushes after writes run
		c.log = append(c.log, "sync delay")
	}
}

// restart brings a pod back with its data. Clients write to every database while it comes up, as
// they would; the internal replication those writes schedule also catches its copies up after the
// sync delay, as a restarted node is in CouchDB.
func (c *propCluster) restart(ord int) {
	for _, db := range c.userDBs() {
		for via := 0; via < c.replicas; via++ {
			if c.up[via] {
				c.writeTo(via, db)
				break
			}
		}
	}
	if c.zoneCount > 0 && c.rng.Intn(3) == 0 {
		c.zoneOf[ord] = c.zoneName(c.rng.Intn(c.zoneCount)) // rescheduled onto a Node of another zone
	}
	c.startPod(ord)
	// Runtime config lives in an ini file that is not on the volume: a restarted CouchDB has lost its
	// placement rule, and the controller must set it again.
	req := httptest.NewRequest(http.MethodDelete, fmt.Sprintf("http://db-%d.test/_node/_local/_config/cluster/placement", ord), nil)
	req.SetBasicAuth("admin", propPassword)
	c.handlers[ord].ServeHTTP(httptest.NewRecorder(), req)
	c.log = append(c.log, fmt.Sprintf("pod %d up in %q", ord, c.zoneOf[ord]))
}

// settle brings every pod below spec.replicas up and runs quiet steps, with the replication timers
// running between them, until a plan is empty.
func (c *propCluster) settle(limit int) bool {
	for ord := 0; ord < c.replicas; ord++ {
		if !c.up[ord] {
			c.restart(ord)
		}
	}
	for i := 0; i < limit; i++ {
		if !c.step(false) {
			return true
		}
		time.Sleep(10 * time.Millisecond)
		if i%10 == 9 {
			time.Sleep(propSyncDelay)
		}
	}
	return false
}

// check asserts convergence after settle: every database not reported at risk has exactly its n
// copies per range (capped by the staying members; one per staying member when replicated), all on
// live staying members; leaving nodes are out of the maps and of _nodes and drains are finished
// unless a range at risk holds them; decom marks and maintenance mode are where they belong; with
// rebalance (zones off) every database's copies are spread evenly over the members and the bytes
// they hold are within the band; with zones on every range covers as many zones as it can, the _nodes
// docs carry the zones and every member has the placement rule; and without a kubectl scale down, no
// acknowledged document was lost.
func (c *propCluster) check() {
	o, ok := c.observe()
	if !ok {
		c.fatalf("no coordinator after settling")
	}
	res := Plan(o.in)
	if len(res.Actions) != 0 {
		c.fatalf("not a fixpoint: %v", res.Actions)
	}
	frozen := map[string]bool{}
	for _, r := range res.AtRisk {
		frozen[r.DB] = true
		for _, n := range o.in.Maps[r.DB].ByRange[r.Range] {
			if ordinalOf(n) < c.replicas {
				c.fatalf("%s/%s reported at risk with a copy on member %s", r.DB, r.Range, n)
			}
		}
	}
	d, draining := c.draining()
	var staying []string
	for ord := 0; ord < c.replicas; ord++ {
		if !(draining && d == ord) {
			staying = append(staying, name(ord))
		}
	}
	if draining && len(res.AtRisk) == 0 {
		c.fatalf("drain to %d stopped at %d replicas (waiting: %s)", *c.target, c.replicas, res.Waiting)
	}
	for _, db := range c.dbs() {
		m, ok := o.in.Maps[db]
		if !ok {
			if c.plainDown {
				continue // its map reached only nodes that kubectl scale removed: gone with them
			}
			c.fatalf("database %s is gone", db)
		}
		if frozen[db] {
			continue
		}
		want := min(c.nTrue[db], len(staying))
		if slices.Contains(c.replicate, db) {
			want = len(staying)
		}
		for _, rng := range m.Ranges() {
			nodes := m.ByRange[rng]
			if len(nodes) != want && !c.recreated[db] {
				c.fatalf("%s/%s has %d copies %v, want %d (n=%d, staying %v, replicated %t)", db, rng, len(nodes), nodes, want, c.nTrue[db], staying, slices.Contains(c.replicate, db))
			}
			for _, n := range nodes {
				if !slices.Contains(staying, n) || !c.up[ordinalOf(n)] {
					c.fatalf("%s/%s has a copy on %s, which is not a live staying member", db, rng, n)
				}
			}
		}
	}
	referenced := map[string]bool{}
	for _, m := range o.in.Maps {
		for _, n := range m.Nodes() {
			referenced[n] = true
		}
	}
	for _, n := range o.members {
		leaving := !slices.Contains(staying, n)
		if leaving && !referenced[n] {
			c.fatalf("leaving node %s is still in _nodes", n)
		}
		if o.in.Decom[n] != leaving {
			c.fatalf("%s: decom %t, leaving %t", n, o.in.Decom[n], leaving)
		}
	}
	for _, mem := range o.in.Members {
		if mem.Maintenance && !(draining && mem.Ordinal == d) {
			c.fatalf("%s left in maintenance mode", mem.Name)
		}
	}
	c.checkZones(o, res, staying, frozen)
	if c.rebalance && len(res.AtRisk) == 0 && c.zoneCount == 0 {
		c.checkBalance(o, staying)
		c.seen["balance checked"]++
	}
	if c.zoneCount > 0 {
		c.seen["zones checked"]++
	}
	if !c.plainDown {
		for _, db := range c.dbs() {
			m := o.in.Maps[db]
			have := map[string]bool{}
			for _, rng := range m.Ranges() {
				for _, n := range m.ByRange[rng] {
					docs, _ := c.copyDocs(m, rng, n)
					for id := range docs {
						have[id] = true
					}
				}
			}
			for id := range c.acked[db] {
				if !have[id] {
					c.fatalf("acknowledged %s/%s is on no copy in the map", db, id)
				}
			}
		}
	}
}

func TestPlacementProperty(t *testing.T) {
	sequences := *propSeqs
	if sequences == 0 {
		sequences = 1000
		if testing.Short() {
			sequences = 150
		}
	}
	workers := min(max(runtime.GOMAXPROCS(0), 2), 8)
	var (
		mu     sync.Mutex
		kinds  = map[Kind]int{}
		seen   = map[string]int{}
		steps  atomic.Int64
		next   atomic.Int64
		failed atomic.Bool
	)
	start := time.Now()
	t.Run("sequences", func(t *testing.T) {
		for w := 0; w < workers; w++ {
			t.Run(fmt.Sprint(w), func(t *testing.T) {
				t.Parallel()
				out := newOutsider()
				defer out.close()
				for !failed.Load() {
					s := next.Add(1) - 1
					if s >= int64(sequences) {
						return
					}
					seed := *propSeed + s
					var c *propCluster
					synctest.Test(t, func(t *testing.T) {
						c = newPropCluster(t, seed, out)
						defer c.stopAll()
						defer func() {
							if t.Failed() {
								t.Logf("seed %d failed: rerun with go test ./controller/placement -run TestPlacementProperty -placement.seed=%d -placement.sequences=1", seed, seed)
							}
						}()
						n := 0
						for i := 0; i < 8; i++ {
							c.op()
							for j := c.rng.Intn(4); j > 0; j-- {
								c.step(c.rng.Intn(5) == 0)
								n++
								if c.rng.Intn(4) != 0 {
									time.Sleep(10 * time.Millisecond) // _sync_shards' pushes run
								}
							}
						}
						if !c.settle(400) {
							c.fatalf("seed %d: no fixpoint", seed)
						}
						c.check()
						steps.Add(int64(n))
					})
					if t.Failed() {
						failed.Store(true)
						return
					}
					mu.Lock()
					for k, v := range c.kinds {
						kinds[k] += v
					}
					for k, v := range c.seen {
						seen[k] += v
					}
					mu.Unlock()
				}
			})
		}
	})
	if t.Failed() {
		return
	}
	t.Logf("placement property: %d sequences from seed %d, %d interleaved steps, %s, actions %v, exercised %v", sequences, *propSeed, steps.Load(), time.Since(start).Round(time.Millisecond), kinds, seen)
	for _, k := range []string{"plans filling several copies", "plans editing several databases", "balance checked", "zones checked"} {
		if seen[k] == 0 && sequences >= 100 {
			t.Errorf("no sequence exercised %s", k)
		}
	}
	for _, k := range []Kind{AddCopy, RemoveCopy, SyncShards, SetMaintenance, ClearMaintenance, RemoveNode, ScaleDown, CreateDB, SetDecom, ClearDecom, SetZone, SetPlacement} {
		if kinds[k] == 0 && sequences >= 100 {
			t.Errorf("no sequence exercised %s", k)
		}
	}
}

// checkZones asserts, with zones on, that the _nodes docs carry each member's zone, that every running
// member has the placement rule of the zones with staying members (one copy each, when there are at
// least n=3 of them), and that every range covers min(its copies, zones) distinct zones.
func (c *propCluster) checkZones(o observation, res Result, staying []string, frozen map[string]bool) {
	if c.zoneCount == 0 {
		if res.Placement != "" || res.Health.ZoneViolation != 0 {
			c.fatalf("zones off, yet placement %q and %d zone violations", res.Placement, res.Health.ZoneViolation)
		}
		return
	}
	zones := map[string]bool{}
	for _, n := range staying {
		zones[c.zoneOf[ordinalOf(n)]] = true
		if got := c.nodeDocs[n].Zone; got != c.zoneOf[ordinalOf(n)] {
			c.fatalf("_nodes doc of %s has zone %q, its Node is in %q", n, got, c.zoneOf[ordinalOf(n)])
		}
	}
	rule := ""
	if len(zones) >= 3 {
		rule = strings.Join([]string{c.zoneName(0) + ":1", c.zoneName(1) + ":1", c.zoneName(2) + ":1"}, ",")
	}
	for _, mem := range o.in.Members {
		if got := c.placementOf(mem.Ordinal); got != rule {
			c.fatalf("%s has placement %q, want %q (zones %v)", mem.Name, got, rule, zones)
		}
	}
	if res.Health.ZoneViolation != 0 {
		c.fatalf("%d ranges short of zones at the fixpoint", res.Health.ZoneViolation)
	}
	for db, m := range o.in.Maps {
		if frozen[db] {
			continue
		}
		for _, rng := range m.Ranges() {
			have := map[string]bool{}
			for _, n := range m.ByRange[rng] {
				have[c.zoneOf[ordinalOf(n)]] = true
			}
			if want := min(len(m.ByRange[rng]), len(zones)); len(have) < want {
				c.fatalf("%s/%s copies %v cover zones %v, want %d distinct", db, rng, m.ByRange[rng], have, want)
			}
		}
	}
}

// checkBalance asserts rule 8: every database's copies are spread floor/ceil over the staying members,
// then the bytes each member holds are within 10% of the mean or the largest copy.
func (c *propCluster) checkBalance(o observation, staying []string) {
	bytes := map[string]int64{}
	var total, largest int64
	for db, m := range o.in.Maps {
		count := map[string]int{}
		for _, n := range staying {
			count[n] = 0
		}
		for n, rs := range m.ByNode {
			count[n] += len(rs)
			bytes[n] += int64(len(rs)) * c.size[db]
			total += int64(len(rs)) * c.size[db]
			largest = max(largest, c.size[db])
		}
		lo, hi := 1<<30, 0
		for _, k := range count {
			lo, hi = min(lo, k), max(hi, k)
		}
		if hi-lo > 1 {
			c.fatalf("rebalance left %s spread as %v", db, count)
		}
	}
	mean := float64(total) / float64(len(staying))
	band := max(mean/10, float64(largest))
	for _, n := range staying {
		if d := float64(bytes[n]) - mean; d > band || -d > band {
			c.fatalf("rebalance left %s with %d bytes, mean %.0f, band %.0f (%v)", n, bytes[n], mean, band, bytes)
		}
	}
}

// checkPlanShape: a plan starts at most MaxMoves fills, a node is the target of at most
// MaxFillsPerNode of them, and each database gets at most one SyncShards, after all its edits.
func (c *propCluster) checkPlanShape(in Input, res Result) {
	adds, targets, synced := 0, map[string]int{}, map[string]bool{}
	dbs := map[string]bool{}
	for _, a := range res.Actions {
		switch a.Kind {
		case AddCopy, RemoveCopy:
			if synced[a.DB] {
				c.fatalf("plan %v edits %s after its SyncShards", res.Actions, a.DB)
			}
			dbs[a.DB] = true
			if a.Kind == AddCopy {
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
	if adds > in.MaxMoves {
		c.fatalf("plan %v starts %d fills, bound %d", res.Actions, adds, in.MaxMoves)
	}
	if adds > 1 {
		c.seen["plans filling several copies"]++
	}
	if len(dbs) > 1 {
		c.seen["plans editing several databases"]++
	}
}
