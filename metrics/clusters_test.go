package metrics

import (
	"fmt"
	"runtime"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestClusterSeriesExposition: the per-cluster series read exactly as the GaugeVecs they replace
// did: names, help, labels and values, a series only once its setter ran, and a change of state or
// phase replacing the series.
func TestClusterSeriesExposition(t *testing.T) {
	names := []string{"couchdb_controller_node_state", "couchdb_controller_cluster_nodes", "couchdb_controller_cluster_formed",
		"couchdb_controller_cluster_phase", "couchdb_controller_shard_ranges", "couchdb_controller_config_drift"}
	help := map[string]string{
		"node_state":     "State of each CouchDB pod: one series per pod, valued 1, labelled with its current state (a change of state replaces the series).",
		"cluster_nodes":  "CouchDB nodes per cluster: desired (spec.replicas), member (in _membership), reachable (answering HTTP).",
		"cluster_formed": "1 once the cluster's setup is finished.",
		"cluster_phase":  "Phase of each cluster: one series per cluster, valued 1, labelled with its current phase (a change of phase replaces the series).",
		"shard_ranges":   "Shard ranges of all databases by health: healthy, under_replicated (fewer live copies than the database's n), unavailable (no live copy); zone_violation counts, among them, the ranges whose copies cover fewer zones than they could.",
		"config_drift":   "1 when the cluster's members disagree about a config key that must be equal on all of them ([couchdb] uuid, [chttpd_auth] secret, [cluster] n and q), else 0.",
	}
	head := func(name string) string {
		return fmt.Sprintf("# HELP couchdb_controller_%s %s\n# TYPE couchdb_controller_%s gauge\n", name, help[name], name)
	}
	tests := []struct {
		name   string
		record func(r *Recorder)
		want   string
	}{
		{"nothing recorded", func(*Recorder) {}, ""},
		{"node states only", func(r *Recorder) {
			r.SetNodeStates("ns", "c", map[string]string{"db-1": "joining", "db-0": "member"})
		}, head("node_state") +
			`couchdb_controller_node_state{cluster="c",namespace="ns",pod="db-0",state="member"} 1` + "\n" +
			`couchdb_controller_node_state{cluster="c",namespace="ns",pod="db-1",state="joining"} 1` + "\n"},
		{"a change of state and phase replaces the series; a pod gone loses it", func(r *Recorder) {
			r.SetNodeStates("ns", "c", map[string]string{"db-0": "member", "db-1": "joining"})
			r.SetClusterPhase("ns", "c", "Forming")
			r.SetNodeStates("ns", "c", map[string]string{"db-0": "unreachable"})
			r.SetClusterPhase("ns", "c", "Degraded")
		}, head("node_state") +
			`couchdb_controller_node_state{cluster="c",namespace="ns",pod="db-0",state="unreachable"} 1` + "\n" +
			head("cluster_phase") +
			`couchdb_controller_cluster_phase{cluster="c",namespace="ns",phase="Degraded"} 1` + "\n"},
		{"every series of two clusters, one forgotten", func(r *Recorder) {
			for _, c := range []string{"a", "b"} {
				r.SetNodeStates("ns", c, map[string]string{c + "-0": "member"})
				r.SetClusterNodes("ns", c, 3, 2, 1)
				r.SetClusterFormed("ns", c, c == "b")
				r.SetClusterPhase("ns", c, "Ready")
				r.SetShardRanges("ns", c, 4, 3, 2, 1)
				r.SetConfigDrift("ns", c, map[string]bool{"cluster.q": true})
			}
			r.ForgetCluster("ns", "a")
		}, head("node_state") +
			`couchdb_controller_node_state{cluster="b",namespace="ns",pod="b-0",state="member"} 1` + "\n" +
			head("cluster_nodes") +
			`couchdb_controller_cluster_nodes{cluster="b",kind="desired",namespace="ns"} 3` + "\n" +
			`couchdb_controller_cluster_nodes{cluster="b",kind="member",namespace="ns"} 2` + "\n" +
			`couchdb_controller_cluster_nodes{cluster="b",kind="reachable",namespace="ns"} 1` + "\n" +
			head("cluster_formed") +
			`couchdb_controller_cluster_formed{cluster="b",namespace="ns"} 1` + "\n" +
			head("cluster_phase") +
			`couchdb_controller_cluster_phase{cluster="b",namespace="ns",phase="Ready"} 1` + "\n" +
			head("shard_ranges") +
			`couchdb_controller_shard_ranges{cluster="b",namespace="ns",state="healthy"} 4` + "\n" +
			`couchdb_controller_shard_ranges{cluster="b",namespace="ns",state="under_replicated"} 3` + "\n" +
			`couchdb_controller_shard_ranges{cluster="b",namespace="ns",state="unavailable"} 2` + "\n" +
			`couchdb_controller_shard_ranges{cluster="b",namespace="ns",state="zone_violation"} 1` + "\n" +
			head("config_drift") +
			`couchdb_controller_config_drift{cluster="b",key="chttpd_auth.secret",namespace="ns"} 0` + "\n" +
			`couchdb_controller_config_drift{cluster="b",key="cluster.n",namespace="ns"} 0` + "\n" +
			`couchdb_controller_config_drift{cluster="b",key="cluster.q",namespace="ns"} 1` + "\n" +
			`couchdb_controller_config_drift{cluster="b",key="couchdb.uuid",namespace="ns"} 0` + "\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reg := prometheus.NewRegistry()
			r := New(reg)
			tt.record(r)
			if err := testutil.GatherAndCompare(reg, strings.NewReader(tt.want), names...); err != nil {
				t.Error(err)
			}
		})
	}
}

