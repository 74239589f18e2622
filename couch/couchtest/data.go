package couchtest

import (
	"crypto/md5"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/couchdb-controller/couchdb-controller/couch"
)

// shardCopy is one node-local shard file.
type shardCopy struct {
	uuid    string
	seq     int
	created time.Time // when the file was opened: its instance_start_time
	docs    map[string]*docRec
	local   map[string]obj // _local docs: mem3's shard-sync checkpoints
	// fileBytes is what updates appended to the file (see fill.go): sizes.file grows with the data.
	fileBytes int
}

type docRec struct {
	Rev     string
	Deleted bool
	Body    map[string]any
	Seq     int
	Size    int // the body's encoded JSON size: what sizes.external sums
}

func newCopy(nw *Network) *shardCopy {
	return &shardCopy{uuid: randomHex(16), created: nw.opts.Clock(), docs: map[string]*docRec{}, local: map[string]obj{}}
}

func newDocRec(rev string, deleted bool, body map[string]any) *docRec {
	b, _ := json.Marshal(body)
	return &docRec{Rev: rev, Deleted: deleted, Body: body, Size: len(b)}
}

// put stores a new revision of id in the copy under the copy's next update sequence.
func (c *shardCopy) put(id string, d *docRec) {
	c.seq++
	nd := *d
	nd.Seq = c.seq
	c.docs[id] = &nd
	c.fileBytes += nd.fileBytes()
}

// external sums the encoded size of the live bodies, as couch_bt_engine's external size does.
func (c *shardCopy) external() int {
	n := 0
	for _, d := range c.docs {
		if !d.Deleted {
			n += d.Size
		}
	}
	return n
}

func (c *shardCopy) counts() (docs, deleted int64) {
	for _, d := range c.docs {
		if d.Deleted {
			deleted++
		} else {
			docs++
		}
	}
	return docs, deleted
}

// merge copies every newer revision of src (up to its sequence upto) into c, as a mem3 push does. It
// reports whether c changed.
func (c *shardCopy) merge(src *shardCopy, upto int) bool {
	changed := false
	for id, d := range src.docs {
		if d.Seq > upto {
			continue
		}
		cur, ok := c.docs[id]
		if ok && !newer(d.Rev, cur.Rev) {
			continue
		}
		c.put(id, d)
		changed = true
	}
	return changed
}

// ranges splits the 32-bit hash space into q ranges the way mem3 does.
func ranges(q int) []string {
	out := make([]string, 0, q)
	size := uint64(1<<32) / uint64(q)
	for i := 0; i < q; i++ {
		start := uint64(i) * size
		end := start + size - 1
		if i == q-1 {
			end = 1<<32 - 1
		}
		out = append(out, fmt.Sprintf("%08x-%08x", start, end))
	}
	return out
}

// docHash is mem3_hash:crc32 of term_to_binary(DocId): for a binary id that is the external term
// format tag 131, BINARY_EXT 109, a 4-byte big-endian length and the bytes.
func docHash(id string) uint32 {
	b := make([]byte, 6, 6+len(id))
	b[0], b[1] = 131, 109
	binary.BigEndian.PutUint32(b[2:], uint32(len(id)))
	return crc32.ChecksumIEEE(append(b, id...))
}

func rangeOf(m couch.ShardMap, id string) string {
	h := docHash(id)
	for r := range m.ByRange {
		var s, e uint32
		if _, err := fmt.Sscanf(r, "%08x-%08x", &s, &e); err == nil && h >= s && h <= e {
			return r
		}
	}
	return ""
}

