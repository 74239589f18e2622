package placement

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/couchdb-controller/couchdb-controller/couch"
	"github.com/couchdb-controller/couchdb-controller/couch/couchtest"
)

// The property test's emulated cluster: pods, clients, writes and what the simulated controller
// observes. The steps it applies are in propsteps_test.go, the test itself in property_test.go.

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
	// marks is the simulated controller's only memory between steps (Marks); a controller restart
	// loses it.
	marks map[CopyKey]Mark
	// held are the copies added with their post held (Action.Held) and not posted since: the
	// controller's fill clock, in memory only like marks.
	held map[CopyKey]bool

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
		n, err = c.nw.AddNode(couchtest.NodeConfig{Name: name(ord), AdminUser: "admin", AdminPassword: propPassword, BindAddress: "any", Addr: nextLoopback(), Q: 1,
			Secret: "prop-secret"}) // the same [chttpd_auth] secret on every node, as the Helm chart sets it
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
	return newPropClusterWith(t, seed, out, couchtest.NetworkOptions{SyncDelay: propSyncDelay})
}

// newPropClusterWith is newPropCluster on a network with opts.
func newPropClusterWith(t *testing.T, seed int64, out *outsider, opts couchtest.NetworkOptions) *propCluster {
	c := &propCluster{t: t, ctx: context.Background(), rng: rand.New(rand.NewSource(seed)), out: out,
		nw:    couchtest.NewNetwork(opts),
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
	seqs, ok := c.copySeqs(m, rng, node)
	out := map[string]bool{}
	for id := range seqs {
		out[id] = true
	}
	return out, ok
}

// copySeqs is copyDocs with each document's sequence in that copy.
func (c *propCluster) copySeqs(m couch.ShardMap, rng, node string) (map[string]int64, bool) {
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
	out := map[string]int64{}
	if resp.StatusCode == http.StatusNotFound {
		return out, true // no file yet: an empty copy
	}
	var body struct {
		Results []struct {
			ID  string `json:"id"`
			Seq int64  `json:"seq"`
		} `json:"results"`
	}
	if err := jsonDecode(resp, &body); err != nil {
		c.fatalf("changes of %s on %s: %v", m.ShardName(rng), node, err)
	}
	for _, r := range body.Results {
		out[r.ID] = r.Seq
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
			mode := c.nodes[ord].MaintenanceMode()
			mm.Maintenance, mm.Fenced = mode == "true" || mode == "nolb", mode == "true"
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
	for k := range c.held {
		if !in.Maps[k.DB].HasCopy(k.Range, k.Node) {
			delete(c.held, k) // as the controller forgets a copy that left its map
			continue
		}
		if in.Held == nil {
			in.Held = map[string]bool{}
		}
		in.Held[k.DB] = true
	}
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
		// A push's checkpoint is written when the push ends, at the sequence where it started, and
		// mem3 keeps pushing into the copy meanwhile: half the time the checkpoints read lag its
		// update_seq by a few sequences, as on real CouchDB under a write load.
		if c.rng.Intn(2) == 0 {
			for t, s := range st.Pushed {
				st.Pushed[t] = max(0, s-int64(1+c.rng.Intn(3)))
			}
			c.seen["lagging checkpoints"]++
		}
		in.Stats[k] = st
	}
	c.marks = Marks(in, c.marks)
	in.Marks = c.marks
	o.in = in
	return o, true
}
