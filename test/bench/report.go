package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
	"time"
)

// results is everything the report shows, by section. It is embedded in the -out file, so a run of
// some sections (-only) re-renders the whole report with the other sections' earlier numbers.
type results struct {
	Moves  *MovesResult  `json:"moves,omitempty"`
	Single *SingleResult `json:"single,omitempty"`
	// RealSingle is the single section on real CouchDB nodes (COUCHDB_REL).
	RealSingle *SingleResult `json:"realSingle,omitempty"`
	// RealMoves is the moves section on real CouchDB nodes (COUCHDB_REL).
	RealMoves *MovesResult   `json:"realMoves,omitempty"`
	Fleet     *FleetResult   `json:"fleet,omitempty"`
	Poller    *PollerResult  `json:"poller,omitempty"`
	Rollout   *RolloutResult `json:"rollout,omitempty"`
}

// Meta says when and under what load a section was measured.
type Meta struct {
	Date         string  `json:"date"`
	Cores        int     `json:"cores"`
	Go           string  `json:"go"`
	K8s          string  `json:"k8s"`
	LoadBefore   float64 `json:"loadBefore"`   // 1-minute load average when the section started
	Duration     float64 `json:"duration"`     // s
	MachineCores float64 `json:"machineCores"` // cores busy on average over the section, every process of the machine
	HarnessCores float64 `json:"harnessCores"` // of which this process (emulated nodes, kubelet, proxy, observers)
	// ControllerEnv is what manifests/deployment.yaml's downward API gave the controller processes
	// (GOMAXPROCS, GOMEMLIMIT); empty in runs from before the bench set it (the machine's cores, no limit).
	ControllerEnv []string `json:"controllerEnv,omitempty"`
}

type MovesResult struct {
	Meta     Meta    `json:"meta"`
	DBs      int     `json:"dbs"`
	Docs     int     `json:"docs"`
	FillRate float64 `json:"fillRate"`
	// EmulatedFillRate is the rate the emulator filled copies at; 0: as soon as _sync_shards ran.
	EmulatedFillRate float64   `json:"emulatedFillRate"`
	Runs             []MoveRun `json:"runs"`
	Backend          string    `json:"backend,omitempty"` // "" for emulated nodes; the real release's version
}

type MoveRun struct {
	Label        string      `json:"label"`
	MaxMoves     int         `json:"maxMoves"`
	FillsPerNode int         `json:"fillsPerNode"`
	Phases       []MovePhase `json:"phases"`
}

type MovePhase struct {
	Name        string             `json:"name"`
	Setup       float64            `json:"setup"`    // s, change -> moves possible (new nodes joined)
	Wall        float64            `json:"wall"`     // s, moves possible -> end state
	Copies      int                `json:"copies"`   // copies added where the range had none
	Removed     int                `json:"removed"`  // copies dropped
	CPU         float64            `json:"cpu"`      // controller CPU s over Wall
	Requests    float64            `json:"requests"` // controller's CouchDB requests over Wall
	Syncs       float64            `json:"syncs"`
	SyncBusy    float64            `json:"syncBusy"` // s, sum of sync durations
	Actions     map[string]float64 `json:"actions"`
	FillSum     float64            `json:"fillSum"`     // s, the emulator's fill time of every added copy
	Concurrency int                `json:"concurrency"` // fills possible at once
	Passes      int                `json:"passes"`      // reader passes over every document, whole run
	// Missed and MissedPasses (real nodes only; the emulated bench fails instead): the most
	// documents one pass through pod 0 did not return while copies moved, and how many passes missed
	// any.
	Missed       int         `json:"missed,omitempty"`
	MissedPasses int         `json:"missedPasses,omitempty"`
	Paths        []PathCount `json:"paths"`
	Profile      string      `json:"profile"`
	// HarnessProfile is the bench process's own CPU over the phase (emulated runs, the defaults).
	HarnessProfile string `json:"harnessProfile,omitempty"`
}

type PathCount struct {
	Path  string `json:"path"`
	Count int    `json:"count"`
}

type SingleResult struct {
	Meta            Meta        `json:"meta"`
	Formations      []float64   `json:"formations"` // s, outside observer
	FormationMetric histogram   `json:"formationMetric"`
	Joins           []float64   `json:"joins"`             // s, outside observer
	JoinPaths       []PathCount `json:"joinPaths"`         // CouchDB requests of all the joins, follow-up syncs included
	JoinSyncs       float64     `json:"joinSyncs"`         // syncs of all the joins
	Backend         string      `json:"backend,omitempty"` // "" for emulated nodes; the real release's version
}

