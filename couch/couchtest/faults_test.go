package couchtest

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"
)

func faultNode(t *testing.T) *Node {
	t.Helper()
	nw := NewNetwork(NetworkOptions{})
	n, err := nw.AddNode(NodeConfig{Name: "node1@127.0.0.1", AdminUser: "admin", AdminPassword: "pw"})
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.Stop)
	return n
}

// answer is what one request to a faulty node came back with.
type answer struct {
	code    int
	body    string
	err     error
	elapsed time.Duration
}

// ask sends one request on a fresh connection (so no transport retries a dropped one).
func ask(ctx context.Context, n *Node, method, path string, timeout time.Duration) answer {
	var rd io.Reader
	if method == http.MethodPost {
		rd = strings.NewReader(`{"action":"finish_cluster"}`)
	}
	req, _ := http.NewRequestWithContext(ctx, method, n.URL()+path, rd)
	req.SetBasicAuth("admin", "pw")
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	tr := &http.Transport{DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	start := time.Now()
	resp, err := (&http.Client{Transport: tr, Timeout: timeout}).Do(req)
	if err != nil {
		return answer{err: err, elapsed: time.Since(start)}
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return answer{code: resp.StatusCode, body: string(b), elapsed: time.Since(start)}
}

func isJSON(s string) bool { var v any; return json.Unmarshal([]byte(s), &v) == nil }

func TestFaultInjection(t *testing.T) {
	cases := []struct {
		name    string
		fault   Fault
		method  string
		path    string
		timeout time.Duration
		check   func(t *testing.T, a answer)
	}{
		{"latency delays the answer", Fault{Latency: 150 * time.Millisecond}, http.MethodGet, "/_membership", 2 * time.Second,
			func(t *testing.T, a answer) {
				if a.err != nil || a.code != http.StatusOK || a.elapsed < 150*time.Millisecond {
					t.Errorf("got %d %v after %s, want 200 after at least 150ms", a.code, a.err, a.elapsed)
				}
			}},
		{"latency beyond the client's timeout", Fault{Latency: time.Second}, http.MethodGet, "/_membership", 100 * time.Millisecond,
			func(t *testing.T, a answer) {
				if a.err == nil || a.elapsed > 900*time.Millisecond {
					t.Errorf("got %d %v after %s, want a client timeout", a.code, a.err, a.elapsed)
				}
			}},
		{"hang answers nothing until the client gives up", Fault{Hang: true}, http.MethodGet, "/_membership", 200 * time.Millisecond,
			func(t *testing.T, a answer) {
				if a.err == nil || a.elapsed < 200*time.Millisecond {
					t.Errorf("got %d %v after %s, want a timeout after 200ms", a.code, a.err, a.elapsed)
				}
			}},
		{"5xx with a CouchDB-style body", Fault{Status: http.StatusServiceUnavailable}, http.MethodGet, "/_membership", time.Second,
			func(t *testing.T, a answer) {
				if a.code != http.StatusServiceUnavailable || a.body != `{"error":"unknown_error","reason":"injected fault"}`+"\n" {
					t.Errorf("got %d %q %v", a.code, a.body, a.err)
				}
			}},
		{"5xx on writes too", Fault{Status: http.StatusInternalServerError}, http.MethodPost, "/_cluster_setup", time.Second,
			func(t *testing.T, a answer) {
				if a.code != http.StatusInternalServerError {
					t.Errorf("got %d %q %v", a.code, a.body, a.err)
				}
			}},
		{"drop closes an accepted connection without an answer", Fault{Drop: true}, http.MethodGet, "/_membership", time.Second,
			func(t *testing.T, a answer) {
				if a.err == nil || errors.Is(a.err, syscall.ECONNREFUSED) || a.elapsed > 900*time.Millisecond {
					t.Errorf("got %d %v after %s, want a connection closed at once (not refused)", a.code, a.err, a.elapsed)
				}
			}},
		{"non-JSON 200", Fault{NonJSON: true}, http.MethodGet, "/_membership", time.Second,
			func(t *testing.T, a answer) {
				if a.code != http.StatusOK || isJSON(a.body) {
					t.Errorf("got %d %q %v", a.code, a.body, a.err)
				}
			}},
		{"truncated JSON 200", Fault{Truncate: true}, http.MethodGet, "/_membership", time.Second,
			func(t *testing.T, a answer) {
				if a.code != http.StatusOK || isJSON(a.body) || !strings.HasPrefix(a.body, "{") {
					t.Errorf("got %d %q %v", a.code, a.body, a.err)
				}
			}},
		{"SpareUp keeps /_up healthy", Fault{Status: http.StatusInternalServerError, SpareUp: true}, http.MethodGet, "/_up", time.Second,
			func(t *testing.T, a answer) {
				if a.code != http.StatusOK {
					t.Errorf("got %d %q %v", a.code, a.body, a.err)
				}
			}},
		{"SpareUp spares only /_up", Fault{Status: http.StatusInternalServerError, SpareUp: true}, http.MethodGet, "/_membership", time.Second,
			func(t *testing.T, a answer) {
				if a.code != http.StatusInternalServerError {
					t.Errorf("got %d %q %v", a.code, a.body, a.err)
				}
			}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			n := faultNode(t)
			n.SetFault(tc.fault)
			tc.check(t, ask(context.Background(), n, tc.method, tc.path, tc.timeout))
			if got := n.Requests().ByPath[tc.method+" "+tc.path]; got != 1 {
				t.Errorf("the node counted %d requests to %s %s, want 1", got, tc.method, tc.path)
			}
			n.SetFault(Fault{})
			if a := ask(context.Background(), n, http.MethodGet, "/_membership", time.Second); a.code != http.StatusOK || !isJSON(a.body) {
				t.Errorf("after clearing the fault: %d %q %v", a.code, a.body, a.err)
			}
		})
	}
}

// TestFaultDown: a stopped node's listener is closed, so connections are refused (as the recording's
// "Connection refused" for a stopped CouchDB); Start listens on the same port again and clears faults.
func TestFaultDown(t *testing.T) {
	n := faultNode(t)
	addr := n.Addr()
	n.SetFault(Fault{Status: 500})
	n.Stop()
	if n.Running() {
		t.Fatal("still running after Stop")
	}
	if a := ask(context.Background(), n, http.MethodGet, "/_up", time.Second); !errors.Is(a.err, syscall.ECONNREFUSED) {
		t.Errorf("stopped node: %d %v, want connection refused", a.code, a.err)
	}
	if err := n.Start(); err != nil {
		t.Fatal(err)
	}
	if n.Addr() != addr {
		t.Errorf("restarted on %s, was %s", n.Addr(), addr)
	}
	if a := ask(context.Background(), n, http.MethodGet, "/_membership", time.Second); a.code != http.StatusOK {
		t.Errorf("restarted node: %d %q %v (Start clears the fault)", a.code, a.body, a.err)
	}
}

// TestFaultHangReleased: a held request is answered once the fault is cleared, and dropped when the
// node stops; either way the handler does not answer before.
func TestFaultHangReleased(t *testing.T) {
	for _, release := range []string{"clear", "stop"} {
		t.Run(release, func(t *testing.T) {
			n := faultNode(t)
			n.SetFault(Fault{Hang: true})
			got := make(chan answer, 1)
			go func() { got <- ask(context.Background(), n, http.MethodGet, "/_membership", 5*time.Second) }()
			deadline := time.Now().Add(2 * time.Second)
			for n.Requests().ByPath["GET /_membership"] == 0 {
				if time.Now().After(deadline) {
					t.Fatal("the request never arrived")
				}
				time.Sleep(5 * time.Millisecond)
			}
			select {
			case a := <-got:
				t.Fatalf("answered while hung: %d %v", a.code, a.err)
			case <-time.After(100 * time.Millisecond):
			}
			if release == "clear" {
				n.SetFault(Fault{})
			} else {
				n.Stop()
			}
			a := <-got
			switch {
			case release == "clear" && (a.code != http.StatusOK || !isJSON(a.body)):
				t.Errorf("after clearing: %d %q %v, want the real answer", a.code, a.body, a.err)
			case release == "stop" && a.err == nil:
				t.Errorf("after stopping: %d %q, want the connection dropped", a.code, a.body)
			}
		})
	}
}

// TestFaultHangHonoursCancel: a client that cancels gets its error at once, not when the fault ends.
func TestFaultHangHonoursCancel(t *testing.T) {
	n := faultNode(t)
	n.SetFault(Fault{Hang: true})
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	a := ask(ctx, n, http.MethodGet, "/_membership", 10*time.Second)
	if !errors.Is(a.err, context.DeadlineExceeded) || a.elapsed > 2*time.Second {
		t.Errorf("got %d %v after %s", a.code, a.err, a.elapsed)
	}
}
