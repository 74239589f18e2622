// Command bench measures couchdb-controller on the real control-plane harness with emulated CouchDB
// pods and the controller binary as a separate process, run with its default flags (plus pprof).
//
// Sections, each runnable alone with -only (a re-run replaces only its own section's numbers in the
// -out file; the others are kept from the results embedded in that file):
//
//	moves   one cluster of 100 databases: rebalance 3 -> 5 and drain 5 -> 3, with the default
//	        --max-concurrent-moves and with 1, side by side (each with its own controller process)
//	rollout a rolling update of a 3-pod cluster under a constant write load, with the catch-up gate
//	single  3-node clusters formed one at a time, then joins (3 -> 4) one at a time, on the idle harness
//	fleet   10, 100, 1,000 clusters: time to form all, RSS, CPU, requests per steady-state resync, then
//	        every cluster scaling 3 -> 4 at once (the join burst)
//	poller  a couchdiscover-style 5 s poller joins nodes through the same harness, for comparison
//
// It prints a Markdown report and writes it to test/bench/BENCHMARKS.md (make bench passes -out).
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	_ "net/http/pprof" // -harness-pprof
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"

	"github.com/couchdb-controller/couchdb-controller/couch/couchtest"
	"github.com/couchdb-controller/couchdb-controller/test/couchpods"
	"github.com/couchdb-controller/couchdb-controller/test/harness"
	"github.com/couchdb-controller/couchdb-controller/test/kubelet"
)

// sections in the order they run: moves and rollout first, on the fresh harness and before the
// fleet's controller watches every namespace.
var sections = []string{"moves", "rollout", "single", "fleet", "poller"}

type options struct {
	only        map[string]bool
	sizes       []int
	steady      time.Duration // at the largest fleet size
	steadySmall time.Duration // at the smaller sizes
	pollers     int
	formations  int
	joins       int // isolated joins
	moveDBs     int
	moveDocs    int
	fillRate    float64 // bytes per second
}

func main() {
	out := flag.String("out", "", "write the results to this Markdown file (a re-run of some sections keeps the others' results from it)")
	only := flag.String("only", strings.Join(sections, ","), "sections to run, comma-separated: "+strings.Join(sections, ", "))
	sizes := flag.String("clusters", "10,100,1000", "fleet: cluster counts to measure, in increasing order")
	steady := flag.Duration("steady", 5*time.Minute, "fleet: steady-state window at the largest size, at the controller's default resync")
	steadySmall := flag.Duration("steady-small", 2*time.Minute, "fleet: steady-state window at the smaller sizes")
	pollers := flag.Int("poll-clusters", 50, "poller: clusters joined by a couchdiscover-style 5 s poller")
	formations := flag.Int("formations", 20, "single: 3-node clusters formed one at a time on the idle harness")
	joins := flag.Int("joins", 20, "single: joins (3 -> 4) one at a time on the idle harness")
	moveDBs := flag.Int("move-dbs", 100, "moves: databases (q=2, n=3) in the cluster whose copies move")
	moveDocs := flag.Int("move-docs", 200, "moves: documents per database")
	fillRate := flag.Float64("fill-rate", couchtest.RecordedFillRate, "moves: the emulator's copy-fill rate, bytes per second (0: instant)")
	pprofAddr := flag.String("harness-pprof", "", "serve the harness's own pprof on this loopback address (the harness shares the cores with the controller)")
	flag.Parse()
	if *pprofAddr != "" {
		go func() { _ = http.ListenAndServe(*pprofAddr, nil) }() //nolint:gosec // loopback, profiling only
	}
	o := options{only: map[string]bool{}, steady: *steady, steadySmall: *steadySmall, pollers: *pollers, formations: *formations,
		joins: *joins, moveDBs: *moveDBs, moveDocs: *moveDocs, fillRate: *fillRate}
	if os.Getenv(couchpods.ReleaseEnv) != "" {
		// Each real node is an Erlang VM of its own: 20 clusters of 4 would not fit the machine.
		set := map[string]bool{}
		flag.Visit(func(f *flag.Flag) { set[f.Name] = true })
		if !set["formations"] {
			o.formations = 5
		}
		if !set["joins"] {
			o.joins = 5
		}
		if !set["move-dbs"] {
			o.moveDBs = 30 // three to five real nodes hold 180 copies; the sequential runs take minutes already
		}
	}
	for _, s := range strings.Split(*only, ",") {
		if s = strings.TrimSpace(s); !slices.Contains(sections, s) {
			fail(fmt.Errorf("-only: unknown section %q (sections: %s)", s, strings.Join(sections, ", ")))
		}
		o.only[s] = true
	}
	prev := 0
	for _, f := range strings.Split(*sizes, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n <= prev {
			fail(fmt.Errorf("-clusters must be increasing numbers: %q", *sizes))
		}
		o.sizes, prev = append(o.sizes, n), n
	}

	var res results
	if *out != "" {
		if old, err := os.ReadFile(*out); err == nil {
			res = parseResults(old) // kept for the sections not run now
		}
	}
	if err := run(context.Background(), o, &res); err != nil {
		fail(err)
	}
	report := render(res)
	fmt.Print(report)
	if *out != "" {
		// The hand-written reading of the numbers below notesMarker survives a re-run.
		if old, err := os.ReadFile(*out); err == nil {
			if i := bytes.Index(old, []byte(notesMarker)); i >= 0 {
				report += "\n" + string(old[i:])
			}
		}
		if err := os.WriteFile(*out, []byte(report), 0o644); err != nil {
			fail(err)
		}
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "bench:", err)
	os.Exit(1)
}

