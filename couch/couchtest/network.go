package couchtest

import (
	"crypto/md5"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/couchdb-controller/couchdb-controller/couch"
)

// NetworkOptions configure a Network. Zero fields take real CouchDB 3.4's defaults, so tests that
// want speed shorten the delays explicitly.
type NetworkOptions struct {
	// SyncDelay is mem3's sync_delay: how long after a write a changed shard copy is pushed to its
	// peers. Default 5s, as in CouchDB (the recording saw 5.26 s).
	SyncDelay time.Duration
	// PushTime is how long one internal-replication push takes when FillRate is zero (pushtime.go).
	// Zero: a push lands and checkpoints at once.
	PushTime time.Duration
	// DBsPushDelay is how long an edit of a node-local _dbs document takes to reach the other
	// nodes' _dbs. The recording saw every node at the new revision within 0.02 s, but not at once.
	// Zero pushes synchronously, within the request (the emulator's historical behaviour, which
	// callers that read a map from another node right after writing it rely on).
	DBsPushDelay time.Duration
	// ShardCacheLag is what each change of a node's _dbs costs its mem3_shards cache before the cache
	// lists it (shardcache.go): mem3_shards follows _dbs through one changes listener, one change at
	// a time, so a burst of edits on one node is listed one after another, ShardCacheLag apart.
	// Internal replication lists its pairs from that cache, so a POST /{db}/_sync_shards handled
	// before its node lists a new copy pushes nothing to it, then or later; GET /{db}/_shards answers
	// from it too. Zero lists every change at once (the emulator's historical behaviour). See
	// RecordedShardCacheLag for what CouchDB 3.4.3 did.
	ShardCacheLag time.Duration
	// ShardCacheDelay is how long after a _dbs change the cache's listener hears of it, before it
	// takes the ShardCacheLag the change costs (only with a ShardCacheLag).
	ShardCacheDelay time.Duration
	// LockoutWindow is [chttpd_auth_lockout] max_lifetime: how long a client's failure count for a
	// user lives after its first failure; 5 failures within it lock the user out for the rest of it.
	// Default 5m, as in CouchDB.
	LockoutWindow time.Duration
	// Clock, if set, replaces time.Now for lockout expiry and for the creation time that names new
	// shard files (the shard suffix) and dates databases.
	Clock func() time.Time
	// Replicator times the _replicator scheduler; zero fields take CouchDB's defaults.
	Replicator ReplicatorOptions
	// PasswordIterations is the pbkdf2 iteration count of the admin hashes nodes make ([chttpd_auth]
	// iterations). Default DefaultPasswordIterations (600,000, CouchDB 3.4's). A key is derived only
	// when a hash string is read (GET _config/admins) or a login must check a hash this node did not
	// make itself, and each derivation costs about 0.2 s at the default, so benchmarks and tests
	// that read hashes of many nodes lower it; the string keeps CouchDB's format either way.
	PasswordIterations int
	// FillRate, if set, is how many bytes per second internal replication (after a write, a restart
	// or POST /{db}/_sync_shards) moves from one copy to another, so a new or lagging copy fills over
	// time in proportion to what it lacks (fill.go; RecordedFillRate is the recorded pace). Zero
	// moves everything at once.
	FillRate int64

	// Placement, if set, replaces mem3's initial placement of a new database's copies, which CouchDB
	// randomises (it rotates the member list by a random offset). It gets the database, its ranges,
	// n and the members it may use, and returns range -> nodes. TEST-ONLY: the conformance replay uses
	// it to place databases where the recorded cluster happened to place them.
	Placement func(db string, ranges []string, n int, members []string) map[string][]string
	// ReplicationOwner, if set, picks the node that runs the job of _replicator document docID among
	// the live nodes. TEST-ONLY: the recorded cluster's choice matched neither mem3:owner over the
	// document's copies nor over all nodes, so the conformance replay puts jobs where it saw them.
	ReplicationOwner func(docID string, live []string) string
}

