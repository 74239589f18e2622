// Package metrics owns every Prometheus series the controller exports, under couchdb_controller_.
// It knows nothing of CouchDB: callers pass plain names, states and counts.
package metrics

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

const (
	namespace = "couchdb"
	subsystem = "controller"
)

// NodeStates are the values of node_state's state label.
var NodeStates = []string{"pending", "joining", "member", "draining", "departed", "unreachable", "invalid"}

// Phases are the values of cluster_phase's phase label.
var Phases = []string{"Forming", "Ready", "Scaling", "Degraded", "Paused"}

// Recorder records the controller's metrics on one registry.
type Recorder struct {
	joinDuration  prometheus.Histogram
	formDuration  prometheus.Histogram
	nodeState     *prometheus.GaugeVec
	clusterNodes  *prometheus.GaugeVec
	clusterFormed *prometheus.GaugeVec
	clusterPhase  *prometheus.GaugeVec
	shardRanges   *prometheus.GaugeVec
	shardMoves    *prometheus.CounterVec
	configDrift   *prometheus.GaugeVec
	syncs         *prometheus.CounterVec
	syncDuration  prometheus.Histogram
	actions       *prometheus.CounterVec
	couchRequests *prometheus.CounterVec
	couchDuration *prometheus.HistogramVec
	kubeRequests  *prometheus.CounterVec
	kubeThrottle  prometheus.Histogram
	leader        prometheus.Gauge
	workqueue     *workqueueMetrics

	mu            sync.Mutex                       // guards podsByCluster and phases; workers record concurrently
	podsByCluster map[clusterKey]map[string]string // pod -> the state its series shows
	phases        map[clusterKey]string
}

type clusterKey struct{ namespace, cluster string }

