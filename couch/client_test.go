package couch

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

const secretPassword = "hunter2-do-not-leak"

func newTestClient(t *testing.T, h http.Handler) (*Client, *httptest.Server) {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	c, err := New(Options{BaseURL: srv.URL, Username: "admin", Password: secretPassword, Timeout: 300 * time.Millisecond,
		RetryWaitMin: time.Millisecond, RetryWaitMax: 2 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	return c, srv
}

func TestRequestShape(t *testing.T) {
	var got struct {
		method, path, query, ctype, accept, body string
		user, pass                               string
		ok                                       bool
	}
	c, _ := newTestClient(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		got.method, got.path, got.query, got.body = r.Method, r.URL.EscapedPath(), r.URL.RawQuery, string(b)
		got.ctype, got.accept = r.Header.Get("Content-Type"), r.Header.Get("Accept")
		got.user, got.pass, got.ok = r.BasicAuth()
		w.WriteHeader(http.StatusCreated)
		_, _ = io.WriteString(w, `{"ok":true,"id":"x","rev":"1-a"}`)
	}))
	ctx := context.Background()
	cases := []struct {
		name                string
		call                func() error
		method, path, query string
		body                string
	}{
		{"add node doc", func() error { return c.AddNodeDoc(ctx, "couchdb@db-1.db.ns.svc.cluster.local") },
			"PUT", "/_node/_local/_nodes/couchdb@db-1.db.ns.svc.cluster.local", "", `{}`},
		{"delete node doc", func() error { return c.DeleteNodeDoc(ctx, "n@h", "2-x") }, "DELETE", "/_node/_local/_nodes/n@h", "rev=2-x", ""},
		{"finish", func() error { return c.FinishCluster(ctx) }, "POST", "/_cluster_setup", "", `{"action":"finish_cluster"}`},
		{"enable", func() error {
			return c.EnableCluster(ctx, EnableClusterRequest{BindAddress: "0.0.0.0", Username: "admin", Password: "p", NodeCount: 3})
		}, "POST", "/_cluster_setup", "", `{"action":"enable_cluster","bind_address":"0.0.0.0","username":"admin","password":"p","node_count":3}`},
		{"create db", func() error { return c.CreateDB(ctx, "a/b", 2, 3) }, "PUT", "/a%2Fb", "n=3&q=2", ""},
		{"shard copy info keeps %2F", func() error {
			_, err := c.ShardCopyInfo(ctx, "n@h", "shards/00000000-7fffffff/db1.1795331777")
			return err
		},
			"GET", "/_node/n@h/shards%2F00000000-7fffffff%2Fdb1.1795331777", "", ""},
		{"maintenance", func() error { _, err := c.SetMaintenanceMode(ctx, "n@h", "true"); return err },
			"PUT", "/_node/n@h/_config/couchdb/maintenance_mode", "", `"true"`},
		{"sync shards", func() error { return c.SyncShards(ctx, "db1") }, "POST", "/db1/_sync_shards", "", `{}`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call()
			var de *DecodeError
			if err != nil && !errors.As(err, &de) {
				t.Fatal(err)
			}
			if got.method != tc.method || got.path != tc.path || got.query != tc.query {
				t.Errorf("sent %s %s?%s, want %s %s?%s", got.method, got.path, got.query, tc.method, tc.path, tc.query)
			}
			if tc.body != "" && got.body != tc.body {
				t.Errorf("body %s, want %s", got.body, tc.body)
			}
			if tc.body != "" && got.ctype != "application/json" {
				t.Errorf("content-type %q", got.ctype)
			}
			if got.accept != "application/json" || !got.ok || got.user != "admin" || got.pass != secretPassword {
				t.Errorf("accept %q auth %v %q", got.accept, got.ok, got.user)
			}
		})
	}
}

