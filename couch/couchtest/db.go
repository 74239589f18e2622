package couchtest

import (
	"encoding/json"
	"net/http"
	"regexp"
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
			return http.StatusMethodNotAllowed, errBody("method_not_allowed", "Only GET allowed")
		}
		if len(seg) == 3 {
			rng := rangeOf(m, seg[2])
			return http.StatusOK, obj{"range": rng, "nodes": m.ByRange[rng]}
		}
		return http.StatusOK, obj{"shards": m.ByRange}
	case "_sync_shards":
		if r.Method != http.MethodPost {
			return http.StatusMethodNotAllowed, errBody("method_not_allowed", "Only POST allowed")
		}
		n.net.scheduleSync(db, 5e6) // 5 ms: _sync_shards queues the pushes and returns at once
		return http.StatusAccepted, obj{"ok": true}
	case "_all_docs":
		docs, _ := n.net.dbCounts(n, m)
		return http.StatusOK, obj{"total_rows": docs, "offset": 0, "rows": []any{}}
	}
	return n.docRoute(r, db, m, seg[1], body)
}

func (n *Node) dbItself(r *http.Request, db string) (int, any) {
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		m, ok := n.shardMap(db)
		if !ok {
			return noDB()
		}
		docs, del := n.net.dbCounts(n, m)
		nv := copiesPerRange(m)
		return http.StatusOK, obj{
			"instance_start_time": "0", "db_name": db, "purge_seq": "0-emulated", "update_seq": strconv.Itoa(n.net.seq) + "-emulated",
			"sizes": obj{"file": 16696, "external": 0, "active": 0}, "props": m.Props, "doc_del_count": del, "doc_count": docs,
			"disk_format_version": 8, "compact_running": false,
			"cluster": obj{"q": len(m.ByRange), "n": nv, "w": nv/2 + 1, "r": nv/2 + 1},
		}
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
		n.net.createDB(n, db, q, nv)
		return http.StatusCreated, obj{"ok": true}
	}
	return http.StatusMethodNotAllowed, errBody("method_not_allowed", "Only DELETE,GET,HEAD,POST,PUT allowed")
}

func (n *Node) docRoute(r *http.Request, db string, m couch.ShardMap, id string, body []byte) (int, any) {
	cur := n.net.readDoc(n, m, id)
	switch r.Method {
	case http.MethodGet:
		if cur == nil {
			return getDoc(id, "", false, false, nil)
		}
		return getDoc(id, cur.Rev, true, cur.Deleted, cur.Body)
	case http.MethodPut, http.MethodDelete:
		var doc map[string]any
		rev := r.URL.Query().Get("rev")
		if r.Method == http.MethodPut {
			if err := json.Unmarshal(body, &doc); err != nil || doc == nil {
				return http.StatusBadRequest, errBody("bad_request", "Document must be a JSON object")
			}
			if v, ok := doc["_rev"].(string); ok {
				rev = v
			}
			delete(doc, "_rev")
			delete(doc, "_id")
		}
		if cur != nil && !cur.Deleted && rev != cur.Rev {
			return http.StatusConflict, errBody("conflict", "Document update conflict.")
		}
		if r.Method == http.MethodDelete && (cur == nil || cur.Deleted) {
			return http.StatusNotFound, errBody("not_found", "missing")
		}
		gen, parent := 1, ""
		if cur != nil {
			gen, parent = revGen(cur.Rev)+1, cur.Rev
		}
		deleted := r.Method == http.MethodDelete
		if doc == nil {
			doc = map[string]any{}
		}
		rec := &docRec{Rev: revision(gen, parent, deleted, doc), Deleted: deleted, Body: doc}
		rng := rangeOf(m, id)
		live := n.net.liveCopies(n, m, rng)
		if len(live) == 0 {
			return http.StatusInternalServerError, errBody("error", "all_workers_died")
		}
		for _, c := range live {
			c.seq++
			d := *rec
			d.Seq = c.seq
			c.docs[id] = &d
		}
		n.net.seq++
		n.net.scheduleSync(db, n.net.opts.SyncDelay)
		w := len(m.ByRange[rng])/2 + 1
		if v, err := strconv.Atoi(r.URL.Query().Get("w")); err == nil && v > 0 {
			w = v
		}
		code := http.StatusCreated
		if len(live) < w {
			code = http.StatusAccepted
		}
		if deleted {
			code = http.StatusOK
			if len(live) < w {
				code = http.StatusAccepted
			}
		}
		return code, obj{"ok": true, "id": id, "rev": rec.Rev}
	}
	return http.StatusMethodNotAllowed, errBody("method_not_allowed", "Only DELETE,GET,HEAD,POST,PUT,COPY allowed")
}

// getDoc answers a document GET the way couch_httpd_db does: 404 missing or deleted, else the body
// with _id and _rev.
func getDoc(id, rev string, exists, deleted bool, body map[string]any) (int, any) {
	if !exists {
		return http.StatusNotFound, errBody("not_found", "missing")
	}
	if deleted {
		return http.StatusNotFound, errBody("not_found", "deleted")
	}
	out := obj{"_id": id, "_rev": rev}
	for k, v := range body {
		out[k] = v
	}
	return http.StatusOK, out
}
