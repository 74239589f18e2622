package couchpods

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/couchdb-controller/couchdb-controller/couch/couchtest"
	"github.com/couchdb-controller/couchdb-controller/test/harness"
)

// stopGrace is how long a node has to shut down after SIGTERM before its process group is killed,
// as a pod's terminationGracePeriodSeconds (shorter: nothing here needs a clean shutdown, CouchDB's
// storage is crash-safe).
const stopGrace = 10 * time.Second

// RealNode is one pod's real CouchDB node: a process group running the release's bin/couchdb with
// COUCHDB_ARGS_FILE and COUCHDB_INI_FILES pointing into the pod's directory.
type RealNode struct {
	key     string // namespace/pod
	ip      net.IP
	dir     string
	release string
	hosts   *hostsFile
	logf    func(string, ...any)
	proxy   *faultProxy // what the harness maps the pod's CouchDB port to

	mu     sync.Mutex
	cfg    realConfig
	cmd    *exec.Cmd
	exited chan struct{} // closed when the current process has exited
	starts int
}

// Name is the node's Erlang name (couchdb@<pod FQDN>).
func (n *RealNode) Name() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.cfg.name
}

// Addr is the node's HTTP listener, IP:5984.
func (n *RealNode) Addr() string { return net.JoinHostPort(n.ip.String(), strconv.Itoa(CouchDBPort)) }

// URL is the node's base URL.
func (n *RealNode) URL() string { return "http://" + n.Addr() }

// Dir is the pod's directory: data/ (the PVC), etc/ (config written at each start) and couchdb.log.
func (n *RealNode) Dir() string { return n.dir }

// LogPath is the node's log (CouchDB's stderr; every start appends).
func (n *RealNode) LogPath() string { return filepath.Join(n.dir, "couchdb.log") }

// Starts counts the times the node was started.
func (n *RealNode) Starts() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.starts
}

// SetFault injects (or with the zero value clears) a fault into everything that reaches the node
// through the harness, answered as an emulated node answers under the same fault
// (couchtest.Fault). The node itself keeps running normally; its peers are not affected.
func (n *RealNode) SetFault(f couchtest.Fault) {
	if n.proxy != nil {
		n.proxy.set(f)
	}
}

// Running reports whether the node's process is alive.
func (n *RealNode) Running() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.exited == nil {
		return false
	}
	select {
	case <-n.exited:
		return false
	default:
		return true
	}
}

func (n *RealNode) configure(cfg realConfig) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cfg.name != "" && n.cfg.name != cfg.name {
		// A PVC keeps its data; a node renamed over it would be a different CouchDB node with another
		// node's shard files, which a StatefulSet never does.
		return fmt.Errorf("node name changed from %s to %s over the same data", n.cfg.name, cfg.name)
	}
	n.cfg = cfg
	return nil
}

// Start writes the pod's config and starts the node. Starting a running node does nothing.
func (n *RealNode) Start() error {
	if n.Running() {
		return nil
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	cfg := n.cfg
	if cfg.host != "" {
		if err := n.hosts.set(cfg.host, n.ip.String()); err != nil {
			return fmt.Errorf("hosts file: %w", err)
		}
	}
	// A node stopped a moment ago may still hold its ports (sockets closing): wait for them.
	deadline := time.Now().Add(10 * time.Second)
	for !portsFree(n.ip, CouchDBPort, DistPort) {
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: ports %d and %d still taken", n.ip, CouchDBPort, DistPort)
		}
		time.Sleep(100 * time.Millisecond)
	}
	env, err := n.writeConfig(cfg)
	if err != nil {
		return err
	}
	logf, err := os.OpenFile(n.LogPath(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close() // the child has its own descriptor
	fmt.Fprintf(logf, "=== harness: start %d of %s (%s) on %s at %s\n", n.starts+1, n.key, cfg.name, n.ip, time.Now().UTC().Format(time.RFC3339Nano))
	cmd := exec.Command(filepath.Join(n.release, "bin", "couchdb"))
	cmd.Env = env
	cmd.Dir = n.dir
	cmd.Stdout, cmd.Stderr = logf, logf
	// Its own session and process group (stopped by that group's id, never by name), killed with the
	// test process if that dies without stopping it.
	cmd.SysProcAttr = harness.ChildProcAttr()
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", cmd.Path, err)
	}
	exited := make(chan struct{})
	proxy := n.proxy
	go func() {
		_ = cmd.Wait()
		if proxy != nil {
			proxy.stop() // a stopped node refuses connections; hung requests are dropped
		}
		// The VM is gone; whatever it started in its group (couchjs) goes with it.
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		close(exited)
	}()
	n.cmd, n.exited = cmd, exited
	n.starts++
	if proxy != nil {
		if err := proxy.start(); err != nil {
			return fmt.Errorf("fault proxy of %s: %w", n.key, err)
		}
	}
	n.logf("couchdb %s (%s) started on %s, pid %d, log %s", n.key, cfg.name, n.Addr(), cmd.Process.Pid, n.LogPath())
	return nil
}

// Stop sends SIGTERM to the node's process group and, after stopGrace, SIGKILL; it returns once the
// VM has exited. The data directory stays.
func (n *RealNode) Stop() {
	n.mu.Lock()
	cmd, exited := n.cmd, n.exited
	n.mu.Unlock()
	if cmd == nil {
		return
	}
	select {
	case <-exited:
		return
	default:
	}
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(stopGrace):
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-exited
	}
	n.logf("couchdb %s stopped", n.key)
}