// createDB is fabric_db_create on coordinator coord: mem3:choose_shards places q ranges and writes
// the shard map. The coordinator's own view decides: its _nodes (members without "decom" true or
// "true", mem3:allowed_nodes/0; each doc's "zone") and its [cluster] placement. Without placement, n
// copies go on the allowed nodes, n capped to their number (mem3_util:n_val). With placement
// ("zone-a:1,zone-b:2"), the n asked is ignored: each rule places its count on the allowed nodes of
// its zone, capped to them, and a rule whose zone has none fails the creation with
// no_nodes_in_zone, creating nothing.
//
// mem3 rotates each node list by a random offset and deals the copies out round-robin; the emulator
// rotates by a hash of the name instead, so that placement differs between databases but not
// between runs, unless NetworkOptions.Placement decides (per zone, when placement is set).
//
// Databases _cluster_setup creates get no "props" in their map (CouchDB writes props only for
// databases created over HTTP); the recorded _dbs sizes show it.
func (nw *Network) createDB(coord *Node, name string, q, n int, props bool) error {
	var allowed []string
	for _, id := range coord.members() {
		if d := coord.nodesDB[id]; d.Body["decom"] == true || d.Body["decom"] == "true" {
			continue
		}
		allowed = append(allowed, id)
	}
	rngs := ranges(q)
	placed := map[string][]string{}
	rules, err := parsePlacement(coord.config["cluster"]["placement"])
	if err != nil {
		return err
	}
	if rules == nil {
		rules = []placementRule{{n: n}}
	}
	for _, rule := range rules {
		nodes := allowed
		if rule.zone != "" {
			nodes = nil
			for _, id := range allowed {
				if coord.nodesDB[id].Body["zone"] == rule.zone {
					nodes = append(nodes, id)
				}
			}
		}
		zn := min(rule.n, len(nodes)) // mem3_util:n_val (which also logs an error)
		if zn < 1 && len(nodes) > 0 {
			zn = 1
		}
		if zn == 0 {
			return errNoNodesInZone
		}
		for r, ns := range nw.place(name, rngs, zn, nodes) {
			placed[r] = append(placed[r], ns...)
		}
	}
	// mem3:generate_shard_suffix: "." and the creation time in seconds.
	suffix := "." + strconv.FormatInt(nw.opts.Clock().Unix(), 10)
	m := couch.ShardMap{ID: name, ByNode: map[string][]string{}, ByRange: map[string][]string{}, Props: map[string]any{}}
	for _, r := range suffix {
		m.ShardSuffix = append(m.ShardSuffix, int(r))
	}
	for _, r := range rngs {
		nodes := slices.Clone(placed[r])
		sort.Strings(nodes) // the map lists each range's nodes sorted, whatever order mem3 drew
		for _, node := range nodes {
			m.AddCopy(r, node)
		}
	}
	if !props {
		m.Props = nil
	}
	coord.putMapDoc(name, &mapDoc{Rev: revision(1, "", false, mapBody(m)), Map: m})
	nw.propagate()
	return nil
}

// deleteDB is fabric_db_delete on coordinator coord: the map doc is deleted in _dbs (its last body
// kept under the deleted revision, as the _dbs changes feed shows it) and every node drops its copies.
func (nw *Network) deleteDB(coord *Node, name string, m couch.ShardMap) {
	cur := coord.dbsDB[name]
	coord.putMapDoc(name, &mapDoc{Rev: revision(revGen(cur.Rev)+1, cur.Rev, true, mapBody(m)), Deleted: true, Map: m.Clone()})
	for _, n := range nw.order {
		if !n.running {
			continue
		}
		for _, rng := range m.Ranges() {
			delete(n.copies, m.ShardName(rng))
		}
	}
	nw.propagate()
}

// place deals n copies of each range out over nodes (mem3_util:create_partition_map).
func (nw *Network) place(name string, rngs []string, n int, nodes []string) map[string][]string {
	if nw.opts.Placement != nil {
		return nw.opts.Placement(name, rngs, n, slices.Clone(nodes))
	}
	placed := map[string][]string{}
	off := int(docHash(name) % uint32(max(len(nodes), 1)))
	for i, r := range rngs {
		for k := 0; k < n; k++ {
			placed[r] = append(placed[r], nodes[(off+i*n+k)%len(nodes)])
		}
	}
	return placed
}

// errNoNodesInZone is mem3's error for a placement rule (or a cluster) without an allowed node.
var errNoNodesInZone = errors.New("no_nodes_in_zone")