// TestOneSeriesCollectors: the single-series collectors of callers' tests read their own series.
func TestOneSeriesCollectors(t *testing.T) {
	r := New(prometheus.NewRegistry())
	r.SetClusterFormed("ns", "a", true)
	r.SetClusterFormed("ns", "b", false)
	r.SetConfigDrift("ns", "a", map[string]bool{"cluster.n": true})
	for _, tt := range []struct {
		name string
		col  prometheus.Collector
		want float64
	}{
		{"formed a", r.ClusterFormedGauge("ns", "a"), 1},
		{"formed b", r.ClusterFormedGauge("ns", "b"), 0},
		{"drift a cluster.n", r.ConfigDriftGauge("ns", "a", "cluster.n"), 1},
		{"drift a cluster.q", r.ConfigDriftGauge("ns", "a", "cluster.q"), 0},
	} {
		if got := testutil.ToFloat64(tt.col); got != tt.want {
			t.Errorf("%s = %v, want %v", tt.name, got, tt.want)
		}
	}
}

// TestClusterSeriesHeap bounds what the per-cluster series keep between scrapes: 1,000 clusters of
// four pods, every setter called, as a fleet run records them. As GaugeVec children they kept about
// 10,261 bytes per cluster (this test at 283de01); now under 400.
func TestClusterSeriesHeap(t *testing.T) {
	const clusters = 1000
	pods := make([][]string, clusters) // the caller's pod names, held by it anyway
	for i := range pods {
		for j := range 4 {
			pods[i] = append(pods[i], fmt.Sprintf("db-%d", j))
		}
	}
	r := New(prometheus.NewRegistry())
	heap := func() int64 {
		runtime.GC()
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return int64(m.HeapAlloc)
	}
	before := heap()
	for i := range clusters {
		c := fmt.Sprintf("cluster-%04d", i)
		states := map[string]string{}
		for _, p := range pods[i] {
			states[p] = "member"
		}
		r.SetNodeStates("ns", c, states)
		r.SetClusterNodes("ns", c, 4, 4, 4)
		r.SetClusterFormed("ns", c, true)
		r.SetClusterPhase("ns", c, "Ready")
		r.SetShardRanges("ns", c, 16, 0, 0, 0)
		r.SetConfigDrift("ns", c, nil)
	}
	perCluster := float64(heap()-before) / clusters
	runtime.KeepAlive(r)
	runtime.KeepAlive(pods)
	t.Logf("per-cluster series keep %.0f bytes per cluster", perCluster)
	if perCluster > 1024 {
		t.Errorf("per-cluster series keep %.0f bytes per cluster, want under 1 KB", perCluster)
	}
}

// TestScrapeWhileRecording: scrapes run alongside the workers' updates (run with -race).
func TestScrapeWhileRecording(t *testing.T) {
	reg := prometheus.NewRegistry()
	r := New(reg)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 500 {
			c := fmt.Sprintf("c%d", i%20)
			r.SetNodeStates("ns", c, map[string]string{"db-0": NodeStates[i%len(NodeStates)], "db-1": "member"})
			r.SetClusterPhase("ns", c, Phases[i%len(Phases)])
			if i%50 == 0 {
				r.ForgetCluster("ns", c)
			}
		}
	}()
	for scrapes := 0; ; scrapes++ {
		if _, err := reg.Gather(); err != nil {
			t.Fatal(err)
		}
		select {
		case <-done:
			return
		default:
		}
	}
}
