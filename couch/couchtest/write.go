package couchtest

import (
	"encoding/json"
	"net/http"
	"strconv"

	"github.com/couchdb-controller/couchdb-controller/couch"
)

func (n *Node) docRoute(r *http.Request, db string, m couch.ShardMap, id string, body []byte) (int, any) {
	cur := n.net.readDoc(n, m, id)
	switch r.Method {
	case http.MethodGet:
		if cur == nil {
			return getDoc(id, "", false, false, nil)
		}
		code, out := getDoc(id, cur.Rev, true, cur.Deleted, cur.Body)
		if db == "_replicator" && code == http.StatusOK {
			out = maskCredentials(out.(obj))
		}
		return code, out
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
		if r.Method == http.MethodDelete && cur == nil {
			return http.StatusNotFound, errBody("not_found", "missing")
		}
		if r.Method == http.MethodDelete && cur.Deleted {
			return http.StatusNotFound, errBody("not_found", "deleted")
		}
		if cur != nil && !cur.Deleted && rev != cur.Rev {
			return http.StatusConflict, errBody("conflict", "Document update conflict.")
		}
		deleted := r.Method == http.MethodDelete
		if doc == nil {
			doc = map[string]any{}
		}
		if db == "_replicator" && !deleted {
			if code, reason := validateReplicatorDoc(doc); code != 0 {
				return code, errBody("forbidden", reason)
			}
			user, _, _ := r.BasicAuth()
			doc["owner"] = user // couch_replicator_docs:before_doc_update records who wrote it
		}
		gen, parent := 1, ""
		if cur != nil {
			gen, parent = revGen(cur.Rev)+1, cur.Rev
		}
		rec := newDocRec(revision(gen, parent, deleted, doc), deleted, doc)
		live, ok := n.net.writeDoc(n, m, id, rec)
		if !ok {
			return http.StatusInternalServerError, errBody("error", "all_workers_died")
		}
		code := http.StatusCreated
		if deleted {
			code = http.StatusOK
		}
		if live < writeQuorum(r, m, rangeOf(m, id)) {
			code = http.StatusAccepted
		}
		return code, obj{"ok": true, "id": id, "rev": rec.Rev}
	}
	return onlyMethods("DELETE,GET,HEAD,POST,PUT,COPY")
}

// writeQuorum is w: ?w= or a majority of the range's copies.
func writeQuorum(r *http.Request, m couch.ShardMap, rng string) int {
	if v, err := strconv.Atoi(r.URL.Query().Get("w")); err == nil && v > 0 {
		return v
	}
	return len(m.ByRange[rng])/2 + 1
}

// writeDoc stores rec on every answering copy of id's range and schedules the internal replication
// that follows a write. It returns how many copies took it; a write no copy took fails.
func (nw *Network) writeDoc(coord *Node, m couch.ShardMap, id string, rec *docRec) (int, bool) {
	live := nw.liveCopies(coord, m, rangeOf(m, id))
	if len(live) == 0 {
		return 0, false
	}
	for _, c := range live {
		c.put(id, rec)
	}
	nw.seq++
	nw.scheduleSync(m.ID, nw.opts.SyncDelay, nil)
	nw.docWritten(m.ID, id, rec)
	return len(live), true
}

