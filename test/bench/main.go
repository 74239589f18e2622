// Command bench measures couchdb-controller on the real control-plane harness with emulated CouchDB
// pods and the controller binary as a separate process, run with its default flags (plus pprof):
// formation time, join latency, and at N clusters the time to form all, the controller's RSS and CPU,
// and CouchDB and API requests per steady-state resync; then a couchdiscover-style 5 s poller joins
// nodes through the same harness for a side-by-side comparison. It prints a Markdown report and writes
// it to test/bench/BENCHMARKS.md (make bench passes -out).
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	_ "net/http/pprof" // -harness-pprof
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"

	"github.com/couchdb-controller/couchdb-controller/couch/couchtest"
	"github.com/couchdb-controller/couchdb-controller/test/couchpods"
	"github.com/couchdb-controller/couchdb-controller/test/harness"
	"github.com/couchdb-controller/couchdb-controller/test/kubelet"
)

func main() {
	out := flag.String("out", "", "write the results to this Markdown file")
	sizes := flag.String("clusters", "10,100,1000", "cluster counts to measure, in increasing order")
	steady := flag.Duration("steady", 5*time.Minute, "steady-state window at each size, at the controller's default resync")
	pollers := flag.Int("poll-clusters", 50, "clusters joined by a couchdiscover-style 5 s poller, for comparison (0: skip)")
	formations := flag.Int("formations", 20, "3-node clusters formed one at a time on the idle harness, to time formation alone")
	pprofAddr := flag.String("harness-pprof", "", "serve the harness's own pprof on this loopback address (the harness shares the cores with the controller)")
	flag.Parse()
	if *pprofAddr != "" {
		go func() { _ = http.ListenAndServe(*pprofAddr, nil) }() //nolint:gosec // loopback, profiling only
	}
	res, err := run(context.Background(), *sizes, *steady, *pollers, *formations)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
	fmt.Print(res)
	if *out != "" {
		// The hand-written reading of the numbers below notesMarker survives a re-run.
		if old, err := os.ReadFile(*out); err == nil {
			if i := strings.Index(string(old), notesMarker); i >= 0 {
				res += "\n" + string(old[i:])
			}
		}
		if err := os.WriteFile(*out, []byte(res), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(1)
		}
	}
}

// notesMarker starts the hand-written part of the -out file, which a re-run keeps.
const notesMarker = "<!-- notes: kept by make bench -->"

// defaultResync is the controller's --resync default; the steady state is measured at it.
const defaultResync = time.Minute

type world struct {
	kube    kubernetes.Interface
	backend *couchpods.Backend
	metrics string
	proc    *os.Process
	bin     string
	runDir  string
}

// stage is what one cluster count measured.
type stage struct {
	clusters    int
	formAll     time.Duration
	perCluster  []float64 // objects created -> cluster Ready, seconds
	formation   histogram // controller metric (last pod ready -> finished), this stage's clusters
	joins       []float64 // outside observer, seconds
	peakRSS     float64   // MiB, VmHWM
	rss         float64   // MiB after the steady window
	cpuForming  float64   // CPU seconds from create to all formed
	cpuSteady   float64   // fraction of one core over the steady window
	getsPerNode float64   // CouchDB GETs per node per resync (readiness probes excluded)
	apiPerSync  float64   // Kubernetes API requests per resync
	writes      int       // CouchDB writes in the steady window
	profile     string    // pprof -top of a CPU profile taken while forming
}