// New builds every metric and registers it on reg.
func New(reg prometheus.Registerer) *Recorder {
	f := promauto.With(reg)
	opts := func(name, help string) prometheus.Opts {
		return prometheus.Opts{Namespace: namespace, Subsystem: subsystem, Name: name, Help: help}
	}
	r := &Recorder{
		joinDuration: f.NewHistogram(prometheus.HistogramOpts{Namespace: namespace, Subsystem: subsystem,
			Name: "node_join_duration_seconds", Help: "Time from a pod's containers becoming ready to its CouchDB node being a cluster member.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}}),
		formDuration: f.NewHistogram(prometheus.HistogramOpts{Namespace: namespace, Subsystem: subsystem,
			Name: "cluster_formation_duration_seconds", Help: "Time from the last pod of a new cluster becoming ready to finish_cluster succeeding.",
			Buckets: []float64{.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300}}),
		nodeState: f.NewGaugeVec(prometheus.GaugeOpts(opts("node_state",
			"State of each CouchDB pod: one series per pod, valued 1, labelled with its current state (a change of state replaces the series).")), []string{"namespace", "cluster", "pod", "state"}),
		clusterNodes: f.NewGaugeVec(prometheus.GaugeOpts(opts("cluster_nodes",
			"CouchDB nodes per cluster: desired (spec.replicas), member (in _membership), reachable (answering HTTP).")), []string{"namespace", "cluster", "kind"}),
		clusterFormed: f.NewGaugeVec(prometheus.GaugeOpts(opts("cluster_formed",
			"1 once the cluster's setup is finished.")), []string{"namespace", "cluster"}),
		clusterPhase: f.NewGaugeVec(prometheus.GaugeOpts(opts("cluster_phase",
			"Phase of each cluster: one series per cluster, valued 1, labelled with its current phase (a change of phase replaces the series).")), []string{"namespace", "cluster", "phase"}),
		shardRanges: f.NewGaugeVec(prometheus.GaugeOpts(opts("shard_ranges",
			"Shard ranges of all databases by health: healthy, under_replicated (fewer live copies than the database's n), unavailable (no live copy); zone_violation counts, among them, the ranges whose copies cover fewer zones than they could.")), []string{"namespace", "cluster", "state"}),
		configDrift: f.NewGaugeVec(prometheus.GaugeOpts(opts("config_drift",
			"1 when the cluster's members disagree about a config key that must be equal on all of them ([couchdb] uuid, [chttpd_auth] secret, [cluster] n and q), else 0.")), []string{"namespace", "cluster", "key"}),
		shardMoves: f.NewCounterVec(prometheus.CounterOpts(opts("shard_moves_total",
			"Shard copy additions and removals by result.")), []string{"result"}),
		syncs: f.NewCounterVec(prometheus.CounterOpts(opts("syncs_total",
			"Cluster syncs by result.")), []string{"result"}),
		syncDuration: f.NewHistogram(prometheus.HistogramOpts{Namespace: namespace, Subsystem: subsystem,
			Name: "sync_duration_seconds", Help: "Duration of one cluster sync.", Buckets: prometheus.ExponentialBuckets(0.001, 2.5, 12)}),
		actions: f.NewCounterVec(prometheus.CounterOpts(opts("actions_total",
			"Actions applied to CouchDB or Kubernetes by kind and result.")), []string{"action", "result"}),
		couchRequests: f.NewCounterVec(prometheus.CounterOpts(opts("couchdb_requests_total",
			"HTTP requests to CouchDB by method and status code.")), []string{"method", "code"}),
		couchDuration: f.NewHistogramVec(prometheus.HistogramOpts{Namespace: namespace, Subsystem: subsystem,
			Name: "couchdb_request_duration_seconds", Help: "Duration of HTTP requests to CouchDB.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 3, 11)}, []string{"method"}),
		kubeRequests: f.NewCounterVec(prometheus.CounterOpts(opts("kube_api_requests_total",
			"Requests to the Kubernetes API by method and status code.")), []string{"method", "code"}),
		kubeThrottle: f.NewHistogram(prometheus.HistogramOpts{Namespace: namespace, Subsystem: subsystem,
			Name: "kube_api_throttle_seconds", Help: "Time Kubernetes API requests waited for the controller's own rate limiter (--kube-api-qps, --kube-api-burst).",
			Buckets: []float64{.001, .01, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}}),
		leader:        f.NewGauge(prometheus.GaugeOpts(opts("leader", "1 while this replica holds the leader lease."))),
		podsByCluster: map[clusterKey]map[string]string{},
		phases:        map[clusterKey]string{},
	}
	r.workqueue = newWorkqueueMetrics(f)
	return r
}

// ObserveJoin records one node's join latency.
func (r *Recorder) ObserveJoin(d time.Duration) { r.joinDuration.Observe(d.Seconds()) }

// ObserveFormation records how long a new cluster took to be finished once all its pods were ready.
func (r *Recorder) ObserveFormation(d time.Duration) { r.formDuration.Observe(d.Seconds()) }

// SetNodeStates replaces the cluster's pod series with podStates (pod -> state). Only the current
// state of each pod has a series (value 1): with thousands of pods, a series per possible state
// would be most of the controller's memory, and every query (== 1, sum by state) works the same.
func (r *Recorder) SetNodeStates(ns, cluster string, podStates map[string]string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	k := clusterKey{ns, cluster}
	prev := r.podsByCluster[k]
	for pod, old := range prev {
		if podStates[pod] != old {
			r.nodeState.DeleteLabelValues(ns, cluster, pod, old)
		}
	}
	now := make(map[string]string, len(podStates))
	for pod, state := range podStates {
		now[pod] = state
		if prev[pod] != state {
			r.nodeState.WithLabelValues(ns, cluster, pod, state).Set(1)
		}
	}
	r.podsByCluster[k] = now
}

// SetClusterNodes records desired, member and reachable node counts.
func (r *Recorder) SetClusterNodes(ns, cluster string, desired, member, reachable int) {
	r.clusterNodes.WithLabelValues(ns, cluster, "desired").Set(float64(desired))
	r.clusterNodes.WithLabelValues(ns, cluster, "member").Set(float64(member))
	r.clusterNodes.WithLabelValues(ns, cluster, "reachable").Set(float64(reachable))
}

// SetClusterFormed records whether setup is finished.
func (r *Recorder) SetClusterFormed(ns, cluster string, formed bool) {
	v := 0.0
	if formed {
		v = 1
	}
	r.clusterFormed.WithLabelValues(ns, cluster).Set(v)
}

// SetClusterPhase sets the cluster's phase (one of Phases); as for node_state, only the current
// phase has a series.
func (r *Recorder) SetClusterPhase(ns, cluster, phase string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	k := clusterKey{ns, cluster}
	if old, ok := r.phases[k]; ok && old != phase {
		r.clusterPhase.DeleteLabelValues(ns, cluster, old)
	}
	if r.phases[k] != phase {
		r.clusterPhase.WithLabelValues(ns, cluster, phase).Set(1)
		r.phases[k] = phase
	}
}

// SetShardRanges records shard range health counts. zoneViolation overlaps the other three: a
// healthy range can have all its copies in one zone.
func (r *Recorder) SetShardRanges(ns, cluster string, healthy, underReplicated, unavailable, zoneViolation int) {
	r.shardRanges.WithLabelValues(ns, cluster, "healthy").Set(float64(healthy))
	r.shardRanges.WithLabelValues(ns, cluster, "under_replicated").Set(float64(underReplicated))
	r.shardRanges.WithLabelValues(ns, cluster, "unavailable").Set(float64(unavailable))
	r.shardRanges.WithLabelValues(ns, cluster, "zone_violation").Set(float64(zoneViolation))
}

// ConfigDriftKeys are the values of config_drift's key label.
var ConfigDriftKeys = []string{"couchdb.uuid", "chttpd_auth.secret", "cluster.n", "cluster.q"}

// SetConfigDrift sets config_drift for every key of ConfigDriftKeys: 1 for those in drifting, else 0.
func (r *Recorder) SetConfigDrift(ns, cluster string, drifting map[string]bool) {
	for _, k := range ConfigDriftKeys {
		v := 0.0
		if drifting[k] {
			v = 1
		}
		r.configDrift.WithLabelValues(ns, cluster, k).Set(v)
	}
}

// ConfigDriftGauge exposes one series for tests of callers.
func (r *Recorder) ConfigDriftGauge(ns, cluster, key string) prometheus.Gauge {
	return r.configDrift.WithLabelValues(ns, cluster, key)
}

// ShardMove counts one shard copy change.
func (r *Recorder) ShardMove(result string) { r.shardMoves.WithLabelValues(result).Inc() }

// ObserveSync records one sync.
func (r *Recorder) ObserveSync(result string, d time.Duration) {
	r.syncs.WithLabelValues(result).Inc()
	r.syncDuration.Observe(d.Seconds())
}

// Action counts one applied action.
func (r *Recorder) Action(action, result string) { r.actions.WithLabelValues(action, result).Inc() }

// SetLeader records leadership.
func (r *Recorder) SetLeader(leader bool) {
	v := 0.0
	if leader {
		v = 1
	}
	r.leader.Set(v)
}

// ForgetCluster deletes every series of one cluster.
func (r *Recorder) ForgetCluster(ns, cluster string) {
	l := prometheus.Labels{"namespace": ns, "cluster": cluster}
	r.nodeState.DeletePartialMatch(l)
	r.clusterNodes.DeletePartialMatch(l)
	r.clusterFormed.DeletePartialMatch(l)
	r.clusterPhase.DeletePartialMatch(l)
	r.shardRanges.DeletePartialMatch(l)
	r.configDrift.DeletePartialMatch(l)
	r.mu.Lock()
	delete(r.podsByCluster, clusterKey{ns, cluster})
	delete(r.phases, clusterKey{ns, cluster})
	r.mu.Unlock()
}

// ClusterFormedGauge exposes one series for tests of callers.
func (r *Recorder) ClusterFormedGauge(ns, cluster string) prometheus.Gauge {
	return r.clusterFormed.WithLabelValues(ns, cluster)
}
