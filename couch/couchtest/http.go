package couchtest

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// Handler serves the node's clustered HTTP API (port 5984) with its faults applied.
func (n *Node) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(io.LimitReader(r.Body, 32<<20))
		nw := n.net
		nw.mu.Lock()
		f := n.fault
		if f.SpareUp && r.URL.Path == "/_up" {
			f = Fault{}
		}
		running := n.running
		n.countRequest(r)
		nw.mu.Unlock()
		if !running {
			hijackClose(w)
			return
		}
		if f.Latency > 0 {
			select {
			case <-time.After(f.Latency):
			case <-r.Context().Done():
				return
			}
		}
		if f.Hang {
			n.hang(r)
			if r.Context().Err() != nil {
				return // the client gave up
			}
			// Cleared, like a paused VM resumed: the request is answered now, with the fault set now.
			// A node stopped meanwhile drops the connection.
			nw.mu.Lock()
			f, running = n.fault, n.running
			nw.mu.Unlock()
			if !running || f.Hang {
				hijackClose(w)
				return
			}
		}
		w.Header().Set("X-Couch-Request-ID", randomHex(5))
		w.Header().Set("Server", "CouchDB/3.4.3 (Erlang OTP/25)")
		switch {
		case f.Drop:
			hijackClose(w)
			return
		case f.Status != 0:
			writeJSON(w, f.Status, errBody("unknown_error", "injected fault"))
			return
		case f.NonJSON:
			w.Header().Set("Content-Type", "text/html")
			w.WriteHeader(http.StatusOK)
			_, _ = io.WriteString(w, "<html><body>502 Bad Gateway</body></html>")
			return
		case f.Truncate:
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusOK)
			_, _ = io.WriteString(w, `{"all_nodes":["couchdb@`)
			return
		}
		n.prederive(r, body)
		nw.mu.Lock()
		code, resp := n.serve(r, body)
		nw.mu.Unlock()
		if code == 0 {
			hijackClose(w)
			return
		}
		if h, ok := resp.(withHeaders); ok {
			for k, v := range h.header {
				w.Header().Set(k, v)
			}
			resp = h.body
		}
		if t, ok := resp.(prometheusText); ok {
			w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
			w.WriteHeader(code)
			_, _ = io.WriteString(w, string(t))
			return
		}
		writeJSON(w, code, resp)
	})
}

// hang holds the request until the client gives up, the fault is cleared or the node stops.
func (n *Node) hang(r *http.Request) {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case <-t.C:
			n.net.mu.Lock()
			h := n.fault.Hang && n.running
			n.net.mu.Unlock()
			if !h {
				return
			}
		}
	}
}

func (n *Node) countRequest(r *http.Request) {
	if n.requests.ByMethod == nil {
		n.requests.ByMethod = map[string]int{}
		n.requests.ByPath = map[string]int{}
	}
	n.requests.ByMethod[r.Method]++
	n.stats.requests++ // chttpd logs every request at notice level
	n.requests.ByPath[r.Method+" "+r.URL.EscapedPath()]++
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		n.requests.Writes++
	}
}

func hijackClose(w http.ResponseWriter) {
	if hj, ok := w.(http.Hijacker); ok {
		if c, _, err := hj.Hijack(); err == nil {
			_ = c.Close()
			return
		}
	}
	// An in-process handler cannot drop a connection; a 502 is the nearest thing.
	w.WriteHeader(http.StatusBadGateway)
}

type obj = map[string]any

func errBody(e, reason string) obj { return obj{"error": e, "reason": reason} }

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "must-revalidate")
	w.WriteHeader(code)
	b, _ := json.Marshal(v)
	_, _ = w.Write(append(b, '\n'))
}

// segments splits the escaped path into unescaped segments, so that %2F inside a segment (shard names,
// db names with slashes) stays inside it.
func segments(r *http.Request) []string {
	raw := strings.Trim(r.URL.EscapedPath(), "/")
	if raw == "" {
		return nil
	}
	parts := strings.Split(raw, "/")
	for i, p := range parts {
		if u, err := url.PathUnescape(p); err == nil {
			parts[i] = u
		}
	}
	return parts
}