func run(ctx context.Context, sizes string, steady time.Duration, pollers, formations int) (string, error) {
	cp, err := harness.Start(ctx, harness.Options{})
	if err != nil {
		return "", err
	}
	defer cp.Stop()
	cfg := cp.AdminConfig()
	cfg.QPS, cfg.Burst = 2000, 4000 // the harness plays every kubelet and user at once
	kube := kubernetes.NewForConfigOrDie(cfg)
	addrs := kubelet.NewAddressMap()
	backend := couchpods.NewPerNamespace(kube, couchtest.NetworkOptions{SyncDelay: time.Second, PasswordIterations: 1000})
	backend.KeepAliveProbes()
	// The harness (every emulated node, the kubelet and the proxy) lives in this process; fewer GC
	// cycles leave more of the shared cores to the controller being measured.
	debug.SetGCPercent(400)
	kctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// A 1 s probe period (a real kubelet's default is 10 s) keeps 3,000 emulated pods affordable on a
	// small machine. Join latency starts at the ContainersReady transition, so the period is not in it.
	kl := kubelet.NewWithOptions(kube, backend, addrs, kubelet.Options{ProbePeriod: time.Second, Workers: 16})
	go func() { _ = kl.Run(kctx) }()
	proxy, err := addrs.ServeProxy()
	if err != nil {
		return "", err
	}
	defer proxy.Close()
	bin := os.Getenv("COUCHDB_CONTROLLER_BINARY")
	if bin == "" {
		bin = filepath.Join(cp.RunDir(), "couchdb-controller")
		if b, err := exec.Command("go", "build", "-o", bin, "./cmd/couchdb-controller").CombinedOutput(); err != nil {
			return "", fmt.Errorf("build: %v %s", err, b)
		}
	}
	metricsAddr := freeAddr()
	// Default flags for everything that shapes the numbers (resync, workers, QPS); pprof on.
	cmd := exec.Command(bin, "--kubeconfig="+cp.Kubeconfig(), "--metrics-bind-address="+metricsAddr,
		"--health-probe-bind-address="+freeAddr(), "--profiling")
	// Every pod IP must go through the harness proxy: an inherited NO_PROXY (or another proxy) could
	// make the controller dial the fake 10.244/16 pod addresses directly.
	cmd.Env = append(withoutProxyEnv(os.Environ()), "HTTP_PROXY="+proxy.URL())
	logf, _ := os.Create(filepath.Join(cp.RunDir(), "controller.log"))
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = harness.ChildProcAttr() // no controller outlives an interrupted run
	if err := cmd.Start(); err != nil {
		return "", err
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	w := &world{kube: kube, backend: backend, metrics: "http://" + metricsAddr, proc: cmd.Process, bin: bin, runDir: cp.RunDir()}
	// The first stage's CPU profile is requested at once: wait until the controller serves.
	if err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, time.Minute, true, func(context.Context) (bool, error) {
		return w.get("/metrics") != "", nil
	}); err != nil {
		return "", fmt.Errorf("controller did not serve metrics: %w", err)
	}

	form, err := w.formations(ctx, formations)
	if err != nil {
		return "", err
	}
	fmt.Fprintf(os.Stderr, "bench: %d formations measured\n", len(form.outside))

	counts := strings.Split(sizes, ",")
	var stages []stage
	total := 0
	for i, f := range counts {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n <= total {
			return "", fmt.Errorf("-clusters must be increasing numbers: %q", sizes)
		}
		st, err := w.scale(ctx, total, n, steady, i == len(counts)-1)
		if err != nil {
			return "", err
		}
		stages = append(stages, st)
		total = n
		fmt.Fprintf(os.Stderr, "bench: %d clusters measured\n", n)
	}
	var polled []float64
	if pollers > 0 {
		if polled, err = w.couchdiscover(ctx, pollers); err != nil {
			return "", err
		}
	}
	heap := w.pprofTop("heap", "/debug/pprof/heap")
	joinHist := histogramOf(w.get("/metrics"), "couchdb_controller_node_join_duration_seconds")
	return report(form, stages, polled, joinHist, heap, steady), nil
}

