package main

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/couchdb-controller/couchdb-controller/controller"
)

type fakeSource struct {
	synced   bool
	clusters []controller.ClusterStatus
}

func (f *fakeSource) Clusters() []controller.ClusterStatus { return f.clusters }
func (f *fakeSource) Cluster(ns, name string) (controller.ClusterStatus, bool) {
	for _, c := range f.clusters {
		if c.Namespace == ns && c.Name == name {
			return c, true
		}
	}
	return controller.ClusterStatus{}, false
}
func (f *fakeSource) HasSynced() bool { return f.synced }

func do(t *testing.T, h http.Handler, method, path string) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(method, path, nil))
	b, _ := io.ReadAll(rec.Result().Body)
	return rec.Code, string(b)
}

func TestStatusAPI(t *testing.T) {
	src := &fakeSource{clusters: []controller.ClusterStatus{{Namespace: "ns", Name: "main", Phase: "Ready", Members: []string{"a@b"}}}}
	reg := prometheus.NewRegistry()
	reg.MustRegister(prometheus.NewCounter(prometheus.CounterOpts{Name: "couchdb_controller_test_total", Help: "t"}))
	h := metricsMux(reg, src)
	cases := []struct {
		method, path string
		code         int
		contains     string
	}{
		{"GET", "/clusters", 200, `"phase": "Ready"`},
		{"GET", "/clusters/ns/main", 200, `"members": [`},
		{"GET", "/clusters/ns/other", 404, `"not_found"`},
		{"POST", "/clusters", 405, ""},
		{"GET", "/metrics", 200, "couchdb_controller_test_total 0"},
	}
	for _, c := range cases {
		code, body := do(t, h, c.method, c.path)
		if code != c.code || !strings.Contains(body, c.contains) {
			t.Errorf("%s %s = %d %q, want %d containing %q", c.method, c.path, code, body, c.code, c.contains)
		}
		if c.code == 200 && strings.HasPrefix(c.path, "/clusters") {
			var v any
			if err := json.Unmarshal([]byte(body), &v); err != nil {
				t.Errorf("%s is not JSON: %v", c.path, err)
			}
		}
	}
}

func TestProbes(t *testing.T) {
	src := &fakeSource{}
	healthy := error(nil)
	h := probeMux(src, func(*http.Request) error { return healthy })
	if code, _ := do(t, h, "GET", "/readyz"); code != 503 {
		t.Errorf("readyz before sync = %d", code)
	}
	src.synced = true
	if code, _ := do(t, h, "GET", "/readyz"); code != 200 {
		t.Errorf("readyz after sync = %d", code)
	}
	if code, _ := do(t, h, "GET", "/healthz"); code != 200 {
		t.Errorf("healthz = %d", code)
	}
	healthy = errors.New("lease not renewed")
	if code, _ := do(t, h, "GET", "/healthz"); code != 500 {
		t.Errorf("healthz with a failing watchdog = %d", code)
	}
}

func TestWarningsShownOnce(t *testing.T) {
	w := &onceWarnings{}
	for range 3 {
		w.HandleWarningHeader(299, "", "v1 Endpoints is deprecated in v1.33+; use discovery.k8s.io/v1 EndpointSlice")
	}
	n := 0
	w.seen.Range(func(any, any) bool { n++; return true })
	if n != 1 {
		t.Errorf("%d distinct warnings remembered, want 1", n)
	}
}

func TestProfilingOnlyWhenAsked(t *testing.T) {
	for _, on := range []bool{false, true} {
		h := withProfiling(metricsMux(prometheus.NewRegistry(), &fakeSource{}), on)
		want := 404
		if on {
			want = 200
		}
		if code, _ := do(t, h, "GET", "/debug/pprof/"); code != want {
			t.Errorf("profiling %t: /debug/pprof/ = %d, want %d", on, code, want)
		}
		if code, body := do(t, h, "GET", "/debug/pprof/heap?debug=1"); on && (code != 200 || !strings.Contains(body, "heap profile")) {
			t.Errorf("heap profile = %d %.80q", code, body)
		}
	}
}
