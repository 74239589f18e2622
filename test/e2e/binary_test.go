package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
)

// controllerBinary returns the couchdb-controller binary: the one `make` built, or a fresh build.
func controllerBinary(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("COUCHDB_CONTROLLER_BINARY"); p != "" {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	out := filepath.Join(t.TempDir(), "couchdb-controller")
	cmd := exec.Command("go", "build", "-o", out, "../../cmd/couchdb-controller")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build controller: %v\n%s", err, b)
	}
	return out
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// startProxy serves the harness address map as an HTTP forward proxy for a controller process, and
// returns the environment for that process: this one's, less every proxy setting (an inherited
// NO_PROXY covering the fake pod IPs would make the binary dial them directly), plus the proxy.
func startProxy(t *testing.T) []string {
	t.Helper()
	p, err := env.addrs.ServeProxy()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	return p.Env(os.Environ())
}

// syncBuffer collects a process's output safely.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestBinaryWithShippedRBAC installs manifests/ on the real API server, runs the controller binary
// under the couchdb-controller ServiceAccount (not as admin) with leader election, and checks formation,
// a scale-up join, the status API and metrics, that no request was forbidden and that every verb the
// ClusterRole grants was used (from the API server's audit log), and that the admin password never
// shows in logs, events, metrics or the status API.
func TestBinaryWithShippedRBAC(t *testing.T) {
	installMonitoringCRDs(t)
	objs := render(t, ".")
	for _, o := range objs {
		if o.GetKind() == "Deployment" {
			// Validated by the API server, but not run: this test runs the binary itself.
			_ = unstructured.SetNestedField(o.Object, int64(0), "spec", "replicas")
		}
	}
	applyAll(t, objs, "")
	ns := newNamespace(t)
	cfgPath := func() string {
		path, err := env.cp.ServiceAccountKubeconfig(context.Background(), "couchdb-controller", "couchdb-controller")
		if err != nil {
			t.Fatal(err)
		}
		return path
	}()
	metricsAddr, probeAddr := freeAddr(t), freeAddr(t)
	logs := &syncBuffer{}
	cmd := exec.Command(controllerBinary(t), "--kubeconfig="+cfgPath, "--namespace="+ns, "--leader-elect",
		"--leader-elect-namespace=couchdb-controller", "--metrics-bind-address="+metricsAddr,
		"--health-probe-bind-address="+probeAddr, "--resync=2s", "-v=2")
	cmd.Env = append(startProxy(t), "POD_NAME=e2e-controller", "POD_NAMESPACE=couchdb-controller")
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
			t.Error("controller did not shut down within 15s of SIGINT")
		}
		shown("logs of the controller binary", logs.String())
		if t.Failed() {
			t.Logf("controller logs:\n%s", logs.String())
		}
	})
	// The Service is created after the StatefulSet's first sync would miss it: the controller must
	// GET it (services:get) and the credentials come through the env (secrets:get, configmaps:get).
	s := newSpec("bin", 3)
	s.parallel, s.memberGate, s.serviceLate, s.userFromCM = true, true, true, true
	s.create(t, ns)
	waitMembers(t, s, ns, 3, 90*time.Second)
	poll(t, 30*time.Second, "readyz", func(ctx context.Context) (bool, error) { return httpGet("http://"+probeAddr+"/readyz") == 200, nil })
	var status struct {
		Phase   string   `json:"phase"`
		Members []string `json:"members"`
	}
	poll(t, 30*time.Second, "status API shows Ready", func(ctx context.Context) (bool, error) {
		body := httpBody("http://" + metricsAddr + "/clusters/" + ns + "/bin")
		return json.Unmarshal([]byte(body), &status) == nil && status.Phase == "Ready" && len(status.Members) == 3, nil
	})
	// A safe scale-down exercises the scale subresource and the member condition going False.
	patch := []byte(`{"metadata":{"annotations":{"couchdb.io/target-replicas":"2"}}}`)
	if _, err := env.kube.AppsV1().StatefulSets(ns).Patch(context.Background(), "bin", types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	poll(t, 90*time.Second, "the drain to lower spec.replicas to 2", func(ctx context.Context) (bool, error) {
		sts, err := env.kube.AppsV1().StatefulSets(ns).Get(ctx, "bin", metav1.GetOptions{})
		return err == nil && *sts.Spec.Replicas == 2, nil
	})
	waitMembers(t, s, ns, 2, 60*time.Second)
	metricsText := httpBody("http://" + metricsAddr + "/metrics")
	if !strings.Contains(metricsText, `couchdb_controller_cluster_formed{cluster="bin",namespace="`+ns+`"} 1`) {
		t.Errorf("metrics lack cluster_formed 1")
	}
	if !strings.Contains(metricsText, "couchdb_controller_leader 1") {
		t.Errorf("metrics lack leader 1")
	}
	// Secrets: nothing the controller shows may carry the password.
	evs, _ := env.kube.CoreV1().Events(ns).List(context.Background(), metav1.ListOptions{})
	var evText strings.Builder
	for _, e := range evs.Items {
		evText.WriteString(e.Message + "\n")
	}
	for what, text := range map[string]string{"logs": logs.String(), "metrics": metricsText, "events": evText.String(),
		"status": httpBody("http://" + metricsAddr + "/clusters")} {
		if strings.Contains(text, s.password) {
			t.Errorf("the admin password appears in the controller's %s", what)
		}
	}
	checkAudit(t, objs)
	_ = corev1.EventTypeNormal
}

