// Command demo runs couchdb-controller end to end on this machine: a real kube-apiserver, etcd and
// kube-controller-manager (built from Go modules), a fake kubelet that runs an emulated CouchDB node
// per pod, the example cluster from manifests/examples, and the controller binary. It narrates what
// happens and keeps running until Ctrl-C.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/couchdb-controller/couchdb-controller/couch/couchtest"
	"github.com/couchdb-controller/couchdb-controller/test/couchpods"
	"github.com/couchdb-controller/couchdb-controller/test/harness"
	"github.com/couchdb-controller/couchdb-controller/test/kapply"
	"github.com/couchdb-controller/couchdb-controller/test/kubelet"
)

func main() {
	exitAfter := flag.Bool("exit", false, "exit after the narration instead of waiting for Ctrl-C")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *exitAfter); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func say(format string, args ...any) {
	fmt.Printf("\033[1m==> "+format+"\033[0m\n", args...)
}

func run(ctx context.Context, exitAfter bool) error {
	start := time.Now()
	say("Starting a real Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager %s)", harness.K8sVersion)
	cp, err := harness.Start(ctx, harness.Options{})
	if err != nil {
		return err
	}
	defer cp.Stop()
	cfg := cp.AdminConfig()
	kube := kubernetes.NewForConfigOrDie(cfg)
	addrs := kubelet.NewAddressMap()
	network := couchtest.NewNetwork(couchtest.NetworkOptions{SyncDelay: time.Second, PasswordIterations: 1000, ShardCacheLag: couchtest.RecordedShardCacheLag,
		ShardCacheDelay: couchtest.RecordedShardCacheDelay})
	backend := couchpods.New(kube, network)
	kctx, kcancel := context.WithCancel(ctx)
	defer kcancel()
	go func() { _ = kubelet.New(kube, backend, addrs).Run(kctx) }()
	proxy, err := addrs.ServeProxy()
	if err != nil {
		return err
	}
	defer proxy.Close()
	say("Control plane ready in %s; a fake kubelet runs an emulated CouchDB 3.4 node for every pod", time.Since(start).Round(time.Millisecond))

	const ns = "demo"
	if err := harness.EnsureNamespace(ctx, kube, ns); err != nil {
		return err
	}
	bin := os.Getenv("COUCHDB_CONTROLLER_BINARY")
	if bin == "" {
		bin = filepath.Join(cp.RunDir(), "couchdb-controller")
		if out, err := exec.Command("go", "build", "-o", bin, "./cmd/couchdb-controller").CombinedOutput(); err != nil {
			return fmt.Errorf("build controller: %v\n%s", err, out)
		}
	}
	metricsAddr := freeAddr()
	logPath := filepath.Join(cp.RunDir(), "couchdb-controller.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return err
	}
	defer logFile.Close()
	ctrl := exec.Command(bin, "--kubeconfig="+cp.Kubeconfig(), "--metrics-bind-address="+metricsAddr,
		"--health-probe-bind-address="+freeAddr(), "-v=2")
	// Pods are reached only through the harness proxy: inherited proxy settings (a NO_PROXY covering the
	// fake pod IPs) are dropped so the controller never dials a pod address directly.
	ctrl.Env = proxy.Env(os.Environ())
	ctrl.Stdout, ctrl.Stderr = logFile, logFile
	if err := ctrl.Start(); err != nil {
		return err
	}
	defer func() {
		_ = ctrl.Process.Signal(os.Interrupt)
		_ = ctrl.Wait()
	}()
	say("couchdb-controller is running (logs: %s)", logPath)

	say("Applying manifests/examples: a 3-node CouchDB StatefulSet + headless Service, labelled couchdb.io/cluster=main")
	applied := time.Now()
	if err := apply(ctx, cfg, ns); err != nil {
		return err
	}
	if err := waitFor(ctx, 120*time.Second, func() bool { return status(metricsAddr, ns) == "Ready/3" }); err != nil {
		return fmt.Errorf("cluster did not form: %w (see %s)", err, logPath)
	}
	say("Cluster formed: 3 members, setup finished, %s after apply (OrderedReady pods, each gated on couchdb.io/member)", time.Since(applied).Round(time.Millisecond))
	printMembers(backend, ns, "couchdb-0")

	say("kubectl scale statefulset/couchdb --replicas=5")
	scaled := time.Now()
	// What kubectl scale does: read and update the scale subresource.
	sc, err := kube.AppsV1().StatefulSets(ns).GetScale(ctx, "couchdb", metav1.GetOptions{})
	if err != nil {
		return err
	}
	sc.Spec.Replicas = 5
	if _, err := kube.AppsV1().StatefulSets(ns).UpdateScale(ctx, "couchdb", sc, metav1.UpdateOptions{}); err != nil {
		return err
	}
	if err := waitFor(ctx, 120*time.Second, func() bool { return status(metricsAddr, ns) == "Ready/5" }); err != nil {
		return fmt.Errorf("scale-up did not join: %w", err)
	}
	say("Both new pods joined, %s after the scale command", time.Since(scaled).Round(time.Millisecond))
	printMembers(backend, ns, "couchdb-0")

	say("Join latency (pod containers-ready -> member), from the controller's own histogram:")
	var sum, count float64
	for _, line := range grep(get("http://"+metricsAddr+"/metrics"), "couchdb_controller_node_join_duration_seconds") {
		fmt.Println("   ", line)
		if f := strings.Fields(line); len(f) == 2 && strings.HasSuffix(f[0], "_sum") {
			fmt.Sscan(f[1], &sum)
		} else if len(f) == 2 && strings.HasSuffix(f[0], "_count") {
			fmt.Sscan(f[1], &count)
		}
	}
	if count > 0 {
		fmt.Printf("    mean join latency %.1f ms over %.0f joins\n", 1000*sum/count, count)
	}
	say("Metrics excerpt (GET /metrics):")
	for _, line := range grep(get("http://"+metricsAddr+"/metrics"), "couchdb_controller_cluster_nodes{", "couchdb_controller_cluster_formed{", "couchdb_controller_syncs_total") {
		fmt.Println("   ", line)
	}
	say("Status API (GET /clusters/%s/main):", ns)
	fmt.Println(indent(get("http://" + metricsAddr + "/clusters/" + ns + "/main")))
	say("Events on the StatefulSet:")
	evs, _ := kube.CoreV1().Events(ns).List(ctx, metav1.ListOptions{})
	for _, e := range evs.Items {
		if e.Source.Component == "couchdb-controller" {
			fmt.Printf("    %-8s %-14s %s\n", e.Type, e.Reason, e.Message)
		}
	}
	if exitAfter {
		say("Done in %s", time.Since(start).Round(time.Millisecond))
		return nil
	}
	say("Still running. Point kubectl at it:\n    export KUBECONFIG=%s\n    kubectl -n %s get statefulset,pods,endpoints\n    curl -s http://%s/clusters | head\nPress Ctrl-C to stop.", cp.Kubeconfig(), ns, metricsAddr)
	<-ctx.Done()
	say("Stopping")
	return nil
}

