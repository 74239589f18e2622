package couchtest

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"sort"
	"strconv"
	"time"

	"github.com/couchdb-controller/couchdb-controller/couch"
)

// shardCopy is one node-local shard file.
type shardCopy struct {
	uuid string
	seq  int
	docs map[string]*docRec
}

type docRec struct {
	Rev     string
	Deleted bool
	Body    map[string]any
	Seq     int
}

func newCopy(nw *Network) *shardCopy {
	return &shardCopy{uuid: randomHex(16), docs: map[string]*docRec{}}
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

// merge copies every newer revision of src into c, as a mem3 push does. It reports whether c changed.
func (c *shardCopy) merge(src *shardCopy) bool {
	changed := false
	for id, d := range src.docs {
		cur, ok := c.docs[id]
		if ok && !newer(d.Rev, cur.Rev) {
			continue
		}
		c.seq++
		nd := *d
		nd.Seq = c.seq
		c.docs[id] = &nd
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

// createDB places q ranges with n copies on the coordinator's members (skipping decommissioned ones),
// rotated by the name so placement differs between databases, and writes the shard map.
func (nw *Network) createDB(coord *Node, name string, q, n int) {
	var members []string
	for _, id := range coord.members() {
		if d := coord.nodesDB[id]; d.Body["decom"] == true || d.Body["decom"] == "true" {
			continue
		}
		members = append(members, id)
	}
	if n > len(members) {
		n = len(members) // mem3 clamps n to the members it has (and logs an error)
	}
	off := int(docHash(name) % uint32(max(len(members), 1)))
	suffix := "." + strconv.FormatInt(time.Now().Unix(), 10)
	m := couch.ShardMap{ID: name, ByNode: map[string][]string{}, ByRange: map[string][]string{}, Props: map[string]any{}}
	for _, r := range suffix {
		m.ShardSuffix = append(m.ShardSuffix, int(r))
	}
	for i, r := range ranges(q) {
		var nodes []string
		for k := 0; k < n; k++ {
			nodes = append(nodes, members[(off+i*n+k)%len(members)])
		}
		sort.Strings(nodes)
		for _, node := range nodes {
			m.AddCopy(r, node)
		}
	}
	coord.dbsDB[name] = &mapDoc{Rev: revision(1, "", false, m), Map: m}
	nw.propagate()
}

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

// scheduleSync pushes every copy of db to its peers after delay, like mem3_sync after a change.
func (nw *Network) scheduleSync(db string, delay time.Duration) {
	time.AfterFunc(delay, func() {
		nw.mu.Lock()
		defer nw.mu.Unlock()
		nw.syncDB(db)
	})
}

// syncDB plays one round of internal replication for db: each running node pushes each copy it holds
// (by its own shard map) to the other copies of that range it can reach. Only live copies are sources.
func (nw *Network) syncDB(db string) {
	for _, src := range nw.order {
		if !src.running {
			continue
		}
		d, ok := src.dbsDB[db]
		if !ok || d.Deleted {
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
					dc = newCopy(nw)
					dst.copies[d.Map.ShardName(rng)] = dc
				}
				dc.merge(sc)
			}
		}
	}
}

// dbCounts sums, range by range, the best live copy's counts (what GET /{db} reports).
func (nw *Network) dbCounts(coord *Node, m couch.ShardMap) (docs, deleted int64) {
	for _, rng := range m.Ranges() {
		var bd, bdel int64
		for _, c := range nw.liveCopies(coord, m, rng) {
			d, del := c.counts()
			if d+del > bd+bdel {
				bd, bdel = d, del
			}
		}
		docs += bd
		deleted += bdel
	}
	return docs, deleted
}

func copiesPerRange(m couch.ShardMap) int {
	n := 0
	for _, nodes := range m.ByRange {
		n = max(n, len(nodes))
	}
	return n
}