// notesMarker starts the hand-written part of the -out file, which a re-run keeps.
const notesMarker = "<!-- notes: kept by make bench -->"

// defaultResync is the controller's --resync default; the steady state is measured at it.
const defaultResync = time.Minute

// world is the harness: one control plane, the fake kubelet and one emulated CouchDB node per pod,
// all in this process except the control plane, plus the controller processes under test.
type world struct {
	kube    kubernetes.Interface
	backend *couchpods.Backend     // emulated nodes; nil on real ones
	real    *couchpods.RealBackend // real CouchDB nodes (COUCHDB_REL); nil on emulated ones
	realVer string                 // the version the first real cluster of the moves section reported
	ready   *readyLog
	proxy   string
	kubecfg string
	bin     string
	runDir  string
	fleet   *ctrl // the controller of the single, fleet and poller sections (every namespace)
	// cpPids are the control plane's processes (etcd, kube-apiserver, kube-controller-manager), whose
	// CPU the formation row shows apart: at 1,000 clusters they, not the controller, fill the cores.
	cpPids map[string]int
	// env is what the Deployment's downward API gives the controller container (deployedEnv).
	env []string
}

func run(ctx context.Context, o options, res *results) error {
	cp, err := harness.Start(ctx, harness.Options{})
	if err != nil {
		return err
	}
	defer cp.Stop()
	cfg := cp.AdminConfig()
	cfg.QPS, cfg.Burst = 2000, 4000 // the harness plays every kubelet and user at once
	kube := kubernetes.NewForConfigOrDie(cfg)
	addrs := kubelet.NewAddressMap()
	var pods kubelet.Backend
	var backend *couchpods.Backend
	var real *couchpods.RealBackend
	probe := 10 * time.Second
	if rel := os.Getenv(couchpods.ReleaseEnv); rel != "" {
		// Real CouchDB nodes from a release: only the sections that fit real nodes on this machine.
		for s := range o.only {
			if s != "single" && s != "moves" {
				fmt.Fprintf(os.Stderr, "bench: %s=%s: section %s skipped (it needs the emulator: its sync delay or thousands of nodes); only single and moves run on real nodes\n", couchpods.ReleaseEnv, rel, s)
				delete(o.only, s)
			}
		}
		if real, err = couchpods.NewReal(kube, couchpods.RealOptions{Release: rel, RunDir: filepath.Join(cp.RunDir(), "couchdb")}); err != nil {
			return err
		}
		defer real.Close()
		pods = real
		// A real node answers /_up a few seconds after it starts: a 10 s period would add up to 10 s
		// to every formation and join while the outside observer's clock has not started.
		probe = time.Second
	} else {
		backend = couchpods.NewPerNamespace(kube, networkOptions(o))
		backend.KeepAliveProbes()
		pods = backend
	}
	// The harness (every emulated node, the kubelet and the proxy) lives in this process; fewer GC
	// cycles leave more of the shared cores to the controller being measured.
	debug.SetGCPercent(400)
	kctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// The probe period of a real kubelet with a readinessProbe's default periodSeconds (10 s); the
	// first probe runs when the container starts, as with initialDelaySeconds 0. With a 1 s period
	// the probes of 4,000 emulated pods were the harness's largest cost in the 1,000-cluster burst
	// (4,000 HTTP requests a second; kubelet.probe 15% of the harness's CPU), taken from the cores the
	// controller is measured on. Join latency starts at the ContainersReady transition, so the period
	// is not in it.
	ready := newReadyLog()
	kl := kubelet.NewWithOptions(kube, pods, addrs, kubelet.Options{ProbePeriod: probe, Workers: 16, Reported: ready.reported})
	go func() { _ = kl.Run(kctx) }()
	proxy, err := addrs.ServeProxy()
	if err != nil {
		return err
	}
	defer proxy.Close()
	bin := os.Getenv("COUCHDB_CONTROLLER_BINARY")
	if bin == "" {
		bin = filepath.Join(cp.RunDir(), "couchdb-controller")
		if b, err := exec.Command("go", "build", "-o", bin, "./cmd/couchdb-controller").CombinedOutput(); err != nil {
			return fmt.Errorf("build: %v %s", err, b)
		}
	}
	env, err := readDeployedEnv()
	if err != nil {
		return err
	}
	w := &world{kube: kube, backend: backend, real: real, ready: ready, proxy: proxy.URL(), kubecfg: cp.Kubeconfig(), bin: bin, runDir: cp.RunDir(), cpPids: cp.Pids(), env: env}
	defer func() {
		if w.fleet != nil {
			w.fleet.stop()
		}
	}()
	for _, s := range sections {
		if !o.only[s] {
			continue
		}
		m := startMeta(o)
		m.ControllerEnv = w.env
		switch s {
		case "moves":
			r, err := w.moves(ctx, o)
			if err != nil {
				return fmt.Errorf("moves: %w", err)
			}
			r.Meta = m.end()
			if w.real != nil {
				r.Backend = w.realVer
				res.RealMoves = r
			} else {
				res.Moves = r
			}
		case "rollout":
			r, err := w.rollout(ctx)
			if err != nil {
				return fmt.Errorf("rollout: %w", err)
			}
			r.Meta = m.end()
			res.Rollout = r
		case "single":
			r, err := w.single(ctx, o)
			if err != nil {
				return fmt.Errorf("single: %w", err)
			}
			r.Meta = m.end()
			if w.real != nil {
				r.Backend = w.realVersion(ctx, "form-0")
				res.RealSingle = r
			} else {
				res.Single = r
			}
		case "fleet":
			r, err := w.fleetStages(ctx, o)
			if err != nil {
				return fmt.Errorf("fleet: %w", err)
			}
			r.Meta = m.end()
			res.Fleet = r
		case "poller":
			r, err := w.couchdiscover(ctx, o.pollers)
			if err != nil {
				return fmt.Errorf("poller: %w", err)
			}
			r.Meta = m.end()
			res.Poller = r
		}
		fmt.Fprintf(os.Stderr, "bench: section %s measured\n", s)
	}
	return nil
}

