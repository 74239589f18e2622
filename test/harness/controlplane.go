// Package harness runs a real control plane (etcd, kube-apiserver, kube-controller-manager, built
// from Go modules by test/controlplane/build.sh) on loopback for end-to-end tests and the demo.
package harness

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// K8sVersion is the version build.sh builds.
const K8sVersion = "v1.35.4"

// Options configure Start.
type Options struct {
	RunDir string               // where data, certs and logs go; a temp dir when empty
	Logf   func(string, ...any) // progress lines; nil = silent
}

// ControlPlane is a running etcd + kube-apiserver + kube-controller-manager.
type ControlPlane struct {
	runDir     string
	url        string
	adminToken string
	pki        *pki
	procs      []*exec.Cmd
	kubeconfig string
}

// BinDir is where build.sh puts the binaries.
func BinDir() string {
	cache := os.Getenv("COUCHDB_CONTROLLER_CACHE")
	if cache == "" {
		base := os.Getenv("XDG_CACHE_HOME")
		if base == "" {
			home, _ := os.UserHomeDir()
			base = filepath.Join(home, ".cache")
		}
		cache = filepath.Join(base, "couchdb-controller")
	}
	return filepath.Join(cache, "k8s-"+K8sVersion)
}

// BinariesPresent reports whether build.sh has run.
func BinariesPresent() bool {
	for _, b := range []string{"etcd", "kube-apiserver", "kube-controller-manager"} {
		if _, err := os.Stat(filepath.Join(BinDir(), b)); err != nil {
			return false
		}
	}
	return true
}

// EnsureBinaries runs build.sh when a binary is missing.
func EnsureBinaries(ctx context.Context) error {
	if BinariesPresent() {
		return nil
	}
	script := filepath.Join(repoRoot(), "test", "controlplane", "build.sh")
	cmd := exec.CommandContext(ctx, "bash", script)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("build control plane: %w", err)
	}
	return nil
}

