package couchtest

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"sort"
	"time"

	"github.com/couchdb-controller/couchdb-controller/couch"
)

// Fault makes a node misbehave; the zero Fault clears it.
type Fault struct {
	Latency time.Duration // added before every answer
	// Hang reads the request and holds it: no answer until the client gives up. Clearing the fault
	// answers it (a paused VM resumed); stopping the node drops it.
	Hang     bool
	Status   int  // answer every request with this status and a CouchDB-style error body
	Drop     bool // close the connection without an answer
	NonJSON  bool // answer 200 with a body that is not JSON
	Truncate bool // answer 200 with truncated JSON
	// SpareUp leaves GET /_up healthy, so the pod's readiness probe passes while everything else
	// fails: CouchDB's /_up is cheap and often still answers when the cluster layer does not.
	SpareUp bool
}

// RequestCounts counts the requests a node served, by method.
type RequestCounts struct {
	ByMethod map[string]int
	ByPath   map[string]int // "METHOD /path" with ids kept, for precise assertions
	Writes   int            // anything but GET and HEAD
	Failures int            // logins refused with 401 (wrong password, or unknown user)
	// Locked counts the attempts refused with 403 because the account was locked out: CouchDB does
	// not count them as failures, but each one is a client trying again.
	Locked int
	// AuthAttempts counts every authentication attempt: each request that presented a name and
	// password (basic auth or POST /_session), and each remote login add_node or enable_cluster made
	// here, whether it succeeded, failed or was refused as locked.
	AuthAttempts int
}

// Name is the node's Erlang name.
func (n *Node) Name() string { return n.name }

// Start boots the node (again): it opens its listener on the same port, inserts itself and its
// seeds into _nodes when they are missing, reconnects to its members and catches up its shard copies
// after the sync delay.
func (n *Node) Start() error {
	nw := n.net
	nw.mu.Lock()
	defer nw.mu.Unlock()
	if n.running {
		return nil
	}
	ln, err := net.Listen("tcp", n.addr)
	if err != nil {
		return fmt.Errorf("couchtest: listen for %s: %w", n.name, err)
	}
	if n.booted && n.cfg.EphemeralIni {
		n.boot() // the entrypoint rewrote the last ini file: runtime config is gone, the password rehashed
	}
	n.booted = true
	n.listener = ln
	n.addr = ln.Addr().String()
	if _, port, err := net.SplitHostPort(n.addr); err == nil {
		n.config["chttpd"]["port"] = port // what local.ini says once the node listens there
	}
	n.server = &http.Server{Handler: n.Handler(), ReadHeaderTimeout: 10 * time.Second}
	go func(srv *http.Server, l net.Listener) { _ = srv.Serve(l) }(n.server, ln)
	n.running = true
	n.started = time.Now()
	n.fault = Fault{}
	n.lockouts = map[lockoutKey]*lockoutEntry{} // couch_lockout_lru lives in the VM's memory
	// mem3_nodes:initialize_nodelist inserts this node and every seed with an empty body.
	for _, id := range append([]string{n.name}, n.cfg.Seedlist...) {
		if d, ok := n.nodesDB[id]; !ok || d.Deleted {
			n.putNodeDoc(id, nil)
		}
	}
	n.seeded = !n.hasOtherSeeds()
	nw.propagate()
	n.trySeed()
	// A restarted node's copies catch up with what it missed once mem3 resumes syncing.
	for _, d := range n.dbsDB {
		if !d.Deleted {
			nw.scheduleSync(d.Map.ID, nw.opts.SyncDelay, nil)
		}
	}
	return nil
}

// Stop shuts the node down. Its data stays for the next Start, like a pod's persistent volume.
func (n *Node) Stop() {
	n.net.mu.Lock()
	srv, ln := n.server, n.listener
	n.running = false
	n.server, n.listener = nil, nil
	n.net.mu.Unlock()
	if srv != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			_ = srv.Close()
		}
	}
	if ln != nil {
		// Closed here too: Shutdown closes only the listeners Serve tracks, and a Serve goroutine that
		// has not started yet tracks its listener too late; connections would queue on it and then be
		// reset instead of refused.
		_ = ln.Close()
	}
}

// Running reports whether the node is up.
func (n *Node) Running() bool {
	n.net.mu.Lock()
	defer n.net.mu.Unlock()
	return n.running
}

// Addr is the node's listen address (host:port).
func (n *Node) Addr() string {
	n.net.mu.Lock()
	defer n.net.mu.Unlock()
	return n.addr
}

// URL is the node's base URL.
func (n *Node) URL() string { return "http://" + n.Addr() }

// HoldDBs stops (true) or resumes (false) mem3's pushes of the node-local _dbs into n, as when the
// push into a node that just joined hangs (CouchDB 3.4.3: 60 s, until rexi kills it). Meanwhile n
// learns no new database, and every internal-replication push into a copy of one it does not know
// fails with missing_target. Its own _dbs takes writes made through it.
func (n *Node) HoldDBs(hold bool) {
	n.net.mu.Lock()
	defer n.net.mu.Unlock()
	n.dbsHeld = hold
	if !hold {
		n.net.propagate()
	}
}

// SetFault injects (or with the zero value clears) a fault.
func (n *Node) SetFault(f Fault) {
	n.net.mu.Lock()
	defer n.net.mu.Unlock()
	n.fault = f
}

