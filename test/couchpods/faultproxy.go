package couchpods

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/couchdb-controller/couchdb-controller/couch/couchtest"
)

// FaultPort is where a real node's fault-injecting proxy listens, on the node's own loopback
// address. The pod's CouchDB port is mapped here, so everything that reaches the pod through the
// harness (the controller, the kubelet's readiness probe) passes it; the nodes' own traffic (Erlang
// distribution) and a test's direct requests to RealNode.URL do not. 5986 was CouchDB 2's node-local
// port; CouchDB 3 does not listen on it.
const FaultPort = 5986

// faultProxy stands in front of one real node's HTTP port and injects the faults the emulator
// injects itself (couchtest.Fault), with the same answers: a real node cannot hang, answer 500, cut
// a connection, slow down or send garbage on demand. Without a fault it forwards every request as it
// is. It listens only while the node runs, so a stopped node refuses connections as it would.
type faultProxy struct {
	addr string // ip:FaultPort
	rp   *httputil.ReverseProxy

	mu      sync.Mutex
	fault   couchtest.Fault
	changed chan struct{} // closed and replaced at every SetFault: wakes hung requests
	srv     *http.Server
}

func newFaultProxy(ip net.IP, target string) *faultProxy {
	u, _ := url.Parse(target)
	p := &faultProxy{addr: net.JoinHostPort(ip.String(), strconv.Itoa(FaultPort)), changed: make(chan struct{})}
	tr := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		MaxIdleConnsPerHost: 16,
		IdleConnTimeout:     30 * time.Second,
	}
	p.rp = &httputil.ReverseProxy{
		// The pod address stays in Host, as a client talking to the pod directly sends it; no
		// X-Forwarded-* headers (Rewrite adds none).
		Rewrite:       func(r *httputil.ProxyRequest) { r.SetURL(u); r.Out.Host = r.In.Host },
		Transport:     tr,
		FlushInterval: -1, // continuous _changes feeds stream through
		// The node went away under the request: the client sees the connection fail, not an HTTP
		// answer CouchDB never gave.
		ErrorHandler: func(http.ResponseWriter, *http.Request, error) { panic(http.ErrAbortHandler) },
	}
	return p
}

// start listens again (the node was started).
func (p *faultProxy) start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.srv != nil {
		return nil
	}
	var ln net.Listener
	var err error
	// The port of a proxy stopped a moment ago may still be closing.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if ln, err = net.Listen("tcp", p.addr); err == nil || time.Now().After(deadline) {
			break
		}
	}
	if err != nil {
		return err
	}
	p.srv = &http.Server{Handler: p, ReadHeaderTimeout: 10 * time.Second}
	go func(srv *http.Server) { _ = srv.Serve(ln) }(p.srv)
	return nil
}

// stop closes the listener and every connection (the node stopped).
func (p *faultProxy) stop() {
	p.mu.Lock()
	srv := p.srv
	p.srv = nil
	p.mu.Unlock()
	if srv != nil {
		_ = srv.Close()
	}
}

// set injects f (the zero value clears it); requests hung by a previous Hang are answered now.
func (p *faultProxy) set(f couchtest.Fault) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.fault = f
	close(p.changed)
	p.changed = make(chan struct{})
}

func (p *faultProxy) current() (couchtest.Fault, <-chan struct{}) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.fault, p.changed
}

// ServeHTTP answers as couchtest's Handler does under the same fault, and forwards otherwise.
func (p *faultProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f, changed := p.current()
	if f.SpareUp && r.URL.Path == "/_up" {
		f = couchtest.Fault{}
	}
	if f.Latency > 0 {
		select {
		case <-time.After(f.Latency):
		case <-r.Context().Done():
			return
		}
	}
	for f.Hang {
		// Read the request and hold it until the client gives up or the fault is cleared (a paused
		// VM resumed: the request is then answered with whatever fault is set by then).
		select {
		case <-r.Context().Done():
			return
		case <-changed:
			f, changed = p.current()
			if f.SpareUp && r.URL.Path == "/_up" {
				f = couchtest.Fault{}
			}
		}
	}
	switch {
	case f.Drop:
		panic(http.ErrAbortHandler) // net/http closes the connection without an answer
	case f.Status != 0:
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(f.Status)
		b, _ := json.Marshal(map[string]string{"error": "unknown_error", "reason": "injected fault"})
		_, _ = w.Write(append(b, '\n'))
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
	p.rp.ServeHTTP(w, r)
}

// probe is the kubelet's readiness probe through the proxy: GET /_up answers 200.
func (p *faultProxy) probe(ctx context.Context) bool {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+p.addr+"/_up", nil)
	if err != nil {
		return false
	}
	resp, err := probeClient.Do(req)
	if err != nil {
		return false
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}