func TestRetries(t *testing.T) {
	cases := []struct {
		name      string
		codes     []int
		call      func(c *Client) error
		wantHits  int32
		wantError bool
	}{
		{"GET retried on 500 then succeeds", []int{500, 500, 200}, func(c *Client) error { _, err := c.Membership(context.Background()); return err }, 3, false},
		{"GET gives up after RetryMax", []int{503, 503, 503, 503}, func(c *Client) error { _, err := c.Membership(context.Background()); return err }, 3, true},
		{"no retry on 401", []int{401, 200}, func(c *Client) error { _, err := c.Membership(context.Background()); return err }, 1, true},
		{"no retry on 404", []int{404, 200}, func(c *Client) error { _, err := c.Membership(context.Background()); return err }, 1, true},
		{"no retry on 412 nodedown", []int{412, 200}, func(c *Client) error { _, err := c.System(context.Background(), "n@h"); return err }, 1, true},
		{"POST never retried", []int{500, 201}, func(c *Client) error { return c.FinishCluster(context.Background()) }, 1, true},
		{"PUT retried", []int{500, 201}, func(c *Client) error { return c.AddNodeDoc(context.Background(), "n@h") }, 2, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var hits atomic.Int32
			c, _ := newTestClient(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				i := int(hits.Add(1)) - 1
				code := tc.codes[min(i, len(tc.codes)-1)]
				w.WriteHeader(code)
				if code < 300 {
					_, _ = io.WriteString(w, `{"ok":true,"all_nodes":[],"cluster_nodes":[]}`)
					return
				}
				_, _ = fmt.Fprintf(w, `{"error":"e%d","reason":"r"}`, code)
			}))
			err := tc.call(c)
			if (err != nil) != tc.wantError {
				t.Errorf("err = %v", err)
			}
			if hits.Load() != tc.wantHits {
				t.Errorf("hits = %d, want %d", hits.Load(), tc.wantHits)
			}
		})
	}
}

func TestErrorMapping(t *testing.T) {
	cases := []struct {
		code  int
		body  string
		check func(error) bool
		call  func(c *Client) error
	}{
		{409, `{"error":"conflict","reason":"Document update conflict."}`, IsConflict, func(c *Client) error {
			_, err := c.PutShardMap(context.Background(), ShardMap{ID: "d", ByNode: map[string][]string{}, ByRange: map[string][]string{}})
			return err
		}},
		{404, `{"error":"not_found","reason":"missing"}`, IsNotFound, func(c *Client) error { _, err := c.GetNodeDoc(context.Background(), "n@h"); return err }},
		{401, `{"error":"unauthorized","reason":"Name or password is incorrect."}`, IsUnauthorized, func(c *Client) error { _, err := c.Membership(context.Background()); return err }},
		{403, `{"error":"forbidden","reason":"Account is temporarily locked due to multiple authentication failures"}`, IsLocked, func(c *Client) error { _, err := c.Membership(context.Background()); return err }},
		{412, `{"error":"nodedown","reason":"n@h is down"}`, IsNodeDown, func(c *Client) error { _, err := c.System(context.Background(), "n@h"); return err }},
		{400, `{"error":"bad_request","reason":"Cluster is not enabled."}`, IsBadRequest, func(c *Client) error { return c.AddNode(context.Background(), AddNodeRequest{Host: "h"}) }},
	}
	for _, tc := range cases {
		t.Run(fmt.Sprint(tc.code), func(t *testing.T) {
			c, _ := newTestClient(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				w.WriteHeader(tc.code)
				_, _ = io.WriteString(w, tc.body)
			}))
			err := tc.call(c)
			if !tc.check(err) {
				t.Errorf("error %v not classified", err)
			}
			var se *StatusError
			if !errors.As(err, &se) || se.Code != tc.code || se.Reason == "" {
				t.Errorf("StatusError %+v", se)
			}
		})
	}
}

