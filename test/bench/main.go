// Command bench measures couchdb-controller on the real control-plane harness with emulated CouchDB
// pods and the controller binary as a separate process: formation time, join latency, and at N
// clusters the time to form all, the controller's RSS and CPU, and CouchDB and API requests per
// steady-state resync. It prints a table and writes it to BENCHMARKS.md (-out).
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
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
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

const resync = 10 * time.Second

func main() {
	out := flag.String("out", "", "write the results to this Markdown file")
	sizes := flag.String("clusters", "10,100", "cluster counts to measure")
	flag.Parse()
	ctx := context.Background()
	res, err := run(ctx, *sizes)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
	fmt.Print(res)
	if *out != "" {
		if err := os.WriteFile(*out, []byte(res), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(1)
		}
	}
}

type world struct {
	kube    kubernetes.Interface
	backend *couchpods.Backend
	metrics string
	proc    *os.Process
}

func run(ctx context.Context, sizes string) (string, error) {
	cp, err := harness.Start(ctx, harness.Options{})
	if err != nil {
		return "", err
	}
	defer cp.Stop()
	kube := kubernetes.NewForConfigOrDie(cp.AdminConfig())
	addrs := kubelet.NewAddressMap()
	backend := couchpods.New(kube, couchtest.NewNetwork(couchtest.NetworkOptions{SyncDelay: time.Second}))
	kctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() { _ = kubelet.New(kube, backend, addrs).Run(kctx) }()
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
	cmd := exec.Command(bin, "--kubeconfig="+cp.Kubeconfig(), "--metrics-bind-address="+metricsAddr,
		"--health-probe-bind-address="+freeAddr(), "--resync="+resync.String(), "--workers=4")
	cmd.Env = append(os.Environ(), "HTTP_PROXY="+proxy.URL())
	logf, _ := os.Create(filepath.Join(cp.RunDir(), "controller.log"))
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return "", err
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	w := &world{kube: kube, backend: backend, metrics: "http://" + metricsAddr, proc: cmd.Process}

	var b strings.Builder
	fmt.Fprintf(&b, "# Benchmarks\n\n`make bench` on %s, %d cores, %s, Kubernetes %s control plane from Go modules,\n", time.Now().UTC().Format("2006-01-02"), runtime.NumCPU(), runtime.Version(), harness.K8sVersion)
	fmt.Fprintf(&b, "emulated CouchDB 3.4 nodes (couch/couchtest), the controller binary as its own process reaching pods through the harness proxy, `--resync=%s --workers=4`.\n\n", resync)
	total := 0
	done := 0
	var rows []string
	var joins []float64
	for _, f := range strings.Split(sizes, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil {
			return "", err
		}
		row, js, err := w.scale(ctx, done, n-total)
		if err != nil {
			return "", err
		}
		joins = append(joins, js...)
		total, done = n, n
		rows = append(rows, fmt.Sprintf("| %d | %s |", n, row))
	}
	fmt.Fprintf(&b, "## Join latency (pod containers-ready -> member, from node_join_duration_seconds)\n\n")
	fmt.Fprintf(&b, "%s\n\n", histogramSummary(w.get("/metrics")))
	fmt.Fprintf(&b, "Outside observer (pod Ready in the API -> node listed in pod 0's `_membership`), %d scale-up joins: %s\n\n", len(joins), percentiles(joins))
	fmt.Fprintf(&b, "## Scale\n\n| clusters x 3 nodes | formation (apply -> all Ready), per-cluster formation p50/p99 | controller RSS | controller CPU while forming | steady-state CPU over 3 resyncs | CouchDB GETs per node per resync | CouchDB writes in steady state | API requests per resync |\n|---|---|---|---|---|---|---|---|\n")
	for _, r := range rows {
		fmt.Fprintln(&b, r)
	}
	fmt.Fprintf(&b, "\n## Targets\n\n| target | measured |\n|---|---|\n")
	fmt.Fprintf(&b, "| join p50 <= 50 ms, p99 <= 250 ms | see above |\n| 3-node formation <= 1 s after the last pod is ready | see per-cluster formation (it includes pod start-up) |\n| 1,000 clusters: formed <= 60 s, RSS <= 150 MiB, CPU <= 2%% | not run in this harness yet (see the closing note of issue 7) |\n| 0 writes, <= 2 CouchDB GETs per node per resync | see the table |\n")
	return b.String(), nil
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

// scale adds n clusters, measures their formation, then one join per cluster, then the steady state.
func (w *world) scale(ctx context.Context, first, n int) (string, []float64, error) {
	cpu0 := cpuSeconds(w.proc.Pid)
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := first; i < first+n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			if err := w.create(ctx, fmt.Sprintf("bench-%d", i)); err != nil {
				errs <- err
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return "", nil, err
	}
	formed := map[string]time.Duration{}
	err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 15*time.Minute, true, func(context.Context) (bool, error) {
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
		return len(formed) >= n, nil
	})
	if err != nil {
		return "", nil, fmt.Errorf("%d of %d clusters formed: %w", len(formed), n, err)
	}
	all := time.Since(start)
	cpuForm := cpuSeconds(w.proc.Pid) - cpu0
	var per []float64
	for _, d := range formed {
		per = append(per, d.Seconds())
	}
	joins := w.joins(ctx, first, n)
	// Steady state: three resync periods with nothing changing.
	time.Sleep(resync) // let the joins' follow-up syncs finish
	for _, node := range w.backend.Nodes() {
		node.ResetRequests()
	}
	api0 := apiRequests(w.get("/metrics"))
	cpu1 := cpuSeconds(w.proc.Pid)
	window := 3 * resync
	time.Sleep(window)
	cpuSteady := cpuSeconds(w.proc.Pid) - cpu1
	api := apiRequests(w.get("/metrics")) - api0
	gets, writes, nodes := 0, 0, 0
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
		writes += r.Writes
		nodes++
	}
	resyncs := window.Seconds() / resync.Seconds()
	row := fmt.Sprintf("%.1f s, %s | %.0f MiB | %.2f s | %.2f%% of one core | %.2f | %d | %.1f",
		all.Seconds(), percentilesSec(per), rssMiB(w.proc.Pid), cpuForm, 100*cpuSteady/window.Seconds(),
		float64(gets)/float64(max(nodes, 1))/resyncs, writes, api/resyncs)
	return row, joins, nil
}

