package couchtest

import (
	"fmt"
	"sort"
	"strings"
)

// prometheusText is a text/plain answer (the only non-JSON one the emulator gives).
type prometheusText string

// metricFamily is one family of /_node/{node}/_prometheus.
type metricFamily struct {
	name, help, kind string
	samples          []metricSample
}

type metricSample struct {
	labels string // `{level="info"}` or ""
	value  int
}

// prometheus lists the families the recording shows, in couch_prometheus's order (sorted by name).
// Log counts are made up (they count what the node logged); the replicator counters are the
// emulator's own: checkpoints_total counts the checkpoints of replications this node runs.
func (n *Node) prometheus() []metricFamily {
	logs := []metricSample{}
	for _, l := range []struct {
		level string
		v     int
	}{{"alert", 0}, {"critical", 0}, {"debug", 0}, {"emergency", 0}, {"error", n.stats.logErrors}, {"info", 12},
		{"notice", n.stats.requests}, {"report", 0}, {"report_error", 0}, {"warning", n.stats.logWarnings}} {
		logs = append(logs, metricSample{fmt.Sprintf("{level=%q}", l.level), l.v})
	}
	fams := []metricFamily{
		{"couchdb_couch_log_requests_total", "number of logged messages", "counter", logs},
		{"couchdb_couch_replicator_changes_manager_deaths_total", "number of failed replicator changes managers", "counter", []metricSample{{"", 0}}},
		{"couchdb_couch_replicator_changes_queue_deaths_total", "number of failed replicator changes work queues", "counter", []metricSample{{"", 0}}},
		{"couchdb_couch_replicator_changes_read_failures_total", "number of failed replicator changes read failures", "counter", []metricSample{{"", 0}}},
		{"couchdb_couch_replicator_changes_reader_deaths_total", "number of failed replicator changes readers", "counter", []metricSample{{"", 0}}},
		{"couchdb_couch_replicator_checkpoints_failure_total", "number of failed checkpoint saves", "counter", []metricSample{{"", 0}}},
		{"couchdb_couch_replicator_checkpoints_total", "number of checkpoint saves", "counter", []metricSample{{"", n.stats.checkpoints}}},
	}
	sort.Slice(fams, func(i, j int) bool { return fams[i].name < fams[j].name })
	return fams
}

// nodeStats are counters a node keeps for its metrics.
type nodeStats struct {
	requests, logErrors, logWarnings int
	checkpoints                      int
}

// text renders the families as CouchDB 3.4.3 does, quirks included (couch_prometheus_util): the body
// starts with an empty line, every family is preceded by one, and # HELP and # TYPE are separated by
// a bare CR instead of a newline.
func (fams metricFamilies) text() prometheusText {
	var b strings.Builder
	for _, f := range fams {
		fmt.Fprintf(&b, "\n# HELP %s %s\r# TYPE %s %s\n", f.name, f.help, f.name, f.kind)
		for _, s := range f.samples {
			fmt.Fprintf(&b, "%s%s %d\n", f.name, s.labels, s.value)
		}
	}
	return prometheusText(b.String())
}

type metricFamilies []metricFamily

func prometheusTextOf(fams []metricFamily) prometheusText { return metricFamilies(fams).text() }
