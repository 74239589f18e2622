package couchpods

import (
	"context"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

func TestOtherErlFlags(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []string
	}{
		{" -name couchdb ", nil},
		{"-name couchdb -setcookie monster +K true", []string{"+K", "true"}},
		{"-sname x -kernel a b", []string{"-kernel", "a", "b"}},
		{"", nil},
	} {
		if got := otherErlFlags(tc.in); !slices.Equal(got, tc.want) {
			t.Errorf("otherErlFlags(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// Erlang re-reads its hosts file only when the modification time (whole seconds) changes, so two
// writes within one second must still give two different times.
func TestHostsFileMtimeAdvancesEveryWrite(t *testing.T) {
	h, err := newHostsFile(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	var last time.Time
	for i, host := range []string{"a.example", "b.example", "c.example"} {
		if err := h.set(host, "127.9.0."+string(rune('1'+i))); err != nil {
			t.Fatal(err)
		}
		fi, err := os.Stat(h.path)
		if err != nil {
			t.Fatal(err)
		}
		if m := fi.ModTime().Truncate(time.Second); !m.After(last) {
			t.Errorf("write %d: mtime %s not after %s", i, m, last)
		} else {
			last = m
		}
	}
	b, _ := os.ReadFile(h.path)
	for _, want := range []string{"127.9.0.1 a.example", "127.9.0.3 c.example", "127.0.0.1 localhost"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("hosts file lacks %q:\n%s", want, b)
		}
	}
	rc, _ := os.ReadFile(h.inetrc)
	if !strings.Contains(string(rc), `{hosts_file, "`+h.path+`"}.`) || !strings.Contains(string(rc), "{lookup, [file]}.") {
		t.Errorf("inetrc:\n%s", rc)
	}
}

func TestLoopbackPoolSkipsTakenAddresses(t *testing.T) {
	p := newLoopbackPool()
	first, err := p.take()
	if err != nil {
		t.Fatal(err)
	}
	// Someone else holds 5984 on the next address: the pool must pass it by.
	next := net.IPv4(127, p.base, byte(p.next/256), byte(p.next%256))
	ln, err := net.Listen("tcp", net.JoinHostPort(next.String(), "5984"))
	if err != nil {
		t.Skipf("cannot listen on %s: %v", next, err)
	}
	defer ln.Close()
	second, err := p.take()
	if err != nil {
		t.Fatal(err)
	}
	if second.Equal(first) || second.Equal(next) {
		t.Errorf("took %s after %s with %s busy", second, first, next)
	}
	if second[0] != 127 || first[0] != 127 {
		t.Errorf("not loopback: %s %s", first, second)
	}
}

// fakeRelease makes a directory with the files CheckRelease and writeConfig read.
func fakeRelease(t *testing.T) string {
	dir := t.TempDir()
	for path, body := range map[string]string{
		"bin/couchdb":             "#!/bin/sh\nexit 0\n",
		"releases/start_erl.data": "13.1.5 3.4.3\n",
		"etc/default.ini":         "[couchdb]\nuuid = baked\n",
		"etc/vm.args":             "-name couchdb@127.0.0.1\n# comment\n-kernel inet_dist_use_interface {127,0,0,1}\n+Bd -noinput\n-setcookie x\n",
	} {
		p := filepath.Join(dir, path)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestWriteConfigFollowsTheImage(t *testing.T) {
	rel := fakeRelease(t)
	run := t.TempDir()
	hosts, err := newHostsFile(run)
	if err != nil {
		t.Fatal(err)
	}
	n := &RealNode{key: "ns/db-0", ip: net.IPv4(127, 42, 0, 7).To4(), dir: filepath.Join(run, "ns", "db-0"), release: rel, hosts: hosts}
	cfg := realConfig{name: "couchdb@db-0.db.ns.svc.cluster.local", host: "db-0.db.ns.svc.cluster.local",
		adminUser: "admin", adminPassword: "pw-1", cookie: "cookie-1", secret: "s3cret",
		extraFlags: []string{"+K", "true"},
		iniFiles:   []iniFile{{name: "chart", body: "[couchdb]\nuuid = shared\n[chttpd]\nbind_address = any\n"}}}
	env, err := n.writeConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	get := func(k string) string {
		for _, kv := range env {
			if v, ok := strings.CutPrefix(kv, k+"="); ok {
				return v
			}
		}
		return ""
	}
	ini := strings.Fields(get("COUCHDB_INI_FILES"))
	if len(ini) != 4 || ini[0] != filepath.Join(rel, "etc", "default.ini") || !strings.HasSuffix(ini[1], "50-chart.ini") ||
		!strings.HasSuffix(ini[2], "99-harness-pod.ini") || !strings.HasSuffix(ini[3], filepath.Join("local.d", "docker.ini")) {
		t.Fatalf("ini chain %q: want default.ini, the pod's ini, the pod address, docker.ini last", ini)
	}
	for _, f := range ini[1:] {
		if !strings.HasPrefix(f, n.dir) {
			t.Errorf("%s is outside the pod's directory", f)
		}
	}
	docker, _ := os.ReadFile(ini[3])
	if string(docker) != "[admins]\nadmin = pw-1\n\n[chttpd_auth]\nsecret = s3cret\n" {
		t.Errorf("docker.ini:\n%s", docker)
	}
	pod, _ := os.ReadFile(ini[2])
	for _, want := range []string{"bind_address = 127.42.0.7", "database_dir = " + filepath.Join(n.dir, "data"), "state_dir = "} {
		if !strings.Contains(string(pod), want) {
			t.Errorf("pod ini lacks %q:\n%s", want, pod)
		}
	}
	args, _ := os.ReadFile(get("COUCHDB_ARGS_FILE"))
	for _, want := range []string{"-name couchdb@db-0.db.ns.svc.cluster.local\n", "-kernel inet_dist_use_interface {127,42,0,7}\n",
		"-start_epmd false\n", "-erl_epmd_port 9100\n", "+Bd -noinput\n"} {
		if !strings.Contains(string(args), want) {
			t.Errorf("vm.args lacks %q:\n%s", want, args)
		}
	}
	for _, unwanted := range []string{"couchdb@127.0.0.1", "{127,0,0,1}", "-setcookie", "cookie-1"} {
		if strings.Contains(string(args), unwanted) {
			t.Errorf("vm.args has %q:\n%s", unwanted, args)
		}
	}
	cookie, err := os.Stat(filepath.Join(n.dir, ".erlang.cookie"))
	if err != nil || cookie.Mode().Perm() != 0o400 || get("HOME") != n.dir {
		t.Errorf("cookie file %v (%v), HOME %q", cookie, err, get("HOME"))
	}
	if get("ERL_FLAGS") != "+K true" || get("ERL_INETRC") != hosts.inetrc {
		t.Errorf("ERL_FLAGS %q ERL_INETRC %q", get("ERL_FLAGS"), get("ERL_INETRC"))
	}
	// A second start regenerates docker.ini (runtime _config changes are lost) and drops the pod's
	// ini files that are gone from its spec; the data directory stays.
	if err := os.WriteFile(ini[3], []byte("[admins]\nadmin = -pbkdf2-hashed\n[log]\nlevel = debug\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	marker := filepath.Join(n.dir, "data", "_users.couch")
	if err := os.WriteFile(marker, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg.iniFiles = nil
	env, err = n.writeConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if docker, _ := os.ReadFile(ini[3]); strings.Contains(string(docker), "debug") || !strings.Contains(string(docker), "admin = pw-1") {
		t.Errorf("docker.ini after restart:\n%s", docker)
	}
	if _, err := os.Stat(ini[1]); !os.IsNotExist(err) {
		t.Errorf("the removed ini file is still there: %v", err)
	}
	if _, err := os.Stat(marker); err != nil {
		t.Errorf("data lost: %v", err)
	}
	if len(strings.Fields(get("COUCHDB_INI_FILES"))) != 3 {
		t.Errorf("ini chain %q", get("COUCHDB_INI_FILES"))
	}
}

// TestRealNodeLifecycle runs one real CouchDB node when COUCHDB_REL names a release: the image's
// admin, data kept across a restart, runtime _config lost on restart, and no process left after Stop.
func TestRealNodeLifecycle(t *testing.T) {
	rel := os.Getenv(ReleaseEnv)
	if rel == "" {
		t.Skipf("%s not set: no CouchDB release to run (see README, Development)", ReleaseEnv)
	}
	kc := fake.NewClientset(&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "s", Namespace: "ns"},
		Data: map[string][]byte{"pw": []byte("lifecycle-pw-1")}})
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "db-0", Namespace: "ns"}, Spec: corev1.PodSpec{
		Hostname: "db-0", Subdomain: "db", Containers: []corev1.Container{{Name: "couchdb", Env: []corev1.EnvVar{
			{Name: "COUCHDB_USER", Value: "admin"},
			{Name: "COUCHDB_PASSWORD", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{
				LocalObjectReference: corev1.LocalObjectReference{Name: "s"}, Key: "pw"}}},
			{Name: "COUCHDB_ERLANG_COOKIE", Value: "c00kie"},
			{Name: "NODENAME", Value: "db-0.db.ns.svc.cluster.local"},
		}}}}}
	b, err := NewReal(kc, RealOptions{Release: rel, RunDir: t.TempDir(), Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	ctx := context.Background()
	start := func() *realWorkload {
		t.Helper()
		w, err := b.StartPod(ctx, pod, "10.244.0.1")
		if err != nil {
			t.Fatal(err)
		}
		began := time.Now()
		for !w.Ready(ctx) {
			if time.Since(began) > 60*time.Second {
				t.Fatalf("not ready after 60s; log %s", w.(*realWorkload).node.LogPath())
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Logf("ready %s after start", time.Since(began).Round(time.Millisecond))
		return w.(*realWorkload)
	}
	do := func(method, path, body string) int {
		t.Helper()
		req, _ := http.NewRequest(method, b.Node("ns", "db-0").URL()+path, strings.NewReader(body))
		req.SetBasicAuth("admin", "lifecycle-pw-1")
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	w := start()
	n := w.node
	var info struct{ Name string }
	if _, err := n.getJSON(ctx, "admin", "lifecycle-pw-1", "/_node/_local", &info); err != nil || info.Name != "couchdb@db-0.db.ns.svc.cluster.local" {
		t.Fatalf("/_node/_local: %+v %v", info, err)
	}
	if code := do("PUT", "/kept", ""); code != 201 && code != 202 {
		t.Fatalf("create db: %d", code)
	}
	if code := do("PUT", "/_node/_local/_config/log/level", `"debug"`); code != 200 {
		t.Fatalf("set config: %d", code)
	}
	pid := n.cmd.Process.Pid
	w.Stop()
	if err := syscall.Kill(-pid, 0); err == nil {
		t.Errorf("process group %d still alive after Stop", pid)
	}
	start()
	if code := do("GET", "/kept", ""); code != 200 {
		t.Errorf("the database did not survive the restart: %d", code)
	}
	// The release sets no log level, so after a restart the key is gone again (404).
	var level string
	if code, err := n.getJSON(ctx, "admin", "lifecycle-pw-1", "/_node/_local/_config/log/level", &level); code != http.StatusNotFound {
		t.Errorf("log level after restart: %d %q (%v), want 404: a runtime _config change must not survive", code, level, err)
	}
}