// joins scales every new cluster to 4 and measures, from outside, pod Ready -> node in _membership.
func (w *world) joins(ctx context.Context, first, n int) []float64 {
	var mu sync.Mutex
	var out []float64
	var wg sync.WaitGroup
	for i := first; i < first+n; i++ {
		wg.Add(1)
		go func(ns string) {
			defer wg.Done()
			if _, err := w.kube.AppsV1().StatefulSets(ns).Patch(ctx, "db", types.MergePatchType, []byte(`{"spec":{"replicas":4}}`), metav1.PatchOptions{}); err != nil {
				return
			}
			var ready time.Time
			want := fmt.Sprintf("couchdb@db-3.db.%s.svc.cluster.local", ns)
			_ = wait.PollUntilContextTimeout(ctx, 2*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
				if ready.IsZero() {
					if p, err := w.kube.CoreV1().Pods(ns).Get(ctx, "db-3", metav1.GetOptions{}); err == nil {
						for _, c := range p.Status.Conditions {
							if c.Type == corev1.ContainersReady && c.Status == corev1.ConditionTrue {
								ready = time.Now()
							}
						}
					}
					return false, nil
				}
				node := w.backend.Node(ns, "db-0")
				for _, m := range node.ClusterNodes() {
					if m == want {
						mu.Lock()
						out = append(out, time.Since(ready).Seconds())
						mu.Unlock()
						return true, nil
					}
				}
				return false, nil
			})
		}(fmt.Sprintf("bench-%d", i))
	}
	wg.Wait()
	return out
}

func (w *world) create(ctx context.Context, ns string) error {
	if err := harness.EnsureNamespace(ctx, w.kube, ns); err != nil {
		return err
	}
	labels := map[string]string{"couchdb.io/cluster": "main"}
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

func rssMiB(pid int) float64 {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmHWM:") {
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
	return s[min(len(s)-1, int(math.Ceil(q*float64(len(s))))-1)]
}

func percentiles(v []float64) string {
	return fmt.Sprintf("p50 %.0f ms, p90 %.0f ms, p99 %.0f ms", 1000*quantile(v, 0.5), 1000*quantile(v, 0.9), 1000*quantile(v, 0.99))
}

func percentilesSec(v []float64) string {
	return fmt.Sprintf("p50 %.2f s / p99 %.2f s", quantile(v, 0.5), quantile(v, 0.99))
}

// histogramSummary reads node_join_duration_seconds' buckets and reports count, mean and the bucket
// bounds p50/p99 fall in.
func histogramSummary(metrics string) string {
	type bucket struct{ le, count float64 }
	var bs []bucket
	var sum, count float64
	for _, l := range strings.Split(metrics, "\n") {
		switch {
		case strings.HasPrefix(l, "couchdb_controller_node_join_duration_seconds_bucket{le=\""):
			le := strings.TrimSuffix(strings.TrimPrefix(strings.Fields(l)[0], "couchdb_controller_node_join_duration_seconds_bucket{le=\""), "\"}")
			v, _ := strconv.ParseFloat(strings.Fields(l)[1], 64)
			lf, err := strconv.ParseFloat(le, 64)
			if err != nil {
				lf = math.Inf(1)
			}
			bs = append(bs, bucket{lf, v})
		case strings.HasPrefix(l, "couchdb_controller_node_join_duration_seconds_sum "):
			sum, _ = strconv.ParseFloat(strings.Fields(l)[1], 64)
		case strings.HasPrefix(l, "couchdb_controller_node_join_duration_seconds_count "):
			count, _ = strconv.ParseFloat(strings.Fields(l)[1], 64)
		}
	}
	if count == 0 {
		return "no joins recorded"
	}
	at := func(q float64) string {
		for _, b := range bs {
			if b.count >= q*count {
				return fmt.Sprintf("<= %g s", b.le)
			}
		}
		return "?"
	}
	return fmt.Sprintf("%.0f joins (formation and scale-up), mean %.0f ms, p50 %s, p99 %s", count, 1000*sum/count, at(0.5), at(0.99))
}