func TestAlreadyDoneIsSuccess(t *testing.T) {
	cases := []struct {
		code int
		body string
		call func(c *Client) error
	}{
		{400, `{"error":"bad_request","reason":"Cluster is already enabled"}`, func(c *Client) error { return c.EnableCluster(context.Background(), EnableClusterRequest{}) }},
		{400, `{"error":"bad_request","reason":"Cluster is already finished"}`, func(c *Client) error { return c.FinishCluster(context.Background()) }},
		{409, `{"error":"conflict","reason":"Document update conflict."}`, func(c *Client) error { return c.AddNodeDoc(context.Background(), "n@h") }},
		{409, `{"error":"conflict","reason":"Document update conflict."}`, func(c *Client) error { return c.AddNode(context.Background(), AddNodeRequest{}) }},
		{404, `{"error":"not_found","reason":"deleted"}`, func(c *Client) error { return c.DeleteNodeDoc(context.Background(), "n@h", "1-a") }},
		{404, `{"error":"not_found","reason":"deleted"}`, func(c *Client) error { _, err := c.RemoveNodeDoc(context.Background(), "n@h"); return err }},
		{412, `{"error":"file_exists","reason":"The database could not be created, the file already exists."}`, func(c *Client) error { return c.CreateDB(context.Background(), "db", 0, 0) }},
	}
	for i, tc := range cases {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			c, _ := newTestClient(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				w.WriteHeader(tc.code)
				_, _ = io.WriteString(w, tc.body)
			}))
			if err := tc.call(c); err != nil {
				t.Errorf("%s should count as done: %v", tc.body, err)
			}
		})
	}
	// A different 400 stays an error.
	c, _ := newTestClient(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(400)
		_, _ = io.WriteString(w, `{"error":"bad_request","reason":"Cluster is not enabled."}`)
	}))
	if err := c.FinishCluster(context.Background()); !IsBadRequest(err) {
		t.Errorf("got %v", err)
	}
}

func TestMalformedBodies(t *testing.T) {
	for _, body := range []string{`<html>proxy error</html>`, `{"all_nodes":["a`, `{"state":42}`, `[]`, `{}`} {
		t.Run(body, func(t *testing.T) {
			c, _ := newTestClient(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, body) }))
			_, err1 := c.Membership(context.Background())
			_, err2 := c.SetupState(context.Background())
			for _, err := range []error{err1, err2} {
				var de *DecodeError
				if !errors.As(err, &de) {
					t.Errorf("want DecodeError, got %v", err)
				}
			}
		})
	}
}