// placementRule is one zone:count of [cluster] placement; zone "" is the no-placement default.
type placementRule struct {
	zone string
	n    int
}

// parsePlacement is mem3:decode_placement_string: "" means no placement.
func parsePlacement(s string) ([]placementRule, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	var out []placementRule
	for _, rule := range strings.Split(s, ",") {
		if rule == "" {
			continue // string:tokens skips empty tokens
		}
		zone, count, ok := strings.Cut(rule, ":")
		n, err := strconv.Atoi(count)
		if !ok || zone == "" || strings.Contains(count, ":") || err != nil {
			return nil, errBadPlacement
		}
		out = append(out, placementRule{zone: zone, n: n})
	}
	return out, nil
}

// errBadPlacement is the badmatch a malformed placement string makes in decode_placement_string.
var errBadPlacement = errors.New("badmatch")

// liveCopies returns the nodes holding rng of m that coord can reach and that serve interactive
// requests (maintenance mode "true" refuses them), with their copies.
func (nw *Network) liveCopies(coord *Node, m couch.ShardMap, rng string) map[*Node]*shardCopy {
	out := map[*Node]*shardCopy{}
	for _, name := range m.ByRange[rng] {
		node := nw.nodes[name]
		if node == nil || !nw.connected(coord, node) || node.config["couchdb"]["maintenance_mode"] == "true" {
			continue
		}
		c, ok := node.copies[m.ShardName(rng)]
		if !ok {
			c = newCopy(nw)
			node.copies[m.ShardName(rng)] = c
		}
		out[node] = c
	}
	return out
}

// readDoc finds the winning revision of id among the live copies.
func (nw *Network) readDoc(coord *Node, m couch.ShardMap, id string) *docRec {
	var best *docRec
	for _, c := range nw.liveCopies(coord, m, rangeOf(m, id)) {
		if d, ok := c.docs[id]; ok && (best == nil || newer(d.Rev, best.Rev)) {
			best = d
		}
	}
	return best
}

// scheduleSync pushes every copy of db to its peers after delay, like mem3_sync after a change. With
// a coordinator (POST /{db}/_sync_shards) the pairs come from the coordinator's shard map, which it
// hands to each source; otherwise each source pushes to the copies its own map lists. Either map is
// the one the node's mem3_shards cache lists when the round runs (shardCache).
// Like mem3_sync, which keeps one pending push per shard, a sync already scheduled for db absorbs
// later requests: it pushes everything the copies hold when it runs.
func (nw *Network) scheduleSync(db string, delay time.Duration, coord *Node) {
	key := db
	if coord != nil {
		key += "\x00" + coord.name
	}
	if nw.pendingSync[key] {
		return
	}
	nw.pendingSync[key] = true
	time.AfterFunc(delay, func() {
		nw.mu.Lock()
		defer nw.mu.Unlock()
		delete(nw.pendingSync, key)
		nw.syncDB(db, coord)
	})
}

// syncDB plays one round of internal replication for db: each running node pushes each copy it holds
// to the other copies of that range it can reach. The round pushes what the sources held when it
// started: a copy filled during the round pushes nothing on, as mem3_sync's pushes run concurrently.
func (nw *Network) syncDB(db string, coord *Node) {
	type task struct {
		src, dst *Node
		sc, dc   *shardCopy
		upto     int
	}
	var tasks []task
	for _, src := range nw.order {
		if !src.running {
			continue
		}
		view := src
		if coord != nil && coord.running {
			view = coord
		}
		d := view.shardCache(db)
		if d == nil || d.Deleted {
			continue
		}
		for _, rng := range d.Map.ByNode[src.name] {
			sc, ok := src.copies[d.Map.ShardName(rng)]
			if !ok {
				continue
			}
			for _, name := range d.Map.ByRange[rng] {
				dst := nw.nodes[name]
				if dst == nil || dst == src || !nw.connected(src, dst) {
					continue
				}
				dc, ok := dst.copies[d.Map.ShardName(rng)]
				if !ok {
					// mem3_util:get_or_create_db_int creates the target's file only when the target
					// node's own _dbs holds the database (mem3_shards:opts_for_db); otherwise the push
					// fails with missing_target and mem3_sync drops it (seen on CouchDB 3.4.3 when the
					// _dbs push into a node that had just joined hung for a minute).
					if td, known := dst.dbsDB[db]; !known || td.Deleted {
						continue
					}
					dc = newCopy(nw)
					dst.copies[d.Map.ShardName(rng)] = dc
				}
				tasks = append(tasks, task{src, dst, sc, dc, sc.seq})
			}
		}
	}
	for _, t := range tasks {
		nw.push(db, t.src, t.sc, t.dst, t.dc, t.upto)
	}
}