// serve answers one request with the network lock held. A zero code means "drop the connection".
func (n *Node) serve(r *http.Request, body []byte) (int, any) {
	seg := segments(r)
	// Anyone may call / and /_up.
	if len(seg) == 0 {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			return http.StatusMethodNotAllowed, errBody("method_not_allowed", "Only GET,HEAD allowed")
		}
		return http.StatusOK, n.welcome()
	}
	if seg[0] == "_up" && len(seg) == 1 {
		return n.up()
	}
	if seg[0] == "_session" && len(seg) == 1 {
		return n.session(r, body) // credentials come in the body or a cookie; nobody is an answer too
	}
	if code, resp, ok := n.authenticate(r); !ok {
		return code, resp
	}
	switch seg[0] {
	case "_cluster_setup":
		return n.clusterSetup(r, body)
	case "_membership":
		if r.Method != http.MethodGet {
			return http.StatusMethodNotAllowed, errBody("method_not_allowed", "Only GET allowed")
		}
		return http.StatusOK, obj{"all_nodes": n.allNodes(), "cluster_nodes": nonNilStrings(n.members())}
	case "_node":
		return n.nodeRoute(r, seg[1:], body)
	case "_all_dbs":
		return http.StatusOK, nonNilStrings(n.clusteredDBs())
	case "_dbs":
		switch {
		case len(seg) == 1:
			return http.StatusOK, n.dbsInfo()
		case seg[1] == "_all_docs":
			return http.StatusOK, n.dbsAllDocs()
		}
		return noDB()
	case "_scheduler":
		return n.scheduler(r, seg[1:])
	case "_reshard", "_uuids", "_active_tasks", "_replicate":
		return n.misc(r, seg)
	}
	return n.dbRoute(r, seg, body)
}

func (n *Node) welcome() obj {
	return obj{
		"couchdb": "Welcome", "version": "3.4.3", "git_sha": "ecbb0b6", "uuid": n.config["couchdb"]["uuid"],
		"features": []string{"quickjs", "access-ready", "partitioned", "pluggable-storage-engines", "reshard", "scheduler"},
		"vendor":   obj{"name": "The Apache Software Foundation"},
	}
}

func (n *Node) up() (int, any) {
	switch n.config["couchdb"]["maintenance_mode"] {
	case "true":
		return http.StatusNotFound, obj{"status": "maintenance_mode"}
	case "nolb":
		return http.StatusNotFound, obj{"status": "nolb"}
	}
	n.trySeed()
	seeds := obj{}
	for _, s := range n.cfg.Seedlist {
		if s == n.name {
			continue
		}
		if n.seeded {
			seeds[s] = obj{"timestamp": time.Now().UTC().Format(time.RFC3339), "last_replication_status": "ok",
				"pending_updates": obj{"_nodes": 0, "_dbs": 0, "_users": 0}}
		} else {
			seeds[s] = obj{}
		}
	}
	if !n.seeded {
		return http.StatusNotFound, obj{"status": "seeding", "seeds": seeds}
	}
	return http.StatusOK, obj{"status": "ok", "seeds": seeds}
}

func (n *Node) allNodes() []string {
	var out []string
	for _, o := range n.net.order {
		if n.net.connected(n, o) {
			out = append(out, o.name)
		}
	}
	return sortStrings(out)
}

func (n *Node) clusteredDBs() []string {
	var out []string
	for id, d := range n.dbsDB {
		if !d.Deleted {
			out = append(out, id)
		}
	}
	return sortStrings(out)
}

func (n *Node) dbsAllDocs() obj {
	rows := []obj{}
	for _, id := range n.clusteredDBs() {
		rows = append(rows, obj{"id": id, "key": id, "value": obj{"rev": n.dbsDB[id].Rev}})
	}
	return obj{"total_rows": len(rows), "offset": 0, "rows": rows}
}

func (n *Node) misc(r *http.Request, seg []string) (int, any) {
	switch {
	case seg[0] == "_reshard" && len(seg) == 1:
		return http.StatusOK, obj{"state": "running", "state_reason": nil, "completed": 0, "failed": 0, "running": 0, "stopped": 0, "total": 0}
	case seg[0] == "_reshard" && len(seg) == 2 && seg[1] == "state":
		return http.StatusOK, obj{"state": "running", "reason": nil}
	case seg[0] == "_reshard" && len(seg) == 2 && seg[1] == "jobs":
		return http.StatusOK, obj{"total_rows": 0, "offset": 0, "jobs": []any{}}
	}
	return http.StatusNotFound, errBody("not_found", fmt.Sprintf("%s is not modelled by couchtest", seg[0]))
}

func nonNilStrings(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}
