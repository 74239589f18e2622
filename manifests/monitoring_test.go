package manifests_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/promql/parser"
	"k8s.io/client-go/util/workqueue"

	"github.com/couchdb-controller/couchdb-controller/metrics"
)

// describingRegisterer remembers every family registered through it, used or not.
type describingRegisterer struct {
	prometheus.Registerer
	descs []string
}

func (d *describingRegisterer) Register(c prometheus.Collector) error {
	ch := make(chan *prometheus.Desc, 16)
	go func() { c.Describe(ch); close(ch) }()
	for desc := range ch {
		d.descs = append(d.descs, desc.String())
	}
	return d.Registerer.Register(c)
}

func (d *describingRegisterer) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		if err := d.Register(c); err != nil {
			panic(err)
		}
	}
}

var descName = regexp.MustCompile(`fqName: "([a-zA-Z_:][a-zA-Z0-9_:]*)"`)

// registryLabels drives every part of the metrics package once, the way the controller does (one
// HTTP request through the instrumented round-tripper, a named work queue built on the provider),
// and returns each series name the registry then exposes with its label names. It fails if a
// registered family was not exercised, so a new metric cannot slip past the dashboard checks.
func registryLabels(t *testing.T) map[string]map[string]bool {
	t.Helper()
	reg := prometheus.NewRegistry()
	dr := &describingRegisterer{Registerer: reg}
	r := metrics.New(dr)
	r.ObserveJoin(time.Millisecond)
	r.ObserveFormation(time.Millisecond)
	r.SetNodeStates("ns", "c", map[string]string{"c-0": "member"})
	r.SetClusterNodes("ns", "c", 1, 1, 1)
	r.SetClusterFormed("ns", "c", true)
	r.SetClusterPhase("ns", "c", "Ready")
	r.SetShardRanges("ns", "c", 1, 0, 0, 0)
	r.ShardMove("added")
	r.ObserveSync("success", time.Millisecond)
	r.Action("AddNode", "success")
	r.SetLeader(true)
	r.KubeRequest("GET", "200")

	couch := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte(`{"ok":true}`)) }))
	defer couch.Close()
	req, _ := http.NewRequest(http.MethodGet, couch.URL+"/_up", nil)
	resp, err := r.InstrumentRoundTripper(http.DefaultTransport).RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()

	q := workqueue.NewTypedWithConfig(workqueue.TypedQueueConfig[string]{Name: "couchdb", MetricsProvider: r.WorkqueueProvider()})
	q.Add("ns/c")
	item, _ := q.Get()
	q.Done(item)
	q.ShutDown()
	rq := workqueue.NewTypedRateLimitingQueueWithConfig(workqueue.DefaultTypedControllerRateLimiter[string](),
		workqueue.TypedRateLimitingQueueConfig[string]{Name: "couchdb-retries", MetricsProvider: r.WorkqueueProvider()})
	rq.AddRateLimited("ns/c")
	rq.ShutDown()

	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]map[string]bool{}
	for _, mf := range mfs {
		labels := map[string]bool{}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = true
			}
		}
		out[mf.GetName()] = labels
		switch mf.GetType().String() {
		case "HISTOGRAM":
			bucket := map[string]bool{"le": true}
			for l := range labels {
				bucket[l] = true
			}
			out[mf.GetName()+"_bucket"], out[mf.GetName()+"_sum"], out[mf.GetName()+"_count"] = bucket, labels, labels
		}
	}
	if len(dr.descs) == 0 {
		t.Fatal("metrics.New registered nothing")
	}
	for _, d := range dr.descs {
		m := descName.FindStringSubmatch(d)
		if m == nil {
			t.Fatalf("cannot read the family name of %s", d)
		}
		if out[m[1]] == nil {
			t.Errorf("%s is registered but this test never makes it expose a series: exercise it above", m[1])
		}
	}
	return out
}

type promRule struct {
	Alert       string            `json:"alert"`
	Expr        string            `json:"expr"`
	For         string            `json:"for"`
	Labels      map[string]string `json:"labels"`
	Annotations map[string]string `json:"annotations"`
}

