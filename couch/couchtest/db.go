package couchtest

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/couchdb-controller/couchdb-controller/couch"
)

var dbNameRE = regexp.MustCompile(`^[a-z][a-z0-9_$()+/-]*$`)

func (n *Node) shardMap(db string) (couch.ShardMap, bool) {
	d, ok := n.dbsDB[db]
	if !ok || d.Deleted {
		return couch.ShardMap{}, false
	}
	return d.Map, true
}

func noDB() (int, any) { return http.StatusNotFound, errBody("not_found", "Database does not exist.") }

func onlyMethods(allowed string) (int, any) {
	return http.StatusMethodNotAllowed, errBody("method_not_allowed", "Only "+allowed+" allowed")
}

// dbRoute serves /{db}[/...] on the clustered API.
func (n *Node) dbRoute(r *http.Request, seg []string, body []byte) (int, any) {
	db := seg[0]
	if len(seg) == 1 {
		return n.dbItself(r, db)
	}
	m, ok := n.shardMap(db)
	if !ok {
		return noDB()
	}
	switch seg[1] {
	case "_shards":
		if r.Method != http.MethodGet {
			return onlyMethods("GET")
		}
		// mem3_httpd answers from the mem3_shards cache, as _sync_shards lists its pairs.
		d := n.shardCache(db)
		if d == nil || d.Deleted {
			return noDB()
		}
		m := d.Map
		if len(seg) == 3 {
			rng := rangeOf(m, seg[2])
			return http.StatusOK, obj{"range": rng, "nodes": shardNodes(m, rng)}
		}
		out := obj{}
		for rng := range m.ByRange {
			out[rng] = shardNodes(m, rng)
		}
		return http.StatusOK, obj{"shards": out}
	case "_sync_shards":
		if r.Method != http.MethodPost {
			return onlyMethods("POST")
		}
		n.net.scheduleSync(db, 5e6, n) // 5 ms: _sync_shards queues the pushes and returns at once
		return http.StatusAccepted, obj{"ok": true}
	case "_all_docs":
		return n.allDocs(r, m)
	case "_bulk_docs":
		if r.Method != http.MethodPost {
			return onlyMethods("POST")
		}
		return n.bulkDocs(r, m, body)
	case "_changes":
		return n.changes(r, m)
	case "_revs_diff":
		if r.Method != http.MethodPost {
			return onlyMethods("POST")
		}
		return n.revsDiff(m, body)
	}
	if seg[1] == "_local" && len(seg) == 3 {
		return n.localDoc(r, db, "_local/"+seg[2], body)
	}
	return n.docRoute(r, db, m, seg[1], body)
}

// shardNodes lists rng's nodes the way /{db}/_shards does: mem3_util builds the shard list by
// accumulating by_range, so each range's nodes come out in reverse.
func shardNodes(m couch.ShardMap, rng string) []string {
	out := slices.Clone(m.ByRange[rng])
	slices.Reverse(out)
	return out
}

func (n *Node) dbItself(r *http.Request, db string) (int, any) {
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		m, ok := n.shardMap(db)
		if !ok {
			return noDB()
		}
		return http.StatusOK, n.dbInfo(db, m)
	case http.MethodPut:
		if !dbNameRE.MatchString(db) && !strings.HasPrefix(db, "_") || strings.HasPrefix(db, "_") && db != "_users" && db != "_replicator" && db != "_global_changes" {
			return http.StatusBadRequest, errBody("illegal_database_name", "Name: '"+db+"'. Only lowercase characters (a-z), digits (0-9), and any of the characters _, $, (, ), +, -, and / are allowed. Must begin with a letter.")
		}
		if _, ok := n.shardMap(db); ok {
			return http.StatusPreconditionFailed, errBody("file_exists", "The database could not be created, the file already exists.")
		}
		q, _ := strconv.Atoi(n.config["cluster"]["q"])
		nv, _ := strconv.Atoi(n.config["cluster"]["n"])
		if v, err := strconv.Atoi(r.URL.Query().Get("q")); err == nil && v > 0 {
			q = v
		}
		if v, err := strconv.Atoi(r.URL.Query().Get("n")); err == nil && v > 0 {
			nv = v
		}
		if err := n.net.createDB(n, db, q, nv, true); err != nil {
			return http.StatusInternalServerError, obj{"error": "unknown_error", "reason": err.Error(), "ref": refNumber()}
		}
		return http.StatusCreated, obj{"ok": true}
	case http.MethodDelete:
		m, ok := n.shardMap(db)
		if !ok {
			return noDB()
		}
		n.net.deleteDB(n, db, m)
		return http.StatusOK, obj{"ok": true} // recorded on CouchDB 3.4.3 (DELETE /db2 -> 200)
	}
	return onlyMethods("DELETE,GET,HEAD,POST,PUT")
}

