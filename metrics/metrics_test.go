package metrics

import (
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestRegistryLints(t *testing.T) {
	reg := prometheus.NewRegistry()
	r := New(reg)
	exercise(r)
	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint %s: %s", p.Metric, p.Text)
	}
}

func exercise(r *Recorder) {
	r.ObserveJoin(30 * time.Millisecond)
	r.SetNodeStates("ns", "c", map[string]string{"db-0": "member"})
	r.SetClusterNodes("ns", "c", 3, 2, 3)
	r.SetClusterFormed("ns", "c", true)
	r.SetClusterPhase("ns", "c", "Ready")
	r.SetShardRanges("ns", "c", 4, 1, 0)
	r.ShardMove("added")
	r.ObserveSync("success", time.Millisecond)
	r.Action("AddNode", "success")
	r.SetLeader(true)
	r.kubeRequests.WithLabelValues("GET", "200").Inc()
	p := r.WorkqueueProvider()
	p.NewDepthMetric("couchdb").Inc()
	p.NewAddsMetric("couchdb").Inc()
	p.NewLatencyMetric("couchdb").Observe(1)
	p.NewWorkDurationMetric("couchdb").Observe(1)
	p.NewUnfinishedWorkSecondsMetric("couchdb").Set(1)
	p.NewLongestRunningProcessorSecondsMetric("couchdb").Set(1)
	p.NewRetriesMetric("couchdb").Inc()
}

func TestStateSetsHaveExactlyOneState(t *testing.T) {
	r := New(prometheus.NewRegistry())
	r.SetNodeStates("ns", "c", map[string]string{"db-0": "member", "db-1": "joining"})
	cases := []struct {
		pod, state string
		want       float64
	}{
		{"db-0", "member", 1}, {"db-0", "joining", 0}, {"db-1", "joining", 1}, {"db-1", "member", 0},
	}
	for _, c := range cases {
		if got := testutil.ToFloat64(r.nodeState.WithLabelValues("ns", "c", c.pod, c.state)); got != c.want {
			t.Errorf("%s %s = %v, want %v", c.pod, c.state, got, c.want)
		}
	}
	// A pod that disappears loses its series.
	r.SetNodeStates("ns", "c", map[string]string{"db-0": "member"})
	if n := testutil.CollectAndCount(r.nodeState); n != len(NodeStates) {
		t.Errorf("series after db-1 left = %d, want %d", n, len(NodeStates))
	}
	r.SetClusterPhase("ns", "c", "Forming")
	r.SetClusterPhase("ns", "c", "Ready")
	if got := testutil.ToFloat64(r.clusterPhase.WithLabelValues("ns", "c", "Forming")); got != 0 {
		t.Errorf("old phase still 1")
	}
}

func TestForgetClusterRemovesOnlyThatCluster(t *testing.T) {
	r := New(prometheus.NewRegistry())
	for _, c := range []string{"a", "b"} {
		r.SetNodeStates("ns", c, map[string]string{c + "-0": "member"})
		r.SetClusterNodes("ns", c, 1, 1, 1)
		r.SetClusterFormed("ns", c, true)
		r.SetClusterPhase("ns", c, "Ready")
		r.SetShardRanges("ns", c, 1, 0, 0)
	}
	r.ForgetCluster("ns", "a")
	for name, col := range map[string]prometheus.Collector{"node_state": r.nodeState, "cluster_nodes": r.clusterNodes,
		"cluster_formed": r.clusterFormed, "cluster_phase": r.clusterPhase, "shard_ranges": r.shardRanges} {
		var left, total int
		ch := make(chan prometheus.Metric, 100)
		col.Collect(ch)
		close(ch)
		for m := range ch {
			total++
			if metricHasLabel(m, "cluster", "a") {
				left++
			}
		}
		if left != 0 || total == 0 {
			t.Errorf("%s: %d series of cluster a left, %d total", name, left, total)
		}
	}
}

func TestRoundTripperCountsMethodAndCode(t *testing.T) {
	r := New(prometheus.NewRegistry())
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusConflict) }))
	defer srv.Close()
	c := &http.Client{Transport: r.InstrumentRoundTripper(http.DefaultTransport)}
	req, _ := http.NewRequest(http.MethodPut, srv.URL, nil)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if got := testutil.ToFloat64(r.couchRequests.WithLabelValues("put", "409")); got != 1 {
		t.Errorf("couchdb_requests_total{method=put,code=409} = %v, want 1", got)
	}
}