func alertRules(t *testing.T) []promRule {
	t.Helper()
	var pr struct {
		Spec struct {
			Groups []struct {
				Rules []promRule `json:"rules"`
			} `json:"groups"`
		} `json:"spec"`
	}
	convert(t, find(build(t, "."), "PrometheusRule")[0], &pr)
	var out []promRule
	for _, g := range pr.Spec.Groups {
		out = append(out, g.Rules...)
	}
	return out
}

// grafanaVars stands in for Grafana's template variables so the query parses as PromQL.
var grafanaVars = strings.NewReplacer("$__rate_interval", "5m", "$__interval", "1m", "$__range", "1h")

var labelValuesRE = regexp.MustCompile(`^label_values\((.+),\s*([a-zA-Z_][a-zA-Z0-9_]*)\)$`)

// checkQuery parses expr with Prometheus' own parser and checks that every metric it selects is one
// the controller exposes, and that every label it matches on or groups by is one of that metric's.
func checkQuery(t *testing.T, where, expr string, reg map[string]map[string]bool) parser.Expr {
	t.Helper()
	e, err := parser.ParseExpr(grafanaVars.Replace(expr))
	if err != nil {
		t.Errorf("%s: %q does not parse: %v", where, expr, err)
		return nil
	}
	selected := 0
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		switch n := n.(type) {
		case *parser.VectorSelector:
			selected++
			labels, ok := reg[n.Name]
			if !ok {
				t.Errorf("%s: %q selects %q, which the controller does not export", where, expr, n.Name)
				return nil
			}
			for _, m := range n.LabelMatchers {
				if m.Name != model.MetricNameLabel && !labels[m.Name] {
					t.Errorf("%s: %q matches label %q, which %s does not have", where, expr, m.Name, n.Name)
				}
			}
		case *parser.AggregateExpr:
			if n.Without {
				break
			}
			var inner []map[string]bool
			parser.Inspect(n.Expr, func(c parser.Node, _ []parser.Node) error {
				if vs, ok := c.(*parser.VectorSelector); ok {
					inner = append(inner, reg[vs.Name])
				}
				return nil
			})
			for _, g := range n.Grouping {
				if !slices.ContainsFunc(inner, func(l map[string]bool) bool { return l[g] }) {
					t.Errorf("%s: %q groups by %q, which none of its metrics has", where, expr, g)
				}
			}
		}
		return nil
	})
	if selected == 0 {
		t.Errorf("%s: %q selects no metric", where, expr)
	}
	return e
}

func TestDashboardQueriesRealMetrics(t *testing.T) {
	reg := registryLabels(t)
	raw, err := os.ReadFile("dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Templating struct {
			List []struct {
				Name  string `json:"name"`
				Type  string `json:"type"`
				Query any    `json:"query"`
			} `json:"list"`
		} `json:"templating"`
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatalf("dashboard.json is not valid JSON: %v", err)
	}
	exprs := 0
	for _, p := range dash.Panels {
		if len(p.Targets) == 0 {
			t.Errorf("panel %q queries nothing", p.Title)
		}
		for _, tg := range p.Targets {
			checkQuery(t, "panel "+p.Title, tg.Expr, reg)
			exprs++
		}
	}
	if exprs < 10 {
		t.Errorf("only %d panel queries", exprs)
	}
	vars := 0
	for _, v := range dash.Templating.List {
		if v.Type != "query" {
			continue
		}
		vars++
		q, _ := v.Query.(string)
		m := labelValuesRE.FindStringSubmatch(q)
		if m == nil {
			t.Errorf("variable %s: query %v is not label_values(<selector>, <label>)", v.Name, v.Query)
			continue
		}
		e := checkQuery(t, "variable "+v.Name, m[1], reg)
		vs, ok := e.(*parser.VectorSelector)
		if !ok {
			t.Errorf("variable %s: %q is not a plain series selector", v.Name, m[1])
			continue
		}
		if !reg[vs.Name][m[2]] {
			t.Errorf("variable %s: %s has no label %q", v.Name, vs.Name, m[2])
		}
	}
	if vars < 2 {
		t.Errorf("%d query variables, want namespace and cluster", vars)
	}
}

// outputLabels is what a rule's expression keeps: the grouping of its outermost aggregation (left of
// a comparison), or nothing for absent().
func outputLabels(e parser.Expr) (labels []string, known bool) {
	switch n := e.(type) {
	case *parser.ParenExpr:
		return outputLabels(n.Expr)
	case *parser.BinaryExpr:
		return outputLabels(n.LHS)
	case *parser.AggregateExpr:
		return n.Grouping, !n.Without
	case *parser.Call:
		if n.Func.Name == "absent" {
			return nil, true
		}
	}
	return nil, false
}

