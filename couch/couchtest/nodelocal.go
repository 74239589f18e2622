package couchtest

import (
	"encoding/json"
	"net/http"
	"sort"
	"strconv"
	"strings"

	"github.com/couchdb-controller/couchdb-controller/couch"
)

// nodeRoute serves /_node/{node}/..., the node-local API (what port 5986 was in 2.x), proxied to
// the named node when it is another one.
func (n *Node) nodeRoute(r *http.Request, seg []string, body []byte) (int, any) {
	if len(seg) == 0 {
		return http.StatusBadRequest, errBody("bad_request", "Incomplete path to _node request")
	}
	target := n
	if seg[0] != "_local" {
		target = n.net.nodes[seg[0]]
		if target == nil {
			return http.StatusNotFound, errBody("not_found", "no such node: "+seg[0])
		}
		if !n.net.connected(n, target) {
			return http.StatusPreconditionFailed, errBody("nodedown", seg[0]+" is down")
		}
	}
	rest := seg[1:]
	if len(rest) == 0 {
		if seg[0] == "_local" {
			return http.StatusOK, obj{"name": n.name}
		}
		return http.StatusOK, obj{"couchdb": "Welcome", "version": "3.4.3"}
	}
	switch rest[0] {
	case "_config":
		return target.configRoute(r, rest[1:], body)
	case "_system":
		return http.StatusOK, target.system()
	case "_prometheus":
		return http.StatusOK, prometheusTextOf(target.prometheus())
	case "_all_dbs":
		dbs := []string{"_dbs", "_nodes", "_users"} // every node has a node-local _users too
		for name := range target.copies {
			dbs = append(dbs, name)
		}
		sort.Strings(dbs)
		return http.StatusOK, dbs
	case "_nodes":
		return target.nodesRoute(r, rest[1:], body)
	case "_dbs":
		return target.dbsRoute(r, rest[1:], body)
	}
	// A shard copy is named with its slashes %2F-encoded, so it is one segment; with literal slashes
	// it is not found, as in CouchDB.
	if strings.HasPrefix(rest[0], "shards/") {
		c, ok := target.copies[rest[0]]
		if !ok {
			return http.StatusNotFound, errBody("not_found", "no_db_file")
		}
		switch {
		case len(rest) == 1:
			return http.StatusOK, c.info(rest[0])
		case len(rest) == 2 && rest[1] == "_local_docs":
			return http.StatusOK, c.localDocs(r.URL.Query().Get("include_docs") == "true")
		case len(rest) == 2 && rest[1] == "_changes":
			return http.StatusOK, c.changes(r)
		}
	}
	return http.StatusNotFound, errBody("not_found", "no_db_file")
}

// info is a shard copy's node-local db info. sizes.external is the encoded size of the live bodies,
// as in CouchDB; file and active depend on couch_file's on-disk layout and are only plausible.
func (c *shardCopy) info(name string) obj {
	docs, del := c.counts()
	return obj{"db_name": name, "engine": "couch_bt_engine", "doc_count": docs, "doc_del_count": del, "update_seq": c.seq,
		"purge_seq": 0, "compact_running": false, "sizes": c.sizes(), "instance_start_time": strconv.FormatInt(c.created.UnixMicro(), 10),
		"disk_format_version": 8, "committed_update_seq": c.seq, "compacted_seq": 0, "props": obj{}, "uuid": c.uuid}
}

// sizes makes up file and active sizes that grow with the data the way a couch_bt_engine file does:
// an 8348-byte empty file, appended to by every update (fill.go has the numbers).
func (c *shardCopy) sizes() obj {
	ext := c.external()
	return obj{"active": ext + 140*len(c.docs), "external": ext, "file": emptyFileBytes + c.fileBytes}
}