type FleetResult struct {
	Meta                Meta    `json:"meta"`
	Stages              []Stage `json:"stages"`
	Burst               *Burst  `json:"burst"`
	FormProfile         string  `json:"formProfile"`
	HarnessFormProfile  string  `json:"harnessFormProfile"`
	HarnessBurstProfile string  `json:"harnessBurstProfile"`
	BurstProfile        string  `json:"burstProfile,omitempty"`  // controller, the burst's first 30 s, its own code by cumulative time
	SteadyProfile       string  `json:"steadyProfile,omitempty"` // controller, 60 s of the largest stage's steady window, likewise
	Heap                string  `json:"heap"`
}

type Stage struct {
	Clusters          int       `json:"clusters"`
	FormAll           float64   `json:"formAll"`    // s
	PerCluster        []float64 `json:"perCluster"` // s, objects created -> Ready
	Formation         histogram `json:"formation"`
	CPUForming        float64   `json:"cpuForming"`        // controller CPU s
	HarnessCPUForming float64   `json:"harnessCpuForming"` // this process's CPU s
	MachineCPUForming float64   `json:"machineCpuForming"` // every process's CPU s
	// ControlPlaneCPUForming is each control-plane process's CPU s (etcd, kube-apiserver,
	// kube-controller-manager); absent in runs before 2026-12-07 19:30.
	ControlPlaneCPUForming map[string]float64 `json:"controlPlaneCpuForming,omitempty"`
	Steady                 float64            `json:"steady"` // s
	PeakRSS                float64            `json:"peakRss"`
	RSS                    float64            `json:"rss"`
	CPUSteady              float64            `json:"cpuSteady"` // fraction of one core
	GetsPerNode            float64            `json:"getsPerNode"`
	APIPerSync             float64            `json:"apiPerSync"`
	Writes                 int                `json:"writes"`
}

type Burst struct {
	Clusters      int       `json:"clusters"`
	Patched       float64   `json:"patched"`   // s to send every scale patch
	AllJoined     float64   `json:"allJoined"` // s, first patch -> last join
	Joins         []float64 `json:"joins"`
	ControllerCPU float64   `json:"controllerCpu"`
	Metric        histogram `json:"metric"`
	APIRequests   float64   `json:"apiRequests,omitempty"` // Kubernetes API requests the controller made over the burst
	Throttled     float64   `json:"throttled,omitempty"`   // s its requests waited for its own rate limiter, summed
	ThrottledMax  float64   `json:"throttledMax,omitempty"`
}

type PollerResult struct {
	Meta  Meta      `json:"meta"`
	Joins []float64 `json:"joins"`
}

const resultsStart, resultsEnd = "<!-- bench-results\n", "\n-->\n"

func parseResults(file []byte) results {
	var r results
	i := bytes.Index(file, []byte(resultsStart))
	if i < 0 {
		return r
	}
	rest := file[i+len(resultsStart):]
	j := bytes.Index(rest, []byte(resultsEnd))
	if j < 0 {
		return r
	}
	_ = json.Unmarshal(rest[:j], &r)
	return r
}

func (m Meta) String() string {
	env := "the machine's cores and no memory limit"
	if len(m.ControllerEnv) > 0 {
		env = "`" + strings.Join(m.ControllerEnv, " ") + "`, as the Deployment sets them"
	}
	return fmt.Sprintf("Measured %s (%d cores, %s, Kubernetes %s) in %.0f s; 1-minute load average before: %.1f; cores busy on average: %.2f, of which the bench process (emulated nodes, kubelet, proxy, observers) %.2f. The controller ran with %s.",
		m.Date, m.Cores, m.Go, m.K8s, m.Duration, m.LoadBefore, m.MachineCores, m.HarnessCores, env)
}

