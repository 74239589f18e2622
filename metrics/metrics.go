// Package metrics owns every Prometheus series the controller exports, under couchdb_controller_.
// It knows nothing of CouchDB: callers pass plain names, states and counts.
package metrics

import (
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
	clusters      *clusterCollector
	shardMoves    *prometheus.CounterVec
	syncs         *prometheus.CounterVec
	syncDuration  prometheus.Histogram
	actions       *prometheus.CounterVec
	couchRequests *prometheus.CounterVec
	couchDuration *prometheus.HistogramVec
	kubeRequests  *prometheus.CounterVec
	kubeThrottle  prometheus.Histogram
	leader        prometheus.Gauge
	workqueue     *workqueueMetrics
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
		clusters: newClusterCollector(),
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
		leader: f.NewGauge(prometheus.GaugeOpts(opts("leader", "1 while this replica holds the leader lease."))),
	}
	reg.MustRegister(r.clusters)
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
	r.clusters.update(ns, cluster, func(rec *clusterRecord) { setPods(rec, podStates) })
}

// SetClusterNodes records desired, member and reachable node counts.
func (r *Recorder) SetClusterNodes(ns, cluster string, desired, member, reachable int) {
	r.clusters.update(ns, cluster, func(rec *clusterRecord) {
		rec.nodes, rec.hasNodes = [3]float64{float64(desired), float64(member), float64(reachable)}, true
	})
}

// SetClusterFormed records whether setup is finished.
func (r *Recorder) SetClusterFormed(ns, cluster string, formed bool) {
	r.clusters.update(ns, cluster, func(rec *clusterRecord) { rec.formed, rec.hasFormed = b2f(formed), true })
}

// SetClusterPhase sets the cluster's phase (one of Phases); as for node_state, only the current
// phase has a series.
func (r *Recorder) SetClusterPhase(ns, cluster, phase string) {
	r.clusters.update(ns, cluster, func(rec *clusterRecord) { rec.phase = phase })
}

// SetShardRanges records shard range health counts. zoneViolation overlaps the other three: a
// healthy range can have all its copies in one zone.
func (r *Recorder) SetShardRanges(ns, cluster string, healthy, underReplicated, unavailable, zoneViolation int) {
	r.clusters.update(ns, cluster, func(rec *clusterRecord) {
		rec.ranges = [4]float64{float64(healthy), float64(underReplicated), float64(unavailable), float64(zoneViolation)}
		rec.hasRanges = true
	})
}

// ConfigDriftKeys are the values of config_drift's key label.
var ConfigDriftKeys = []string{"couchdb.uuid", "chttpd_auth.secret", "cluster.n", "cluster.q"}

// SetConfigDrift sets config_drift for every key of ConfigDriftKeys: 1 for those in drifting, else 0.
func (r *Recorder) SetConfigDrift(ns, cluster string, drifting map[string]bool) {
	r.clusters.update(ns, cluster, func(rec *clusterRecord) {
		for i, k := range ConfigDriftKeys {
			rec.drift[i] = drifting[k]
		}
		rec.hasDrift = true
	})
}

// ConfigDriftGauge exposes one series for tests of callers.
func (r *Recorder) ConfigDriftGauge(ns, cluster, key string) prometheus.Collector {
	return one{r.clusters, clusterKey{ns, cluster}, r.clusters.configDrift, key}
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
func (r *Recorder) ForgetCluster(ns, cluster string) { r.clusters.forget(ns, cluster) }

// ClusterFormedGauge exposes one series for tests of callers.
func (r *Recorder) ClusterFormedGauge(ns, cluster string) prometheus.Collector {
	return one{r.clusters, clusterKey{ns, cluster}, r.clusters.clusterFormed, cluster}
}
