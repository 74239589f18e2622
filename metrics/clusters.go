package metrics

import (
	"slices"
	"strings"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// The per-cluster series (node_state, cluster_nodes, cluster_formed, cluster_phase, shard_ranges,
// config_drift) are made at scrape time from one small record per cluster, as kube-state-metrics
// does for object state. As GaugeVec children they were about 17 series per cluster, each holding
// its label values, a label pair per label and a map entry: 10,261 bytes per cluster (see
// TestClusterSeriesHeap), about 10 MB of the controller's 57 MB heap at 1,000 clusters, and Go's
// collector lets the heap grow to twice what is live. The record holds the numbers and shares the
// pod names the caller already holds.

// clusterRecord is what one cluster's series show. A series appears once its setter has been
// called, as a GaugeVec child appears on its first Set.
type clusterRecord struct {
	pods      []podState // sorted by pod
	nodes     [3]float64 // desired, member, reachable
	hasNodes  bool
	formed    float64
	hasFormed bool
	phase     string
	ranges    [4]float64 // healthy, under_replicated, unavailable, zone_violation
	hasRanges bool
	drift     [4]bool // ConfigDriftKeys
	hasDrift  bool
}

type podState struct{ pod, state string }

var (
	clusterNodeKinds = []string{"desired", "member", "reachable"}
	rangeStates      = []string{"healthy", "under_replicated", "unavailable", "zone_violation"}
)

// clusterCollector keeps a clusterRecord per cluster and turns them into series when scraped.
type clusterCollector struct {
	nodeState, clusterNodes, clusterFormed, clusterPhase, shardRanges, configDrift *prometheus.Desc

	mu       sync.Mutex // workers record concurrently with each other and with scrapes
	clusters map[clusterKey]*clusterRecord
}

func newClusterCollector() *clusterCollector {
	desc := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(prometheus.BuildFQName(namespace, subsystem, name), help, append([]string{"namespace", "cluster"}, labels...), nil)
	}
	return &clusterCollector{
		nodeState: desc("node_state",
			"State of each CouchDB pod: one series per pod, valued 1, labelled with its current state (a change of state replaces the series).", "pod", "state"),
		clusterNodes: desc("cluster_nodes",
			"CouchDB nodes per cluster: desired (spec.replicas), member (in _membership), reachable (answering HTTP).", "kind"),
		clusterFormed: desc("cluster_formed", "1 once the cluster's setup is finished."),
		clusterPhase: desc("cluster_phase",
			"Phase of each cluster: one series per cluster, valued 1, labelled with its current phase (a change of phase replaces the series).", "phase"),
		shardRanges: desc("shard_ranges",
			"Shard ranges of all databases by health: healthy, under_replicated (fewer live copies than the database's n), unavailable (no live copy); zone_violation counts, among them, the ranges whose copies cover fewer zones than they could.", "state"),
		configDrift: desc("config_drift",
			"1 when the cluster's members disagree about a config key that must be equal on all of them ([couchdb] uuid, [chttpd_auth] secret, [cluster] n and q), else 0.", "key"),
		clusters: map[clusterKey]*clusterRecord{},
	}
}

// update runs f on the cluster's record, made on first use, under the lock.
func (c *clusterCollector) update(ns, cluster string, f func(*clusterRecord)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	k := clusterKey{ns, cluster}
	rec := c.clusters[k]
	if rec == nil {
		rec = &clusterRecord{}
		c.clusters[k] = rec
	}
	f(rec)
}

func (c *clusterCollector) forget(ns, cluster string) {
	c.mu.Lock()
	delete(c.clusters, clusterKey{ns, cluster})
	c.mu.Unlock()
}

// Describe implements prometheus.Collector.
func (c *clusterCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.nodeState, c.clusterNodes, c.clusterFormed, c.clusterPhase, c.shardRanges, c.configDrift} {
		ch <- d
	}
}

// Collect implements prometheus.Collector. It copies the records under the lock and makes the
// series after, so a scrape of thousands of series does not hold up the workers' syncs.
func (c *clusterCollector) Collect(ch chan<- prometheus.Metric) {
	type snap struct {
		k   clusterKey
		rec clusterRecord
	}
	c.mu.Lock()
	all := make([]snap, 0, len(c.clusters))
	for k, rec := range c.clusters {
		all = append(all, snap{k, *rec})
	}
	c.mu.Unlock()
	for i := range all {
		c.collect(ch, all[i].k, &all[i].rec, nil)
	}
}

// collect sends the series of one cluster; with keep, only those keep accepts (desc, last label).
func (c *clusterCollector) collect(ch chan<- prometheus.Metric, k clusterKey, rec *clusterRecord, keep func(*prometheus.Desc, string) bool) {
	send := func(d *prometheus.Desc, v float64, labels ...string) {
		if keep != nil && !keep(d, labels[len(labels)-1]) {
			return
		}
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	for _, p := range rec.pods {
		send(c.nodeState, 1, k.namespace, k.cluster, p.pod, p.state)
	}
	if rec.hasNodes {
		for i, kind := range clusterNodeKinds {
			send(c.clusterNodes, rec.nodes[i], k.namespace, k.cluster, kind)
		}
	}
	if rec.hasFormed {
		send(c.clusterFormed, rec.formed, k.namespace, k.cluster)
	}
	if rec.phase != "" {
		send(c.clusterPhase, 1, k.namespace, k.cluster, rec.phase)
	}
	if rec.hasRanges {
		for i, s := range rangeStates {
			send(c.shardRanges, rec.ranges[i], k.namespace, k.cluster, s)
		}
	}
	if rec.hasDrift {
		for i, key := range ConfigDriftKeys {
			send(c.configDrift, b2f(rec.drift[i]), k.namespace, k.cluster, key)
		}
	}
}

// one is a collector of a single series of one cluster, for tests of callers (testutil.ToFloat64).
type one struct {
	c     *clusterCollector
	k     clusterKey
	desc  *prometheus.Desc
	label string // the series' last label value
}

func (o one) Describe(ch chan<- *prometheus.Desc) { ch <- o.desc }

func (o one) Collect(ch chan<- prometheus.Metric) {
	o.c.mu.Lock()
	defer o.c.mu.Unlock()
	if rec := o.c.clusters[o.k]; rec != nil {
		o.c.collect(ch, o.k, rec, func(d *prometheus.Desc, last string) bool { return d == o.desc && last == o.label })
	}
}

// setPods replaces the record's pods with podStates. A snapshot taken by Collect may still read the
// old slice, so a change makes a new one; most syncs change nothing and allocate nothing.
func setPods(rec *clusterRecord, podStates map[string]string) {
	if len(rec.pods) == len(podStates) && !slices.ContainsFunc(rec.pods, func(p podState) bool { return podStates[p.pod] != p.state }) {
		return
	}
	pods := make([]podState, 0, len(podStates))
	for pod, state := range podStates {
		pods = append(pods, podState{pod, state})
	}
	slices.SortFunc(pods, func(a, b podState) int { return strings.Compare(a.pod, b.pod) })
	rec.pods = pods
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
