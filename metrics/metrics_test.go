package metrics

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sort"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
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
	r.SetShardRanges("ns", "c", 4, 1, 0, 2)
	r.SetConfigDrift("ns", "c", map[string]bool{"couchdb.uuid": true})
	r.ShardMove("added")
	r.ObserveSync("success", time.Millisecond)
	r.Action("AddNode", "success")
	r.SetLeader(true)
	r.kubeRequests.WithLabelValues("GET", "200").Inc()
	r.KubeThrottled(time.Millisecond)
	p := r.WorkqueueProvider()
	p.NewDepthMetric("couchdb").Inc()
	p.NewAddsMetric("couchdb").Inc()
	p.NewLatencyMetric("couchdb").Observe(1)
	p.NewWorkDurationMetric("couchdb").Observe(1)
	p.NewUnfinishedWorkSecondsMetric("couchdb").Set(1)
	p.NewLongestRunningProcessorSecondsMetric("couchdb").Set(1)
	p.NewRetriesMetric("couchdb").Inc()
}

// TestStatesHaveOneSeriesEach: each pod (and each cluster) has exactly one series, for its current
// state (phase), valued 1; a change moves the series and a departed pod loses it.
func TestStatesHaveOneSeriesEach(t *testing.T) {
	r := New(prometheus.NewRegistry())
	steps := []struct {
		states map[string]string
		phase  string
		want   []string
	}{
		{map[string]string{"db-0": "member", "db-1": "joining"}, "Forming",
			[]string{"phase Forming=1", "db-0 member=1", "db-1 joining=1"}},
		{map[string]string{"db-0": "member", "db-1": "member"}, "Ready",
			[]string{"phase Ready=1", "db-0 member=1", "db-1 member=1"}},
		{map[string]string{"db-0": "member"}, "Ready",
			[]string{"phase Ready=1", "db-0 member=1"}},
		{map[string]string{"db-0": "unreachable"}, "Degraded",
			[]string{"phase Degraded=1", "db-0 unreachable=1"}},
	}
	for i, st := range steps {
		r.SetNodeStates("ns", "c", st.states)
		r.SetClusterPhase("ns", "c", st.phase)
		got := series(t, r, r.clusters.clusterPhase, "phase")
		got = append(got, series(t, r, r.clusters.nodeState, "pod")...)
		if diff := cmp.Diff(st.want, got); diff != "" {
			t.Errorf("step %d (-want +got):\n%s", i, diff)
		}
	}
}

// series lists the series of desc as "<first label> <last label>=<value>", sorted after the phase.
func series(t *testing.T, r *Recorder, desc *prometheus.Desc, first string) []string {
	t.Helper()
	var out []string
	for _, m := range collected(r, desc) {
		var d dto.Metric
		if err := m.Write(&d); err != nil {
			t.Fatal(err)
		}
		labels := map[string]string{}
		for _, l := range d.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		key := labels[first]
		if first == "phase" {
			key = "phase"
		}
		last := labels["state"]
		if first == "phase" {
			last = labels["phase"]
		}
		out = append(out, fmt.Sprintf("%s %s=%g", key, last, d.GetGauge().GetValue()))
	}
	sort.Strings(out)
	return out
}

func TestForgetClusterRemovesOnlyThatCluster(t *testing.T) {
	r := New(prometheus.NewRegistry())
	for _, c := range []string{"a", "b"} {
		r.SetNodeStates("ns", c, map[string]string{c + "-0": "member"})
		r.SetClusterNodes("ns", c, 1, 1, 1)
		r.SetClusterFormed("ns", c, true)
		r.SetClusterPhase("ns", c, "Ready")
		r.SetShardRanges("ns", c, 1, 0, 0, 0)
		r.SetConfigDrift("ns", c, map[string]bool{"cluster.q": true})
	}
	r.ForgetCluster("ns", "a")
	c := r.clusters
	for name, desc := range map[string]*prometheus.Desc{"node_state": c.nodeState, "cluster_nodes": c.clusterNodes,
		"cluster_formed": c.clusterFormed, "cluster_phase": c.clusterPhase, "shard_ranges": c.shardRanges, "config_drift": c.configDrift} {
		var left, total int
		for _, m := range collected(r, desc) {
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

// TestKubeThrottleCountsTheClientRateLimiter: requests made faster than --kube-api-qps allows show
// their wait in kube_api_throttle_seconds, so a throttled controller is visible.
func TestKubeThrottleCountsTheClientRateLimiter(t *testing.T) {
	reg := prometheus.NewRegistry()
	r := New(reg)
	r.RegisterClientGoMetrics()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"kind":"Namespace","apiVersion":"v1","metadata":{"name":"x"}}`)
	}))
	defer srv.Close()
	kube, err := kubernetes.NewForConfig(&rest.Config{Host: srv.URL, QPS: 20, Burst: 1})
	if err != nil {
		t.Fatal(err)
	}
	const requests = 5
	for range requests {
		if _, err := kube.CoreV1().Namespaces().Get(context.Background(), "x", metav1.GetOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	var m dto.Metric
	if err := r.kubeThrottle.Write(&m); err != nil {
		t.Fatal(err)
	}
	// Burst 1 at 20/s: the four requests after the first wait about 50 ms each.
	if got := m.GetHistogram().GetSampleCount(); got != requests {
		t.Errorf("throttle observations = %d, want %d (one per request)", got, requests)
	}
	if sum := m.GetHistogram().GetSampleSum(); sum < 0.15 || sum > 2 {
		t.Errorf("throttle sum = %.3fs, want about 0.2s for 4 requests over a burst of 1 at 20/s", sum)
	}
}