func (w *world) get(path string) string {
	resp, err := http.Get(w.metrics + path) //nolint:gosec // loopback
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// scale adds clusters up to n, measures their formation, one join per new cluster, then the steady
// state over the window.
func (w *world) scale(ctx context.Context, first, n int, steady time.Duration, profile bool) (stage, error) {
	st := stage{clusters: n}
	cpu0 := cpuSeconds(w.proc.Pid)
	form0 := histogramOf(w.get("/metrics"), "couchdb_controller_cluster_formation_duration_seconds")
	profDone := make(chan string, 1)
	if profile {
		go func() { profDone <- w.pprofTop("cpu", "/debug/pprof/profile?seconds=30") }()
	}
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, n-first)
	sem := make(chan struct{}, 32)
	for i := first; i < n; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func(i int) {
			defer wg.Done()
			defer func() { <-sem }()
			if err := w.create(ctx, fmt.Sprintf("bench-%d", i), "main"); err != nil {
				errs <- err
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return st, err
	}
	// Polling the status API costs the controller CPU too; keep it light at scale.
	every := 200 * time.Millisecond
	if n-first > 200 {
		every = time.Second
	}
	formed := map[string]time.Duration{}
	err := wait.PollUntilContextTimeout(ctx, every, 30*time.Minute, true, func(context.Context) (bool, error) {
		var list struct {
			Clusters []struct {
				Namespace string   `json:"namespace"`
				Phase     string   `json:"phase"`
				Members   []string `json:"members"`
			} `json:"clusters"`
		}
		_ = json.Unmarshal([]byte(w.get("/clusters")), &list)
		for _, c := range list.Clusters {
			var idx int
			if _, err := fmt.Sscanf(c.Namespace, "bench-%d", &idx); err != nil || idx < first {
				continue // an earlier stage's cluster (already scaled to 4)
			}
			if _, ok := formed[c.Namespace]; !ok && c.Phase == "Ready" && len(c.Members) == 3 {
				formed[c.Namespace] = time.Since(start)
			}
		}
		return len(formed) >= n-first, nil
	})
	if err != nil {
		return st, fmt.Errorf("%d of %d clusters formed: %w", len(formed), n-first, err)
	}
	st.formAll = time.Since(start)
	st.cpuForming = cpuSeconds(w.proc.Pid) - cpu0
	for _, d := range formed {
		st.perCluster = append(st.perCluster, d.Seconds())
	}
	st.formation = histogramOf(w.get("/metrics"), "couchdb_controller_cluster_formation_duration_seconds").minus(form0)
	if profile {
		st.profile = <-profDone
	}
	st.joins = w.joins(ctx, "bench-", first, n)

	// Steady state: nothing changes for the window, at the default resync.
	time.Sleep(defaultResync) // let the joins' follow-up syncs finish
	for _, node := range w.backend.Nodes() {
		node.ResetRequests()
	}
	api0 := apiRequests(w.get("/metrics"))
	cpu1 := cpuSeconds(w.proc.Pid)
	time.Sleep(steady)
	st.cpuSteady = (cpuSeconds(w.proc.Pid) - cpu1) / steady.Seconds()
	resyncs := steady.Seconds() / defaultResync.Seconds()
	st.apiPerSync = (apiRequests(w.get("/metrics")) - api0) / resyncs
	gets, nodes := 0, 0
	for _, node := range w.backend.Nodes() {
		if !node.Running() {
			continue
		}
		r := node.Requests()
		for path, c := range r.ByPath {
			// The harness kubelet's readiness probe (GET /_up) is not the controller's.
			if strings.HasPrefix(path, "GET ") && path != "GET /_up" {
				gets += c
			}
		}
		st.writes += r.Writes
		nodes++
	}
	st.getsPerNode = float64(gets) / float64(max(nodes, 1)) / resyncs
	st.peakRSS, st.rss = procStatusMiB(w.proc.Pid, "VmHWM:"), procStatusMiB(w.proc.Pid, "VmRSS:")
	return st, nil
}

// formation is what the one-at-a-time formations measured.
type formation struct {
	outside []float64 // seconds, last pod ContainersReady -> cluster_finished
	metric  histogram // the controller's cluster_formation_duration_seconds over the same clusters
}

// formations creates n labelled 3-node clusters one after another, each only once the previous one
// is finished, and times each from its last pod's ContainersReady to pod 0 reporting
// cluster_finished. They stay (as form-<i>) through the later stages.
func (w *world) formations(ctx context.Context, n int) (formation, error) {
	var f formation
	before := histogramOf(w.get("/metrics"), "couchdb_controller_cluster_formation_duration_seconds")
	for i := 0; i < n; i++ {
		ns := fmt.Sprintf("form-%d", i)
		if err := harness.EnsureNamespace(ctx, w.kube, ns); err != nil {
			return f, err
		}
		watch, err := w.kube.CoreV1().Pods(ns).Watch(ctx, metav1.ListOptions{})
		if err != nil {
			return f, err
		}
		if err := w.create(ctx, ns, "main"); err != nil {
			watch.Stop()
			return f, err
		}
		ready := map[string]bool{}
		var last time.Time
		timeout := time.After(2 * time.Minute)
		for len(ready) < 3 {
			select {
			case ev, ok := <-watch.ResultChan():
				if !ok {
					return f, fmt.Errorf("%s: pod watch closed", ns)
				}
				if p, isPod := ev.Object.(*corev1.Pod); isPod && containersReady(p) && !ready[p.Name] {
					ready[p.Name], last = true, time.Now()
				}
			case <-timeout:
				watch.Stop()
				return f, fmt.Errorf("%s: only %d pods ready", ns, len(ready))
			}
		}
		watch.Stop()
		node := w.backend.Node(ns, "db-0")
		if node == nil {
			return f, fmt.Errorf("%s: no node for db-0", ns)
		}
		err = wait.PollUntilContextTimeout(ctx, 2*time.Millisecond, 2*time.Minute, true, func(context.Context) (bool, error) {
			return setupState(ctx, node.URL()) == "cluster_finished", nil
		})
		if err != nil {
			return f, fmt.Errorf("%s: not finished: %w", ns, err)
		}
		f.outside = append(f.outside, time.Since(last).Seconds())
	}
	// The controller observes the finish after its POST returns; give the metric a moment.
	_ = wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) {
		f.metric = histogramOf(w.get("/metrics"), "couchdb_controller_cluster_formation_duration_seconds").minus(before)
		return int(f.metric.count) >= n, nil
	})
	return f, nil
}

