package couchtest

import (
	"encoding/json"
	"mime"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
)

var defaultSystemDBs = []string{"_users", "_replicator"}

// setupState computes GET /_cluster_setup the way setup_httpd does, in its order.
func (n *Node) setupState(ensure []string) string {
	if len(ensure) == 0 {
		ensure = defaultSystemDBs
	}
	dbsExist := true
	for _, db := range ensure {
		if d, ok := n.dbsDB[db]; !ok || d.Deleted {
			dbsExist = false
		}
	}
	if n.config["couchdb"]["single_node"] == "true" {
		return "single_node_enabled"
	}
	if n.config["cluster"]["n"] == "1" {
		if len(n.admins) > 0 && dbsExist {
			return "single_node_enabled"
		}
		return "single_node_disabled"
	}
	if n.config["chttpd"]["bind_address"] == "127.0.0.1" || len(n.admins) == 0 {
		return "cluster_disabled"
	}
	if dbsExist {
		return "cluster_finished"
	}
	return "cluster_enabled"
}

func (n *Node) clusterEnabled() bool {
	return n.config["chttpd"]["bind_address"] != "127.0.0.1" && len(n.admins) > 0
}

func (n *Node) clusterSetup(r *http.Request, body []byte) (int, any) {
	switch r.Method {
	case http.MethodGet:
		var ensure []string
		if v := r.URL.Query().Get("ensure_dbs_exist"); v != "" {
			if err := json.Unmarshal([]byte(v), &ensure); err != nil {
				return http.StatusBadRequest, errBody("bad_request", "invalid UTF-8 JSON")
			}
		}
		return http.StatusOK, obj{"state": n.setupState(ensure)}
	case http.MethodPost:
	default:
		return http.StatusMethodNotAllowed, errBody("method_not_allowed", "Only GET,POST allowed")
	}
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt != "application/json" {
		return http.StatusUnsupportedMediaType, errBody("bad_content_type", "Content-Type must be application/json")
	}
	var req map[string]any
	if err := json.Unmarshal(body, &req); err != nil {
		return http.StatusBadRequest, errBody("bad_request", "invalid UTF-8 JSON")
	}
	if req == nil {
		return http.StatusBadRequest, errBody("bad_request", "Request body must be a JSON object")
	}
	action, _ := req["action"].(string)
	switch action {
	case "enable_cluster":
		return n.enableCluster(req)
	case "enable_single_node":
		return n.enableSingleNode(req)
	case "add_node":
		return n.addNode(r, req)
	case "finish_cluster":
		return n.finishCluster(req)
	case "receive_cookie":
		if c, ok := req["cookie"].(string); ok {
			n.cfg.Cookie = c
			n.net.propagate()
			return http.StatusCreated, obj{"ok": true}
		}
		return http.StatusInternalServerError, obj{"error": "unknown_error", "reason": "function_clause", "ref": 1}
	case "remove_node":
		return http.StatusCreated, obj{"ok": true} // accepted and ignored, as in CouchDB
	}
	return http.StatusBadRequest, errBody("bad_request", "Invalid Action'")
}

func str(m map[string]any, k string) (string, bool) {
	v, ok := m[k].(string)
	return v, ok
}

func num(m map[string]any, k string) (int, bool) {
	switch v := m[k].(type) {
	case float64:
		return int(v), true
	case string:
		i, err := strconv.Atoi(v)
		return i, err == nil
	}
	return 0, false
}