func render(r results) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# Benchmarks\n\n`make bench` (or `go run ./test/bench -only SECTION -out test/bench/BENCHMARKS.md` for one section): the Kubernetes\n")
	fmt.Fprintf(&b, "control plane built from Go modules, emulated CouchDB 3.4 nodes (couch/couchtest, one emulated Erlang network per\n")
	fmt.Fprintf(&b, "cluster), the controller binary as its own process with its default flags (`--resync=%s --workers=16\n", defaultResync)
	fmt.Fprintf(&b, "--kube-api-qps=50`, plus `--profiling`) and the environment manifests/deployment.yaml gives it from its limits (one core:\n")
	fmt.Fprintf(&b, "`GOMAXPROCS=1`; `GOMEMLIMIT` 256 MiB), reaching pods through the harness proxy. Everything (etcd, kube-apiserver,\n")
	fmt.Fprintf(&b, "kube-controller-manager, the fake kubelet with a 10 s probe period (the first probe at container start), every emulated CouchDB node and the controller)\nshares the same cores. Each section says when it was measured and how busy the machine was.\n\n")
	renderMoves(&b, r.Moves)
	renderJoins(&b, r)
	renderSingle(&b, r.Single)
	renderRealSingle(&b, r.RealSingle)
	renderRealMoves(&b, r.RealMoves)
	renderFleet(&b, r.Fleet)
	renderRollout(&b, r.Rollout)
	renderTargets(&b, r)
	renderProfiles(&b, r)
	js, _ := json.Marshal(r)
	b.WriteString("\n" + resultsStart + string(js) + resultsEnd)
	return b.String()
}

func renderMoves(b *strings.Builder, m *MovesResult) {
	fmt.Fprintf(b, "## Shard moves\n\n")
	if m == nil {
		fmt.Fprintf(b, "Not measured yet: `go run ./test/bench -only moves -out test/bench/BENCHMARKS.md`.\n\n")
		return
	}
	fmt.Fprintf(b, "%s\n\n", m.Meta)
	fmt.Fprintf(b, "One cluster of %d databases (q=2, n=3, %d documents each, plus the system databases); the fill-time bound counts\n", m.DBs, m.Docs)
	fmt.Fprintf(b, "fills at %.0f bytes/s (couchtest.RecordedFillRate: the recorded 88-document fill in 0.11 s). ", m.FillRate)
	if m.EmulatedFillRate > 0 {
		fmt.Fprintf(b, "The emulator filled copies at %.0f bytes/s.", m.EmulatedFillRate)
	} else {
		fmt.Fprintf(b, "**The emulator filled copies as soon as `_sync_shards` ran** (it had no fill\nrate), so the bound is a model the run did not enforce and wall / bound below 1 is possible.")
	}
	fmt.Fprintf(b, " Each change runs on a fresh cluster with its own\ncontroller process: the rebalance on three nodes scaled to five, the drain on a cluster created with five nodes\n(on the rebalanced one, every copy the drain adds would go back to the node the rebalance took it from, whose\nfile is still on disk, and nothing would fill). A reader lists every document through pod 0 throughout (the bench\nfails on any missing one), and afterwards every document is read with its content through every staying node.\n\n")
	renderMovesTable(b, m)
}

// renderRealMoves is the moves section on real CouchDB nodes: its own section, so an emulated run
// keeps it and a real run keeps the emulated one.
func renderRealMoves(b *strings.Builder, m *MovesResult) {
	fmt.Fprintf(b, "## Shard moves, on real CouchDB nodes\n\n")
	if m == nil {
		fmt.Fprintf(b, "Not measured yet: `COUCHDB_REL=<release dir> go run ./test/bench -only moves -out test/bench/BENCHMARKS.md`.\n\n")
		return
	}
	fmt.Fprintf(b, "%s\n\n%s, one node per pod (test/couchpods `RealBackend`). The same runs as the emulated section, on %d databases\n", m.Meta, m.Backend, m.DBs)
	fmt.Fprintf(b, "(q=2, n=3, %d documents each, plus the system databases): real nodes fill at their own pace, so there is no\n", m.Docs)
	fmt.Fprintf(b, "fill-time bound; the concurrent run is compared with `--max-concurrent-moves=1` in the same run. The nodes' requests are\nnot counted (no emulator to count them); the controller's own are.\n\n")
	renderMovesTable(b, m)
	fmt.Fprintf(b, "Reads while copies moved (`_all_docs` of every database through pod 0, 100 ms apart); afterwards every\ndocument was read with its content (`include_docs=true`) through every staying node, and none was missing:\n\n| controller | change | passes | passes missing documents | most documents missing in one pass |\n|---|---|---|---|---|\n")
	for _, run := range m.Runs {
		for _, p := range run.Phases {
			fmt.Fprintf(b, "| %s | %s | %d | %d | %d |\n", run.Label, p.Name, p.Passes, p.MissedPasses, p.Missed)
		}
	}
	fmt.Fprintf(b, "\nA pass that misses documents is real CouchDB serving `_all_docs` for a range from whichever copy answers first\n(fabric_view:get_shards takes every copy, fabric_streams the first worker per range): a copy still filling\nanswers first, and its range then lacks the documents not yet pushed to it. The controller fences the member that\nfills a moved copy (maintenance mode, placement rule 10) so that the other copies serve; before it did, 17-70%% of\nthe passes missed documents (up to 488 in one pass). The emulator serves every range from its least complete copy,\nso an unfenced filling copy shows there too.\n\n")
}

