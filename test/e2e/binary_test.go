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

	"github.com/couchdb-controller/couchdb-controller/controller"
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

func (s *syncBuffer) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.b.Reset()
}

// startServing starts the controller process newCmd makes for a metrics and a probe address and
// waits until it says it listens on both. freeAddr's port can be taken between its check and the
// process's bind: a CI run lost its failover standby that way ("bind: address already in use" and
// the process gone), and the test then waited for a takeover nobody could make. Such a process is
// started again on other ports. Any other outcome is left to the test's own checks.
func startServing(t *testing.T, logs *syncBuffer, newCmd func(metrics, probe string) *exec.Cmd) (cmd *exec.Cmd, metrics, probe string) {
	t.Helper()
	const taken = "address already in use"
	for attempt := 1; ; attempt++ {
		metrics, probe = freeAddr(t), freeAddr(t)
		cmd = newCmd(metrics, probe)
		cmd.Stdout, cmd.Stderr = logs, logs
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			out := logs.String()
			if strings.Contains(out, taken) {
				break
			}
			if strings.Contains(out, `address="`+metrics+`"`) && strings.Contains(out, `address="`+probe+`"`) {
				return cmd, metrics, probe
			}
		}
		if !strings.Contains(logs.String(), taken) || attempt == 3 {
			return cmd, metrics, probe
		}
		t.Logf("a port of the controller was taken before it bound it (attempt %d): starting it again on others", attempt)
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		logs.Reset()
	}
}