// bulkDocs is POST /{db}/_bulk_docs. With new_edits false (what the replicator sends) the given
// revisions are stored as they are and the answer lists only failures.
func (n *Node) bulkDocs(r *http.Request, m couch.ShardMap, body []byte) (int, any) {
	var req struct {
		Docs     []map[string]any `json:"docs"`
		NewEdits *bool            `json:"new_edits"`
	}
	if err := json.Unmarshal(body, &req); err != nil {
		return http.StatusBadRequest, errBody("bad_request", "invalid UTF-8 JSON")
	}
	if req.Docs == nil {
		return http.StatusBadRequest, errBody("bad_request", "POST body must include `docs` parameter.")
	}
	newEdits := req.NewEdits == nil || *req.NewEdits
	out := []obj{}
	code := http.StatusCreated
	for _, doc := range req.Docs {
		id, _ := doc["_id"].(string)
		if id == "" {
			id = randomHex(16)
		}
		rev, _ := doc["_rev"].(string)
		deleted, _ := doc["_deleted"].(bool)
		for _, k := range []string{"_id", "_rev", "_deleted", "_revisions"} {
			delete(doc, k)
		}
		cur := n.net.readDoc(n, m, id)
		if !newEdits {
			if cur != nil && !newer(rev, cur.Rev) {
				continue // already there: replicated edits never conflict
			}
			if live, ok := n.net.writeDoc(n, m, id, newDocRec(rev, deleted, doc)); !ok || live < writeQuorum(r, m, rangeOf(m, id)) {
				code = http.StatusAccepted
			}
			continue
		}
		if cur != nil && !cur.Deleted && rev != cur.Rev {
			out = append(out, obj{"id": id, "error": "conflict", "reason": "Document update conflict."})
			continue
		}
		gen, parent := 1, ""
		if cur != nil {
			gen, parent = revGen(cur.Rev)+1, cur.Rev
		}
		rec := newDocRec(revision(gen, parent, deleted, doc), deleted, doc)
		live, ok := n.net.writeDoc(n, m, id, rec)
		if !ok {
			out = append(out, obj{"id": id, "error": "unknown_error", "reason": "all_workers_died"})
			continue
		}
		if live < writeQuorum(r, m, rangeOf(m, id)) {
			code = http.StatusAccepted
		}
		out = append(out, obj{"ok": true, "id": id, "rev": rec.Rev})
	}
	return code, out
}

// revsDiff is POST /{db}/_revs_diff: which of the given revisions the database lacks.
func (n *Node) revsDiff(m couch.ShardMap, body []byte) (int, any) {
	var req map[string][]string
	if err := json.Unmarshal(body, &req); err != nil {
		return http.StatusBadRequest, errBody("bad_request", "invalid UTF-8 JSON")
	}
	out := obj{}
	for id, revs := range req {
		cur := n.net.readDoc(n, m, id)
		var missing []string
		for _, rev := range revs {
			if cur == nil || cur.Rev != rev && !newer(cur.Rev, rev) {
				missing = append(missing, rev)
			}
		}
		if len(missing) > 0 {
			out[id] = obj{"missing": missing}
		}
	}
	return http.StatusOK, out
}

// localDoc serves /{db}/_local/{id}: replication checkpoints, kept by the coordinator (CouchDB keeps
// them in one shard copy; where does not matter to clients).
func (n *Node) localDoc(r *http.Request, db, id string, body []byte) (int, any) {
	key := db + "/" + id
	cur, ok := n.net.localDocs[key]
	switch r.Method {
	case http.MethodGet:
		if !ok {
			return http.StatusNotFound, errBody("not_found", "missing")
		}
		return http.StatusOK, cur
	case http.MethodPut:
		var doc obj
		if err := json.Unmarshal(body, &doc); err != nil || doc == nil {
			return http.StatusBadRequest, errBody("bad_request", "Document must be a JSON object")
		}
		gen := 1
		if ok {
			gen = revGen(cur["_rev"].(string)) + 1
		}
		rev := "0-" + strconv.Itoa(gen)
		doc["_id"], doc["_rev"] = id, rev
		n.net.localDocs[key] = doc
		return http.StatusCreated, obj{"ok": true, "id": id, "rev": rev}
	case http.MethodDelete:
		delete(n.net.localDocs, key)
		return http.StatusOK, obj{"ok": true, "id": id, "rev": "0-0"}
	}
	return onlyMethods("GET,PUT,DELETE")
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

func jsonSize(v any) int {
	b, _ := json.Marshal(v)
	return len(b)
}