// Network is the Erlang distribution the emulated nodes share. All state of all its nodes is guarded
// by one mutex: the emulator favours obviously-correct over fast.
type Network struct {
	mu    sync.Mutex
	opts  NetworkOptions
	nodes map[string]*Node // by Erlang name
	order []*Node
	seq   int // global counter for update sequences

	pendingSync map[string]bool      // internal replication rounds scheduled, by db (and coordinator)
	jobs        map[string]*repJob   // the replicator's jobs, by _replicator doc id
	pidSeq      int                  // makes up Erlang pids for running jobs
	localDocs   map[string]obj       // clustered _local docs (replication checkpoints), by "db/_local/id"
	derived     map[string]string    // pbkdf2 keys already derived, by prf, salt, iterations and password
	filling     map[string]bool      // (source copy, target copy) pushes in flight at the FillRate
	held        map[string]*heldPush // (source copy, target copy) pushes waiting out a node's sync delay (syncdelay.go)
}

// NewNetwork returns an empty network.
func NewNetwork(opts NetworkOptions) *Network {
	if opts.SyncDelay <= 0 {
		opts.SyncDelay = 5 * time.Second
	}
	opts.Replicator = opts.Replicator.withDefaults()
	if opts.LockoutWindow <= 0 {
		opts.LockoutWindow = 5 * time.Minute
	}
	if opts.Clock == nil {
		opts.Clock = time.Now
	}
	if opts.PasswordIterations <= 0 {
		opts.PasswordIterations = DefaultPasswordIterations
	}
	return &Network{opts: opts, nodes: map[string]*Node{}, pendingSync: map[string]bool{}, jobs: map[string]*repJob{}, localDocs: map[string]obj{},
		derived: map[string]string{}, filling: map[string]bool{}, held: map[string]*heldPush{}}
}

// NodeConfig is one node's boot configuration (its ini files and environment).
type NodeConfig struct {
	Name          string // Erlang node name, e.g. "couchdb@db-0.db.ns.svc.cluster.local"
	AdminUser     string // [admins]; the official image refuses to boot without one
	AdminPassword string
	Cookie        string   // Erlang cookie; nodes connect only when cookies match ("" = "monster-free default")
	BindAddress   string   // [chttpd] bind_address; "" = "127.0.0.1" (a source build's default)
	N, Q          int      // [cluster] n and q (defaults 3 and 2)
	Seedlist      []string // [cluster] seedlist
	Addr          string   // listen address, default "127.0.0.1:0"; the port is kept across restarts
	UUID          string   // [couchdb] uuid; random if empty
	// Secret is [chttpd_auth] secret. Empty leaves it unset, as on a real node started without
	// COUCHDB_SECRET: finish_cluster then fails on a multi-node cluster (see finishCluster) until a
	// session cookie makes one up on the coordinator.
	Secret string
	// EphemeralIni is a node whose last ini file is rewritten at every start, as in the official
	// image (etc/local.d is not on the data volume): runtime _config writes, including what
	// finish_cluster copied there, are gone after a restart; the plaintext AdminPassword is hashed
	// afresh with a new salt; an empty UUID is drawn afresh and a made-up secret is gone. Without it a restart keeps the
	// runtime config, as an install whose local.ini persists does (the recorded non-container
	// cluster). Data, _nodes and _dbs survive either way.
	EphemeralIni bool
}

// AddNode creates a stopped node.
func (nw *Network) AddNode(cfg NodeConfig) (*Node, error) {
	if cfg.Name == "" {
		return nil, fmt.Errorf("couchtest: node needs a name")
	}
	if cfg.AdminUser == "" || cfg.AdminPassword == "" {
		return nil, fmt.Errorf("couchtest: node %s needs an admin (CouchDB 3 refuses to boot without one)", cfg.Name)
	}
	nw.mu.Lock()
	defer nw.mu.Unlock()
	if _, ok := nw.nodes[cfg.Name]; ok {
		return nil, fmt.Errorf("couchtest: node %s exists", cfg.Name)
	}
	cfg = cfg.withDefaults()
	n := &Node{
		net:      nw,
		name:     cfg.Name,
		cfg:      cfg,
		nodesDB:  map[string]*rawDoc{},
		dbsDB:    map[string]*mapDoc{},
		copies:   map[string]*shardCopy{},
		lockouts: map[lockoutKey]*lockoutEntry{},
		addr:     cfg.Addr,
	}
	n.boot()
	nw.nodes[cfg.Name] = n
	nw.order = append(nw.order, n)
	return n, nil
}

// Node returns the node called name, or nil.
func (nw *Network) Node(name string) *Node {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	return nw.nodes[name]
}

// Nodes returns every node in creation order.
func (nw *Network) Nodes() []*Node {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	return append([]*Node(nil), nw.order...)
}