// TestBinaryWithShippedRBAC installs manifests/ on the real API server, runs the controller binary
// under the couchdb-controller ServiceAccount (not as admin) with leader election, and checks
// formation, a scale-up join (through the scale subresource, as kubectl scale does), a drain, a
// repeated Warning (which the event recorder aggregates with a PATCH), the status API and metrics;
// from the API server's audit log, that none of the binary's requests was forbidden and that it used
// every verb its roles grant; and that the admin password never shows in logs, events, metrics or
// the status API.
func TestBinaryWithShippedRBAC(t *testing.T) {
	ctx := context.Background()
	installMonitoringCRDs(t)
	objs := renderBase(t)
	applyAll(t, objs, "")
	ns := newNamespace(t)
	cfgPath := func() string {
		path, err := env.cp.ServiceAccountKubeconfig(ctx, "couchdb-controller", "couchdb-controller")
		if err != nil {
			t.Fatal(err)
		}
		return path
	}()
	// The audit check counts only requests made after this (audit timestamps have microseconds).
	started := time.Now().Add(-time.Millisecond)
	bin := startBinary(t, cfgPath, ns)
	metricsAddr, probeAddr := bin.metrics, bin.probe
	// The Service is created after the StatefulSet's first sync would miss it: the controller must
	// GET it (services:get) and the credentials come through the env (secrets:get, configmaps:get).
	s := newSpec("bin", 3)
	s.parallel, s.memberGate, s.serviceLate, s.userFromCM = true, true, true, true
	s.create(t, ns)
	waitMembers(t, s, ns, 3, 90*time.Second)
	poll(t, 30*time.Second, "readyz", func(ctx context.Context) (bool, error) { return httpGet("http://"+probeAddr+"/readyz") == 200, nil })
	var status struct {
		Phase    string   `json:"phase"`
		Members  []string `json:"members"`
		Warnings []string `json:"warnings"`
	}
	readStatus := func() bool {
		status.Warnings = nil
		return json.Unmarshal([]byte(httpBody("http://"+metricsAddr+"/clusters/"+ns+"/bin")), &status) == nil
	}
	poll(t, 30*time.Second, "status API shows Ready", func(ctx context.Context) (bool, error) {
		return readStatus() && status.Phase == "Ready" && len(status.Members) == 3, nil
	})

	// kubectl scale --replicas=4: the scale subresource, as the admin.
	scaleTo(t, ns, "bin", 4)
	waitMembers(t, s, ns, 4, 60*time.Second)
	poll(t, 30*time.Second, "a NodeJoined event for bin-3", func(context.Context) (bool, error) {
		for _, e := range events(t, ns, controller.ReasonNodeJoined) {
			if strings.Contains(e.Message, "pod bin-3 ") {
				return true, nil
			}
		}
		return false, nil
	})
	waitMemberConditions(t, s, ns, 4)

	// A safe scale-down exercises the controller's own scale subresource update and the member
	// condition going False.
	annotateTarget(t, ns, "bin", `"3"`)
	poll(t, 90*time.Second, "the drain to lower spec.replicas to 3", func(ctx context.Context) (bool, error) {
		sts, err := env.kube.AppsV1().StatefulSets(ns).Get(ctx, "bin", metav1.GetOptions{})
		return err == nil && *sts.Spec.Replicas == 3, nil
	})
	waitMembers(t, s, ns, 3, 60*time.Second)

	// The same Warning twice: the second is aggregated into the first Event by the recorder, which
	// PATCHes its count (events:patch).
	var invalid []corev1.Event
	for round := 1; round <= 2; round++ {
		annotateTarget(t, ns, "bin", `"many"`)
		poll(t, 30*time.Second, fmt.Sprintf("InvalidAnnotation event with count %d", round), func(context.Context) (bool, error) {
			invalid = events(t, ns, controller.ReasonInvalidAnnotation)
			return len(invalid) == 1 && invalid[0].Count == int32(round), nil
		})
		annotateTarget(t, ns, "bin", `"3"`)
		poll(t, 30*time.Second, "the warning to clear", func(context.Context) (bool, error) {
			return readStatus() && status.Phase == "Ready" && len(status.Warnings) == 0, nil
		})
	}
	metricsText := httpBody("http://" + metricsAddr + "/metrics")
	if !strings.Contains(metricsText, `couchdb_controller_cluster_formed{cluster="bin",namespace="`+ns+`"} 1`) {
		t.Errorf("metrics lack cluster_formed 1")
	}
	if !strings.Contains(metricsText, "couchdb_controller_leader 1") {
		t.Errorf("metrics lack leader 1")
	}
	// Secrets: nothing the controller shows may carry the password.
	evs, _ := env.kube.CoreV1().Events(ns).List(ctx, metav1.ListOptions{})
	var evText strings.Builder
	for _, e := range evs.Items {
		evText.WriteString(e.Message + "\n")
	}
	for what, text := range map[string]string{"logs": bin.logs.String(), "metrics": metricsText, "events": evText.String(),
		"status": httpBody("http://" + metricsAddr + "/clusters")} {
		if strings.Contains(text, s.password) {
			t.Errorf("the admin password appears in the controller's %s", what)
		}
	}
	bin.stop(t)

	// client-go's informers ask for streaming watch-lists (verb watch); against an API server that
	// does not serve them (the WatchList feature off, or older than 1.32) they fall back to list and
	// watch. A second run with that fallback forced proves the list grants are needed and enough.
	fallback := startBinary(t, cfgPath, ns, "KUBE_FEATURE_WatchListClient=false")
	poll(t, 60*time.Second, "the list-and-watch run to sync and see the cluster Ready", func(ctx context.Context) (bool, error) {
		body := httpBody("http://" + fallback.metrics + "/clusters/" + ns + "/bin")
		return httpGet("http://"+fallback.probe+"/readyz") == 200 && json.Unmarshal([]byte(body), &status) == nil &&
			status.Phase == "Ready" && len(status.Members) == 3, nil
	})
	fallback.stop(t)
	if strings.Contains(fallback.logs.String(), s.password) {
		t.Error("the admin password appears in the list-and-watch run's logs")
	}
	checkAudit(t, objs, started)
}

// binaryRun is one couchdb-controller process.
type binaryRun struct {
	cmd            *exec.Cmd
	logs           *syncBuffer
	metrics, probe string
	once           sync.Once
}

