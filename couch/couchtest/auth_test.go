package couchtest

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// lockoutWorld is two nodes on a clock the test moves, and clients that can come from two addresses.
type lockoutWorld struct {
	t       *testing.T
	mu      sync.Mutex
	now     time.Time
	nodes   []*Node
	clients map[string]*http.Client // by source address
}

func newLockoutWorld(t *testing.T) *lockoutWorld {
	w := &lockoutWorld{t: t, now: time.Unix(1795331770, 0), clients: map[string]*http.Client{}}
	nw := NewNetwork(NetworkOptions{Clock: func() time.Time { w.mu.Lock(); defer w.mu.Unlock(); return w.now }})
	for i := 1; i <= 2; i++ {
		n, err := nw.AddNode(NodeConfig{Name: fmt.Sprintf("node%d@127.0.0.1", i), AdminUser: "admin", AdminPassword: "right", Secret: testSecret})
		if err != nil {
			t.Fatal(err)
		}
		if err := n.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(n.Stop)
		w.nodes = append(w.nodes, n)
	}
	for _, src := range []string{"127.0.0.1", "127.0.0.2"} {
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
		tr := &http.Transport{DialContext: d.DialContext, DisableKeepAlives: true}
		t.Cleanup(tr.CloseIdleConnections)
		w.clients[src] = &http.Client{Transport: tr, Timeout: 5 * time.Second}
	}
	return w
}

// lockStep is one move of a lockout scenario.
type lockStep struct {
	op         string // "basic", "session", "advance", "password", "restart"
	node       int    // index into the world's nodes
	from       string // source address; "" is 127.0.0.1
	user, pass string
	times      int           // repeats; 0 is once
	by         time.Duration // for advance
	want       int           // status of every repeat
}

func (w *lockoutWorld) run(s lockStep) {
	t := w.t
	t.Helper()
	n := w.nodes[s.node]
	switch s.op {
	case "advance":
		w.mu.Lock()
		w.now = w.now.Add(s.by)
		w.mu.Unlock()
		return
	case "password":
		n.SetAdminPassword(s.user, s.pass)
		return
	case "restart":
		n.Stop()
		if err := n.Start(); err != nil {
			t.Fatal(err)
		}
		return
	}
	from := s.from
	if from == "" {
		from = "127.0.0.1"
	}
	for i := 0; i < max(s.times, 1); i++ {
		var req *http.Request
		switch s.op {
		case "basic":
			req, _ = http.NewRequest(http.MethodGet, n.URL()+"/_membership", nil)
			req.SetBasicAuth(s.user, s.pass)
		case "session":
			req, _ = http.NewRequest(http.MethodPost, n.URL()+"/_session", strings.NewReader(fmt.Sprintf(`{"name":%q,"password":%q}`, s.user, s.pass)))
			req.Header.Set("Content-Type", "application/json")
		default:
			t.Fatalf("unknown step %q", s.op)
		}
		resp, err := w.clients[from].Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != s.want {
			t.Fatalf("%s as %s from %s on node%d, attempt %d: %d %s, want %d", s.op, s.user, from, s.node+1, i+1, resp.StatusCode, body, s.want)
		}
		if s.want == http.StatusForbidden && !strings.Contains(string(body), `"reason":"`+lockoutReason+`"`) {
			t.Errorf("403 body %s is not CouchDB's lockout", body)
		}
	}
}

