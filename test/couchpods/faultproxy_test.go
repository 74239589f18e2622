package couchpods

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/couchdb-controller/couchdb-controller/couch/couchtest"
)

// answer is what a client saw: a status and body, or that the request failed (and how).
type answer struct {
	code int
	body string
	err  string // "timeout", "dropped", or ""
	ok   bool
}

func ask(t *testing.T, url, path string, timeout time.Duration) answer {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url+path, nil)
	req.SetBasicAuth("admin", "pw")
	resp, err := (&http.Client{Transport: &http.Transport{DisableKeepAlives: true}}).Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return answer{err: "timeout"}
		}
		return answer{err: "dropped"}
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return answer{code: resp.StatusCode, body: string(b)}
}

// TestFaultProxyAnswersAsTheEmulator: each fault injected by the proxy in front of a healthy node
// looks to a client exactly as the same fault injected into an emulated node, so TestFaultMatrix
// tests the same thing on real nodes as on emulated ones.
func TestFaultProxyAnswersAsTheEmulator(t *testing.T) {
	nw := couchtest.NewNetwork(couchtest.NetworkOptions{PasswordIterations: 1000})
	var nodes []*couchtest.Node
	for _, name := range []string{"a@127.0.0.1", "b@127.0.0.1"} {
		n, err := nw.AddNode(couchtest.NodeConfig{Name: name, AdminUser: "admin", AdminPassword: "pw"})
		if err != nil {
			t.Fatal(err)
		}
		if err := n.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(n.Stop)
		nodes = append(nodes, n)
	}
	behind, faulty := nodes[0], nodes[1] // behind the proxy (healthy), and faulted itself
	ip, err := newLoopbackPool().take()
	if err != nil {
		t.Fatal(err)
	}
	p := newFaultProxy(ip, behind.URL())
	if err := p.start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.stop)
	proxied := "http://" + p.addr

	const wait = 600 * time.Millisecond
	for _, tc := range []struct {
		name  string
		fault couchtest.Fault
		path  string
	}{
		{"none", couchtest.Fault{}, "/_up"},
		{"500", couchtest.Fault{Status: 500}, "/_membership"},
		{"503", couchtest.Fault{Status: 503}, "/_up"},
		{"nonjson", couchtest.Fault{NonJSON: true}, "/_membership"},
		{"truncate", couchtest.Fault{Truncate: true}, "/_membership"},
		{"drop", couchtest.Fault{Drop: true}, "/_membership"},
		{"hang", couchtest.Fault{Hang: true}, "/_membership"},
		{"slow", couchtest.Fault{Latency: 2 * wait}, "/_up"},
		{"spare-up", couchtest.Fault{Status: 500, SpareUp: true}, "/_up"},
		{"spare-up-other", couchtest.Fault{Status: 500, SpareUp: true}, "/_membership"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p.set(tc.fault)
			faulty.SetFault(tc.fault)
			defer p.set(couchtest.Fault{})
			defer faulty.SetFault(couchtest.Fault{})
			got, want := ask(t, proxied, tc.path, wait), ask(t, faulty.URL(), tc.path, wait)
			if tc.path == "/_membership" && got.code == http.StatusOK && want.code == http.StatusOK {
				// Different nodes list different names; the shape is what is compared.
				got.ok, want.ok = strings.Contains(got.body, "all_nodes"), strings.Contains(want.body, "all_nodes")
				got.body, want.body = "", ""
			}
			if got != want {
				t.Errorf("through the proxy %+v, emulated %+v", got, want)
			}
		})
	}

	// A hung request is answered once the fault clears, as a resumed VM answers it.
	p.set(couchtest.Fault{Hang: true})
	done := make(chan answer)
	go func() { done <- ask(t, proxied, "/_up", 5*time.Second) }()
	time.Sleep(200 * time.Millisecond)
	p.set(couchtest.Fault{})
	if a := <-done; a.code != http.StatusOK {
		t.Errorf("the hung request after the fault cleared: %+v", a)
	}
	// A stopped proxy (its node stopped) refuses connections instead of answering for the node.
	p.stop()
	if a := ask(t, proxied, "/_up", wait); a.err != "dropped" {
		t.Errorf("after stop: %+v", a)
	}
}