func httpGet(url string) int {
	resp, err := http.Get(url) //nolint:gosec // loopback test server
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

func httpBody(url string) string {
	resp, err := http.Get(url) //nolint:gosec // loopback test server
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// checkAudit reads the audit log: the ServiceAccount got no 403, and used every verb its roles grant
// (events:patch is exercised only when the recorder aggregates repeated events, so it may be absent).
func checkAudit(t *testing.T, objs []*unstructured.Unstructured) {
	t.Helper()
	const user = "system:serviceaccount:couchdb-controller:couchdb-controller"
	f, err := os.Open(env.cp.AuditLog())
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	used := map[string]bool{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	for sc.Scan() {
		var ev struct {
			Verb string `json:"verb"`
			User struct {
				Username string `json:"username"`
			} `json:"user"`
			ObjectRef *struct {
				Resource    string `json:"resource"`
				Subresource string `json:"subresource"`
				APIGroup    string `json:"apiGroup"`
				Name        string `json:"name"`
			} `json:"objectRef"`
			ResponseStatus *struct {
				Code int `json:"code"`
			} `json:"responseStatus"`
		}
		if json.Unmarshal(sc.Bytes(), &ev) != nil || ev.User.Username != user || ev.ObjectRef == nil {
			continue
		}
		res := ev.ObjectRef.Resource
		if ev.ObjectRef.Subresource != "" {
			res += "/" + ev.ObjectRef.Subresource
		}
		key := ev.ObjectRef.APIGroup + "/" + res + ":" + ev.Verb
		if ev.ResponseStatus != nil && ev.ResponseStatus.Code == http.StatusForbidden {
			t.Errorf("forbidden: %s (the ClusterRole lacks a verb the code needs)", key)
		}
		used[key] = true
	}
	for _, o := range objs {
		if o.GetKind() != "ClusterRole" && o.GetKind() != "Role" {
			continue
		}
		rules, _, _ := unstructured.NestedSlice(o.Object, "rules")
		for _, r := range rules {
			rm := r.(map[string]any)
			for _, g := range strs(rm["apiGroups"]) {
				for _, res := range strs(rm["resources"]) {
					for _, v := range strs(rm["verbs"]) {
						key := g + "/" + res + ":" + v
						if key == "/events:patch" {
							continue // only when the recorder aggregates a repeated event
						}
						// client-go's informers use streaming watch-lists (WatchListClient); list is the
						// fallback for servers without them and stays granted.
						if v == "list" && used[g+"/"+res+":watch"] {
							continue
						}
						if !used[key] {
							t.Errorf("%s %s grants %s, which the controller never used", o.GetKind(), o.GetName(), key)
						}
					}
				}
			}
		}
	}
	if t.Failed() {
		t.Logf("verbs used: %v", fmt.Sprint(used))
	}
}

func strs(v any) []string {
	var out []string
	for _, x := range v.([]any) {
		out = append(out, x.(string))
	}
	return out
}