// dbInfo is GET /{db}: per range, the answering copy with the highest update sequence supplies the
// counts, sizes and its part of the (opaque) update_seq. instance_start_time is the creation time
// the shard suffix holds.
func (n *Node) dbInfo(db string, m couch.ShardMap) obj {
	var docs, del int64
	ext, active, file := 0, 0, 0
	pos := n.net.positions(n, m)
	for _, rng := range m.Ranges() {
		_, c := n.net.bestCopy(n, m, rng)
		if c == nil {
			continue
		}
		d, dd := c.counts()
		docs, del = docs+d, del+dd
		sz := c.sizes()
		ext, active, file = ext+sz["external"].(int), active+sz["active"].(int), file+sz["file"].(int)
	}
	nv := copiesPerRange(m)
	return obj{
		"instance_start_time": strings.TrimPrefix(m.Suffix(), "."), "db_name": db,
		"purge_seq": encodeSeq(purgePositions(pos)), "update_seq": encodeSeq(pos),
		"sizes": obj{"file": file, "external": ext, "active": active}, "props": nonNilProps(m.Props), "doc_del_count": del, "doc_count": docs,
		"disk_format_version": 8, "compact_running": false,
		"cluster": obj{"q": len(m.ByRange), "n": nv, "w": nv/2 + 1, "r": nv/2 + 1},
	}
}

// mapBody is a shard map document's body as stored: without _id and _rev, and without props when the
// database was created without them.
func mapBody(m couch.ShardMap) obj {
	var out obj
	b, _ := json.Marshal(m)
	_ = json.Unmarshal(b, &out)
	delete(out, "_id")
	delete(out, "_rev")
	if m.Props == nil {
		delete(out, "props")
	}
	return out
}

// dbsInfo is GET /_dbs on the clustered port: mem3 presents the node-local shard map database as a
// database of one range and one copy, so its info (and _all_docs) work there and nothing else does.
func (n *Node) dbsInfo() obj {
	ext := 0
	docs := 0
	for _, d := range n.dbsDB {
		if !d.Deleted {
			docs++
			ext += jsonSize(mapBody(d.Map))
		}
	}
	pos := []seqPos{{Node: n.name, Range: "00000000-ffffffff", Seq: n.dbsSeq}}
	return obj{
		"instance_start_time": "0", "db_name": "_dbs", "purge_seq": encodeSeq(purgePositions(pos)), "update_seq": encodeSeq(pos),
		"sizes": obj{"file": 8348 + 1200*n.dbsSeq, "external": ext, "active": ext}, "props": obj{}, "doc_del_count": 0,
		"doc_count": docs, "disk_format_version": 8, "compact_running": false, "cluster": obj{"q": 1, "n": 1, "w": 1, "r": 1},
	}
}

func nonNilProps(p map[string]any) map[string]any {
	if p == nil {
		return map[string]any{}
	}
	return p
}

// refNumber makes up the "ref" of a 500 answer: CouchDB's is a hash of the stack trace it logged.
func refNumber() int64 {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return int64(binary.BigEndian.Uint32(b[:]))
}
