package kubelet

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"sync"
)

// AddressMap maps fake pod addresses (podIP:port) to the loopback listeners of their workloads, so
// the controller reaches pods without root and without ever dialling an address the harness did not
// create.
type AddressMap struct {
	mu sync.RWMutex
	m  map[string]string
}

// NewAddressMap returns an empty map.
func NewAddressMap() *AddressMap { return &AddressMap{m: map[string]string{}} }

// Set maps from (podIP:port) to a loopback address.
func (a *AddressMap) Set(from, to string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.m[from] = to
}

// Lookup returns the loopback address for a pod address.
func (a *AddressMap) Lookup(addr string) (string, bool) {
	a.mu.RLock()
	defer a.mu.RUnlock()
	to, ok := a.m[addr]
	return to, ok
}

// DialContext dials the loopback address mapped from addr and refuses anything else.
func (a *AddressMap) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	to, ok := a.Lookup(addr)
	if !ok {
		return nil, fmt.Errorf("harness: %s is not a pod address of this harness; refusing to dial it", addr)
	}
	var d net.Dialer
	return d.DialContext(ctx, network, to)
}

// Transport is an http.Transport that dials through the map.
func (a *AddressMap) Transport() *http.Transport {
	return &http.Transport{DialContext: a.DialContext, MaxIdleConnsPerHost: 4, Proxy: nil}
}

// ProxyHandler is an HTTP forward proxy for a separate controller process (HTTP_PROXY): it forwards
// absolute-URI requests and CONNECT tunnels to mapped pod addresses only.
func (a *AddressMap) ProxyHandler() http.Handler {
	rp := &httputil.ReverseProxy{
		Rewrite:   func(r *httputil.ProxyRequest) { r.Out.URL = r.In.URL; r.Out.Host = r.In.Host },
		Transport: a.Transport(),
		ErrorLog:  nil,
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodConnect {
			a.tunnel(w, r)
			return
		}
		if r.URL.Host == "" {
			http.Error(w, "harness proxy: absolute URI required", http.StatusBadRequest)
			return
		}
		if _, ok := a.Lookup(r.URL.Host); !ok {
			http.Error(w, "harness proxy: not a pod address of this harness", http.StatusForbidden)
			return
		}
		rp.ServeHTTP(w, r)
	})
}

func (a *AddressMap) tunnel(w http.ResponseWriter, r *http.Request) {
	up, err := a.DialContext(r.Context(), "tcp", r.Host)
	if err != nil {
		http.Error(w, err.Error(), http.StatusForbidden)
		return
	}
	hj, ok := w.(http.Hijacker)
	if !ok {
		up.Close()
		http.Error(w, "no hijack", http.StatusInternalServerError)
		return
	}
	w.WriteHeader(http.StatusOK)
	down, _, err := hj.Hijack()
	if err != nil {
		up.Close()
		return
	}
	go func() { _, _ = io.Copy(up, down); up.Close() }()
	go func() { _, _ = io.Copy(down, up); down.Close() }()
}