// writeConfig regenerates everything the node reads at start and returns its environment. The last
// ini file (local.d/docker.ini) is written fresh each time, as the official image's entrypoint
// writes it into a new container: runtime _config changes, which CouchDB writes there, are lost on
// restart, and the admin password is written in plaintext so CouchDB hashes it (a new salt) at start.
func (n *RealNode) writeConfig(cfg realConfig) ([]string, error) {
	etc := filepath.Join(n.dir, "etc")
	data := filepath.Join(n.dir, "data")
	for _, d := range []string{filepath.Join(etc, "default.d"), filepath.Join(etc, "local.d"), data} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, err
		}
	}
	ini := []string{filepath.Join(n.release, "etc", "default.ini")}
	shipped, _ := filepath.Glob(filepath.Join(n.release, "etc", "default.d", "*.ini"))
	sort.Strings(shipped)
	ini = append(ini, shipped...)
	write := func(path, body string, mode os.FileMode) error {
		if err := os.WriteFile(path, []byte(body), mode); err != nil {
			return err
		}
		return os.Chmod(path, mode) // WriteFile keeps an existing file's mode
	}
	old, _ := filepath.Glob(filepath.Join(etc, "default.d", "50-*.ini"))
	for _, f := range old {
		_ = os.Remove(f)
	}
	for _, f := range cfg.iniFiles {
		p := filepath.Join(etc, "default.d", "50-"+safeFileName(f.name)+".ini")
		if err := write(p, f.body, 0o600); err != nil {
			return nil, err
		}
		ini = append(ini, p)
	}
	// What a pod's own network namespace and volume give the image, here by configuration: the
	// image's bind_address = any (its 10-docker-default.ini) is the pod's one address, and
	// /opt/couchdb/data is the PVC. Read after the pod's ini files so a chart's bind_address = any
	// cannot make two pods share 0.0.0.0:5984.
	p := filepath.Join(etc, "default.d", "99-harness-pod.ini")
	pod := fmt.Sprintf("[chttpd]\nbind_address = %[1]s\nport = %[2]d\n\n[httpd]\nbind_address = %[1]s\n\n"+
		"[couchdb]\ndatabase_dir = %[3]s\nview_index_dir = %[3]s\n\n[smoosh]\nstate_dir = %[3]s\n\n"+
		"[prometheus]\nadditional_port = false\nbind_address = %[1]s\n", n.ip, CouchDBPort, data)
	if err := write(p, pod, 0o600); err != nil {
		return nil, err
	}
	ini = append(ini, p)
	var docker strings.Builder
	fmt.Fprintf(&docker, "[admins]\n%s = %s\n", cfg.adminUser, cfg.adminPassword)
	if cfg.secret != "" {
		fmt.Fprintf(&docker, "\n[chttpd_auth]\nsecret = %s\n", cfg.secret)
	}
	p = filepath.Join(etc, "local.d", "docker.ini")
	if err := write(p, docker.String(), 0o600); err != nil {
		return nil, err
	}
	ini = append(ini, p)

	args, err := n.vmArgs(cfg)
	if err != nil {
		return nil, err
	}
	argsFile := filepath.Join(etc, "vm.args")
	if err := write(argsFile, args, 0o600); err != nil {
		return nil, err
	}
	// The image writes COUCHDB_ERLANG_COOKIE to the couchdb user's ~/.erlang.cookie; here HOME is the
	// pod's directory. Keeping it out of vm.args keeps it off the VM's command line.
	if cfg.cookie != "" {
		if err := write(filepath.Join(n.dir, ".erlang.cookie"), cfg.cookie, 0o400); err != nil {
			return nil, err
		}
	}
	env := []string{
		"PATH=/usr/local/bin:/usr/bin:/bin",
		"HOME=" + n.dir,
		"LANG=C.UTF-8",
		"COUCHDB_ARGS_FILE=" + argsFile,
		"COUCHDB_INI_FILES=" + strings.Join(ini, " "),
		"ERL_INETRC=" + n.hosts.inetrc,
		"ERL_CRASH_DUMP=" + filepath.Join(n.dir, "erl_crash.dump"),
	}
	if len(cfg.extraFlags) > 0 {
		env = append(env, "ERL_FLAGS="+strings.Join(cfg.extraFlags, " "))
	}
	return env, nil
}

