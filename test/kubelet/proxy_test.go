package kubelet

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"testing"
)

func TestProxy(t *testing.T) {
	a := NewAddressMap()
	plain := podServer(t, "plain")
	secure := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "tls %s", r.URL.Path)
	}))
	t.Cleanup(secure.Close)
	a.Set("10.244.0.20:5984", plain.Listener.Addr().String())
	a.Set("10.244.0.21:6984", secure.Listener.Addr().String())
	a.Set("10.244.0.22:80", plain.Listener.Addr().String())
	// In process: the handler answers, its listener (plain's) is not dialled.
	inproc := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/drop" { // a stopped emulated node drops the connection
			hj, _ := w.(http.Hijacker)
			c, _, _ := hj.Hijack()
			_ = c.Close()
			return
		}
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "inproc %s %s %s", r.Method, r.URL.Path, b)
	})
	a.SetHandler("10.244.0.24:5984", plain.Listener.Addr().String(), inproc)
	a.SetHandler("10.244.0.25:5984", plain.Listener.Addr().String(), inproc)
	a.Set("10.244.0.25:5984", plain.Listener.Addr().String()) // remapped: the listener again
	a.SetHandler("10.244.0.26:5984", plain.Listener.Addr().String(), inproc)
	a.Delete("10.244.0.26:5984") // the pod went away
	p, err := a.ServeProxy()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	proxyURL, _ := url.Parse(p.URL())
	tlsConf := secure.Client().Transport.(*http.Transport).TLSClientConfig.Clone()
	tlsConf.ServerName = "example.com" // the httptest certificate's name; the pod IP is not in it
	c := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(proxyURL), TLSClientConfig: tlsConf}}

	tests := []struct {
		url, want string
		fails     bool
	}{
		{url: "http://10.244.0.20:5984/_up", want: "plain /_up"},
		{url: "http://10.244.0.22/_up", want: "plain /_up"},               // default port 80
		{url: "https://10.244.0.21:6984/_session", want: "tls /_session"}, // CONNECT tunnel
		{url: "http://10.244.0.23:5984/_up", fails: true},                 // no such pod
		{url: "http://10.244.0.24:5984/_up", want: "inproc GET /_up "},
		{url: "http://10.244.0.24:5984/drop", fails: true},
		{url: "http://10.244.0.25:5984/_up", want: "plain /_up"},
		{url: "http://10.244.0.26:5984/_up", fails: true},
		{url: "https://10.244.0.20:6984/", fails: true}, // mapped IP, unmapped port
		{url: "http://" + strings.Replace(plain.Listener.Addr().String(), "127.0.0.1", "127.0.0.2", 1) + "/", fails: true},
	}
	for _, tc := range tests {
		got, err := get(t, c, tc.url)
		if tc.fails {
			if err == nil {
				t.Errorf("GET %s through the proxy = %q, want a connection error", tc.url, got)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("GET %s through the proxy = %q, %v; want %q", tc.url, got, err, tc.want)
		}
	}
}

// TestProxyFromEnvironment runs a child process that knows nothing but its environment, as the
// controller binary does in the e2e tests, from a parent whose own proxy settings would send the
// child elsewhere (NO_PROXY covering the pod network, another proxy); Proxy.Env must drop them so the
// child reaches a pod through the harness proxy.
func TestProxyFromEnvironment(t *testing.T) {
	if target := os.Getenv("KUBELET_PROXY_CHILD_GET"); target != "" {
		got, err := get(t, http.DefaultClient, target)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Printf("child got %q\n", got)
		return
	}
	a := NewAddressMap()
	a.Set("10.244.0.30:5984", podServer(t, "db-2").Listener.Addr().String())
	p, err := a.ServeProxy()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	cmd := exec.CommandContext(t.Context(), os.Args[0], "-test.run=^TestProxyFromEnvironment$", "-test.v")
	for k, v := range map[string]string{"NO_PROXY": "10.244.0.0/16", "no_proxy": "10.244.0.30", "HTTP_PROXY": "http://127.0.0.1:1",
		"http_proxy": "http://127.0.0.1:1", "HTTPS_PROXY": "http://127.0.0.1:1", "ALL_PROXY": "socks5://127.0.0.1:1"} {
		t.Setenv(k, v)
	}
	env := p.Env(os.Environ())
	for _, kv := range env {
		if k, v, _ := strings.Cut(kv, "="); strings.EqualFold(k, "no_proxy") || strings.Contains(v, "127.0.0.1:1") {
			t.Fatalf("Env kept %s (the child would not be started: it could dial a pod address directly)", kv)
		}
	}
	cmd.Env = append(env, "KUBELET_PROXY_CHILD_GET=http://10.244.0.30:5984/_up")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), `child got "db-2 /_up"`) {
		t.Fatalf("child: %v\n%s", err, out)
	}
}
