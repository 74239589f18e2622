package kubelet

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
)

// podServer is a loopback server that says who it is.
func podServer(t *testing.T, name string) *httptest.Server {
	t.Helper()
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, name+" "+r.URL.Path)
	}))
	t.Cleanup(s.Close)
	return s
}

func get(t *testing.T, c *http.Client, url string) (string, error) {
	t.Helper()
	req, err := http.NewRequestWithContext(context.Background(), http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

func TestAddressMapDial(t *testing.T) {
	a := NewAddressMap()
	s0, s1 := podServer(t, "db-0"), podServer(t, "db-1")
	a.Set("10.244.0.10:5984", s0.Listener.Addr().String())
	a.Set("10.244.0.11:5984", s1.Listener.Addr().String())
	c := &http.Client{Transport: a.Transport()}
	for url, want := range map[string]string{
		"http://10.244.0.10:5984/_up": "db-0 /_up",
		"http://10.244.0.11:5984/_up": "db-1 /_up",
	} {
		if got, err := get(t, c, url); err != nil || got != want {
			t.Errorf("GET %s = %q, %v; want %q", url, got, err, want)
		}
	}
	// Unmapped addresses (another port, another IP, a real host) are refused, never dialled.
	for _, addr := range []string{"10.244.0.10:80", "10.244.0.12:5984", s0.Listener.Addr().String()} {
		_, err := a.DialContext(context.Background(), "tcp", addr)
		var ue *UnmappedError
		if !errors.As(err, &ue) || ue.Addr != addr {
			t.Errorf("dial %s: %v, want UnmappedError", addr, err)
		}
	}
	a.Delete("10.244.0.11:5984")
	if _, err := get(t, c, "http://10.244.0.11:5984/_up"); err == nil {
		t.Error("a deleted mapping still answers")
	}
	if a.Len() != 1 {
		t.Errorf("Len = %d, want 1", a.Len())
	}
}