// SetAdminPassword changes the admin's password, as an operator editing local.ini (or PUT
// /_node/_local/_config/admins/{user}) would. CouchDB hashes it with a new salt, and the salt is part
// of the lockout key: failures counted against the old hash no longer lock the account, even when the
// password set is the same.
func (n *Node) SetAdminPassword(user, password string) {
	n.net.mu.Lock()
	defer n.net.mu.Unlock()
	n.setAdmin(user, password)
	if user == n.cfg.AdminUser {
		n.cfg.AdminPassword = password
	}
}

// SetBootConfig replaces the ini files and environment the node boots from, as a pod recreated from
// a changed spec has them. A node with EphemeralIni reads them at its next Start; one without keeps
// the runtime config it persisted. The name and listen address cannot change.
func (n *Node) SetBootConfig(cfg NodeConfig) error {
	n.net.mu.Lock()
	defer n.net.mu.Unlock()
	if cfg.Name != n.name {
		return fmt.Errorf("couchtest: node %s cannot be renamed %s", n.name, cfg.Name)
	}
	if cfg.AdminUser == "" || cfg.AdminPassword == "" {
		return fmt.Errorf("couchtest: node %s needs an admin (CouchDB 3 refuses to boot without one)", cfg.Name)
	}
	cfg = cfg.withDefaults()
	cfg.Addr = n.addr
	// The Erlang cookie stays what it is: add_node pushes the coordinator's, and a pod whose spec names
	// none would otherwise come back unable to reach its cluster.
	cfg.Cookie = n.cfg.Cookie
	n.cfg = cfg
	return nil
}

// Config returns one of the node's config values ("" and false when unset). Values may be secrets.
func (n *Node) Config(section, key string) (string, bool) {
	n.net.mu.Lock()
	defer n.net.mu.Unlock()
	if section == "admins" {
		if h := n.admins[key]; h != nil {
			return h.String(n.net), true
		}
		return "", false
	}
	v, ok := n.config[section][key]
	return v, ok
}

// Requests returns a copy of the request counters.
func (n *Node) Requests() RequestCounts {
	n.net.mu.Lock()
	defer n.net.mu.Unlock()
	out := n.requests
	out.ByMethod, out.ByPath = map[string]int{}, map[string]int{}
	for k, v := range n.requests.ByMethod {
		out.ByMethod[k] = v
	}
	for k, v := range n.requests.ByPath {
		out.ByPath[k] = v
	}
	return out
}

// ResetRequests zeroes the request counters.
func (n *Node) ResetRequests() {
	n.net.mu.Lock()
	defer n.net.mu.Unlock()
	n.requests = RequestCounts{}
}

// ClusterNodes lists the node's _nodes documents (its view of the membership).
func (n *Node) ClusterNodes() []string {
	n.net.mu.Lock()
	defer n.net.mu.Unlock()
	return n.members()
}

// ShardMap returns the node's copy of db's shard map.
func (n *Node) ShardMap(db string) (couch.ShardMap, bool) {
	n.net.mu.Lock()
	defer n.net.mu.Unlock()
	d, ok := n.dbsDB[db]
	if !ok || d.Deleted {
		return couch.ShardMap{}, false
	}
	m := d.Map.Clone()
	m.Rev = d.Rev
	return m, true
}

// ShardMaps is the shard map of each of dbs the node's _dbs holds, read under one lock: a test
// that polls every map while the network serves requests holds the network's lock once, not once
// per database. A map of prev with the revision _dbs holds is returned as it is, not cloned again:
// the moves bench polls 100 maps every 20 ms under the lock every emulated request takes, and
// cloning them all was 7% of its CPU while a few change between polls.
func (n *Node) ShardMaps(dbs []string, prev map[string]couch.ShardMap) map[string]couch.ShardMap {
	n.net.mu.Lock()
	defer n.net.mu.Unlock()
	out := make(map[string]couch.ShardMap, len(dbs))
	for _, db := range dbs {
		if d, ok := n.dbsDB[db]; ok && !d.Deleted {
			if p, ok := prev[db]; ok && p.Rev == d.Rev && d.Rev != "" {
				out[db] = p
				continue
			}
			m := d.Map.Clone()
			m.Rev = d.Rev
			out[db] = m
		}
	}
	return out
}

// CopyDocCount reports the documents of the node's local copy of shard.
func (n *Node) CopyDocCount(shard string) (docs, deleted int64, ok bool) {
	n.net.mu.Lock()
	defer n.net.mu.Unlock()
	c, ok := n.copies[shard]
	if !ok {
		return 0, 0, false
	}
	docs, deleted = c.counts()
	return docs, deleted, true
}

// Copies lists the node's local shard files (including ones no map references any more).
func (n *Node) Copies() []string {
	n.net.mu.Lock()
	defer n.net.mu.Unlock()
	out := make([]string, 0, len(n.copies))
	for k := range n.copies {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// MaintenanceMode reports [couchdb] maintenance_mode.
func (n *Node) MaintenanceMode() string {
	n.net.mu.Lock()
	defer n.net.mu.Unlock()
	return n.config["couchdb"]["maintenance_mode"]
}

func (n *Node) hasOtherSeeds() bool {
	for _, s := range n.cfg.Seedlist {
		if s != n.name {
			return true
		}
	}
	return false
}

// trySeed pulls _nodes and _dbs from the first live seed, as mem3_seeds does, and marks the node
// seeded; until then /_up answers 404 seeding.
func (n *Node) trySeed() {
	if n.seeded {
		return
	}
	for _, s := range n.cfg.Seedlist {
		seed := n.net.nodes[s]
		if s == n.name || seed == nil || !n.net.connected(n, seed) {
			continue
		}
		n.mergeNodes(seed.nodesDB)
		n.mergeDBs(seed.dbsDB)
		n.seeded = true
		n.net.propagate()
		return
	}
}
