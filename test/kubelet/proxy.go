package kubelet

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"strings"
	"sync"
	"time"
)

// Proxy is an HTTP forward proxy on 127.0.0.1 that reaches mapped pod addresses only. A controller run
// as a separate process gets HTTP_PROXY=<URL> (and HTTPS_PROXY for TLS): Go's default transport
// (http.ProxyFromEnvironment) then sends absolute-URI requests, or CONNECT for https, here. Requests to
// the API server on 127.0.0.1 are never proxied by Go, so they go direct.
type Proxy struct {
	addrs *AddressMap
	srv   *http.Server
	ln    net.Listener
	rp    *httputil.ReverseProxy

	mu      sync.Mutex
	tunnels map[net.Conn]struct{}
	closed  bool
}

// ServeProxy starts a forward proxy for the map on a free loopback port. Close it when done.
func (a *AddressMap) ServeProxy() (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &Proxy{addrs: a, ln: ln, tunnels: map[net.Conn]struct{}{}}
	p.rp = &httputil.ReverseProxy{
		// The incoming URL is already absolute; Rewrite (unlike Director) adds no X-Forwarded-* headers.
		Rewrite:   func(r *httputil.ProxyRequest) { r.Out.URL, r.Out.Host = r.In.URL, r.In.Host },
		Transport: a.Transport(),
		// A pod that is gone looks like a failed connection, not like an HTTP answer from CouchDB.
		ErrorHandler: func(http.ResponseWriter, *http.Request, error) { panic(http.ErrAbortHandler) },
	}
	p.srv = &http.Server{Handler: p, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = p.srv.Serve(ln) }()
	return p, nil
}

// URL is the value for HTTP_PROXY, e.g. "http://127.0.0.1:41234".
func (p *Proxy) URL() string { return "http://" + p.ln.Addr().String() }

// Env returns environ for a child process (the controller binary) that must reach pods only through
// this proxy: every inherited proxy setting is dropped, in either case (a NO_PROXY covering
// 10.244.0.0/16, or another HTTP(S)_PROXY or ALL_PROXY, would make it dial the fake pod addresses
// directly or elsewhere), and HTTP_PROXY and HTTPS_PROXY (CONNECT, for https clusters) name the proxy.
// Loopback hosts, such as the harness's API server, are never proxied by Go.
func (p *Proxy) Env(environ []string) []string {
	out := make([]string, 0, len(environ)+2)
	for _, kv := range environ {
		k, _, _ := strings.Cut(kv, "=")
		switch strings.ToUpper(k) {
		case "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY", "REQUEST_METHOD":
			continue // REQUEST_METHOD: Go ignores HTTP_PROXY when it looks like a CGI request
		}
		out = append(out, kv)
	}
	return append(out, "HTTP_PROXY="+p.URL(), "HTTPS_PROXY="+p.URL())
}

// Close stops the proxy and cuts every open tunnel.
func (p *Proxy) Close() error {
	p.mu.Lock()
	p.closed = true
	for c := range p.tunnels {
		_ = c.Close()
	}
	p.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := p.srv.Shutdown(ctx); err != nil {
		return p.srv.Close()
	}
	return nil
}

// ServeHTTP forwards one proxied request.
func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodConnect {
		p.tunnel(w, r)
		return
	}
	if r.URL.Scheme != "http" || r.URL.Host == "" {
		http.Error(w, "harness proxy: only absolute http:// URIs and CONNECT are forwarded", http.StatusBadRequest)
		return
	}
	addr := hostPort(r.URL.Host, "80")
	if _, ok := p.addrs.Lookup(addr); !ok {
		// Same as a dial failure: the connection closes without an answer.
		panic(http.ErrAbortHandler)
	}
	if h, ok := p.addrs.handler(addr); ok {
		// An in-process workload answers on this connection: forwarding over a second loopback
		// connection cost the harness more CPU than the emulated node's own work (a GET through the
		// proxy took 2.8 times as long as one straight to the node), on the cores the controller
		// under test shares. The workload still sees the request as its listener would: the same
		// method, path, headers and body, and a dropped connection (Hijack) drops the caller's.
		h.ServeHTTP(w, r)
		return
	}
	p.rp.ServeHTTP(w, r)
}

func hostPort(host, defPort string) string {
	if _, _, err := net.SplitHostPort(host); err == nil {
		return host
	}
	return net.JoinHostPort(host, defPort)
}

// tunnel answers CONNECT by splicing the client to the mapped listener.
func (p *Proxy) tunnel(w http.ResponseWriter, r *http.Request) {
	up, err := p.addrs.DialContext(r.Context(), "tcp", hostPort(r.Host, "443"))
	if err != nil {
		http.Error(w, "harness proxy: cannot reach "+r.Host, http.StatusBadGateway)
		return
	}
	hj, ok := w.(http.Hijacker)
	if !ok {
		_ = up.Close()
		http.Error(w, "harness proxy: cannot hijack", http.StatusInternalServerError)
		return
	}
	down, buf, err := hj.Hijack()
	if err != nil {
		_ = up.Close()
		return
	}
	if !p.track(up, down) {
		return
	}
	if _, err := io.WriteString(down, "HTTP/1.1 200 Connection Established\r\n\r\n"); err != nil {
		p.untrack(up, down)
		return
	}
	// The client may have sent bytes (a TLS ClientHello) right behind the CONNECT; they sit in buf.
	if n := buf.Reader.Buffered(); n > 0 {
		b, _ := buf.Reader.Peek(n)
		if _, err := up.Write(b); err != nil {
			p.untrack(up, down)
			return
		}
	}
	var wg sync.WaitGroup
	wg.Add(2)
	pipe := func(dst, src net.Conn) {
		defer wg.Done()
		_, _ = io.Copy(dst, src)
		// Half-close so the other direction can finish its last bytes.
		if hc, ok := dst.(interface{ CloseWrite() error }); ok {
			_ = hc.CloseWrite()
		}
	}
	go pipe(up, down)
	go pipe(down, up)
	go func() { wg.Wait(); p.untrack(up, down) }()
}

func (p *Proxy) track(cs ...net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		for _, c := range cs {
			_ = c.Close()
		}
		return false
	}
	for _, c := range cs {
		p.tunnels[c] = struct{}{}
	}
	return true
}

func (p *Proxy) untrack(cs ...net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range cs {
		_ = c.Close()
		delete(p.tunnels, c)
	}
}