// nodeByAddr finds the running node listening on host:port (for add_node and remote setup).
// withDefaults fills what an unset NodeConfig field means.
func (cfg NodeConfig) withDefaults() NodeConfig {
	if cfg.Addr == "" {
		cfg.Addr = "127.0.0.1:0"
	}
	if cfg.Cookie == "" {
		cfg.Cookie = "cookie"
	}
	if cfg.N == 0 {
		cfg.N = 3
	}
	if cfg.Q == 0 {
		cfg.Q = 2
	}
	if cfg.BindAddress == "" {
		cfg.BindAddress = "127.0.0.1"
	}
	return cfg
}

// boot reads the node's ini files: the config and admins its NodeConfig gives, with the admin's
// plaintext password hashed under a fresh salt and an unset uuid drawn at random (couch_server
// makes one up). An unset secret stays unset: CouchDB makes one up only for a session cookie.
func (n *Node) boot() {
	cfg := n.cfg
	uuid := cfg.UUID
	if uuid == "" {
		uuid = randomHex(16)
	}
	n.config = map[string]map[string]string{
		"chttpd":      {"bind_address": cfg.BindAddress},
		"cluster":     {"n": strconv.Itoa(cfg.N), "q": strconv.Itoa(cfg.Q)},
		"couchdb":     {"uuid": uuid},
		"chttpd_auth": {},
	}
	if cfg.Secret != "" {
		n.config["chttpd_auth"]["secret"] = cfg.Secret
	}
	if len(cfg.Seedlist) > 0 {
		n.config["cluster"]["seedlist"] = strings.Join(cfg.Seedlist, ",")
	}
	n.admins = map[string]*adminHash{}
	n.setAdmin(cfg.AdminUser, cfg.AdminPassword)
}

func (nw *Network) nodeByAddr(host string, port int) *Node {
	for _, n := range nw.order {
		if !n.running {
			continue
		}
		h, p, err := net.SplitHostPort(n.addr)
		if err != nil {
			continue
		}
		if strconv.Itoa(port) != p {
			continue
		}
		if host == h || host == "localhost" || host == "127.1" || strings.HasPrefix(host, "127.") && strings.HasPrefix(h, "127.") {
			return n
		}
	}
	return nil
}

// connected reports whether a and b have an Erlang connection: both run, share the cookie, and one
// lists the other in its _nodes (mem3 connects to every member it knows).
func (nw *Network) connected(a, b *Node) bool {
	if a == b {
		return a.running
	}
	if !a.running || !b.running || a.cfg.Cookie != b.cfg.Cookie {
		return false
	}
	return a.isMember(b.name) || b.isMember(a.name)
}

// propagate plays mem3's push replication of the node-local _nodes and _dbs databases: every
// running node pushes its documents to the connected members it lists, until nothing changes. A
// node that is no longer listed by the others receives nothing, so it keeps its stale view.
func (nw *Network) propagate() {
	for changed := true; changed; {
		changed = false
		for _, src := range nw.order {
			if !src.running {
				continue
			}
			for _, dst := range nw.order {
				if dst == src || !src.isMember(dst.name) || !nw.connected(src, dst) {
					continue
				}
				if dst.mergeNodes(src.nodesDB) {
					changed = true
				}
				if !dst.dbsHeld && dst.mergeDBs(src.dbsDB) {
					changed = true
				}
			}
		}
	}
	for _, n := range nw.order {
		if n.running {
			n.ensureCopies()
		}
	}
}