// vmArgs is the release's vm.args without its node name and interface, plus this pod's: the name,
// distribution on DistPort of the pod's address without epmd, and schedulers that do not busy-wait
// (dozens of nodes share the machine's cores).
func (n *RealNode) vmArgs(cfg realConfig) (string, error) {
	f, err := os.Open(filepath.Join(n.release, "etc", "vm.args"))
	if err != nil {
		return "", err
	}
	defer f.Close()
	var b strings.Builder
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		fields := strings.Fields(line)
		switch {
		case len(fields) == 0 || strings.HasPrefix(line, "#"):
			continue
		case fields[0] == "-name" || fields[0] == "-sname" || fields[0] == "-setcookie":
			continue
		case len(fields) >= 2 && fields[0] == "-kernel" && strings.HasPrefix(fields[1], "inet_dist_"):
			continue
		}
		b.WriteString(line + "\n")
	}
	if err := sc.Err(); err != nil {
		return "", err
	}
	ip := n.ip.To4()
	if cfg.host != "" {
		fmt.Fprintf(&b, "-name %s\n", cfg.name)
	}
	fmt.Fprintf(&b, "-kernel inet_dist_use_interface {%d,%d,%d,%d}\n", ip[0], ip[1], ip[2], ip[3])
	fmt.Fprintf(&b, "-kernel inet_dist_listen_min %d\n-kernel inet_dist_listen_max %d\n", DistPort, DistPort)
	fmt.Fprintf(&b, "-start_epmd false\n-erl_epmd_port %d\n", DistPort)
	b.WriteString("+sbwt none\n+sbwtdcpu none\n+sbwtdio none\n")
	return b.String(), nil
}

func safeFileName(s string) string {
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' {
			return r
		}
		return '_'
	}, s)
}

// nodeClient is the tests' own client to a real node: its deadline is the caller's context, not
// probeClient's 1 s, since an authenticated request can cost CouchDB a pbkdf2 of 600,000 iterations
// (seconds on a loaded machine), and a test reading a copy's count must not take that for "no copy".
var nodeClient = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}

// getJSON asks the node itself (not through the harness proxy) as user.
func (n *RealNode) getJSON(ctx context.Context, user, password, path string, out any) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, n.URL()+path, nil)
	if err != nil {
		return 0, err
	}
	req.SetBasicAuth(user, password)
	req.Header.Set("Accept", "application/json")
	resp, err := nodeClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp.StatusCode, err
	}
	if resp.StatusCode != http.StatusOK {
		return resp.StatusCode, fmt.Errorf("GET %s: %d %s", path, resp.StatusCode, bytes.TrimSpace(b))
	}
	return resp.StatusCode, json.Unmarshal(b, out)
}

// ClusterNodes is the node's cluster_nodes (its _nodes documents), asked as user; nil if the node
// is down or does not answer.
func (n *RealNode) ClusterNodes(ctx context.Context, user, password string) []string {
	if !n.Running() {
		return nil
	}
	var m struct {
		ClusterNodes []string `json:"cluster_nodes"`
	}
	if _, err := n.getJSON(ctx, user, password, "/_membership", &m); err != nil {
		return nil
	}
	return m.ClusterNodes
}

// CopyDocCount reports the documents of the node's local copy of shard ("shards/<range>/<db><suffix>").
func (n *RealNode) CopyDocCount(ctx context.Context, user, password, shard string) (docs, deleted int64, ok bool) {
	var info struct {
		DocCount    int64 `json:"doc_count"`
		DocDelCount int64 `json:"doc_del_count"`
	}
	if _, err := n.getJSON(ctx, user, password, "/_node/_local/"+url.PathEscape(shard), &info); err != nil {
		return 0, 0, false
	}
	return info.DocCount, info.DocDelCount, true
}

// Auth-failure lines CouchDB 3.4 logs (couch_httpd_auth.erl authentication_warning/lockout_warning).
const (
	LogLoginFailed = "Authentication failed for user"
	LogLoginLocked = "Authentication rejected for locked-out user"
)

// CountLog counts the lines of the node's log (every start) that contain s.
func (n *RealNode) CountLog(s string) (int, error) {
	f, err := os.Open(n.LogPath())
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return 0, nil
		}
		return 0, err
	}
	defer f.Close()
	count := 0
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 4*1024*1024)
	for sc.Scan() {
		if strings.Contains(sc.Text(), s) {
			count++
		}
	}
	return count, sc.Err()
}