// fleetController starts (once) the controller the single, fleet and poller sections share.
func (w *world) fleetController(ctx context.Context) (*ctrl, error) {
	if w.fleet != nil {
		return w.fleet, nil
	}
	c, err := w.startController(ctx, "fleet")
	if err != nil {
		return nil, err
	}
	w.fleet = c
	return c, nil
}

// ctrl is one controller process under test.
type ctrl struct {
	cmd     *exec.Cmd
	metrics string // http://addr
	bin     string
	runDir  string
	name    string
}

// startController runs the controller binary with its default flags (resync, workers, QPS) plus
// pprof and extra, reaching every pod through the harness proxy.
func (w *world) startController(ctx context.Context, name string, extra ...string) (*ctrl, error) {
	metricsAddr := freeAddr()
	args := append([]string{"--kubeconfig=" + w.kubecfg, "--metrics-bind-address=" + metricsAddr,
		"--health-probe-bind-address=" + freeAddr(), "--profiling"}, extra...)
	cmd := exec.Command(w.bin, args...)
	// Every pod IP must go through the harness proxy: an inherited NO_PROXY (or another proxy) could
	// make the controller dial the fake 10.244/16 pod addresses directly.
	cmd.Env = append(append(withoutProxyEnv(os.Environ()), "HTTP_PROXY="+w.proxy), w.env...)
	logf, err := os.Create(filepath.Join(w.runDir, "controller-"+name+".log"))
	if err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = harness.ChildProcAttr() // no controller outlives an interrupted run
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	c := &ctrl{cmd: cmd, metrics: "http://" + metricsAddr, bin: w.bin, runDir: w.runDir, name: name}
	// Profiles are requested at once: wait until the controller serves.
	if err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, time.Minute, true, func(context.Context) (bool, error) {
		return c.get("/metrics") != "", nil
	}); err != nil {
		c.stop()
		return nil, fmt.Errorf("controller %s did not serve metrics: %w", name, err)
	}
	return c, nil
}