// propagateAfter propagates after delay, or at once when delay is zero.
func (nw *Network) propagateAfter(delay time.Duration) {
	if delay <= 0 {
		nw.propagate()
		return
	}
	time.AfterFunc(delay, func() {
		nw.mu.Lock()
		defer nw.mu.Unlock()
		nw.propagate()
	})
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// revision builds a deterministic revision id: the same change to the same parent with the same
// body gives the same id on every node, which is why CouchDB's boot-time `{}` inserts never conflict.
func revision(gen int, parent string, deleted bool, body any) string {
	b, _ := json.Marshal(body)
	sum := md5.Sum([]byte(fmt.Sprintf("%t|%s|%s", deleted, parent, b)))
	return strconv.Itoa(gen) + "-" + hex.EncodeToString(sum[:])
}

func revGen(rev string) int {
	g, _, _ := strings.Cut(rev, "-")
	n, _ := strconv.Atoi(g)
	return n
}

// newer reports whether revision a wins over b (CouchDB picks the longest branch, then the highest id).
func newer(a, b string) bool {
	if ga, gb := revGen(a), revGen(b); ga != gb {
		return ga > gb
	}
	return a > b
}

// Node is one emulated CouchDB node.
type Node struct {
	net  *Network
	name string
	cfg  NodeConfig

	running  bool
	listener net.Listener
	server   *http.Server
	addr     string
	started  time.Time

	config  map[string]map[string]string
	admins  map[string]*adminHash
	nodesDB map[string]*rawDoc
	dbsDB   map[string]*mapDoc
	// dbsHeld stops mem3's _dbs pushes into this node (HoldDBs): the push into a node that just
	// joined can hang for a minute on real CouchDB, and the nodes after it in the ring wait too.
	dbsHeld  bool
	copies   map[string]*shardCopy // by shard name "shards/<range>/<db><suffix>"
	dbsSeq   int                   // update sequence of the node-local _dbs
	seeded   bool
	booted   bool // started at least once
	lockouts map[lockoutKey]*lockoutEntry
	fault    Fault
	requests RequestCounts
	stats    nodeStats
	// syncDelay holds back every internal-replication push into or out of this node's copies
	// (syncdelay.go); it survives restarts, like the node's data.
	syncDelay time.Duration
	// cacheBusy is when mem3_shards' changes listener has listed every _dbs change so far
	// (shardcache.go).
	cacheBusy time.Time
}

// rawDoc is a document of a node-local database (_nodes).
type rawDoc struct {
	Rev     string
	Deleted bool
	Body    map[string]any
}

// mapDoc is a shard map document in _dbs.
type mapDoc struct {
	Rev     string
	Deleted bool
	Map     couch.ShardMap
	Seq     int // the node-local _dbs sequence of its last change (for _changes)

	listed time.Time // when the node's mem3_shards cache lists it (ShardCacheLag)
	prev   *mapDoc   // what the cache lists until then; nil: nothing
}

// putMapDoc stores a shard map doc in the node's _dbs under the next sequence.
func (n *Node) putMapDoc(id string, d *mapDoc) {
	n.dbsSeq++
	d.Seq = n.dbsSeq
	n.listLater(id, d)
	n.dbsDB[id] = d
}

func (n *Node) isMember(name string) bool {
	d, ok := n.nodesDB[name]
	return ok && !d.Deleted
}

func (n *Node) members() []string {
	var out []string
	for id, d := range n.nodesDB {
		if !d.Deleted {
			out = append(out, id)
		}
	}
	sort.Strings(out)
	return out
}

func (n *Node) mergeNodes(src map[string]*rawDoc) bool {
	changed := false
	for id, d := range src {
		cur, ok := n.nodesDB[id]
		if !ok || newer(d.Rev, cur.Rev) {
			c := *d
			n.nodesDB[id] = &c
			changed = true
		}
	}
	return changed
}

func (n *Node) mergeDBs(src map[string]*mapDoc) bool {
	changed := false
	for id, d := range src {
		cur, ok := n.dbsDB[id]
		if !ok || newer(d.Rev, cur.Rev) {
			n.putMapDoc(id, &mapDoc{Rev: d.Rev, Deleted: d.Deleted, Map: d.Map.Clone()})
			changed = true
		}
	}
	return changed
}

// ensureCopies creates the (empty) local file of every copy the shard maps place on this node, as
// mem3 does as soon as it sees the map change.
func (n *Node) ensureCopies() {
	for _, d := range n.dbsDB {
		if d.Deleted {
			continue
		}
		for _, rng := range d.Map.ByNode[n.name] {
			name := d.Map.ShardName(rng)
			if _, ok := n.copies[name]; !ok {
				n.copies[name] = newCopy(n.net)
			}
		}
	}
}

func (n *Node) putNodeDoc(id string, body map[string]any) *rawDoc {
	cur := n.nodesDB[id]
	gen, parent := 1, ""
	if cur != nil {
		gen, parent = revGen(cur.Rev)+1, cur.Rev
	}
	if body == nil {
		body = map[string]any{}
	}
	d := &rawDoc{Rev: revision(gen, parent, false, body), Body: body}
	if cur == nil {
		// A fresh `{}` doc gets the same revision on every node, as in CouchDB.
		d.Rev = revision(1, "", false, body)
	}
	n.nodesDB[id] = d
	return d
}