func repoRoot() string {
	dir, _ := os.Getwd()
	for d := dir; d != "/"; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			if _, err := os.Stat(filepath.Join(d, "test", "controlplane")); err == nil {
				return d
			}
		}
	}
	return dir
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// Start brings the control plane up and waits until it is ready to admit pods.
func Start(ctx context.Context, opts Options) (*ControlPlane, error) {
	logf := opts.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}
	if err := EnsureBinaries(ctx); err != nil {
		return nil, err
	}
	dir := opts.RunDir
	if dir == "" {
		var err error
		if dir, err = os.MkdirTemp("", "couchdb-controller-cp-"); err != nil {
			return nil, err
		}
	}
	cp := &ControlPlane{runDir: dir, adminToken: randomToken()}
	ok := false
	defer func() {
		if !ok {
			cp.Stop()
		}
	}()
	var err error
	if cp.pki, err = makePKI(dir); err != nil {
		return nil, fmt.Errorf("make certificates: %w", err)
	}
	start := time.Now()
	etcdPort, _ := freePort()
	peerPort, _ := freePort()
	etcdURL := fmt.Sprintf("http://127.0.0.1:%d", etcdPort)
	if err := cp.spawn("etcd", "--name=default", "--data-dir="+filepath.Join(dir, "etcd"),
		"--listen-client-urls="+etcdURL, "--advertise-client-urls="+etcdURL,
		fmt.Sprintf("--listen-peer-urls=http://127.0.0.1:%d", peerPort),
		fmt.Sprintf("--initial-advertise-peer-urls=http://127.0.0.1:%d", peerPort),
		fmt.Sprintf("--initial-cluster=default=http://127.0.0.1:%d", peerPort),
		"--unsafe-no-fsync", "--log-level=warn"); err != nil {
		return nil, err
	}
	if err := waitHTTP(ctx, &http.Client{Timeout: time.Second}, etcdURL+"/health", 30*time.Second); err != nil {
		return nil, fmt.Errorf("etcd not healthy: %w (see %s)", err, cp.logPath("etcd"))
	}
	apiPort, _ := freePort()
	cp.url = fmt.Sprintf("https://127.0.0.1:%d", apiPort)
	tokens := filepath.Join(dir, "tokens.csv")
	if err := os.WriteFile(tokens, []byte(cp.adminToken+",admin,admin-uid,system:masters\n"), 0o600); err != nil {
		return nil, err
	}
	if err := cp.spawn("kube-apiserver", "--etcd-servers="+etcdURL, "--bind-address=127.0.0.1",
		"--secure-port="+strconv.Itoa(apiPort), "--advertise-address=127.0.0.1", "--endpoint-reconciler-type=none",
		"--tls-cert-file="+cp.pki.serverCert, "--tls-private-key-file="+cp.pki.serverKey, "--client-ca-file="+cp.pki.caCert,
		"--token-auth-file="+tokens, "--authorization-mode=RBAC", "--service-account-issuer=https://kubernetes.default.svc",
		"--service-account-key-file="+cp.pki.saPub, "--service-account-signing-key-file="+cp.pki.saKey,
		"--service-cluster-ip-range=10.96.0.0/16", "--cert-dir="+filepath.Join(dir, "apiserver-certs"),
		"--allow-privileged=true", "--v=0"); err != nil {
		return nil, err
	}
	insecure := &http.Client{Timeout: time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} //nolint:gosec // readiness poll of our own loopback apiserver
	if err := waitHTTP(ctx, insecure, cp.url+"/readyz", 60*time.Second); err != nil {
		return nil, fmt.Errorf("kube-apiserver not ready: %w (see %s)", err, cp.logPath("kube-apiserver"))
	}
	cp.kubeconfig = filepath.Join(dir, "admin.kubeconfig")
	if err := clientcmd.WriteToFile(cp.kubeconfigFor("admin", cp.adminToken), cp.kubeconfig); err != nil {
		return nil, err
	}
	kcmPort, _ := freePort()
	if err := cp.spawn("kube-controller-manager", "--kubeconfig="+cp.kubeconfig, "--bind-address=127.0.0.1",
		"--secure-port="+strconv.Itoa(kcmPort), "--cert-dir="+filepath.Join(dir, "kcm-certs"), "--leader-elect=false",
		"--service-account-private-key-file="+cp.pki.saKey, "--root-ca-file="+cp.pki.caCert,
		"--use-service-account-credentials=true",
		"--flex-volume-plugin-dir="+filepath.Join(dir, "flex"), "--controllers=*,-node-lifecycle-controller",
		"--concurrent-statefulset-syncs=10", "--concurrent-endpoint-syncs=10", "--v=0"); err != nil {
		return nil, err
	}
	if err := waitHTTP(ctx, insecure, fmt.Sprintf("https://127.0.0.1:%d/healthz", kcmPort), 60*time.Second); err != nil {
		return nil, fmt.Errorf("kube-controller-manager not healthy: %w (see %s)", err, cp.logPath("kube-controller-manager"))
	}
	kc := kubernetes.NewForConfigOrDie(cp.AdminConfig())
	if err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 60*time.Second, true, func(ctx context.Context) (bool, error) {
		_, err := kc.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{})
		return err == nil, nil
	}); err != nil {
		return nil, fmt.Errorf("default ServiceAccount never appeared: %w", err)
	}
	logf("control plane %s ready in %s at %s (run dir %s)", K8sVersion, time.Since(start).Round(time.Millisecond), cp.url, dir)
	ok = true
	return cp, nil
}

func (cp *ControlPlane) logPath(name string) string { return filepath.Join(cp.runDir, name+".log") }

// spawn starts a binary in its own session so that it is stopped by PID, never by process group.
func (cp *ControlPlane) spawn(name string, args ...string) error {
	f, err := os.Create(cp.logPath(name))
	if err != nil {
		return err
	}
	cmd := exec.Command(filepath.Join(BinDir(), name), args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", name, err)
	}
	cp.procs = append(cp.procs, cmd)
	return nil
}

// Stop stops every process, newest first, and removes nothing (logs stay in RunDir).
func (cp *ControlPlane) Stop() {
	for i := len(cp.procs) - 1; i >= 0; i-- {
		p := cp.procs[i]
		if p.Process == nil {
			continue
		}
		_ = p.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = p.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = p.Process.Kill()
			<-done
		}
	}
	cp.procs = nil
}