// TestLockout checks the emulator's lockout against CouchDB 3.4's rules (see auth.go).
func TestLockout(t *testing.T) {
	const ok, wrong, locked = http.StatusOK, http.StatusUnauthorized, http.StatusForbidden
	bad := func(n int) lockStep {
		return lockStep{op: "basic", user: "admin", pass: "wrong", times: n, want: wrong}
	}
	good := func(want int) lockStep { return lockStep{op: "basic", user: "admin", pass: "right", want: want} }
	advance := func(d time.Duration) lockStep { return lockStep{op: "advance", by: d} }
	cases := []struct {
		name  string
		steps []lockStep
		// counters of node1 at the end
		failures, locked, attempts int
	}{
		{"five failures lock even the right password; attempts while locked are not failures",
			[]lockStep{bad(5), good(locked), {op: "basic", user: "admin", pass: "wrong", want: locked}},
			5, 2, 7},
		{"four failures do not lock",
			[]lockStep{bad(4), good(ok)},
			4, 0, 5},
		{"the lock ends max_lifetime after the first failure, and the count starts again",
			[]lockStep{bad(1), advance(4 * time.Minute), bad(4), good(locked),
				advance(time.Minute), good(locked), // exactly 5 minutes: ets_lru drops only past max_lifetime
				advance(time.Millisecond), good(ok),
				// A sliding window would still count the four failures of minute 4 and lock now.
				bad(1), good(ok)},
			6, 2, 10},
		{"attempts while locked do not extend the lock",
			[]lockStep{bad(5), advance(4*time.Minute + 59*time.Second), good(locked),
				{op: "basic", user: "admin", pass: "wrong", want: locked}, advance(2 * time.Second), good(ok)},
			5, 2, 8},
		{"a right password does not reset the count",
			[]lockStep{bad(4), good(ok), bad(1), good(locked)},
			5, 1, 7},
		{"a password change hashes with a new salt: a new key, even for the same password",
			[]lockStep{bad(5), good(locked), {op: "password", user: "admin", pass: "right"}, good(ok), bad(4), good(ok)},
			9, 1, 12},
		{"keyed by client address",
			[]lockStep{bad(5), {op: "basic", from: "127.0.0.2", user: "admin", pass: "right", want: ok},
				{op: "basic", from: "127.0.0.2", user: "admin", pass: "wrong", times: 4, want: wrong}, good(locked)},
			9, 1, 11},
		{"keyed by user",
			[]lockStep{{op: "password", user: "ops", pass: "ops-pw"}, bad(5), {op: "basic", user: "ops", pass: "ops-pw", want: ok}, good(locked)},
			5, 1, 7},
		{"each node counts its own",
			[]lockStep{bad(5), {op: "basic", node: 1, user: "admin", pass: "right", want: ok}},
			5, 0, 5},
		{"basic auth never counts an unknown user",
			[]lockStep{{op: "basic", user: "nobody", pass: "x", times: 8, want: wrong}, good(ok)},
			8, 0, 9},
		{"POST /_session counts an unknown user, under an empty salt",
			[]lockStep{{op: "session", user: "nobody", pass: "x", times: 5, want: wrong},
				{op: "session", user: "nobody", pass: "x", want: locked},
				{op: "basic", user: "nobody", pass: "x", want: wrong}, // the lock is never consulted for it
				good(ok)},
			6, 1, 8},
		{"POST /_session and basic auth share the count",
			[]lockStep{bad(3), {op: "session", user: "admin", pass: "wrong", times: 2, want: wrong},
				{op: "session", user: "admin", pass: "right", want: locked}, good(locked)},
			5, 2, 7},
		{"a restart forgets the counts",
			[]lockStep{bad(5), good(locked), {op: "restart"}, good(ok)},
			5, 1, 7},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			w := newLockoutWorld(t)
			for _, s := range tc.steps {
				w.run(s)
			}
			r := w.nodes[0].Requests()
			if r.Failures != tc.failures || r.Locked != tc.locked || r.AuthAttempts != tc.attempts {
				t.Errorf("node1 counted %d failures, %d locked, %d attempts; want %d, %d, %d",
					r.Failures, r.Locked, r.AuthAttempts, tc.failures, tc.locked, tc.attempts)
			}
		})
	}
}

// TestAddNodeLoginsCountOnTheRemote: add_node asks the remote with the credentials it was given, so a
// wrong password there is a failed login of the remote's, and a locked remote refuses even the right
// one. add_node answers 201 either way and adds nothing.
func TestAddNodeLoginsCountOnTheRemote(t *testing.T) {
	w := newLockoutWorld(t)
	for _, n := range w.nodes {
		if err := clusterSetup(w, n, `{"action":"enable_cluster","bind_address":"0.0.0.0","username":"admin","password":"right","node_count":2}`); err != nil {
			t.Fatal(err)
		}
	}
	_, port, _ := net.SplitHostPort(w.nodes[1].Addr())
	add := func(pw string) {
		t.Helper()
		if err := clusterSetup(w, w.nodes[0], `{"action":"add_node","host":"127.0.0.1","port":`+port+`,"username":"admin","password":"`+pw+`"}`); err != nil {
			t.Fatal(err)
		}
	}
	for range lockoutThreshold {
		add("wrong")
	}
	add("right")
	if got := w.nodes[0].ClusterNodes(); len(got) != 1 {
		t.Errorf("add_node to a locked remote added something: %v", got)
	}
	// The remote also saw one login of the test's own: its enable_cluster.
	r := w.nodes[1].Requests()
	if r.Failures != lockoutThreshold || r.Locked != 1 || r.AuthAttempts != 1+lockoutThreshold+1 {
		t.Errorf("the remote counted %d failures, %d locked, %d attempts", r.Failures, r.Locked, r.AuthAttempts)
	}
	w.run(lockStep{op: "advance", by: 5*time.Minute + time.Second})
	add("right")
	if got := w.nodes[0].ClusterNodes(); len(got) != 2 {
		t.Errorf("add_node after the lockout expired: cluster_nodes %v", got)
	}
}

func clusterSetup(w *lockoutWorld, n *Node, body string) error {
	req, _ := http.NewRequestWithContext(context.Background(), http.MethodPost, n.URL()+"/_cluster_setup", strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.SetBasicAuth("admin", "right")
	resp, err := w.clients["127.0.0.2"].Do(req) // not the address add_node's own logins come from
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusCreated {
		return fmt.Errorf("%s: %d %s", body, resp.StatusCode, b)
	}
	return nil
}