var templateLabel = regexp.MustCompile(`\$labels\.([a-zA-Z_][a-zA-Z0-9_]*)`)

// nodeStatesMatched lists the node_state states an alert's state matcher selects.
func nodeStatesMatched(t *testing.T, e parser.Expr) []string {
	var out []string
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		vs, ok := n.(*parser.VectorSelector)
		if !ok || vs.Name != "couchdb_controller_node_state" {
			return nil
		}
		for _, s := range metrics.NodeStates {
			all := true
			for _, m := range vs.LabelMatchers {
				if m.Name == "state" && !m.Matches(s) {
					all = false
				}
			}
			if all {
				out = append(out, s)
			}
		}
		return nil
	})
	sort.Strings(out)
	return out
}

// TestAlertsCoverTheRequiredConditions checks the rules parse, query real metrics and labels, use
// only labels they keep in their annotations, and that the alerts users are promised exist with
// their durations and conditions.
func TestAlertsCoverTheRequiredConditions(t *testing.T) {
	reg := registryLabels(t)
	rules := alertRules(t)
	byName := map[string]promRule{}
	parsed := map[string]parser.Expr{}
	for _, r := range rules {
		if r.Alert == "" {
			t.Errorf("rule %q has no alert name", r.Expr)
			continue
		}
		byName[r.Alert] = r
		e := checkQuery(t, "alert "+r.Alert, r.Expr, reg)
		if e == nil {
			continue
		}
		parsed[r.Alert] = e
		if r.For != "" {
			if _, err := model.ParseDuration(r.For); err != nil {
				t.Errorf("alert %s: for %q: %v", r.Alert, r.For, err)
			}
		}
		if s := r.Labels["severity"]; s != "warning" && s != "critical" {
			t.Errorf("alert %s: severity %q", r.Alert, s)
		}
		if r.Annotations["summary"] == "" {
			t.Errorf("alert %s has no summary", r.Alert)
		}
		kept, known := outputLabels(e)
		if !known {
			t.Errorf("alert %s: cannot tell which labels %q keeps; aggregate with by (...)", r.Alert, r.Expr)
		}
		for _, a := range r.Annotations {
			for _, m := range templateLabel.FindAllStringSubmatch(a, -1) {
				if !slices.Contains(kept, m[1]) {
					t.Errorf("alert %s: annotation uses $labels.%s, which %q drops", r.Alert, m[1], r.Expr)
				}
			}
		}
	}

	required := []struct {
		alert, forDur, metric string
	}{
		{"CouchDBNodeNotJoined", "5m", "couchdb_controller_node_state"},
		{"CouchDBDataAtRisk", "", "couchdb_controller_shard_ranges"}, // at once: a range has no live copy
		{"CouchDBUnderReplicated", "15m", "couchdb_controller_shard_ranges"},
		{"CouchDBZoneViolation", "15m", "couchdb_controller_shard_ranges"},
		{"CouchDBControllerSyncErrors", "20m", "couchdb_controller_syncs_total"},
		{"CouchDBControllerNoLeader", "5m", "couchdb_controller_leader"},
	}
	for _, want := range required {
		r, ok := byName[want.alert]
		if !ok {
			t.Errorf("no alert %s", want.alert)
			continue
		}
		if r.For != want.forDur {
			t.Errorf("alert %s: for %q, want %q", want.alert, r.For, want.forDur)
		}
		if !strings.Contains(r.Expr, want.metric) {
			t.Errorf("alert %s: %q does not query %s", want.alert, r.Expr, want.metric)
		}
	}
	if e := parsed["CouchDBNodeNotJoined"]; e != nil {
		if got, want := nodeStatesMatched(t, e), []string{"invalid", "joining", "pending"}; !slices.Equal(got, want) {
			t.Errorf("CouchDBNodeNotJoined matches node states %v, want %v (every state that is not, and is not becoming, gone)", got, want)
		}
	}
	if e := parsed["CouchDBNodeUnreachable"]; e == nil {
		t.Error("no alert CouchDBNodeUnreachable")
	} else if got := nodeStatesMatched(t, e); !slices.Equal(got, []string{"unreachable"}) {
		t.Errorf("CouchDBNodeUnreachable matches node states %v, want [unreachable]", got)
	}
	// Every node state is either healthy-or-transient by design or covered by an alert.
	covered := append(nodeStatesMatched(t, parsed["CouchDBNodeNotJoined"]), nodeStatesMatched(t, parsed["CouchDBNodeUnreachable"])...)
	for _, s := range metrics.NodeStates {
		if !slices.Contains(covered, s) && !slices.Contains([]string{"member", "draining", "departed"}, s) {
			t.Errorf("node state %q is neither alerted on nor known to be healthy or transient", s)
		}
	}
	if e := parsed["CouchDBControllerSyncErrors"]; e != nil {
		checkSyncErrorsFireForOneCluster(t, e, byName["CouchDBControllerSyncErrors"].For)
	}
}

