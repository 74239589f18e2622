package couchtest

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/couchdb-controller/couchdb-controller/couch"
)

// harnessRecordings are recordings made by this repository's own real-node harness (test/couchpods
// with COUCHDB_REL), not copies of ../shared: each says how to record it again.
var harnessRecordings = []string{"couchdb-real-harness.md"}

// TestConformanceHarnessSetup replays couchdb-real-harness.md on two emulated pods started without a
// secret, as the recording's were: finish_cluster fails with the recorded setup_error after copying
// admins and uuid, and succeeds once a session cookie has made a secret up on the coordinator.
func TestConformanceHarnessSetup(t *testing.T) {
	const pw = "harness-pw"
	file := harnessRecordings[0]
	path := filepath.Join(sharedDir(t), file)
	cases := parseRecordings(t, path)
	recorded, _ := countRecorded(t, path)
	nw := NewNetwork(NetworkOptions{SyncDelay: 20 * time.Millisecond, PasswordIterations: 1000})
	nodes := map[string]*Node{}
	var names []string
	for i := 0; i < 2; i++ {
		name := fmt.Sprintf("couchdb@db-%d.db.ns.svc.cluster.local", i)
		n, err := nw.AddNode(NodeConfig{Name: name, AdminUser: "admin", AdminPassword: pw, BindAddress: "any", EphemeralIni: true})
		if err != nil {
			t.Fatal(err)
		}
		if err := n.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(n.Stop)
		nodes[fmt.Sprintf("10.244.0.1%d", i)] = n
		names = append(names, name)
	}
	db0, db1 := nodes["10.244.0.10"], nodes["10.244.0.11"]
	client, err := couch.New(couch.Options{BaseURL: db0.URL(), Username: "admin", Password: pw, RetryMax: -1})
	if err != nil {
		t.Fatal(err)
	}
	uuid0, _ := db0.Config("couchdb", "uuid")
	cmp := &comparison{tokens: newTokenMap(), skipped: map[string]int{}}
	matched := 0
	for i, c := range cases {
		name := fmt.Sprintf("case %d %q (%s %s%s)", i+1, c.Title, c.Method, c.Host, c.Path)
		switch {
		case c.Path == "/_membership":
			// The recording asked once both nodes were connected.
			deadline := time.Now().Add(5 * time.Second)
			for {
				m, err := client.Membership(context.Background())
				if err == nil && slices.Equal(m.AllNodes, names) || time.Now().After(deadline) {
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
		case strings.HasPrefix(c.Title, "GET /_cluster_setup on db-0 after the failed"):
			if u, _ := db1.Config("couchdb", "uuid"); u != uuid0 {
				t.Errorf("db-1's uuid %s after the failed finish_cluster, want db-0's %s: setup.erl copies it before the secret", u, uuid0)
			}
		}
		n := nodes[c.Host]
		if n == nil {
			t.Fatalf("%s: no pod at %s", name, c.Host)
		}
		var rd io.Reader
		if c.Body != "" {
			rd = strings.NewReader(strings.ReplaceAll(c.Body, "***", pw))
		}
		req, _ := http.NewRequest(c.Method, n.URL()+c.Path, rd)
		if rd != nil {
			req.Header.Set("Content-Type", "application/json")
		}
		if c.Auth != "" {
			req.SetBasicAuth(c.Auth, pw)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		got := strings.TrimSuffix(string(b), "\n")
		if resp.StatusCode != c.Code {
			t.Errorf("%s: status %d, recorded %d; body %s", name, resp.StatusCode, c.Code, got)
			continue
		}
		if c.SetCookie != "" && !setCookieShape(c.SetCookie).MatchString(resp.Header.Get("Set-Cookie")) {
			t.Errorf("%s: Set-Cookie %q, recorded %q", name, resp.Header.Get("Set-Cookie"), c.SetCookie)
			continue
		}
		cmp.diffs = nil
		if diffs := compareBody(cmp, c, got); len(diffs) > 0 {
			t.Errorf("%s: body differs:\n  %s", name, strings.Join(diffs, "\n  "))
			continue
		}
		matched++
	}
	if matched != recorded || len(cases) != recorded {
		t.Errorf("%s records %d cases; %d parsed, %d matched", file, recorded, len(cases), matched)
	}
	t.Logf("conformance: %s: %d of %d recorded cases matched", file, matched, recorded)
}