func (n *Node) enableCluster(req map[string]any) (int, any) {
	if remote, ok := str(req, "remote_node"); ok {
		// The remote's answer is thrown away: CouchDB reports 201 whatever happened there.
		port, ok := num(req, "port")
		if !ok {
			port = 5984
		}
		if target := n.net.nodeByAddr(remote, port); target != nil {
			user, _ := str(req, "remote_current_user")
			pass, _ := str(req, "remote_current_password")
			if code, _ := target.login(n.peerHost(), user, pass, false); code == 0 && !target.clusterEnabled() {
				fwd := map[string]any{}
				for k, v := range req {
					if !strings.HasPrefix(k, "remote_") && k != "port" {
						fwd[k] = v
					}
				}
				if h := n.admins[str0(req, "username")]; h != nil && fwd["password"] == nil {
					fwd["password"] = h.String(n.net) // a stored hash, which the remote keeps as it is
					if h.plain != "" {
						fwd["password"] = h.plain
					}
				}
				target.enableCluster(fwd)
			}
		}
		return http.StatusCreated, obj{"ok": true}
	}
	if n.clusterEnabled() || n.config["cluster"]["n"] == "1" && n.setupState(nil) == "single_node_enabled" {
		return http.StatusBadRequest, errBody("bad_request", "Cluster is already enabled")
	}
	user, hasUser := str(req, "username")
	pass, hasPass := str(req, "password")
	if len(n.admins) == 0 && !(hasUser && hasPass) {
		return http.StatusInternalServerError, errBody("error", "Cluster setup requires admin account to be configured")
	}
	bind, hasBind := str(req, "bind_address")
	if !hasBind && n.config["chttpd"]["bind_address"] == "127.0.0.1" || bind == "127.0.0.1" || bind == "::1" {
		return http.StatusInternalServerError, errBody("error", "Cluster setup requires a remote bind_address (not 127.0.0.1 nor ::1)")
	}
	if hasBind && parseIP(bind) == nil {
		return http.StatusInternalServerError, errBody("error", "ok") // io:format returns ok: a CouchDB bug, recorded
	}
	count, ok := num(req, "node_count")
	if !ok {
		return http.StatusInternalServerError, errBody("error", "Cluster setup requires node_count to be configured")
	}
	if hasUser {
		if !hasPass {
			return http.StatusInternalServerError, obj{"error": "unknown_error", "reason": "badarg", "ref": 1}
		}
		n.setAdmin(user, pass)
	}
	if hasBind {
		n.config["chttpd"]["bind_address"] = bind
	}
	if p, ok := num(req, "port"); ok {
		n.config["chttpd"]["port"] = strconv.Itoa(p)
	}
	n.config["cluster"]["n"] = strconv.Itoa(min(count, 3))
	return http.StatusCreated, obj{"ok": true}
}

func str0(m map[string]any, k string) string { v, _ := str(m, k); return v }

// parseIP accepts what inet:parse_address accepts for the cases that matter, including "127.1".
func parseIP(s string) net.IP {
	if ip := net.ParseIP(s); ip != nil {
		return ip
	}
	parts := strings.Split(s, ".")
	if len(parts) == 2 {
		a, err1 := strconv.Atoi(parts[0])
		b, err2 := strconv.Atoi(parts[1])
		if err1 == nil && err2 == nil && a < 256 && b < 1<<24 {
			return net.IPv4(byte(a), byte(b>>16), byte(b>>8), byte(b))
		}
	}
	return nil
}

func (n *Node) enableSingleNode(req map[string]any) (int, any) {
	bind, ok := str(req, "bind_address")
	if !ok {
		return http.StatusInternalServerError, obj{"error": "unknown_error", "reason": "badarg", "ref": 1}
	}
	if parseIP(bind) == nil {
		return http.StatusInternalServerError, obj{"error": "unknown_error", "reason": "ok", "ref": 1}
	}
	if user, ok := str(req, "username"); ok {
		n.setAdmin(user, str0(req, "password"))
	}
	n.config["chttpd"]["bind_address"] = bind
	n.config["cluster"]["n"] = "1"
	if p, ok := num(req, "port"); ok {
		n.config["chttpd"]["port"] = strconv.Itoa(p)
	}
	for _, db := range ensureList(req) {
		if _, ok := n.dbsDB[db]; !ok {
			if err := n.net.createDB(n, db, 1, 1, false); err != nil {
				return http.StatusInternalServerError, obj{"error": "unknown_error", "reason": err.Error(), "ref": refNumber()}
			}
		}
	}
	return http.StatusCreated, obj{"ok": true}
}

func ensureList(req map[string]any) []string {
	raw, ok := req["ensure_dbs_exist"].([]any)
	if !ok {
		return defaultSystemDBs
	}
	var out []string
	for _, v := range raw {
		if s, ok := v.(string); ok {
			out = append(out, s)
		}
	}
	return out
}

