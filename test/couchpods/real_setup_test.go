package couchpods

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

// TestRealFinishClusterWithoutSecret records, on real CouchDB nodes (COUCHDB_REL), what the
// emulator's finish_cluster conformance case replays: two connected nodes started as the official
// image starts them without COUCHDB_SECRET have no [chttpd_auth] secret, and finish_cluster on one
// of them fails with 500 setup_error "Cluster setup unable to sync admin passwords" (setup.erl
// copies admins, uuid and then the secret to the other nodes; config:set of an undefined secret
// fails there). The uuid is copied before the failure; the system databases are not created, so the
// state stays cluster_enabled. A session cookie made on the coordinator makes up a secret
// (ensure_cookie_auth_secret), after which finish_cluster succeeds.
func TestRealFinishClusterWithoutSecret(t *testing.T) {
	const pw = "setup-pw-1"
	b := startRealPods(t, []string{"db-0", "db-1"}, func(name string) *corev1.Pod { return realTestPod(name, "db", pw) })
	ctx := context.Background()
	n0, n1 := b.Node("ns", "db-0"), b.Node("ns", "db-1")
	// Every exchange goes into a transcript in the recordings' format (couch/couchtest/testdata),
	// with the pods' loopback addresses written as the pod IPs 10.244.0.1<i> and the password as ***;
	// COUCHPODS_RECORD=<file> writes it there.
	var transcript strings.Builder
	podIP := map[*RealNode]string{n0: "10.244.0.10", n1: "10.244.0.11"}
	do := func(title string, n *RealNode, method, path, body string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(method, n.URL()+path, strings.NewReader(body))
		req.SetBasicAuth("admin", pw)
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		out := strings.TrimSpace(string(b))
		fmt.Fprintf(&transcript, "**%s**\n```\n%s %s:5984%s  (auth admin:***)\n", title, method, podIP[n], path)
		if body != "" {
			fmt.Fprintf(&transcript, "body: %s\n", strings.ReplaceAll(body, pw, "***"))
		}
		fmt.Fprintf(&transcript, "-> HTTP %d\n", resp.StatusCode)
		if c := resp.Header.Get("Set-Cookie"); c != "" {
			fmt.Fprintf(&transcript, "Set-Cookie: %s\n", cookieValue.ReplaceAllString(c, "AuthSession=<cookie>;"))
		}
		fmt.Fprintf(&transcript, "%s\n```\n\n", out)
		return resp.StatusCode, out
	}
	t.Cleanup(func() {
		if f := os.Getenv("COUCHPODS_RECORD"); f != "" && !t.Failed() {
			if err := os.WriteFile(f, []byte(transcript.String()), 0o644); err != nil {
				t.Error(err)
			}
		}
	})
	for _, n := range []*RealNode{n0, n1} {
		if code, body := do("GET the secret on "+n.key+" (no COUCHDB_SECRET)", n, "GET", "/_node/_local/_config/chttpd_auth/secret", ""); code != http.StatusNotFound {
			t.Fatalf("%s has a secret without COUCHDB_SECRET: %d %s", n.key, code, body)
		}
	}
	if code, body := do("add db-1 to _nodes on db-0", n0, "PUT", "/_node/_local/_nodes/"+n1.Name(), "{}"); code != http.StatusCreated && code != http.StatusAccepted {
		t.Fatalf("add db-1 to _nodes: %d %s", code, body)
	}
	// db-0 tries to connect to db-1 once, when the _nodes doc arrives (mem3_sync_event); if db-1's
	// name does not resolve yet there (its Erlang resolver re-reads the hosts file only so often),
	// mem3_distribution tries again only every 37-46 s ([cluster] reconnect_interval_sec). A request
	// that db-0 serves by RPC to db-1 connects at once, so the wait asks for one each time.
	waitFor(t, 30*time.Second, "both nodes connected", func() bool {
		var m struct {
			AllNodes []string `json:"all_nodes"`
		}
		_, err := n0.getJSON(ctx, "admin", pw, "/_membership", &m)
		if err == nil && slices.Contains(m.AllNodes, n1.Name()) {
			return true
		}
		var sys map[string]any
		_, _ = n0.getJSON(ctx, "admin", pw, "/_node/"+n1.Name()+"/_system", &sys) // 412 nodedown until it connects
		return false
	})
	do("GET /_membership on db-0", n0, "GET", "/_membership", "")
	var uuid0, uuid1 struct{ UUID string }
	_, _ = n0.getJSON(ctx, "admin", pw, "/", &uuid0)
	_, _ = n1.getJSON(ctx, "admin", pw, "/", &uuid1)
	if uuid0.UUID == uuid1.UUID {
		t.Fatalf("both nodes have uuid %s before finish_cluster", uuid0.UUID)
	}

	code, body := do("finish_cluster on db-0 without a secret", n0, "POST", "/_cluster_setup", `{"action":"finish_cluster"}`)
	t.Logf("finish_cluster without a secret: %d %s", code, body)
	var e struct{ Error, Reason string }
	_ = json.Unmarshal([]byte(body), &e)
	if code != http.StatusInternalServerError || e.Error != "setup_error" || e.Reason != "Cluster setup unable to sync admin passwords" {
		t.Errorf("finish_cluster without a secret: %d %s; want 500 setup_error \"Cluster setup unable to sync admin passwords\"", code, body)
	}
	code, body = do("GET /_cluster_setup on db-0 after the failed finish_cluster", n0, "GET", "/_cluster_setup", "")
	t.Logf("GET /_cluster_setup after the failure: %d %s", code, body)
	if body != `{"state":"cluster_enabled"}` {
		t.Errorf("state after the failed finish_cluster: %s", body)
	}
	_, _ = n1.getJSON(ctx, "admin", pw, "/", &uuid1)
	t.Logf("uuid copied before the failure: %v", uuid1.UUID == uuid0.UUID)
	if uuid1.UUID != uuid0.UUID {
		t.Errorf("db-1's uuid %s, want db-0's %s (copied before the secret)", uuid1.UUID, uuid0.UUID)
	}
	code, body = do("GET /_users on db-0 after the failed finish_cluster", n0, "GET", "/_users", "")
	t.Logf("GET /_users after the failure: %d %s", code, body)
	if code != http.StatusNotFound {
		t.Errorf("_users after the failed finish_cluster: %d %s", code, body)
	}

	// A session cookie needs a secret: the coordinator makes one up, and finish_cluster then succeeds.
	code, body = do("POST /_session on db-0", n0, "POST", "/_session", `{"name":"admin","password":"`+pw+`"}`)
	if code != http.StatusOK {
		t.Fatalf("POST /_session: %d %s", code, body)
	}
	if code, _ := do("GET the secret on db-0 after the session cookie", n0, "GET", "/_node/_local/_config/chttpd_auth/secret", ""); code != http.StatusOK {
		t.Errorf("no secret on db-0 after a session cookie: %d", code)
	}
	code, body = do("finish_cluster on db-0 after the session cookie", n0, "POST", "/_cluster_setup", `{"action":"finish_cluster"}`)
	t.Logf("finish_cluster after a session cookie: %d %s", code, body)
	if code != http.StatusCreated {
		t.Errorf("finish_cluster after a session cookie: %d %s, want 201", code, body)
	}
}

