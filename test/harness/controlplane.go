// Package harness runs a real Kubernetes control plane (etcd, kube-apiserver and
// kube-controller-manager v1.35.4, built from Go modules by test/controlplane/build.sh) on loopback
// for end-to-end tests and the demo. Nothing needs root, Docker or a download of prebuilt binaries;
// once the binaries are cached, Start takes a few seconds. There is no kubelet or scheduler: the
// package test/kubelet plays both for pods on a fake Node.
package harness

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

// Options configure Start.
type Options struct {
	// RunDir holds data, certificates, kubeconfigs and one log file per process. Empty: a new
	// directory under os.TempDir().
	RunDir string
	// BinDir holds the binaries. Empty: BinDir(), built there by build.sh when missing.
	BinDir string
	// Logf receives progress lines (start-up time, peak memory at Stop). Nil: silent.
	Logf func(format string, args ...any)
	// Timeout bounds the start-up once the binaries exist. Zero: 2 minutes.
	Timeout time.Duration
}

// ControlPlane is a running etcd + kube-apiserver + kube-controller-manager. Methods are safe for
// concurrent use.
type ControlPlane struct {
	opts       Options
	runDir     string
	binDir     string
	url        string // https://127.0.0.1:PORT of kube-apiserver
	adminToken string
	pki        *pki
	kubeconfig string

	mu    sync.Mutex
	procs []*process // in start order
}

// Start brings the control plane up and returns once it admits pods: etcd /health, kube-apiserver
// /readyz and kube-controller-manager /healthz answer 200 and the `default` ServiceAccount exists in
// `default`. On error everything started so far is stopped again.
func Start(ctx context.Context, opts Options) (_ *ControlPlane, err error) {
	if opts.Logf == nil {
		opts.Logf = func(string, ...any) {}
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 2 * time.Minute
	}
	cp := &ControlPlane{opts: opts, binDir: opts.BinDir, runDir: opts.RunDir}
	if cp.binDir == "" {
		if err := EnsureBinaries(ctx); err != nil {
			return nil, err
		}
		cp.binDir = BinDir()
	} else if !binariesIn(cp.binDir) {
		return nil, fmt.Errorf("control-plane binaries missing in %s", cp.binDir)
	}
	if cp.runDir == "" {
		if cp.runDir, err = os.MkdirTemp("", "couchdb-controller-cp-"); err != nil {
			return nil, err
		}
	} else if err := os.MkdirAll(cp.runDir, 0o700); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			cp.Stop()
			err = fmt.Errorf("%w (logs in %s)", err, cp.runDir)
		}
	}()
	ctx, cancel := context.WithTimeout(ctx, opts.Timeout)
	defer cancel()
	began := time.Now()
	if cp.adminToken, err = randomToken(); err != nil {
		return nil, err
	}
	if cp.pki, err = makePKI(cp.runDir); err != nil {
		return nil, fmt.Errorf("make certificates: %w", err)
	}
	ports, err := freePorts(4)
	if err != nil {
		return nil, err
	}
	lap := time.Now()
	phase := func() time.Duration {
		d := time.Since(lap).Round(10 * time.Millisecond)
		lap = time.Now()
		return d
	}
	etcdURL, err := cp.startEtcd(ctx, ports[0], ports[1])
	if err != nil {
		return nil, err
	}
	tEtcd := phase()
	if err := cp.startAPIServer(ctx, etcdURL, ports[2]); err != nil {
		return nil, err
	}
	tAPI := phase()
	if err := cp.startControllerManager(ctx, ports[3]); err != nil {
		return nil, err
	}
	opts.Logf("control plane %s ready in %s (etcd %s, kube-apiserver %s, kube-controller-manager %s) at %s, run dir %s",
		K8sVersion, time.Since(began).Round(10*time.Millisecond), tEtcd, tAPI, phase(), cp.url, cp.runDir)
	return cp, nil
}

func (cp *ControlPlane) spawn(name string, args ...string) (*process, error) {
	p, err := startProcess(cp.binDir, cp.runDir, name, args...)
	if err != nil {
		return nil, err
	}
	cp.mu.Lock()
	cp.procs = append(cp.procs, p)
	cp.mu.Unlock()
	return p, nil
}