// maxBackoff is the controller's per-cluster retry ceiling (controller.NewController's
// ItemExponentialFailureRateLimiter): a cluster whose syncs keep failing is retried this often.
const maxBackoff = 5 * time.Minute

// checkSyncErrorsFireForOneCluster checks the sync-error alert's threshold is within reach of one
// cluster retried every maxBackoff, and that its `for:` outlasts the window, so that one transient
// error cannot fire it.
func checkSyncErrorsFireForOneCluster(t *testing.T, e parser.Expr, forDur string) {
	t.Helper()
	cmp, ok := e.(*parser.BinaryExpr)
	if !ok || cmp.Op != parser.GTR {
		t.Fatalf("sync errors: %s is not `<errors> > threshold`", e)
	}
	lit, ok := cmp.RHS.(*parser.NumberLiteral)
	if !ok {
		t.Fatalf("sync errors: threshold %s is not a number", cmp.RHS)
	}
	var fn string
	var window time.Duration
	parser.Inspect(cmp.LHS, func(n parser.Node, _ []parser.Node) error {
		if c, ok := n.(*parser.Call); ok && len(c.Args) == 1 {
			if ms, ok := c.Args[0].(*parser.MatrixSelector); ok {
				fn, window = c.Func.Name, ms.Range
			}
		}
		return nil
	})
	var reach float64 // what one cluster failing every maxBackoff gives
	switch fn {
	case "increase":
		// Whole retry intervals in the window, less one: the first sample of a new series counts 0.
		reach = float64(window/maxBackoff) - 1
	case "rate":
		reach = 1 / maxBackoff.Seconds()
	default:
		t.Fatalf("sync errors: %s uses neither increase nor rate over a range", e)
	}
	if lit.Val >= reach {
		t.Errorf("sync errors: threshold %g over %s(%s) is out of reach of one cluster retried every %s (%.4g)", lit.Val, fn, window, maxBackoff, reach)
	}
	d, err := model.ParseDuration(forDur)
	if err != nil || time.Duration(d) <= window {
		t.Errorf("sync errors: for %q must exceed the %s window, or one transient error fires it", forDur, window)
	}
}

// TestServiceMonitorHonoursSeriesLabels: the series carry namespace and pod labels of their own (the
// CouchDB cluster's), which Prometheus' target labels would overwrite (keeping ours as exported_*)
// unless the ServiceMonitor honours them; every alert and panel groups by them.
func TestServiceMonitorHonoursSeriesLabels(t *testing.T) {
	reg := registryLabels(t)
	if !reg["couchdb_controller_node_state"]["namespace"] || !reg["couchdb_controller_node_state"]["pod"] {
		t.Fatal("node_state has no namespace and pod labels: this test is out of date")
	}
	var sm struct {
		Spec struct {
			Endpoints []struct {
				Port        string `json:"port"`
				HonorLabels bool   `json:"honorLabels"`
			} `json:"endpoints"`
		} `json:"spec"`
	}
	convert(t, find(build(t, "."), "ServiceMonitor")[0], &sm)
	if len(sm.Spec.Endpoints) == 0 {
		t.Fatal("ServiceMonitor scrapes nothing")
	}
	for _, ep := range sm.Spec.Endpoints {
		if !ep.HonorLabels {
			t.Errorf("ServiceMonitor endpoint %s: honorLabels is false, so namespace and pod would name the controller's pod", ep.Port)
		}
	}
}