// setupState is pod 0's GET /_cluster_setup state, as an admin ("" on any failure).
func setupState(ctx context.Context, base string) string {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/_cluster_setup", nil)
	if err != nil {
		return ""
	}
	req.SetBasicAuth("admin", "bench-password")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	var body struct {
		State string `json:"state"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&body)
	return body.State
}

// joins scales clusters prefix<first>..prefix<n-1> to 4 and measures, from outside, pod
// ContainersReady -> node in pod 0's _membership.
func (w *world) joins(ctx context.Context, prefix string, first, n int) []float64 {
	var mu sync.Mutex
	var out []float64
	var wg sync.WaitGroup
	sem := make(chan struct{}, 100)
	for i := first; i < n; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func(ns string) {
			defer wg.Done()
			defer func() { <-sem }()
			if d, ok := w.joinOne(ctx, ns, 3); ok {
				mu.Lock()
				out = append(out, d)
				mu.Unlock()
			}
		}(fmt.Sprintf("%s%d", prefix, i))
	}
	wg.Wait()
	return out
}

// joinOne raises the StatefulSet to ord+1 replicas and times pod ord's ContainersReady to its node
// being in pod 0's _membership. The observer watches the pod, as the controller's informer does, so
// both learn of the readiness at the same moment; membership is then polled every 2 ms.
func (w *world) joinOne(ctx context.Context, ns string, ord int) (float64, bool) {
	pod := fmt.Sprintf("db-%d", ord)
	watch, err := w.kube.CoreV1().Pods(ns).Watch(ctx, metav1.ListOptions{FieldSelector: "metadata.name=" + pod})
	if err != nil {
		return 0, false
	}
	defer watch.Stop()
	patch := []byte(fmt.Sprintf(`{"spec":{"replicas":%d}}`, ord+1))
	if _, err := w.kube.AppsV1().StatefulSets(ns).Patch(ctx, "db", types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		return 0, false
	}
	timeout := time.After(5 * time.Minute)
	var ready time.Time
	for ready.IsZero() {
		select {
		case ev, ok := <-watch.ResultChan():
			if !ok {
				return 0, false
			}
			if p, isPod := ev.Object.(*corev1.Pod); isPod && containersReady(p) {
				ready = time.Now()
			}
		case <-timeout:
			return 0, false
		}
	}
	want := fmt.Sprintf("couchdb@%s.db.%s.svc.cluster.local", pod, ns)
	var took float64
	err = wait.PollUntilContextTimeout(ctx, 2*time.Millisecond, 5*time.Minute, true, func(context.Context) (bool, error) {
		if node := w.backend.Node(ns, "db-0"); node != nil && contains(node.ClusterNodes(), want) {
			took = time.Since(ready).Seconds()
			return true, nil
		}
		return false, nil
	})
	return took, err == nil
}

func containersReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.ContainersReady && c.Status == corev1.ConditionTrue {
			return true
		}
	}
	return false
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// couchdiscover runs the approach the controller replaces, through the same harness: a loop per
// cluster that every 5 s lists the pods and adds each ready one that is not yet a member to pod 0's
// _nodes (couchdiscover does this from a sidecar in every pod; the latency distribution is the same).
// Its clusters are not labelled, so the controller leaves them alone. It returns the join latencies of
// one scale-up per cluster, measured exactly as for the controller.
func (w *world) couchdiscover(ctx context.Context, n int) ([]float64, error) {
	pctx, stop := context.WithCancel(ctx)
	defer stop()
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		ns := fmt.Sprintf("poll-%d", i)
		if err := w.create(ctx, ns, ""); err != nil {
			return nil, err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			t := time.NewTicker(5 * time.Second)
			defer t.Stop()
			for {
				w.pollOnce(pctx, ns)
				select {
				case <-pctx.Done():
					return
				case <-t.C:
				}
			}
		}()
	}
	// Formation by the poller: wait until each cluster lists 3 members.
	err := wait.PollUntilContextTimeout(ctx, time.Second, 10*time.Minute, true, func(context.Context) (bool, error) {
		for i := 0; i < n; i++ {
			node := w.backend.Node(fmt.Sprintf("poll-%d", i), "db-0")
			if node == nil || len(node.ClusterNodes()) < 3 {
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		return nil, fmt.Errorf("couchdiscover-style clusters did not form: %w", err)
	}
	out := w.joins(ctx, "poll-", 0, n)
	stop()
	wg.Wait()
	return out, nil
}

// pollOnce is one couchdiscover round for a cluster: every ready pod not in pod 0's _nodes is added.
func (w *world) pollOnce(ctx context.Context, ns string) {
	pods, err := w.kube.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return
	}
	first := w.backend.Node(ns, "db-0")
	if first == nil || !first.Running() {
		return
	}
	members := first.ClusterNodes()
	for i := range pods.Items {
		p := &pods.Items[i]
		name := fmt.Sprintf("couchdb@%s.db.%s.svc.cluster.local", p.Name, ns)
		if !containersReady(p) || contains(members, name) {
			continue
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodPut, first.URL()+"/_node/_local/_nodes/"+name, strings.NewReader("{}"))
		req.SetBasicAuth("admin", "bench-password")
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
		}
	}
}

// create makes one namespace with a 3-replica CouchDB StatefulSet and its headless Service, labelled
// couchdb.io/cluster=cluster (unlabelled when cluster is "").
func (w *world) create(ctx context.Context, ns, cluster string) error {
	if err := harness.EnsureNamespace(ctx, w.kube, ns); err != nil {
		return err
	}
	labels := map[string]string{}
	if cluster != "" {
		labels["couchdb.io/cluster"] = cluster
	}
	if _, err := w.kube.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "admin"},
		StringData: map[string]string{"adminUsername": "admin", "adminPassword": "bench-password"}}, metav1.CreateOptions{}); err != nil {
		return err
	}
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "db", Labels: labels}, Spec: corev1.ServiceSpec{ClusterIP: corev1.ClusterIPNone,
		Selector: map[string]string{"app": "db"}, Ports: []corev1.ServicePort{{Name: "couchdb", Port: 5984, TargetPort: intstr.FromInt32(5984)}}}}
	if _, err := w.kube.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		return err
	}
	ref := func(k string) *corev1.EnvVarSource {
		return &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "admin"}, Key: k}}
	}
	replicas := int32(3)
	sts := &appsv1.StatefulSet{ObjectMeta: metav1.ObjectMeta{Name: "db", Labels: labels, Annotations: map[string]string{"couchdb.io/admin-secret": "admin"}},
		Spec: appsv1.StatefulSetSpec{Replicas: &replicas, ServiceName: "db", PodManagementPolicy: appsv1.ParallelPodManagement,
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "db"}},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "db"}}, Spec: corev1.PodSpec{
				Containers: []corev1.Container{{Name: "couchdb", Image: "couchdb:3.4.3", Ports: []corev1.ContainerPort{{Name: "couchdb", ContainerPort: 5984}},
					Env: []corev1.EnvVar{{Name: "COUCHDB_USER", ValueFrom: ref("adminUsername")}, {Name: "COUCHDB_PASSWORD", ValueFrom: ref("adminPassword")},
						{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
						{Name: "NODENAME", Value: "$(POD_NAME).db." + ns + ".svc.cluster.local"}}}}}}}}
	_, err := w.kube.AppsV1().StatefulSets(ns).Create(ctx, sts, metav1.CreateOptions{})
	return err
}

// pprofTop fetches a profile from the controller and summarises it with `go tool pprof -top`.
func (w *world) pprofTop(name, path string) string {
	file := filepath.Join(w.runDir, name+".pprof")
	body := w.get(path)
	if body == "" || os.WriteFile(file, []byte(body), 0o644) != nil {
		return "(no profile)"
	}
	out, err := exec.Command("go", "tool", "pprof", "-top", "-nodecount=12", w.bin, file).CombinedOutput()
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

func apiRequests(metrics string) float64 {
	total := 0.0
	for _, l := range strings.Split(metrics, "\n") {
		if strings.HasPrefix(l, "couchdb_controller_kube_api_requests_total{") {
			f := strings.Fields(l)
			v, _ := strconv.ParseFloat(f[len(f)-1], 64)
			total += v
		}
	}
	return total
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

// histogram is a Prometheus histogram read from the text exposition.
type histogram struct {
	les    []float64
	counts []float64 // cumulative, by les
	sum    float64
	count  float64
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
			if err != nil {
				le = math.Inf(1)
			}
			h.les, h.counts = append(h.les, le), append(h.counts, v)
		case f[0] == name+"_sum":
			h.sum = v
		case f[0] == name+"_count":
			h.count = v
		}
	}
	return h
}

func (h histogram) minus(o histogram) histogram {
	out := histogram{les: h.les, sum: h.sum - o.sum, count: h.count - o.count}
	for i, c := range h.counts {
		if i < len(o.counts) {
			c -= o.counts[i]
		}
		out.counts = append(out.counts, c)
	}
	return out
}

// le is the upper bound of the bucket quantile q falls in (NaN when nothing was observed).
func (h histogram) le(q float64) float64 {
	for i, c := range h.counts {
		if h.count > 0 && c >= q*h.count {
			return h.les[i]
		}
	}
	return math.NaN()
}

func (h histogram) bound(q float64) string { return fmt.Sprintf("<= %g s", h.le(q)) }

func (h histogram) summary() string {
	if h.count == 0 {
		return "none recorded"
	}
	return fmt.Sprintf("%.0f observed, mean %.0f ms, p50 %s, p99 %s", h.count, 1000*h.sum/h.count, h.bound(0.5), h.bound(0.99))
}

func report(form formation, stages []stage, polled []float64, joinHist histogram, heap string, steady time.Duration) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# Benchmarks\n\n`make bench` on %s: %d cores, %s, Kubernetes %s control plane built from Go modules, emulated\n",
		time.Now().UTC().Format("2006-01-02"), runtime.NumCPU(), runtime.Version(), harness.K8sVersion)
	fmt.Fprintf(&b, "CouchDB 3.4 nodes (couch/couchtest, one emulated Erlang network per cluster), the controller binary as its own\n")
	fmt.Fprintf(&b, "process with its default flags (`--resync=%s --workers=16 --kube-api-qps=50`, plus `--profiling`), reaching pods\n", defaultResync)
	fmt.Fprintf(&b, "through the harness proxy. Everything (etcd, kube-apiserver, kube-controller-manager, the fake kubelet with a\n1 s probe period, every emulated CouchDB node and the controller) shares the same cores.\n\n")

	var joins []float64
	for _, s := range stages {
		joins = append(joins, s.joins...)
	}
	fmt.Fprintf(&b, "## Join latency\n\n| method | joins | p50 | p90 | p99 |\n|---|---|---|---|---|\n")
	fmt.Fprintf(&b, "| couchdb-controller, outside observer (pod ContainersReady seen by a watch -> node in pod 0's `_membership`, polled every 2 ms) | %d | %s | %s | %s |\n",
		len(joins), ms(joins, .5), ms(joins, .9), ms(joins, .99))
	if len(polled) > 0 {
		fmt.Fprintf(&b, "| couchdiscover-style 5 s poller, same harness and observer | %d | %s | %s | %s |\n", len(polled), ms(polled, .5), ms(polled, .9), ms(polled, .99))
		fmt.Fprintf(&b, "\nMedian join: %s with the poller, %s with the controller.\n", ms(polled, .5), ms(joins, .5))
	}
	fmt.Fprintf(&b, "\nThe controller's own `node_join_duration_seconds` (formation and scale-up joins): %s.\n\n", joinHist.summary())

	fmt.Fprintf(&b, "## Formation of one 3-node cluster\n\n%d clusters created one after another on the otherwise idle harness (Parallel pods, as the Helm chart makes them).\n\n", len(form.outside))
	fmt.Fprintf(&b, "| measured as | p50 | p90 | p99 | max |\n|---|---|---|---|---|\n")
	fmt.Fprintf(&b, "| outside observer: last pod ContainersReady (seen by a watch) -> pod 0's `_cluster_setup` says `cluster_finished` (polled every 2 ms) | %s | %s | %s | %s |\n",
		ms(form.outside, .5), ms(form.outside, .9), ms(form.outside, .99), ms(form.outside, 1))
	fmt.Fprintf(&b, "| controller metric `cluster_formation_duration_seconds` | %s | | %s | |\n\n", form.metric.bound(.5), form.metric.bound(.99))

	fmt.Fprintf(&b, "## Formation and scale\n\n| clusters x 3 nodes | all formed (objects created -> every cluster Ready) | per cluster p50 / p99 | last pod ready -> finished (controller metric) | controller CPU while forming | peak RSS | RSS after | steady CPU over %s | CouchDB GETs per node per resync | CouchDB writes in steady state | API requests per resync |\n|---|---|---|---|---|---|---|---|---|---|---|\n", steady)
	for _, s := range stages {
		fmt.Fprintf(&b, "| %d | %.1f s | %.2f s / %.2f s | %s | %.1f s | %.0f MiB | %.0f MiB | %.2f%% of one core | %.2f | %d | %.1f |\n",
			s.clusters, s.formAll.Seconds(), quantile(s.perCluster, .5), quantile(s.perCluster, .99), s.formation.summary(),
			s.cpuForming, s.peakRSS, s.rss, 100*s.cpuSteady, s.getsPerNode, s.writes, s.apiPerSync)
	}

	last := stages[len(stages)-1]
	verdict := func(ok bool) string {
		if ok {
			return "met"
		}
		return "missed"
	}
	fmt.Fprintf(&b, "\n## Targets (issue 7)\n\n| target | measured | |\n|---|---|---|\n")
	fmt.Fprintf(&b, "| join p50 <= 50 ms | %s | %s |\n", ms(joins, .5), verdict(quantile(joins, .5) <= .05))
	fmt.Fprintf(&b, "| join p99 <= 250 ms | %s | %s |\n", ms(joins, .99), verdict(quantile(joins, .99) <= .25))
	fmt.Fprintf(&b, "| 3-node formation <= 1 s after the last pod is ready | one at a time: p99 %s (outside), %s (metric); %d forming at once: %s at p99 | %s |\n",
		ms(form.outside, .99), form.metric.bound(.99), last.clusters, last.formation.bound(.99), verdict(quantile(form.outside, .99) <= 1))
	fmt.Fprintf(&b, "| %d clusters formed <= 60 s | %.1f s | %s |\n", last.clusters, last.formAll.Seconds(), verdict(last.formAll <= time.Minute))
	fmt.Fprintf(&b, "| %d clusters: RSS <= 150 MiB | peak %.0f MiB | %s |\n", last.clusters, last.peakRSS, verdict(last.peakRSS <= 150))
	fmt.Fprintf(&b, "| %d clusters: steady CPU <= 2%% of one core | %.2f%% | %s |\n", last.clusters, 100*last.cpuSteady, verdict(last.cpuSteady <= .02))
	fmt.Fprintf(&b, "| 0 writes in steady state | %d | %s |\n", last.writes, verdict(last.writes == 0))
	fmt.Fprintf(&b, "| <= 2 CouchDB GETs per node per resync | %.2f | %s |\n", last.getsPerNode, verdict(last.getsPerNode <= 2))

	fmt.Fprintf(&b, "\n## Profiles (`--profiling`)\n\nCPU, 30 s while %d clusters formed:\n\n```\n%s\n```\n\nHeap in use at the end:\n\n```\n%s\n```\n", last.clusters, last.profile, heap)
	return b.String()
}