func TestTimeoutsAndCancel(t *testing.T) {
	release := make(chan struct{})
	c, _ := newTestClient(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer close(release)
	start := time.Now()
	_, err := c.Membership(context.Background())
	if err == nil || time.Since(start) > 3*time.Second {
		t.Errorf("hanging server: err %v after %s", err, time.Since(start))
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := c.Membership(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled ctx: %v", err)
	}
}

func TestCredentialsNeverInErrors(t *testing.T) {
	if _, err := New(Options{BaseURL: "http://admin:" + secretPassword + "@h:5984"}); err == nil || strings.Contains(err.Error(), secretPassword) {
		t.Errorf("userinfo URL: %v", err)
	}
	// Transport errors embed URLs; the client's never carry credentials.
	c, err := New(Options{BaseURL: "http://127.0.0.1:1", Username: "admin", Password: secretPassword, RetryMax: -1, Timeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	errs := []error{}
	_, e := c.Membership(context.Background())
	errs = append(errs, e, c.FinishCluster(context.Background()))
	c2, _ := newTestClient(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(401)
		_, _ = io.WriteString(w, `{"error":"unauthorized","reason":"Name or password is incorrect."}`)
	}))
	errs = append(errs, c2.EnableCluster(context.Background(), EnableClusterRequest{Username: "admin", Password: secretPassword}))
	for _, e := range errs {
		if e == nil || strings.Contains(e.Error(), secretPassword) || strings.Contains(fmt.Sprintf("%+v", e), secretPassword) {
			t.Errorf("error leaks or is nil: %v", e)
		}
	}
	if s := fmt.Sprint(BasicAuth{Username: "u", Password: secretPassword}); strings.Contains(s, secretPassword) {
		t.Error("BasicAuth prints its password")
	}
}

func TestNoKubernetesOrPrometheusImports(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	for _, dep := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(dep, "k8s.io/") || strings.HasPrefix(dep, "github.com/prometheus/") || strings.Contains(dep, "klog") {
			t.Errorf("couch imports %s; it must stay free of Kubernetes, klog and Prometheus", dep)
		}
	}
}

func TestShardMapRoundTripKeepsUnknownFields(t *testing.T) {
	raw := `{"_id":"db1","_rev":"1-c2206a65a1cdbe5f4e9ca44474ddd184","shard_suffix":[46,49,55,57,53,51,51,49,55,55,55],"changelog":[["add","00000000-7fffffff","node1@127.0.0.1"],["add","00000000-7fffffff","node4@127.0.0.1"],["add","80000000-ffffffff","node2@127.0.0.1"],["add","80000000-ffffffff","node3@127.0.0.1"]],"by_node":{"node1@127.0.0.1":["00000000-7fffffff"],"node2@127.0.0.1":["80000000-ffffffff"],"node3@127.0.0.1":["80000000-ffffffff"],"node4@127.0.0.1":["00000000-7fffffff"]},"by_range":{"00000000-7fffffff":["node1@127.0.0.1","node4@127.0.0.1"],"80000000-ffffffff":["node2@127.0.0.1","node3@127.0.0.1"]},"props":{},"engine":"couch_bt_engine"}`
	var m ShardMap
	if err := json.Unmarshal([]byte(raw), &m); err != nil {
		t.Fatal(err)
	}
	if m.ShardName("00000000-7fffffff") != "shards/00000000-7fffffff/db1.1795331777" {
		t.Errorf("shard name %s", m.ShardName("00000000-7fffffff"))
	}
	if m.Extra["engine"] != "couch_bt_engine" {
		t.Errorf("extra %v", m.Extra)
	}
	out, _ := json.Marshal(m)
	if !strings.Contains(string(out), `"engine":"couch_bt_engine"`) {
		t.Errorf("engine dropped: %s", out)
	}
	// The recorded move of 00000000-7fffffff to node2: add, then remove node1.
	if !m.AddCopy("00000000-7fffffff", "node2@127.0.0.1") || m.AddCopy("00000000-7fffffff", "node2@127.0.0.1") {
		t.Error("AddCopy should add once")
	}
	if err := m.Validate(); err != nil {
		t.Error(err)
	}
	if !m.RemoveCopy("00000000-7fffffff", "node1@127.0.0.1") || m.RemoveCopy("00000000-7fffffff", "node1@127.0.0.1") {
		t.Error("RemoveCopy should remove once")
	}
	if _, ok := m.ByNode["node1@127.0.0.1"]; ok {
		t.Error("empty by_node entry must be deleted")
	}
	if err := m.Validate(); err != nil {
		t.Error(err)
	}
	last := m.Changelog[len(m.Changelog)-1]
	if last[0] != "remove" || last[2] != "node1@127.0.0.1" {
		t.Errorf("changelog %v", last)
	}
	bad := m.Clone()
	bad.ByRange["00000000-7fffffff"] = append(bad.ByRange["00000000-7fffffff"], "ghost@h")
	if bad.Validate() == nil {
		t.Error("disagreeing by_node/by_range must not validate")
	}
	if m.Validate() != nil {
		t.Error("Clone shares memory with the original")
	}
}

// newTestClientWith is newTestClient with options changed by set.
func newTestClientWith(t *testing.T, h http.Handler, set func(*Options)) *Client {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	opts := Options{BaseURL: srv.URL, Username: "admin", Password: secretPassword, Timeout: 300 * time.Millisecond,
		RetryWaitMin: time.Millisecond, RetryWaitMax: 2 * time.Millisecond}
	set(&opts)
	c, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// hold never answers: it reads the request (so the server notices the client going away) and waits
// until the client gives up or the test releases it.
func hold(_ *testing.T, _ http.ResponseWriter, r *http.Request, release <-chan struct{}) {
	_, _ = io.Copy(io.Discard, r.Body)
	select {
	case <-r.Context().Done():
	case <-release:
	}
}

// dropConn closes the connection without an answer, after the request was read.
func dropConn(t *testing.T, w http.ResponseWriter) {
	conn, _, err := w.(http.Hijacker).Hijack()
	if err != nil {
		t.Error(err)
		return
	}
	_ = conn.Close()
}

// TestNoRetryOnTransportFailure: a POST whose connection dropped or timed out may have been applied
// by CouchDB, so it is never sent again (finish_cluster, add_node and enable_cluster must not run
// twice); the idempotent methods are retried after a dropped connection, and no method after an
// attempt that ran to the timeout (a hung node would hold each sync three timeouts long).
func TestNoRetryOnTransportFailure(t *testing.T) {
	failures := map[string]func(t *testing.T, w http.ResponseWriter, r *http.Request, release <-chan struct{}){
		"dropped connection": func(t *testing.T, w http.ResponseWriter, _ *http.Request, _ <-chan struct{}) { dropConn(t, w) },
		"timeout":            hold,
	}
	calls := []struct {
		name     string
		call     func(c *Client) error
		wantHits int32
	}{
		{"POST finish_cluster", func(c *Client) error { return c.FinishCluster(context.Background()) }, 1},
		{"POST add_node", func(c *Client) error {
			return c.AddNode(context.Background(), AddNodeRequest{Host: "h", Port: 5984, Username: "admin", Password: "p"})
		}, 1},
		{"POST enable_cluster", func(c *Client) error { return c.EnableCluster(context.Background(), EnableClusterRequest{}) }, 1},
		{"POST _sync_shards", func(c *Client) error { return c.SyncShards(context.Background(), "db1") }, 1},
		{"GET is retried", func(c *Client) error { _, err := c.Membership(context.Background()); return err }, 3},
		{"PUT is retried", func(c *Client) error { return c.AddNodeDoc(context.Background(), "n@h") }, 3},
	}
	for fname, fail := range failures {
		for _, tc := range calls {
			t.Run(fname+"/"+tc.name, func(t *testing.T) {
				t.Parallel()
				var hits atomic.Int32
				release := make(chan struct{})
				c := newTestClientWith(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					hits.Add(1)
					fail(t, w, r, release)
				}), func(o *Options) { o.Timeout = 150 * time.Millisecond })
				t.Cleanup(func() { close(release) }) // before the server's Close, which waits for handlers
				if err := tc.call(c); err == nil {
					t.Error("no error")
				} else if strings.Contains(err.Error(), secretPassword) {
					t.Errorf("error leaks the password: %v", err)
				}
				want := tc.wantHits
				if fname == "timeout" {
					want = 1
				}
				if got := hits.Load(); got != want {
					t.Errorf("sent %d times, want %d", got, want)
				}
			})
		}
	}
}