func (cp *ControlPlane) startEtcd(ctx context.Context, clientPort, peerPort int) (string, error) {
	clientURL := fmt.Sprintf("http://127.0.0.1:%d", clientPort)
	peerURL := fmt.Sprintf("http://127.0.0.1:%d", peerPort)
	p, err := cp.spawn("etcd",
		"--name=harness", "--data-dir="+filepath.Join(cp.runDir, "etcd"),
		"--listen-client-urls="+clientURL, "--advertise-client-urls="+clientURL,
		"--listen-peer-urls="+peerURL, "--initial-advertise-peer-urls="+peerURL,
		"--initial-cluster=harness="+peerURL,
		"--unsafe-no-fsync", // test data only: fsync dominates etcd latency on shared disks
		// One member on loopback: elect it at once instead of after the default 1 s timeout.
		"--heartbeat-interval=10", "--election-timeout=100",
		"--log-level=warn")
	if err != nil {
		return "", err
	}
	return clientURL, waitHTTP(ctx, p, http.DefaultClient, clientURL+"/health")
}

func (cp *ControlPlane) startAPIServer(ctx context.Context, etcdURL string, port int) error {
	tokens := filepath.Join(cp.runDir, "tokens.csv")
	// token,user,uid,"group1,group2": the admin is in system:masters, which RBAC lets do anything.
	if err := os.WriteFile(tokens, []byte(cp.adminToken+",harness-admin,harness-admin,system:masters\n"), 0o600); err != nil {
		return err
	}
	// Metadata-level audit of every request, so tests can prove which verbs a ServiceAccount used.
	audit := filepath.Join(cp.runDir, "audit-policy.yaml")
	policy := "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [\"RequestReceived\"]\nrules:\n- level: Metadata\n"
	if err := os.WriteFile(audit, []byte(policy), 0o600); err != nil {
		return err
	}
	cp.url = fmt.Sprintf("https://127.0.0.1:%d", port)
	p, err := cp.spawn("kube-apiserver",
		"--audit-policy-file="+audit, "--audit-log-path="+cp.AuditLog(), "--audit-log-maxsize=500",
		"--etcd-servers="+etcdURL,
		"--bind-address=127.0.0.1", "--secure-port="+strconv.Itoa(port), "--advertise-address=127.0.0.1",
		// Without this the apiserver publishes its own address in the `kubernetes` Endpoints, and
		// Endpoints refuse loopback addresses.
		"--endpoint-reconciler-type=none",
		"--tls-cert-file="+cp.pki.serverCert, "--tls-private-key-file="+cp.pki.serverKey,
		"--client-ca-file="+cp.pki.caCert, "--cert-dir="+filepath.Join(cp.runDir, "apiserver-certs"),
		"--token-auth-file="+tokens, "--authorization-mode=RBAC",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file="+cp.pki.saPub, "--service-account-signing-key-file="+cp.pki.saKey,
		"--service-cluster-ip-range=10.96.0.0/16",
		"--allow-privileged=true", "--v=0")
	if err != nil {
		return err
	}
	if err := waitHTTP(ctx, p, insecureClient, cp.url+"/readyz"); err != nil {
		return err
	}
	cp.kubeconfig = filepath.Join(cp.runDir, "admin.kubeconfig")
	return clientcmd.WriteToFile(cp.kubeconfigFor("harness-admin", cp.adminToken), cp.kubeconfig)
}

func (cp *ControlPlane) startControllerManager(ctx context.Context, port int) error {
	p, err := cp.spawn("kube-controller-manager",
		"--kubeconfig="+cp.kubeconfig,
		"--bind-address=127.0.0.1", "--secure-port="+strconv.Itoa(port),
		"--cert-dir="+filepath.Join(cp.runDir, "kcm-certs"),
		"--leader-elect=false",
		"--service-account-private-key-file="+cp.pki.saKey, "--root-ca-file="+cp.pki.caCert,
		// Not --use-service-account-credentials: minting a token per controller first would add ~3 s
		// to every start-up, and the controllers' own RBAC is not what the tests exercise.
		"--flex-volume-plugin-dir="+filepath.Join(cp.runDir, "flex"), // else it writes under /usr/libexec
		// No kubelet heartbeats here: the node-lifecycle controller would taint the fake Node
		// unreachable after ~50 s and evict its pods 5 minutes later.
		"--controllers=*,-node-lifecycle-controller",
		"--concurrent-statefulset-syncs=10", "--concurrent-endpoint-syncs=10", "--v=0",
		// The defaults (20 QPS, burst 30) make pod creation, not the code under test, the bottleneck
		// once hundreds of StatefulSets scale at once.
		"--kube-api-qps=500", "--kube-api-burst=1000")
	if err != nil {
		return err
	}
	if err := waitHTTP(ctx, p, insecureClient, fmt.Sprintf("https://127.0.0.1:%d/healthz", port)); err != nil {
		return err
	}
	// Pods are not admitted before the ServiceAccount controller has made `default`.
	kc, err := kubernetes.NewForConfig(cp.AdminConfig())
	if err != nil {
		return err
	}
	var last error
	err = wait.PollUntilContextCancel(ctx, 50*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		if err := p.running(); err != nil {
			return false, err
		}
		_, last = kc.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{})
		return last == nil, nil
	})
	if err != nil {
		return fmt.Errorf("wait for ServiceAccount default/default: %w (last: %v)", err, last)
	}
	return nil
}