// push is one mem3_rep run from copy sc on src to copy dc on dst. Like mem3_rep it starts from the
// sequence its checkpoint recorded and does nothing, not even rewrite the checkpoint, when the source
// has no change since; otherwise it copies what is newer and saves the checkpoint on both copies,
// at once, or over time at the network's FillRate (fillPush).
func (nw *Network) push(db string, src *Node, sc *shardCopy, dst *Node, dc *shardCopy, upto int) {
	id := checkpointID(sc.uuid, dc.uuid)
	since := 0
	if cp, ok := sc.local[id]; ok {
		since, _ = cp["seq"].(int)
	}
	if upto <= since {
		return
	}
	if nw.holdPush(db, src, sc, dst, dc) {
		return
	}
	nw.pushNow(db, src, sc, dst, dc, since, upto)
}

// pushNow runs the push from since to upto: at once, or at the FillRate.
func (nw *Network) pushNow(db string, src *Node, sc *shardCopy, dst *Node, dc *shardCopy, since, upto int) {
	if nw.opts.FillRate > 0 {
		nw.fillPush(db, src, sc, dst, dc, since, upto)
		return
	}
	if nw.opts.PushTime > 0 {
		nw.timedPush(db, src, sc, dst, dc, upto)
		return
	}
	dc.merge(sc, upto)
	nw.checkpoint(src, sc, dst, dc, upto)
}

// checkpoint saves mem3_rep's checkpoint of the pair at source sequence upto, on both copies.
func (nw *Network) checkpoint(src *Node, sc *shardCopy, dst *Node, dc *shardCopy, upto int) {
	id := checkpointID(sc.uuid, dc.uuid)
	entry := obj{"target_node": dst.name, "target_uuid": dc.uuid, "target_seq": dc.seq, "source_node": src.name,
		"source_uuid": sc.uuid, "source_seq": upto, "timestamp": nw.opts.Clock().UTC().Format("2006-01-02T15:04:05.000000Z")}
	var history []any
	if cp, ok := sc.local[id]; ok {
		if h, ok := cp["history"].(obj); ok {
			history, _ = h[src.name].([]any)
		}
	}
	history = append([]any{entry}, history...) // newest first, as find_source_seq expects
	if len(history) > 10 {
		history = history[:10]
	}
	doc := obj{"_id": id, "_rev": "0-1", "seq": upto, "target_uuid": dc.uuid, "history": obj{src.name: history}}
	sc.local[id] = doc
	dc.local[id] = doc
}

// checkpointID is mem3_rep:make_local_id(SourceUUID, TargetUUID): each copy's uuid, as an Erlang
// binary term, md5-hashed and base64url-encoded. It reproduces CouchDB's ids byte for byte.
func checkpointID(srcUUID, dstUUID string) string {
	return "_local/shard-sync-" + termHash(srcUUID) + "-" + termHash(dstUUID)
}

func termHash(s string) string {
	b := make([]byte, 6, 6+len(s))
	b[0], b[1] = 131, 109 // term_to_binary of a binary: version tag, BINARY_EXT, 4-byte length
	binary.BigEndian.PutUint32(b[2:], uint32(len(s)))
	sum := md5.Sum(append(b, s...))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

func copiesPerRange(m couch.ShardMap) int {
	n := 0
	for _, nodes := range m.ByRange {
		n = max(n, len(nodes))
	}
	return n
}