// localDocs lists the copy's _local docs (mem3's checkpoints); CouchDB reports no totals for them.
func (c *shardCopy) localDocs(includeDocs bool) obj {
	ids := make([]string, 0, len(c.local))
	for id := range c.local {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	rows := []obj{}
	for _, id := range ids {
		d := c.local[id]
		row := obj{"id": id, "key": id, "value": obj{"rev": d["_rev"]}}
		if includeDocs {
			row["doc"] = d
		}
		rows = append(rows, row)
	}
	return obj{"total_rows": nil, "offset": nil, "rows": rows}
}

func (n *Node) configRoute(r *http.Request, seg []string, body []byte) (int, any) {
	switch len(seg) {
	case 0:
		all := map[string]map[string]string{"admins": n.adminsConfig()}
		for k, v := range n.config {
			all[k] = v
		}
		return http.StatusOK, all
	case 1:
		if seg[0] == "admins" {
			return http.StatusOK, n.adminsConfig()
		}
		sec := n.config[seg[0]]
		if sec == nil {
			sec = map[string]string{}
		}
		return http.StatusOK, sec
	}
	section, key := seg[0], seg[1]
	if section == "admins" {
		return n.adminConfig(r, key, body)
	}
	old, has := n.config[section][key]
	switch r.Method {
	case http.MethodGet:
		if !has {
			return http.StatusNotFound, errBody("not_found", "unknown_config_value")
		}
		return http.StatusOK, old
	case http.MethodPut:
		var raw any
		if err := json.Unmarshal(body, &raw); err != nil {
			return http.StatusBadRequest, errBody("bad_request", "invalid UTF-8 JSON")
		}
		v, ok := raw.(string)
		if !ok {
			return http.StatusBadRequest, errBody("bad_request", "a JSON string expected")
		}
		if n.config[section] == nil {
			n.config[section] = map[string]string{}
		}
		n.config[section][key] = v
		return http.StatusOK, old
	case http.MethodDelete:
		if !has {
			return http.StatusNotFound, errBody("not_found", "unknown_config_value")
		}
		delete(n.config[section], key)
		return http.StatusOK, old
	}
	return http.StatusMethodNotAllowed, errBody("method_not_allowed", "Only GET,PUT,DELETE allowed")
}

func (n *Node) nodesRoute(r *http.Request, seg []string, body []byte) (int, any) {
	if len(seg) == 0 {
		return http.StatusOK, obj{"db_name": "_nodes", "doc_count": len(n.members())}
	}
	id := seg[0]
	if id == "_all_docs" {
		rows := []obj{}
		for _, m := range n.members() {
			rows = append(rows, obj{"id": m, "key": m, "value": obj{"rev": n.nodesDB[m].Rev}})
		}
		return http.StatusOK, obj{"total_rows": len(rows), "offset": 0, "rows": rows}
	}
	cur := n.nodesDB[id]
	switch r.Method {
	case http.MethodGet:
		if cur == nil {
			return getDoc(id, "", false, false, nil)
		}
		return getDoc(id, cur.Rev, true, cur.Deleted, cur.Body)
	case http.MethodPut:
		if strings.HasPrefix(id, "_") && !strings.HasPrefix(id, "_design/") && !strings.HasPrefix(id, "_local/") {
			return http.StatusBadRequest, errBody("illegal_docid", "Only reserved document ids may start with underscore.")
		}
		var doc map[string]any
		if err := json.Unmarshal(body, &doc); err != nil || doc == nil {
			return http.StatusBadRequest, errBody("bad_request", "Document must be a JSON object")
		}
		rev, _ := doc["_rev"].(string)
		if q := r.URL.Query().Get("rev"); q != "" {
			rev = q
		}
		delete(doc, "_rev")
		delete(doc, "_id")
		if cur != nil && !cur.Deleted && rev != cur.Rev {
			return http.StatusConflict, errBody("conflict", "Document update conflict.")
		}
		d := n.putNodeDoc(id, doc)
		n.net.propagate()
		return http.StatusCreated, obj{"ok": true, "id": id, "rev": d.Rev}
	case http.MethodDelete:
		if cur == nil {
			return http.StatusNotFound, errBody("not_found", "missing")
		}
		if cur.Deleted {
			return http.StatusNotFound, errBody("not_found", "deleted")
		}
		if r.URL.Query().Get("rev") != cur.Rev {
			return http.StatusConflict, errBody("conflict", "Document update conflict.")
		}
		d := &rawDoc{Rev: revision(revGen(cur.Rev)+1, cur.Rev, true, obj{}), Deleted: true, Body: map[string]any{}}
		n.nodesDB[id] = d
		n.net.propagate()
		return http.StatusOK, obj{"ok": true, "id": id, "rev": d.Rev}
	}
	return http.StatusMethodNotAllowed, errBody("method_not_allowed", "Only GET,HEAD,PUT,DELETE allowed")
}

func (n *Node) dbsRoute(r *http.Request, seg []string, body []byte) (int, any) {
	if len(seg) == 0 {
		return http.StatusOK, obj{"db_name": "_dbs", "doc_count": len(n.clusteredDBs())}
	}
	id := seg[0]
	switch id {
	case "_all_docs":
		return http.StatusOK, n.dbsAllDocs()
	case "_changes":
		q := r.URL.Query()
		since := 0
		if v := q.Get("since"); v != "" && v != "now" {
			s, err := strconv.Atoi(v)
			if err != nil || s < 0 {
				return http.StatusBadRequest, errBody("bad_request", "invalid_json")
			}
			since = s
		} else if v == "now" {
			since = n.dbsSeq
		}
		return http.StatusOK, n.dbsChanges(since, q.Get("include_docs") == "true")
	}
	cur := n.dbsDB[id]
	switch r.Method {
	case http.MethodGet:
		if cur == nil {
			return http.StatusNotFound, errBody("not_found", "missing")
		}
		if cur.Deleted {
			return http.StatusNotFound, errBody("not_found", "deleted")
		}
		out := mapBody(cur.Map)
		out["_id"], out["_rev"] = id, cur.Rev
		return http.StatusOK, out
	case http.MethodPut:
		var m couch.ShardMap
		if err := json.Unmarshal(body, &m); err != nil {
			return http.StatusBadRequest, errBody("bad_request", "invalid UTF-8 JSON")
		}
		if r.URL.Query().Get("new_edits") == "false" {
			return n.putReplicatedMap(id, m, body, cur)
		}
		if cur != nil && !cur.Deleted && m.Rev != cur.Rev {
			return http.StatusConflict, errBody("conflict", "Document update conflict.")
		}
		if err := validateMap(body); err != "" {
			return http.StatusForbidden, errBody("forbidden", err)
		}
		gen, parent := 1, ""
		if cur != nil {
			gen, parent = revGen(cur.Rev)+1, cur.Rev
		}
		m.ID = id
		m.Rev = ""
		if !strings.Contains(string(body), `"props"`) {
			m.Props = nil // kept absent, as CouchDB stores the body it was given
		}
		d := &mapDoc{Rev: revision(gen, parent, false, mapBody(m)), Map: m}
		n.putMapDoc(id, d)
		n.net.propagateAfter(n.net.opts.DBsPushDelay)
		// mem3 on this node sees the new map at once, creating any copy it now holds.
		n.ensureCopies()
		return http.StatusCreated, obj{"ok": true, "id": id, "rev": d.Rev}
	}
	return http.StatusMethodNotAllowed, errBody("method_not_allowed", "Only GET,HEAD,PUT,DELETE allowed")
}

// putReplicatedMap is PUT /_node/_local/_dbs/{id}?new_edits=false: the revision given is stored as
// it is, as mem3's push of _dbs stores it, and wins over the node's own when it is newer (one leaf
// per document here: the emulator keeps no conflicts).
func (n *Node) putReplicatedMap(id string, m couch.ShardMap, body []byte, cur *mapDoc) (int, any) {
	if m.Rev == "" {
		return http.StatusBadRequest, errBody("bad_request", "Document rev is missing")
	}
	if err := validateMap(body); err != "" {
		return http.StatusForbidden, errBody("forbidden", err)
	}
	rev := m.Rev
	m.ID, m.Rev = id, ""
	if !strings.Contains(string(body), `"props"`) {
		m.Props = nil
	}
	if cur == nil || newer(rev, cur.Rev) {
		n.putMapDoc(id, &mapDoc{Rev: rev, Map: m})
		n.net.propagateAfter(n.net.opts.DBsPushDelay)
		n.ensureCopies()
	}
	return http.StatusCreated, obj{"ok": true, "id": id, "rev": rev}
}

// dbsChanges is the node-local _dbs changes feed after since: one row per doc, at the sequence of
// its last change, integer sequences as node-local databases have. With include_docs a row carries the
// whole map doc, a deleted one with "_deleted": true (recorded on CouchDB 3.4.3).
func (n *Node) dbsChanges(since int, docs bool) obj {
	ids := make([]string, 0, len(n.dbsDB))
	for id, d := range n.dbsDB {
		if d.Seq > since {
			ids = append(ids, id)
		}
	}
	sort.Slice(ids, func(i, j int) bool { return n.dbsDB[ids[i]].Seq < n.dbsDB[ids[j]].Seq })
	rows := []obj{}
	for _, id := range ids {
		d := n.dbsDB[id]
		row := obj{"seq": d.Seq, "id": id, "changes": []obj{{"rev": d.Rev}}}
		if d.Deleted {
			row["deleted"] = true
		}
		if docs {
			body := mapBody(d.Map)
			body["_id"], body["_rev"] = id, d.Rev
			if d.Deleted {
				body["_deleted"] = true
			}
			row["doc"] = body
		}
		rows = append(rows, row)
	}
	return obj{"results": rows, "last_seq": n.dbsSeq}
}

// validateMap applies mem3_bdu's checks to the raw body: by_node and by_range are objects that agree.
func validateMap(body []byte) string {
	var raw map[string]json.RawMessage
	_ = json.Unmarshal(body, &raw)
	for _, k := range []string{"by_node", "by_range"} {
		v, ok := raw[k]
		if !ok {
			return k + " is mandatory"
		}
		var o map[string][]string
		if json.Unmarshal(v, &o) != nil || o == nil {
			return k + " not an object"
		}
	}
	var m couch.ShardMap
	_ = json.Unmarshal(body, &m)
	for node, ranges := range m.ByNode {
		for _, rg := range ranges {
			if !contains(m.ByRange[rg], node) {
				return "by_range for " + rg + " missing " + node
			}
		}
	}
	for rg, nodes := range m.ByRange {
		for _, node := range nodes {
			if !contains(m.ByNode[node], rg) {
				return "by_node for " + node + " missing " + rg
			}
		}
	}
	return ""
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

func (n *Node) adminsConfig() map[string]string {
	out := map[string]string{}
	for u, h := range n.admins {
		out[u] = h.String(n.net)
	}
	return out
}

// adminConfig serves _config/admins/{user}: a PUT keeps a "-pbkdf2" value as it is and hashes any
// other with a fresh salt, and answers the old hash.
func (n *Node) adminConfig(r *http.Request, user string, body []byte) (int, any) {
	cur := n.admins[user]
	switch r.Method {
	case http.MethodGet:
		if cur == nil {
			return http.StatusNotFound, errBody("not_found", "unknown_config_value")
		}
		return http.StatusOK, cur.String(n.net)
	case http.MethodPut:
		var v string
		if err := json.Unmarshal(body, &v); err != nil {
			return http.StatusBadRequest, errBody("bad_request", "invalid UTF-8 JSON")
		}
		if old := n.setAdmin(user, v); old != nil {
			return http.StatusOK, old.String(n.net)
		}
		return http.StatusOK, ""
	case http.MethodDelete:
		if cur == nil {
			return http.StatusNotFound, errBody("not_found", "unknown_config_value")
		}
		delete(n.admins, user)
		return http.StatusOK, cur.String(n.net)
	}
	return http.StatusMethodNotAllowed, errBody("method_not_allowed", "Only GET,PUT,DELETE allowed")
}