// insecureClient polls health endpoints of our own loopback servers, whose certificates are
// self-signed by kube-controller-manager (the apiserver's is ours, but /readyz needs no trust).
var insecureClient = &http.Client{
	Timeout:   2 * time.Second,
	Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}, //nolint:gosec // loopback health checks only
}

// waitHTTP polls url until it answers 200, failing at once if the process exits.
func waitHTTP(ctx context.Context, p *process, c *http.Client, url string) error {
	var last error
	err := wait.PollUntilContextCancel(ctx, 50*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		if err := p.running(); err != nil {
			return false, err
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return false, err
		}
		resp, err := c.Do(req)
		if err != nil {
			last = err
			return false, nil
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			last = fmt.Errorf("%s answered %d", url, resp.StatusCode)
			return false, nil
		}
		return true, nil
	})
	if err != nil {
		if p.running() == nil && last != nil {
			err = fmt.Errorf("%w (last: %v)", err, last)
		}
		return fmt.Errorf("wait for %s: %w", p.name, err)
	}
	return nil
}

// Stop stops every process, newest first, by PID (SIGTERM, then SIGKILL after 10 s) and waits for
// them. It logs their peak memory, removes the etcd data and keeps the logs, certificates and
// kubeconfigs in RunDir. Calling it again does nothing.
func (cp *ControlPlane) Stop() {
	cp.mu.Lock()
	procs := cp.procs
	cp.procs = nil
	cp.mu.Unlock()
	if len(procs) == 0 {
		return
	}
	var mem []any
	for _, p := range procs {
		mem = append(mem, p.name, p.peakRSS()>>20)
	}
	for i := len(procs) - 1; i >= 0; i-- {
		procs[i].stop(10 * time.Second)
	}
	cp.opts.Logf("control plane stopped; peak RSS MiB: %s %d, %s %d, %s %d", mem...)
	_ = os.RemoveAll(filepath.Join(cp.runDir, "etcd"))
}

// PeakRSS reports each running process's peak resident memory in bytes.
func (cp *ControlPlane) PeakRSS() map[string]int64 {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	out := map[string]int64{}
	for _, p := range cp.procs {
		out[p.name] = p.peakRSS()
	}
	return out
}

// Pids reports each running process's PID by name (etcd, kube-apiserver, kube-controller-manager),
// for a benchmark that splits the machine's CPU between them and the rest.
func (cp *ControlPlane) Pids() map[string]int {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	out := map[string]int{}
	for _, p := range cp.procs {
		out[p.name] = p.cmd.Process.Pid
	}
	return out
}

// RestartAPIServer kills kube-apiserver (SIGKILL, no graceful shutdown) and starts it again with the
// same flags, for tests of what clients do while the API is away.
func (cp *ControlPlane) RestartAPIServer(ctx context.Context) error {
	cp.mu.Lock()
	var old *process
	idx := -1
	for i, p := range cp.procs {
		if p.name == "kube-apiserver" {
			old, idx = p, i
		}
	}
	cp.mu.Unlock()
	if old == nil {
		return errors.New("kube-apiserver is not running")
	}
	old.stop(0)
	p, err := startProcess(cp.binDir, cp.runDir, old.name, old.args...)
	if err != nil {
		return err
	}
	cp.mu.Lock()
	cp.procs[idx] = p
	cp.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, cp.opts.Timeout)
	defer cancel()
	return waitHTTP(ctx, p, insecureClient, cp.url+"/readyz")
}

// AuditLog is the API server's audit log (JSON lines, level Metadata).
func (cp *ControlPlane) AuditLog() string { return filepath.Join(cp.runDir, "audit.log") }

// RunDir is where logs (<binary>.log), certificates and kubeconfigs live.
func (cp *ControlPlane) RunDir() string { return cp.runDir }

// URL is kube-apiserver's address, https://127.0.0.1:PORT.
func (cp *ControlPlane) URL() string { return cp.url }

// freePorts reserves n distinct loopback ports by listening on them together, then frees them for
// the processes (a small race with other programs remains, as with any such scheme).
func freePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("find a free port: %w", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func randomToken() (string, error) {
	b := make([]byte, 24)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return hex.EncodeToString(b), nil
}
