package kubelet

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"
)

// AddressMap maps fake pod addresses ("podIP:containerPort") to the loopback listeners of the
// workloads behind them ("127.0.0.1:PORT"). The Kubelet keeps it current. It lets the controller reach
// pods without root and guarantees that a fake pod address is never dialled for real: anything not in
// the map is refused.
//
// In-process users take DialContext (or Transport); a controller running as a separate process goes
// through the forward proxy from ServeProxy via HTTP_PROXY. Safe for concurrent use.
type AddressMap struct {
	mu    sync.RWMutex
	m     map[string]string
	conns map[string]map[*trackedConn]struct{} // open connections per pod address
	// handlers serve the pod addresses whose workload runs in this process (InProcessWorkload): the
	// proxy hands their requests to the handler instead of forwarding them over a second connection.
	handlers map[string]http.Handler
}

// NewAddressMap returns an empty map.
func NewAddressMap() *AddressMap {
	return &AddressMap{m: map[string]string{}, conns: map[string]map[*trackedConn]struct{}{}, handlers: map[string]http.Handler{}}
}

// Set maps a pod address (podIP:port) to a loopback address, replacing any earlier mapping.
func (a *AddressMap) Set(podAddr, loopback string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.m[podAddr] = loopback
	delete(a.handlers, podAddr)
}

// SetHandler maps a pod address to a loopback address, as Set, and to the in-process handler that
// serves it: the proxy calls the handler, while DialContext still dials the listener.
func (a *AddressMap) SetHandler(podAddr, loopback string, h http.Handler) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.m[podAddr] = loopback
	a.handlers[podAddr] = h
}

// handler is the in-process handler of a mapped pod address, if it has one.
func (a *AddressMap) handler(podAddr string) (http.Handler, bool) {
	a.mu.RLock()
	defer a.mu.RUnlock()
	h, ok := a.handlers[podAddr]
	return h, ok
}

// Delete removes a mapping and closes the connections dialled to it: the pod address becomes
// unreachable and kept-alive connections die, as they do when a pod goes away.
func (a *AddressMap) Delete(podAddr string) {
	a.mu.Lock()
	delete(a.m, podAddr)
	delete(a.handlers, podAddr)
	conns := a.conns[podAddr]
	delete(a.conns, podAddr)
	a.mu.Unlock()
	for c := range conns {
		_ = c.Conn.Close()
	}
}

// Lookup returns the loopback address a pod address maps to.
func (a *AddressMap) Lookup(podAddr string) (string, bool) {
	a.mu.RLock()
	defer a.mu.RUnlock()
	to, ok := a.m[podAddr]
	return to, ok
}

// Len is the number of mapped pod addresses.
func (a *AddressMap) Len() int {
	a.mu.RLock()
	defer a.mu.RUnlock()
	return len(a.m)
}

// UnmappedError is returned for an address that is not a pod address of this harness.
type UnmappedError struct{ Addr string }

func (e *UnmappedError) Error() string {
	return fmt.Sprintf("harness: %s is not a running pod's address; refusing to dial it", e.Addr)
}

// DialContext dials the loopback address that addr maps to and refuses everything else, so the fake
// pod IPs never reach the real network.
func (a *AddressMap) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	to, ok := a.Lookup(addr)
	if !ok {
		return nil, &UnmappedError{Addr: addr}
	}
	d := net.Dialer{Timeout: 5 * time.Second}
	c, err := d.DialContext(ctx, network, to)
	if err != nil {
		return nil, err
	}
	tc := &trackedConn{Conn: c, m: a, podAddr: addr}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.m[addr] != to { // unmapped or remapped while dialling
		_ = c.Close()
		return nil, &UnmappedError{Addr: addr}
	}
	if a.conns[addr] == nil {
		a.conns[addr] = map[*trackedConn]struct{}{}
	}
	a.conns[addr][tc] = struct{}{}
	return tc, nil
}

// trackedConn is a connection Delete can cut.
type trackedConn struct {
	net.Conn
	m       *AddressMap
	podAddr string
	once    sync.Once
}

func (c *trackedConn) Close() error {
	c.once.Do(func() {
		c.m.mu.Lock()
		delete(c.m.conns[c.podAddr], c)
		c.m.mu.Unlock()
	})
	return c.Conn.Close()
}

// CloseWrite half-closes a TCP connection (the proxy's CONNECT tunnels need it).
func (c *trackedConn) CloseWrite() error {
	if tc, ok := c.Conn.(*net.TCPConn); ok {
		return tc.CloseWrite()
	}
	return nil
}

// Transport is an http.Transport that reaches pods through the map. It never uses a proxy from the
// environment.
func (a *AddressMap) Transport() *http.Transport {
	// Bounded in total: each idle connection costs two file descriptors in this one process (both
	// ends are here), and a benchmark has thousands of pods. Per pod it keeps as many as a sync has
	// requests in flight to one node (the controller's maxShardReads): with fewer, every sync with
	// moves in flight closed and re-dialled most of them (5% of the harness's CPU in the moves bench).
	return &http.Transport{
		DialContext:         a.DialContext,
		Proxy:               nil,
		MaxIdleConns:        1000,
		MaxIdleConnsPerHost: 24,
		IdleConnTimeout:     10 * time.Second,
	}
}