// apply renders manifests/examples and applies it into ns.
func apply(ctx context.Context, cfg *rest.Config, ns string) error {
	objs, err := kapply.Render(filepath.Join("manifests", "examples"))
	if err != nil {
		return err
	}
	return kapply.Apply(ctx, cfg, objs, ns)
}

func freeAddr() string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "127.0.0.1:0"
	}
	defer l.Close()
	return l.Addr().String()
}

func get(url string) string {
	resp, err := http.Get(url) //nolint:gosec // loopback
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// status returns "<phase>/<members>" from the status API.
func status(addr, ns string) string {
	var s struct {
		Phase   string   `json:"phase"`
		Members []string `json:"members"`
	}
	if json.Unmarshal([]byte(get("http://"+addr+"/clusters/"+ns+"/main")), &s) != nil {
		return ""
	}
	return fmt.Sprintf("%s/%d", s.Phase, len(s.Members))
}

func waitFor(ctx context.Context, timeout time.Duration, cond func() bool) error {
	return wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, timeout, true, func(context.Context) (bool, error) { return cond(), nil })
}

func grep(text string, prefixes ...string) []string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		for _, p := range prefixes {
			if strings.HasPrefix(l, p) && !strings.Contains(l, "_bucket{") {
				out = append(out, l)
			}
		}
	}
	return out
}

func indent(s string) string {
	var lines []string
	for _, l := range strings.Split(strings.TrimSpace(s), "\n") {
		lines = append(lines, "    "+l)
	}
	return strings.Join(lines, "\n")
}

func printMembers(b *couchpods.Backend, ns, pod string) {
	n := b.Node(ns, pod)
	if n == nil {
		return
	}
	members := n.ClusterNodes()
	sort.Strings(members)
	fmt.Printf("    GET /_membership on %s: cluster_nodes = %s\n", pod, strings.Join(members, ", "))
}