// RestartAPIServer kills kube-apiserver and starts it again with the same flags (fault tests).
func (cp *ControlPlane) RestartAPIServer(ctx context.Context) error {
	for i, p := range cp.procs {
		if filepath.Base(p.Path) != "kube-apiserver" {
			continue
		}
		_ = p.Process.Kill()
		_ = p.Wait()
		if err := cp.spawn("kube-apiserver", p.Args[1:]...); err != nil {
			return err
		}
		cp.procs[i] = cp.procs[len(cp.procs)-1]
		cp.procs = cp.procs[:len(cp.procs)-1]
		insecure := &http.Client{Timeout: time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} //nolint:gosec
		return waitHTTP(ctx, insecure, cp.url+"/readyz", 60*time.Second)
	}
	return errors.New("kube-apiserver is not running")
}

// RunDir is where logs, data and kubeconfigs live.
func (cp *ControlPlane) RunDir() string { return cp.runDir }

// Kubeconfig is the path of an admin kubeconfig.
func (cp *ControlPlane) Kubeconfig() string { return cp.kubeconfig }

// AdminConfig is a rest.Config with cluster-admin rights.
func (cp *ControlPlane) AdminConfig() *rest.Config { return cp.config(cp.adminToken) }

func (cp *ControlPlane) config(token string) *rest.Config {
	return &rest.Config{
		Host: cp.url, BearerToken: token,
		TLSClientConfig: rest.TLSClientConfig{CAData: cp.pki.caPEM},
		QPS:             100, Burst: 200,
		WarningHandler: rest.NoWarnings{}, // "v1 Endpoints is deprecated" on every request
	}
}

func (cp *ControlPlane) kubeconfigFor(user, token string) clientcmdapi.Config {
	return clientcmdapi.Config{
		Clusters:       map[string]*clientcmdapi.Cluster{"harness": {Server: cp.url, CertificateAuthorityData: cp.pki.caPEM}},
		AuthInfos:      map[string]*clientcmdapi.AuthInfo{user: {Token: token}},
		Contexts:       map[string]*clientcmdapi.Context{"harness": {Cluster: "harness", AuthInfo: user}},
		CurrentContext: "harness",
	}
}

// ServiceAccountConfig returns a config that acts as the ServiceAccount ns/name (a TokenRequest token),
// so the controller can be run with exactly the RBAC it ships with.
func (cp *ControlPlane) ServiceAccountConfig(ctx context.Context, ns, name string) (*rest.Config, string, error) {
	kc, err := kubernetes.NewForConfig(cp.AdminConfig())
	if err != nil {
		return nil, "", err
	}
	exp := int64(3600)
	tr, err := kc.CoreV1().ServiceAccounts(ns).CreateToken(ctx, name, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &exp}}, metav1.CreateOptions{})
	if err != nil {
		return nil, "", fmt.Errorf("token for %s/%s: %w", ns, name, err)
	}
	path := filepath.Join(cp.runDir, fmt.Sprintf("sa-%s-%s.kubeconfig", ns, name))
	if err := clientcmd.WriteToFile(cp.kubeconfigFor("system:serviceaccount:"+ns+":"+name, tr.Status.Token), path); err != nil {
		return nil, "", err
	}
	return cp.config(tr.Status.Token), path, nil
}

func waitHTTP(ctx context.Context, c *http.Client, url string, timeout time.Duration) error {
	var last error
	err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
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
	if err != nil && last != nil {
		return fmt.Errorf("%w: %v", err, last)
	}
	return err
}

func randomToken() string {
	b := make([]byte, 16)
	f, err := os.Open("/dev/urandom")
	if err == nil {
		_, _ = f.Read(b)
		f.Close()
	}
	return fmt.Sprintf("%x", b)
}

// EnsureNamespace creates ns if it does not exist.
func EnsureNamespace(ctx context.Context, kc kubernetes.Interface, ns string) error {
	_, err := kc.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
	if err != nil && !strings.Contains(err.Error(), "already exists") {
		return err
	}
	return nil
}