func renderMovesTable(b *strings.Builder, m *MovesResult) {
	fmt.Fprintf(b, "| controller | change | copies moved (added / dropped) | wall time | moves/s | fill-time bound (sum of fills / concurrency) | wall / bound | controller CPU | CouchDB requests per move | syncs | controller busy (sum of sync durations / wall) |\n|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, run := range m.Runs {
		for _, p := range run.Phases {
			bound := p.FillSum / float64(p.Concurrency)
			ratio := "n/a"
			if bound > 0 {
				ratio = fmt.Sprintf("%.2f", p.Wall/bound)
			}
			fmt.Fprintf(b, "| %s | %s | %d / %d | %.1f s | %.1f | %.1f s (%.1f s / %d) | %s | %.1f s | %.1f | %.0f | %.0f%% |\n",
				run.Label, p.Name, p.Copies, p.Removed, p.Wall, float64(p.Copies)/p.Wall, bound, p.FillSum, p.Concurrency,
				ratio, p.CPU, p.Requests/math.Max(float64(p.Copies), 1), p.Syncs, 100*p.SyncBusy/p.Wall)
		}
	}
	if len(m.Runs) == 2 {
		fmt.Fprintf(b, "\n")
		for i := range m.Runs[0].Phases {
			if i < len(m.Runs[1].Phases) {
				c, s := m.Runs[0].Phases[i], m.Runs[1].Phases[i]
				fmt.Fprintf(b, "- %s: the concurrent run took %.1f s, %.1fx faster than `--max-concurrent-moves=1` (%.1f s).\n", c.Name, c.Wall, s.Wall/c.Wall, s.Wall)
			}
		}
	}
	fmt.Fprintf(b, "\nWall time starts when the moves can start (the rebalance: once both new nodes are members, %s after the scale-up;\nthe drain: at the annotation) and ends at the end state: every database balanced over the five members (each\nholds floor or ceil of c/5 of the database's c copies, each range at n copies), or three members holding every copy\nand `spec.replicas` 3 (as the API server has it). The bound counts each added copy's fill (the bytes filling it moves / fill rate); the concurrency is\nthe fewest of `--max-concurrent-moves`, `--max-fills-per-node` x the nodes gaining copies, and the same x the nodes\nlosing them.\n\n", setups(m))
	for _, run := range m.Runs {
		for _, p := range run.Phases {
			if len(p.Paths) == 0 {
				fmt.Fprintf(b, "%s, %s: actions %s.\n\n", run.Label, p.Name, actions(p.Actions))
				continue
			}
			fmt.Fprintf(b, "%s, %s: actions %s; the nodes were asked (bench reader and probes excluded): %s.\n\n", run.Label, p.Name, actions(p.Actions), topPaths(p.Paths, 8))
		}
	}
}

func setups(m *MovesResult) string {
	var out []string
	for _, run := range m.Runs {
		if len(run.Phases) > 0 {
			out = append(out, fmt.Sprintf("%.1f s", run.Phases[0].Setup))
		}
	}
	return strings.Join(out, " and ")
}