var cookieValue = regexp.MustCompile(`AuthSession=[^;]*;`)

// startRealPods skips the test without a CouchDB release (COUCHDB_REL), else starts a real node
// for pod(name) of each name and waits until each is ready.
func startRealPods(t *testing.T, names []string, pod func(name string) *corev1.Pod) *RealBackend {
	t.Helper()
	rel := os.Getenv(ReleaseEnv)
	if rel == "" {
		t.Skipf("%s not set: no CouchDB release to run (see README, Development)", ReleaseEnv)
	}
	b, err := NewReal(fake.NewClientset(), RealOptions{Release: rel, RunDir: t.TempDir(), Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	ctx := context.Background()
	for _, name := range names {
		w, err := b.StartPod(ctx, pod(name), "10.244.0.1")
		if err != nil {
			t.Fatal(err)
		}
		waitFor(t, 60*time.Second, name+" ready", func() bool { return w.Ready(ctx) })
	}
	return b
}

// realTestPod is a pod of StatefulSet subdomain in namespace ns whose container starts CouchDB as the
// official image does, with admin password pw, a shared Erlang cookie and env added.
func realTestPod(name, subdomain, pw string, env ...corev1.EnvVar) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "ns"}, Spec: corev1.PodSpec{
		Hostname: name, Subdomain: subdomain, Containers: []corev1.Container{{Name: "couchdb", Env: append([]corev1.EnvVar{
			{Name: "COUCHDB_USER", Value: "admin"},
			{Name: "COUCHDB_PASSWORD", Value: pw},
			{Name: "COUCHDB_ERLANG_COOKIE", Value: "c00kie"},
			{Name: "NODENAME", Value: name + "." + subdomain + ".ns.svc.cluster.local"},
		}, env...)}}}}
}

func waitFor(t *testing.T, d time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not after %s", what, d)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