// startBinary runs the controller binary with kubeconfig for namespace ns, leader election in the
// couchdb-controller namespace and a 2 s resync; extraEnv is added to its environment.
func startBinary(t *testing.T, kubeconfig, ns string, extraEnv ...string) *binaryRun {
	t.Helper()
	r := &binaryRun{logs: &syncBuffer{}}
	bin, procEnv := controllerBinary(t), append(append(startProxy(t), "POD_NAME=e2e-controller", "POD_NAMESPACE=couchdb-controller"), extraEnv...)
	r.cmd, r.metrics, r.probe = startServing(t, r.logs, func(metrics, probe string) *exec.Cmd {
		cmd := exec.Command(bin, "--kubeconfig="+kubeconfig, "--namespace="+ns, "--leader-elect",
			"--leader-elect-namespace=couchdb-controller", "--metrics-bind-address="+metrics,
			"--health-probe-bind-address="+probe, "--resync=2s", "-v=2")
		cmd.Env = procEnv
		return cmd
	})
	t.Cleanup(func() { r.stop(t) })
	return r
}

// stop sends SIGINT (the controller releases its lease on the way out) and waits up to 15 s.
func (r *binaryRun) stop(t *testing.T) {
	r.once.Do(func() {
		_ = r.cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { _ = r.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			_ = r.cmd.Process.Kill()
			<-done
			t.Error("controller did not shut down within 15s of SIGINT")
		}
		shown("logs of the controller binary", r.logs.String())
		if t.Failed() {
			t.Logf("controller logs:\n%s", r.logs.String())
		}
	})
}

// renderBase renders manifests/ with the controller Deployment at 0 replicas: the API server
// validates it, but the fake kubelet runs only emulated CouchDB pods, so its pods could never start
// (tests run the binary themselves).
func renderBase(t *testing.T) []*unstructured.Unstructured {
	t.Helper()
	objs := render(t, ".")
	for _, o := range objs {
		if o.GetKind() == "Deployment" {
			if err := unstructured.SetNestedField(o.Object, int64(0), "spec", "replicas"); err != nil {
				t.Fatal(err)
			}
		}
	}
	return objs
}