func (c *ctrl) pid() int { return c.cmd.Process.Pid }

func (c *ctrl) stop() {
	_ = c.cmd.Process.Kill()
	_ = c.cmd.Wait()
}

func (c *ctrl) get(path string) string {
	resp, err := http.Get(c.metrics + path) //nolint:gosec // loopback
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// clusterStatus is the part of the status API the bench reads.
type clusterStatus struct {
	Namespace string   `json:"namespace"`
	Phase     string   `json:"phase"`
	Members   []string `json:"members"`
	Waiting   string   `json:"waiting"`
	Replicas  int      `json:"replicas"`
}

func (c *ctrl) clusters() []clusterStatus {
	var list struct {
		Clusters []clusterStatus `json:"clusters"`
	}
	_ = json.Unmarshal([]byte(c.get("/clusters")), &list)
	return list.Clusters
}

// pprofTop fetches a profile from the controller and summarises it with `go tool pprof -top`.
func (c *ctrl) pprofTop(name, path string) string {
	file := filepath.Join(c.runDir, c.name+"-"+name+".pprof")
	body := c.get(path)
	if body == "" || os.WriteFile(file, []byte(body), 0o644) != nil {
		return "(no profile)"
	}
	return pprofSummary(c.bin, file, 12)
}

// pprofOwn fetches a CPU profile and summarises it by cumulative time, keeping only the controller's
// own functions: where its code spends, which a flat top of syscalls and the runtime does not say.
func (c *ctrl) pprofOwn(name, path string) string {
	file := filepath.Join(c.runDir, c.name+"-"+name+".pprof")
	body := c.get(path)
	if body == "" || os.WriteFile(file, []byte(body), 0o644) != nil {
		return "(no profile)"
	}
	return pprofSummary(c.bin, file, 25, "-cum", "-show=couchdb-controller|net/http|retryablehttp|client-go|encoding/json|prometheus")
}

// selfProfile profiles this process (the harness: emulated nodes, kubelet, proxy, observers) while
// f runs, and summarises it. The harness shares the cores with the controller; its profile says
// where the cores went when the controller is not the bottleneck.
func selfProfile(runDir, name string, f func() error, extra ...string) (string, error) {
	file := filepath.Join(runDir, "harness-"+name+".pprof")
	out, err := os.Create(file)
	if err != nil {
		return "", err
	}
	started := pprof.StartCPUProfile(out) == nil
	ferr := f()
	if started {
		pprof.StopCPUProfile()
	}
	out.Close()
	if !started {
		return "(another profile was running)", ferr
	}
	exe, _ := os.Executable()
	return pprofSummary(exe, file, 15, extra...), ferr
}

func pprofSummary(bin, file string, nodes int, extra ...string) string {
	args := append([]string{"tool", "pprof", "-top", fmt.Sprintf("-nodecount=%d", nodes)}, extra...)
	out, err := exec.Command("go", append(args, bin, file)...).CombinedOutput()
	if err != nil {
		return fmt.Sprintf("(pprof: %v)", err)
	}
	var keep []string
	for _, l := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(l, "File:") || strings.HasPrefix(l, "Build ID:") || strings.HasPrefix(l, "Time:") || strings.TrimSpace(l) == "" {
			continue
		}
		keep = append(keep, l)
	}
	return strings.Join(keep, "\n")
}