// TestCancel: cancelling the context ends a request at once, whether it is waiting for an answer or
// for its next retry, and nothing is sent after that.
func TestCancel(t *testing.T) {
	cases := []struct {
		name  string
		serve func(w http.ResponseWriter, r *http.Request, release <-chan struct{})
	}{
		{"during a request", func(w http.ResponseWriter, r *http.Request, release <-chan struct{}) { hold(t, w, r, release) }},
		{"during a retry wait", func(w http.ResponseWriter, _ *http.Request, _ <-chan struct{}) {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = io.WriteString(w, `{"error":"service_unavailable","reason":"r"}`)
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var hits atomic.Int32
			arrived := make(chan struct{}, 10)
			release := make(chan struct{})
			c := newTestClientWith(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				hits.Add(1)
				arrived <- struct{}{}
				tc.serve(w, r, release)
			}), func(o *Options) {
				// Long enough that only the cancel can end the call quickly.
				o.Timeout, o.RetryWaitMin, o.RetryWaitMax = 30*time.Second, 30*time.Second, 30*time.Second
			})
			t.Cleanup(func() { close(release) })
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			done := make(chan error, 1)
			start := time.Now()
			go func() { _, err := c.Membership(ctx); done <- err }()
			<-arrived
			time.Sleep(20 * time.Millisecond) // into the wait (for the answer, or for the retry)
			cancel()
			select {
			case err := <-done:
				if !errors.Is(err, context.Canceled) {
					t.Errorf("err = %v, want context.Canceled", err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("the call did not end when its context was cancelled")
			}
			if elapsed := time.Since(start); elapsed > 5*time.Second {
				t.Errorf("took %s", elapsed)
			}
			if got := hits.Load(); got != 1 {
				t.Errorf("sent %d times, want 1", got)
			}
		})
	}
}