// annotateTarget sets couchdb.io/target-replicas to value (a JSON string).
func annotateTarget(t *testing.T, ns, name, value string) {
	t.Helper()
	patch := []byte(`{"metadata":{"annotations":{"couchdb.io/target-replicas":` + value + `}}}`)
	if _, err := env.kube.AppsV1().StatefulSets(ns).Patch(context.Background(), name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
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

// auditEvent is the part of an audit.k8s.io/v1 Event the RBAC checks read.
type auditEvent struct {
	Verb      string    `json:"verb"`
	UserAgent string    `json:"userAgent"`
	Received  time.Time `json:"requestReceivedTimestamp"`
	User      struct {
		Username string `json:"username"`
	} `json:"user"`
	ObjectRef *struct {
		Resource    string `json:"resource"`
		Subresource string `json:"subresource"`
		APIGroup    string `json:"apiGroup"`
	} `json:"objectRef"`
	ResponseStatus *struct {
		Code int `json:"code"`
	} `json:"responseStatus"`
}

// controllerAuditEvents returns the audit entries of the controller binary's own requests since
// since: the couchdb-controller ServiceAccount AND the binary's user agent (other tests use that
// ServiceAccount's token with client-go's default agent, e.g. the admission test's UpdateScale).
func controllerAuditEvents(t *testing.T, since time.Time) []auditEvent {
	t.Helper()
	const user = "system:serviceaccount:couchdb-controller:couchdb-controller"
	f, err := os.Open(env.cp.AuditLog())
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []auditEvent
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	var partial error // the API server may be writing the last line right now
	for sc.Scan() {
		if partial != nil {
			t.Fatalf("audit log line: %v", partial)
		}
		var ev auditEvent
		if partial = json.Unmarshal(sc.Bytes(), &ev); partial != nil {
			continue
		}
		if ev.User.Username == user && strings.HasPrefix(ev.UserAgent, "couchdb-controller/") &&
			!ev.Received.Before(since) && ev.ObjectRef != nil {
			out = append(out, ev)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// auditKey is "apiGroup/resource[/subresource]:verb", the form rbacKeys gives grants.
func (ev auditEvent) key() string {
	res := ev.ObjectRef.Resource
	if ev.ObjectRef.Subresource != "" {
		res += "/" + ev.ObjectRef.Subresource
	}
	return ev.ObjectRef.APIGroup + "/" + res + ":" + ev.Verb
}

// rbacKeys lists what a ClusterRole or Role grants, one key per group, resource and verb.
func rbacKeys(o *unstructured.Unstructured) []string {
	var out []string
	rules, _, _ := unstructured.NestedSlice(o.Object, "rules")
	for _, r := range rules {
		rm := r.(map[string]any)
		for _, g := range strs(rm["apiGroups"]) {
			for _, res := range strs(rm["resources"]) {
				for _, v := range strs(rm["verbs"]) {
					out = append(out, g+"/"+res+":"+v)
				}
			}
		}
	}
	return out
}

// checkAudit reads the audit log for the controller binary's requests since started: none was
// forbidden, and every verb its ClusterRole and Role grant was used at least once.
func checkAudit(t *testing.T, objs []*unstructured.Unstructured, started time.Time) {
	t.Helper()
	evs := controllerAuditEvents(t, started)
	if len(evs) == 0 {
		t.Fatal("no audit entry of the controller binary: the filter (ServiceAccount, user agent, time) is wrong")
	}
	used := map[string]int{}
	for _, ev := range evs {
		if ev.ResponseStatus != nil && ev.ResponseStatus.Code == http.StatusForbidden {
			t.Errorf("forbidden: %s (the roles lack a verb the code needs)", ev.key())
		}
		used[ev.key()]++
	}
	roles := 0
	for _, o := range objs {
		if o.GetKind() != "ClusterRole" && o.GetKind() != "Role" {
			continue
		}
		roles++
		for _, key := range rbacKeys(o) {
			if used[key] == 0 {
				t.Errorf("%s %s grants %s, which the controller never used", o.GetKind(), o.GetName(), key)
			}
		}
	}
	if roles != 2 {
		t.Errorf("found %d ClusterRoles and Roles in manifests/, want 2", roles)
	}
	t.Logf("requests of the controller binary by verb: %v", used)
}

func strs(v any) []string {
	var out []string
	for _, x := range v.([]any) {
		out = append(out, x.(string))
	}
	return out
}

// TestStartServingRetriesATakenPort: a process that cannot bind its port is started again on other
// ports; one that listens is kept.
func TestStartServingRetriesATakenPort(t *testing.T) {
	logs := &syncBuffer{}
	starts := 0
	cmd, metrics, probe := startServing(t, logs, func(metrics, probe string) *exec.Cmd {
		starts++
		if starts == 1 {
			return exec.Command("sh", "-c", `echo 'E "couchdb-controller failed" err="listen tcp '"$0"': bind: address already in use"'`, metrics)
		}
		return exec.Command("sh", "-c", `echo 'I "Serving HTTP" address="'"$0"'"'; echo 'I "Serving HTTP" address="'"$1"'"'; exec sleep 30`, metrics, probe)
	})
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	if starts != 2 {
		t.Fatalf("started %d times, want 2 (once more after the taken port)", starts)
	}
	if out := logs.String(); strings.Contains(out, "already in use") || !strings.Contains(out, `address="`+metrics+`"`) || !strings.Contains(out, `address="`+probe+`"`) {
		t.Errorf("logs of the kept process:\n%s", out)
	}
}
