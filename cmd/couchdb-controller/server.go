package main

import (
	"encoding/json"
	"net/http"
	"net/http/pprof"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/couchdb-controller/couchdb-controller/controller"
)

// statusSource is what the status API reads; *controller.Controller implements it.
type statusSource interface {
	Clusters() []controller.ClusterStatus
	Cluster(namespace, name string) (controller.ClusterStatus, bool)
	HasSynced() bool
}

// metricsMux serves /metrics and the status API on the metrics address.
func metricsMux(reg prometheus.Gatherer, src statusSource) *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /clusters", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]any{"clusters": src.Clusters()})
	})
	mux.HandleFunc("GET /clusters/{namespace}/{name}", func(w http.ResponseWriter, r *http.Request) {
		s, ok := src.Cluster(r.PathValue("namespace"), r.PathValue("name"))
		if !ok {
			writeJSON(w, http.StatusNotFound, map[string]string{"error": "not_found", "reason": "no such cluster"})
			return
		}
		writeJSON(w, http.StatusOK, s)
	})
	return mux
}

// withProfiling adds net/http/pprof's handlers when asked: off by default, since profiles show
// internals (never credentials, which only live in request headers) to whoever reaches the port.
func withProfiling(mux *http.ServeMux, on bool) *http.ServeMux {
	if on {
		mux.HandleFunc("GET /debug/pprof/", pprof.Index)
		mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	}
	return mux
}

// probeMux serves /healthz (with the leader-election watchdog when given) and /readyz.
func probeMux(src statusSource, healthz func(*http.Request) error) *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		if healthz != nil {
			if err := healthz(r); err != nil {
				http.Error(w, err.Error(), http.StatusInternalServerError)
				return
			}
		}
		_, _ = w.Write([]byte("ok"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if src == nil || !src.HasSynced() {
			http.Error(w, "caches not synced", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok"))
	})
	return mux
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}