// TestMalformedBodiesEveryDecoder: every decoder turns a body that is not the JSON CouchDB documents
// into a *DecodeError naming the call, and never into a zero value with a nil error.
func TestMalformedBodiesEveryDecoder(t *testing.T) {
	ctx := context.Background()
	calls := []struct {
		name, method, path string
		wrongType          string // well-formed JSON of the wrong shape
		call               func(c *Client) error
	}{
		{"Welcome", "GET", "/", `{"couchdb":7}`, func(c *Client) error { _, err := c.Welcome(ctx); return err }},
		{"Up", "GET", "/_up", `{"status":["ok"]}`, func(c *Client) error { _, err := c.Up(ctx); return err }},
		{"SetupState", "GET", "/_cluster_setup", `{"state":1}`, func(c *Client) error { _, err := c.SetupState(ctx); return err }},
		{"Membership", "GET", "/_membership", `{"all_nodes":"a","cluster_nodes":[]}`, func(c *Client) error { _, err := c.Membership(ctx); return err }},
		{"GetNodeDoc", "GET", "/_node/_local/_nodes/n@h", `{"_id":["n@h"]}`, func(c *Client) error { _, err := c.GetNodeDoc(ctx, "n@h"); return err }},
		{"PutNodeDoc", "PUT", "/_node/_local/_nodes/n@h", `{"ok":"yes"}`, func(c *Client) error { _, err := c.PutNodeDoc(ctx, NodeDoc{ID: "n@h"}); return err }},
		{"System", "GET", "/_node/n@h/_system", `{"uptime":"long"}`, func(c *Client) error { _, err := c.System(ctx, "n@h"); return err }},
		{"DBInfo", "GET", "/db1", `{"doc_count":"many"}`, func(c *Client) error { _, err := c.DBInfo(ctx, "db1"); return err }},
		{"ShardCopyInfo", "GET", "/_node/n@h/shards%2F00000000-ffffffff%2Fdb1.1", `{"doc_count":[]}`, func(c *Client) error {
			_, err := c.ShardCopyInfo(ctx, "n@h", "shards/00000000-ffffffff/db1.1")
			return err
		}},
		{"Shards", "GET", "/db1/_shards", `{"shards":{"00000000-ffffffff":"n@h"}}`, func(c *Client) error { _, err := c.Shards(ctx, "db1"); return err }},
		{"GetShardMap", "GET", "/_node/_local/_dbs/db1", `{"by_range":[]}`, func(c *Client) error { _, err := c.GetShardMap(ctx, "db1"); return err }},
		{"PutShardMap", "PUT", "/_node/_local/_dbs/db1", `{"rev":1}`, func(c *Client) error {
			_, err := c.PutShardMap(ctx, ShardMap{ID: "db1", ByNode: map[string][]string{}, ByRange: map[string][]string{}})
			return err
		}},
		{"ShardMapsSince", "GET", "/_node/_local/_dbs/_changes", `{"results":{"db1":1},"last_seq":1}`, func(c *Client) error {
			_, err := c.ShardMapsSince(ctx, "4")
			return err
		}},
		{"AllDBs", "GET", "/_all_dbs", `{"dbs":[]}`, func(c *Client) error { _, err := c.AllDBs(ctx); return err }},
		{"NodeAllDBs", "GET", "/_node/n@h/_all_dbs", `"db1"`, func(c *Client) error { _, err := c.NodeAllDBs(ctx, "n@h"); return err }},
		{"MaintenanceMode", "GET", "/_node/n@h/_config/couchdb/maintenance_mode", `true`, func(c *Client) error { _, err := c.MaintenanceMode(ctx, "n@h"); return err }},
		{"SetMaintenanceMode", "PUT", "/_node/n@h/_config/couchdb/maintenance_mode", `{"old":""}`, func(c *Client) error {
			_, err := c.SetMaintenanceMode(ctx, "n@h", "true")
			return err
		}},
	}
	for _, tc := range calls {
		bodies := map[string]string{
			"html":       `<html><body>502 Bad Gateway</body></html>`,
			"truncated":  `{"all_nodes":["couchdb@`,
			"empty":      ``,
			"wrong type": tc.wrongType,
			// A body that echoes the password: the error must not.
			"echo": `{"reason":"` + secretPassword,
		}
		for bname, body := range bodies {
			t.Run(tc.name+"/"+bname, func(t *testing.T) {
				code := http.StatusOK
				if tc.method == http.MethodPut {
					code = http.StatusCreated
				}
				c, _ := newTestClient(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					if r.Method != tc.method || r.URL.EscapedPath() != tc.path {
						t.Errorf("sent %s %s, want %s %s", r.Method, r.URL.EscapedPath(), tc.method, tc.path)
					}
					w.Header().Set("Content-Type", "application/json")
					w.WriteHeader(code)
					_, _ = io.WriteString(w, body)
				}))
				err := tc.call(c)
				var de *DecodeError
				if !errors.As(err, &de) {
					t.Fatalf("want *DecodeError, got %v", err)
				}
				if de.Method != tc.method || de.Path != tc.path || de.Code != code {
					t.Errorf("DecodeError names %s %s %d, want %s %s %d", de.Method, de.Path, de.Code, tc.method, tc.path, code)
				}
				if s := fmt.Sprintf("%v %+v", err, err); strings.Contains(s, secretPassword) {
					t.Errorf("error leaks the password: %s", s)
				}
			})
		}
	}
}