func actions(a map[string]float64) string {
	var keys []string
	for k := range a {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var out []string
	for _, k := range keys {
		out = append(out, fmt.Sprintf("%s %.0f", k, a[k]))
	}
	return strings.Join(out, ", ")
}

func topPaths(p []PathCount, n int) string {
	var out []string
	total := 0
	for i, pc := range p {
		total += pc.Count
		if i < n {
			out = append(out, fmt.Sprintf("`%s` %d", pc.Path, pc.Count))
		}
	}
	return fmt.Sprintf("%d requests; %s", total, strings.Join(out, ", "))
}

func renderJoins(b *strings.Builder, r results) {
	fmt.Fprintf(b, "## Join latency\n\nOutside observer: the new pod's ContainersReady, from the moment the API server answered the harness kubelet's\nstatus write (a watch of the bench's own delivers it later, on a busy machine after the controller has acted) -> the\nnode in pod 0's `_membership` (polled every 2 ms; every 5 ms in the burst, where one loop watches every cluster).\n\n")
	fmt.Fprintf(b, "| method | joins | p50 | p90 | p99 | max |\n|---|---|---|---|---|---|\n")
	row := func(name string, v []float64) {
		fmt.Fprintf(b, "| %s | %d | %s | %s | %s | %s |\n", name, len(v), ms(v, .5), ms(v, .9), ms(v, .99), ms(v, 1))
	}
	if r.Single != nil {
		row("couchdb-controller, one cluster at a time scaling 3 -> 4 on the idle harness", r.Single.Joins)
	}
	if r.Fleet != nil && r.Fleet.Burst != nil {
		row(fmt.Sprintf("couchdb-controller, %d clusters scaling 3 -> 4 at once", r.Fleet.Burst.Clusters), r.Fleet.Burst.Joins)
	}
	if r.Poller != nil {
		row("couchdiscover-style 5 s poller, one cluster at a time (at most 100 at once), same harness and observer", r.Poller.Joins)
	}
	if r.Fleet != nil && r.Fleet.Burst != nil {
		bu := r.Fleet.Burst
		fmt.Fprintf(b, "\nThe burst: every scale patch sent in %.1f s, the last node joined %.1f s after the first patch; the controller used %.1f s of CPU\nmeanwhile; its own `node_join_duration_seconds` over the burst: %s.\n", bu.Patched, bu.AllJoined, bu.ControllerCPU, bu.Metric.summary())
		if bu.APIRequests > 0 {
			fmt.Fprintf(b, "Its Kubernetes API requests over the burst: %.0f (%.1f per join), which waited %.1f s in all for its own rate limiter (`kube_api_throttle_seconds`; the longest wait fell in the <= %s s bucket).\n",
				bu.APIRequests, bu.APIRequests/float64(max(bu.Clusters, 1)), bu.Throttled, fmtBucket(bu.ThrottledMax))
		}
	}
	if r.Poller != nil {
		fmt.Fprintf(b, "\nThe poller: %s\n", r.Poller.Meta)
	}
	b.WriteString("\n")
}

func renderSingle(b *strings.Builder, s *SingleResult) {
	fmt.Fprintf(b, "## One cluster at a time\n\n")
	if s == nil {
		fmt.Fprintf(b, "Not measured yet: `go run ./test/bench -only single -out test/bench/BENCHMARKS.md`.\n\n")
		return
	}
	fmt.Fprintf(b, "%s\n\n%d clusters created one after another on the otherwise idle harness (Parallel pods, as the Helm chart makes them),\nthen %d of them scaled 3 -> 4 one after another, a second apart.\n\n", s.Meta, len(s.Formations), len(s.Joins))
	renderSingleTable(b, s, "2 ms")
}

// renderRealSingle is the single section on real CouchDB nodes: its own section, so an emulated run
// keeps it and a real run keeps the emulated one.
func renderRealSingle(b *strings.Builder, s *SingleResult) {
	fmt.Fprintf(b, "## One cluster at a time, on real CouchDB nodes\n\n")
	if s == nil {
		fmt.Fprintf(b, "Not measured yet: `COUCHDB_REL=<release dir> go run ./test/bench -only single -formations 5 -joins 5 -out test/bench/BENCHMARKS.md`.\n\n")
		return
	}
	fmt.Fprintf(b, "%s\n\n%s, one node per pod (test/couchpods `RealBackend`: own loopback address, configured from the pod spec as the official image\n", s.Meta, s.Backend)
	fmt.Fprintf(b, "does); the fake kubelet probes `/_up` every second here (a real node answers a few seconds after it starts). %d clusters created one\n", len(s.Formations))
	fmt.Fprintf(b, "after another, then %d of them scaled 3 -> 4 one after another. The nodes' requests are not counted (no emulator to count them).\n\n", len(s.Joins))
	renderSingleTable(b, s, "20 ms")
}

func renderSingleTable(b *strings.Builder, s *SingleResult, poll string) {
	fmt.Fprintf(b, "| measured as | p50 | p90 | p99 | max |\n|---|---|---|---|---|\n")
	fmt.Fprintf(b, "| formation, outside observer: last pod ContainersReady (the API server's answer to the kubelet) -> pod 0's `_cluster_setup` says `cluster_finished` (polled every %s) | %s | %s | %s | %s |\n",
		poll, ms(s.Formations, .5), ms(s.Formations, .9), ms(s.Formations, .99), ms(s.Formations, 1))
	fmt.Fprintf(b, "| formation, controller metric `cluster_formation_duration_seconds` | %s | | %s | |\n", s.FormationMetric.bound(.5), s.FormationMetric.bound(.99))
	fmt.Fprintf(b, "| join 3 -> 4, outside observer | %s | %s | %s | %s |\n\n", ms(s.Joins, .5), ms(s.Joins, .9), ms(s.Joins, .99), ms(s.Joins, 1))
	if n := float64(len(s.Joins)); n > 0 && len(s.JoinPaths) > 0 {
		total := 0
		for _, pc := range s.JoinPaths {
			total += pc.Count
		}
		fmt.Fprintf(b, "Per join (from the scale-up to a second after the node joined, so the verifying and later syncs count): %.1f syncs and %.1f CouchDB requests: ", s.JoinSyncs/n, float64(total)/n)
		var parts []string
		for _, pc := range s.JoinPaths {
			parts = append(parts, fmt.Sprintf("`%s` %.1f", pc.Path, float64(pc.Count)/n))
		}
		fmt.Fprintf(b, "%s.\n\n", strings.Join(parts, ", "))
	}
}

func renderFleet(b *strings.Builder, f *FleetResult) {
	fmt.Fprintf(b, "## Formation and scale\n\n")
	if f == nil {
		fmt.Fprintf(b, "Not measured yet: `go run ./test/bench -only fleet -out test/bench/BENCHMARKS.md`.\n\n")
		return
	}
	fmt.Fprintf(b, "%s\n\n", f.Meta)
	fmt.Fprintf(b, "| clusters x 3 nodes | all formed (objects created -> every cluster Ready) | per cluster p50 / p99 | last pod ready -> finished (controller metric) | CPU while forming: controller / bench process / whole machine | peak RSS | RSS after | steady CPU | CouchDB GETs per node per resync | CouchDB writes in steady state | API requests per resync |\n|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, s := range f.Stages {
		fmt.Fprintf(b, "| %d | %.1f s | %.2f s / %.2f s | %s | %.1f s / %.1f s / %.1f s | %.0f MiB | %.0f MiB | %.2f%% of one core over %s | %.2f | %d | %.1f |\n",
			s.Clusters, s.FormAll, quantile(s.PerCluster, .5), quantile(s.PerCluster, .99), s.Formation.summary(),
			s.CPUForming, s.HarnessCPUForming, s.MachineCPUForming, s.PeakRSS, s.RSS, 100*s.CPUSteady, time.Duration(s.Steady*float64(time.Second)), s.GetsPerNode, s.Writes, s.APIPerSync)
	}
	b.WriteString("\n")
	for _, s := range f.Stages {
		if len(s.ControlPlaneCPUForming) == 0 {
			continue
		}
		fmt.Fprintf(b, "While %d clusters formed, the control plane used %s of CPU: %.1f s in all, %.0f%% of the whole machine's %.1f s (controller %.1f s, bench process %.1f s). ",
			s.Clusters, planeCPU(s.ControlPlaneCPUForming), sumValues(s.ControlPlaneCPUForming), 100*sumValues(s.ControlPlaneCPUForming)/s.MachineCPUForming, s.MachineCPUForming, s.CPUForming, s.HarnessCPUForming)
		fmt.Fprintf(b, "On %d cores, that alone takes %.1f s of wall time.\n\n", f.Meta.Cores, sumValues(s.ControlPlaneCPUForming)/float64(f.Meta.Cores))
	}
}

// planeCPU lists each control-plane process's CPU seconds, in start order.
func planeCPU(m map[string]float64) string {
	var parts []string
	for _, name := range []string{"etcd", "kube-apiserver", "kube-controller-manager"} {
		if v, ok := m[name]; ok {
			parts = append(parts, fmt.Sprintf("%s %.1f s", name, v))
		}
	}
	return strings.Join(parts, ", ")
}

func sumValues(m map[string]float64) float64 {
	t := 0.0
	for _, v := range m {
		t += v
	}
	return t
}

func renderTargets(b *strings.Builder, r results) {
	verdict := func(ok bool) string {
		if ok {
			return "met"
		}
		return "missed"
	}
	fmt.Fprintf(b, "## Targets (issue 13)\n\n| target | measured | |\n|---|---|---|\n")
	notRun := func(t, section string) {
		fmt.Fprintf(b, "| %s | not measured: run `-only %s` | |\n", t, section)
	}
	if m := r.Moves; m != nil && len(m.Runs) == 2 {
		for i, c := range m.Runs[0].Phases {
			if i >= len(m.Runs[1].Phases) {
				break
			}
			s := m.Runs[1].Phases[i]
			fmt.Fprintf(b, "| %s of %d databases: concurrent >= 5x faster than `--max-concurrent-moves=1` | %.1fx (%.1f s vs %.1f s) | %s |\n", c.Name, m.DBs, s.Wall/c.Wall, c.Wall, s.Wall, verdict(s.Wall/c.Wall >= 5))
			if bound := c.FillSum / float64(c.Concurrency); bound > 0 && m.EmulatedFillRate > 0 {
				fmt.Fprintf(b, "| %s of %d databases: concurrent within 1.5x of the fill-time bound | %.2fx (%.1f s vs %.1f s) | %s |\n", c.Name, m.DBs, c.Wall/bound, c.Wall, bound, verdict(c.Wall <= 1.5*bound))
			} else {
				fmt.Fprintf(b, "| %s of %d databases: concurrent within 1.5x of the fill-time bound | not measured: the emulator had no fill rate | |\n", c.Name, m.DBs)
			}
		}
	} else {
		notRun("shard moves: concurrent >= 5x faster than one at a time, within 1.5x of the fill-time bound", "moves")
	}
	if s := r.Single; s != nil {
		fmt.Fprintf(b, "| isolated join p99 <= 100 ms | %s | %s |\n", ms(s.Joins, .99), verdict(quantile(s.Joins, .99) <= .1))
		fmt.Fprintf(b, "| 3-node formation <= 1 s after the last pod is ready (one at a time) | p99 %s (outside), %s (metric) | %s |\n",
			ms(s.Formations, .99), s.FormationMetric.bound(.99), verdict(quantile(s.Formations, .99) <= 1))
	} else {
		notRun("isolated join p99 <= 100 ms; formation <= 1 s", "single")
	}
	if f := r.Fleet; f != nil && len(f.Stages) > 0 {
		last := f.Stages[len(f.Stages)-1]
		if bu := f.Burst; bu != nil {
			fmt.Fprintf(b, "| burst of %d clusters scaling 3 -> 4 at once: join p50 <= 50 ms | %s | %s |\n", bu.Clusters, ms(bu.Joins, .5), verdict(quantile(bu.Joins, .5) <= .05))
			fmt.Fprintf(b, "| burst of %d clusters scaling 3 -> 4 at once: join p99 <= 1 s | %s | %s |\n", bu.Clusters, ms(bu.Joins, .99), verdict(quantile(bu.Joins, .99) <= 1))
		}
		fmt.Fprintf(b, "| %d clusters formed <= 60 s | %.1f s | %s |\n", last.Clusters, last.FormAll, verdict(last.FormAll <= 60))
		fmt.Fprintf(b, "| %d clusters: steady CPU <= 2%% of one core | %.2f%% | %s |\n", last.Clusters, 100*last.CPUSteady, verdict(last.CPUSteady <= .02))
		fmt.Fprintf(b, "| %d clusters: RSS <= 150 MiB | peak %.0f MiB | %s |\n", last.Clusters, last.PeakRSS, verdict(last.PeakRSS <= 150))
		fmt.Fprintf(b, "| 0 CouchDB writes in steady state | %d | %s |\n", last.Writes, verdict(last.Writes == 0))
		fmt.Fprintf(b, "| <= 2 CouchDB GETs per node per resync | %.2f | %s |\n", last.GetsPerNode, verdict(last.GetsPerNode <= 2))
	} else {
		notRun("burst joins, 1,000 clusters formed, steady CPU, RSS, steady writes, GETs per resync", "fleet")
	}
	b.WriteString("\n")
}

func renderProfiles(b *strings.Builder, r results) {
	fmt.Fprintf(b, "## Profiles\n\n")
	if m := r.Moves; m != nil && len(m.Runs) > 0 && len(m.Runs[0].Phases) > 0 {
		fmt.Fprintf(b, "Controller CPU, the first 10 s of the concurrent rebalance (`--profiling`):\n\n```\n%s\n```\n\n", m.Runs[0].Phases[0].Profile)
		for _, ph := range m.Runs[0].Phases {
			if ph.HarnessProfile != "" {
				fmt.Fprintf(b, "The bench process (emulated nodes, kubelet, proxy, the reader, the end-state poll; `runtime/pprof`) over the concurrent %s, its own code by cumulative time:\n\n```\n%s\n```\n\n", ph.Name, ph.HarnessProfile)
			}
		}
	}
	if f := r.Fleet; f != nil && len(f.Stages) > 0 {
		last := f.Stages[len(f.Stages)-1].Clusters
		fmt.Fprintf(b, "Controller CPU, 30 s while %d clusters formed:\n\n```\n%s\n```\n\n", last, f.FormProfile)
		fmt.Fprintf(b, "The bench process itself (emulated nodes, kubelet, proxy, observers; `runtime/pprof`) while %d clusters formed:\n\n```\n%s\n```\n\n", last, f.HarnessFormProfile)
		fmt.Fprintf(b, "The bench process during the join burst:\n\n```\n%s\n```\n\n", f.HarnessBurstProfile)
		if f.BurstProfile != "" {
			fmt.Fprintf(b, "Controller CPU, the first 30 s of the join burst, its own code and the libraries it calls by cumulative time:\n\n```\n%s\n```\n\n", f.BurstProfile)
		}
		if f.SteadyProfile != "" {
			fmt.Fprintf(b, "Controller CPU, 60 s of the steady state at %d clusters, likewise:\n\n```\n%s\n```\n\n", last, f.SteadyProfile)
		}
		fmt.Fprintf(b, "Controller heap in use at the end:\n\n```\n%s\n```\n", f.Heap)
	}
}

// fmtBucket prints a histogram bucket's upper bound.
func fmtBucket(le float64) string {
	if math.IsInf(le, 1) || le > 1e300 {
		return "+Inf"
	}
	return strconv.FormatFloat(le, 'g', -1, 64)
}

func quantile(v []float64, q float64) float64 {
	if len(v) == 0 {
		return math.NaN()
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	return s[max(0, min(len(s)-1, int(math.Ceil(q*float64(len(s))))-1))]
}

func ms(v []float64, q float64) string { return fmt.Sprintf("%.1f ms", 1000*quantile(v, q)) }

// histogram is a Prometheus histogram read from the text exposition. The +Inf bucket's bound is
// stored as math.MaxFloat64 (JSON has no infinity).
type histogram struct {
	Les    []float64 `json:"les"`
	Counts []float64 `json:"counts"` // cumulative, by Les
	Sum    float64   `json:"sum"`
	Count  float64   `json:"count"`
}

func histogramOf(metrics, name string) histogram {
	var h histogram
	for _, l := range strings.Split(metrics, "\n") {
		f := strings.Fields(l)
		if len(f) != 2 {
			continue
		}
		v, _ := strconv.ParseFloat(f[1], 64)
		switch {
		case strings.HasPrefix(f[0], name+`_bucket{le="`):
			le, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimPrefix(f[0], name+`_bucket{le="`), `"}`), 64)
			if err != nil || math.IsInf(le, 1) {
				le = math.MaxFloat64
			}
			h.Les, h.Counts = append(h.Les, le), append(h.Counts, v)
		case f[0] == name+"_sum":
			h.Sum = v
		case f[0] == name+"_count":
			h.Count = v
		}
	}
	return h
}