// addNode follows setup:add_node_int: push the cookie to the remote with the given credentials and
// write <name>@<host> into _nodes only when the remote answered 201. Any other remote answer still
// yields 201 here, and nothing is added: callers must check /_membership.
func (n *Node) addNode(r *http.Request, req map[string]any) (int, any) {
	if !n.clusterEnabled() {
		return http.StatusBadRequest, errBody("bad_request", "Cluster is not enabled.")
	}
	host, _ := str(req, "host")
	port, ok := num(req, "port")
	if !ok {
		port = 5984
	}
	target := n.net.nodeByAddr(host, port)
	if target == nil {
		return http.StatusBadRequest, errBody("bad_request", "Add node failed. Invalid Host and/or Port.")
	}
	user, _ := str(req, "username")
	pass, hasPass := str(req, "password")
	if !hasPass {
		return http.StatusInternalServerError, obj{"error": "unknown_error", "reason": "function_clause", "ref": 1}
	}
	// setup:add_node_int asks the remote over HTTP, from this node: the remote counts a failed login
	// (or refuses a locked one) like any other, and whatever it answers, the reply here is 201.
	if code, _ := target.login(n.peerHost(), user, pass, false); code != 0 {
		return http.StatusCreated, obj{"ok": true}
	}
	target.cfg.Cookie = n.cfg.Cookie // receive_cookie
	name, ok := str(req, "name")
	if !ok {
		name, _, _ = strings.Cut(target.name, "@")
	}
	id := name + "@" + host
	if n.isMember(id) {
		return http.StatusConflict, errBody("conflict", "Document update conflict.")
	}
	n.putNodeDoc(id, nil)
	n.net.propagate()
	return http.StatusCreated, obj{"ok": true}
}

func hostOf(r *http.Request) string {
	h, _, _ := net.SplitHostPort(r.RemoteAddr)
	return h
}

func (n *Node) finishCluster(req map[string]any) (int, any) {
	if !n.clusterEnabled() && n.setupState(nil) != "single_node_enabled" {
		return http.StatusBadRequest, errBody("bad_request", "Cluster is not enabled.")
	}
	// Every member must answer a ping (CouchDB waits 5 s for it, then gives up).
	for _, m := range n.members() {
		other := n.net.nodes[m]
		if m != n.name && (other == nil || !n.net.connected(n, other)) {
			return http.StatusInternalServerError, errBody("setup_error", "Cluster setup timed out waiting for nodes to connect")
		}
	}
	// Admins, uuid and secret are copied to every member on every call, in that order (setup.erl
	// sync_admins, sync_uuid, sync_auth_secret, each a config:set on the other nodes). config:set of
	// an undefined secret fails there, and every failed copy gives the same answer: admins and uuid
	// are copied, the system databases are not created (recorded, couchdb-real-harness.md section 1).
	secret, hasSecret := n.config["chttpd_auth"]["secret"]
	others := 0
	for _, m := range n.members() {
		if other := n.net.nodes[m]; other != nil && other != n {
			others++
			// sync_admins copies the stored hashes, so the members share the salt too.
			for u, h := range n.admins {
				c := *h
				other.admins[u] = &c
			}
			other.config["couchdb"]["uuid"] = n.config["couchdb"]["uuid"]
			if hasSecret {
				other.config["chttpd_auth"]["secret"] = secret
			}
		}
	}
	if others > 0 && !hasSecret {
		return http.StatusInternalServerError, errBody("setup_error", "Cluster setup unable to sync admin passwords")
	}
	ensure := ensureList(req)
	missing := slices.DeleteFunc(slices.Clone(ensure), func(db string) bool {
		d, ok := n.dbsDB[db]
		return ok && !d.Deleted
	})
	if len(missing) == 0 {
		return http.StatusBadRequest, errBody("bad_request", "Cluster is already finished")
	}
	q, _ := strconv.Atoi(n.config["cluster"]["q"])
	nn, _ := strconv.Atoi(n.config["cluster"]["n"])
	for _, db := range missing {
		if err := n.net.createDB(n, db, q, nn, false); err != nil {
			return http.StatusInternalServerError, obj{"error": "unknown_error", "reason": err.Error(), "ref": refNumber()}
		}
	}
	return http.StatusCreated, obj{"ok": true}
}