// withoutProxyEnv drops every proxy setting (any case) from env.
func withoutProxyEnv(env []string) []string {
	var out []string
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		switch strings.ToUpper(k) {
		case "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY":
			continue
		}
		out = append(out, kv)
	}
	return out
}

func freeAddr() string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "127.0.0.1:0"
	}
	defer l.Close()
	return l.Addr().String()
}

// cpuSeconds is a process's user+system CPU time.
func cpuSeconds(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / 100 // USER_HZ
}

// controlPlaneCPU is the CPU seconds each control-plane process has used, by name.
func (w *world) controlPlaneCPU() map[string]float64 {
	out := map[string]float64{}
	for name, pid := range w.cpPids {
		out[name] = cpuSeconds(pid)
	}
	return out
}

// machineBusy is the CPU seconds every core of the machine has spent not idle (every process: the
// harness, the controller, and whatever else runs on the machine).
func machineBusy() float64 {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	busy := 0.0
	for i, v := range f[1:] {
		x, _ := strconv.ParseFloat(v, 64)
		if i == 3 || i == 4 || i >= 8 { // idle, iowait; guest time is already in user
			continue
		}
		busy += x
	}
	return busy / 100
}

func loadAvg() float64 {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	v, _ := strconv.ParseFloat(f[0], 64)
	return v
}

func procStatusMiB(pid int, field string) float64 {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, field) {
			f := strings.Fields(l)
			kb, _ := strconv.ParseFloat(f[1], 64)
			return kb / 1024
		}
	}
	return 0
}

// metricSum adds every sample of a counter or gauge family whose labels contain match.
func metricSum(metrics, name, match string) float64 {
	total := 0.0
	for _, l := range strings.Split(metrics, "\n") {
		if !strings.HasPrefix(l, name+"{") && !strings.HasPrefix(l, name+" ") {
			continue
		}
		f := strings.Fields(l)
		if match != "" && !strings.Contains(f[0], match) {
			continue
		}
		v, _ := strconv.ParseFloat(f[len(f)-1], 64)
		total += v
	}
	return total
}

// meter is a section's measurement context: when, on what, under what load.
type meter struct {
	Meta
	start    time.Time
	busy0    float64
	selfCPU0 float64
}

func startMeta(o options) *meter {
	return &meter{Meta: Meta{Date: time.Now().UTC().Format("2006-01-02 15:04 UTC"), Cores: runtime.NumCPU(), Go: runtime.Version(),
		K8s: harness.K8sVersion, LoadBefore: loadAvg()}, start: time.Now(), busy0: machineBusy(), selfCPU0: cpuSeconds(os.Getpid())}
}

func (m *meter) end() Meta {
	d := time.Since(m.start).Seconds()
	m.Duration = d
	m.MachineCores = (machineBusy() - m.busy0) / d
	m.HarnessCores = (cpuSeconds(os.Getpid()) - m.selfCPU0) / d
	return m.Meta
}

// emulatedFillRate is the copy-fill rate networkOptions gives the emulator, in bytes per second.
func emulatedFillRate(o options) float64 { return o.fillRate }

// networkOptions configures every emulated cluster: internal replication 1 s after a write (CouchDB:
// 5 s; shorter so loading data settles quickly), moving documents at the fill rate, and mem3_shards'
// cache behind _dbs as on the recorded machine.
func networkOptions(o options) couchtest.NetworkOptions {
	// Admin hashes at 1,000 pbkdf2 iterations: 600,000 (CouchDB's) cost seconds per node boot under
	// the emulator's one lock, on the cores the controller is measured on.
	return couchtest.NetworkOptions{SyncDelay: time.Second, PasswordIterations: 1000, FillRate: int64(emulatedFillRate(o)),
		ShardCacheLag: couchtest.RecordedShardCacheLag, ShardCacheDelay: couchtest.RecordedShardCacheDelay}
}