func (h histogram) minus(o histogram) histogram {
	out := histogram{Les: h.Les, Sum: h.Sum - o.Sum, Count: h.Count - o.Count}
	for i, c := range h.Counts {
		if i < len(o.Counts) {
			c -= o.Counts[i]
		}
		out.Counts = append(out.Counts, c)
	}
	return out
}

// maxBucket is the upper bound of the bucket the largest observation fell in (0 when none).
func (h histogram) maxBucket() float64 {
	if h.Count == 0 {
		return 0
	}
	return h.le(1)
}

// le is the upper bound of the bucket quantile q falls in (NaN when nothing was observed).
func (h histogram) le(q float64) float64 {
	for i, c := range h.Counts {
		if h.Count > 0 && c >= q*h.Count {
			return h.Les[i]
		}
	}
	return math.NaN()
}

func (h histogram) bound(q float64) string {
	le := h.le(q)
	if le == math.MaxFloat64 {
		return "above the last bucket"
	}
	return fmt.Sprintf("<= %g s", le)
}

func (h histogram) summary() string {
	if h.Count == 0 {
		return "none recorded"
	}
	return fmt.Sprintf("%.0f observed, mean %.0f ms, p50 %s, p99 %s", h.Count, 1000*h.Sum/h.Count, h.bound(0.5), h.bound(0.99))
}