// TestForbiddenIsNotALockout: only CouchDB's lockout 403 is a lockout; other 403s are not auth
// errors, so a caller does not back off its credentials for them.
func TestForbiddenIsNotALockout(t *testing.T) {
	cases := []struct {
		body   string
		locked bool
	}{
		{`{"error":"forbidden","reason":"Account is temporarily locked due to multiple authentication failures"}`, true},
		{`{"error":"forbidden","reason":"Config section blacklisted for modification over HTTP API."}`, false},
		{`{"error":"forbidden","reason":"Missing replicator database"}`, false},
		{`{"error":"forbidden","reason":"You are not allowed to access this db."}`, false},
		{`{"error":"forbidden","reason":"Write blocked by validate_doc_update: deadlock guard"}`, false},
		{`{"error":"forbidden","reason":"by_node is mandatory"}`, false},
		{`<html>403 Forbidden by a proxy</html>`, false},
	}
	for _, tc := range cases {
		t.Run(tc.body, func(t *testing.T) {
			c, _ := newTestClient(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				w.WriteHeader(http.StatusForbidden)
				_, _ = io.WriteString(w, tc.body)
			}))
			_, err := c.Membership(context.Background())
			if !IsForbidden(err) || IsUnauthorized(err) {
				t.Errorf("IsForbidden %v IsUnauthorized %v for %v", IsForbidden(err), IsUnauthorized(err), err)
			}
			if IsLocked(err) != tc.locked || IsAuthError(err) != tc.locked {
				t.Errorf("IsLocked %v IsAuthError %v, want %v", IsLocked(err), IsAuthError(err), tc.locked)
			}
		})
	}
}

// TestCredentialsNotInTransportErrors: timeouts, refused and dropped connections, decode errors:
// none of their texts carries the password or the Authorization header.
func TestCredentialsNotInTransportErrors(t *testing.T) {
	header := base64.StdEncoding.EncodeToString([]byte("admin:" + secretPassword))
	release := make(chan struct{})
	defer close(release)
	cases := []struct {
		name  string
		serve http.HandlerFunc
	}{
		{"timeout", func(w http.ResponseWriter, r *http.Request) { hold(t, w, r, release) }},
		{"dropped", func(w http.ResponseWriter, _ *http.Request) { dropConn(t, w) }},
		{"decode", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, secretPassword+header) }},
		{"401", func(w http.ResponseWriter, _ *http.Request) {
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = io.WriteString(w, `{"error":"unauthorized","reason":"Name or password is incorrect."}`)
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := newTestClientWith(t, tc.serve, func(o *Options) { o.Timeout = 100 * time.Millisecond; o.RetryMax = -1 })
			var errs []error
			_, err := c.Membership(context.Background())
			errs = append(errs, err, c.FinishCluster(context.Background()),
				c.EnableCluster(context.Background(), EnableClusterRequest{Username: "admin", Password: secretPassword}))
			for i, err := range errs {
				if err == nil && tc.name == "decode" && i > 0 {
					continue // a setup action reads no body: a 200 is success whatever it says
				}
				if err == nil {
					t.Fatalf("call %d: no error", i)
				}
				for _, s := range []string{err.Error(), fmt.Sprintf("%+v", err), fmt.Sprintf("%#v", err)} {
					if strings.Contains(s, secretPassword) || strings.Contains(s, header) {
						t.Errorf("error leaks credentials: %s", s)
					}
				}
			}
			if tc.name == "timeout" && !strings.Contains(errs[0].Error(), "Timeout") {
				t.Errorf("a timeout should say so: %v", errs[0])
			}
		})
	}
}
