package couchpods

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/couchdb-controller/couchdb-controller/test/kubelet"
)

// ReleaseEnv names the environment variable that points at a CouchDB release directory (the
// rel/couchdb of a `make release` in an apache/couchdb checkout). With it set, the e2e suite and
// the benchmarks run real CouchDB nodes instead of the emulator.
const ReleaseEnv = "COUCHDB_REL"

// DistPort is the Erlang distribution port of every real node, each on its own loopback address, as
// the official image pins it (inet_dist_listen_min/max 9100). There is no epmd: every node knows
// every other listens on this port.
const DistPort = 9100

// CheckRelease reports whether dir looks like a CouchDB release this backend can run.
func CheckRelease(dir string) error {
	for _, f := range []string{"bin/couchdb", "releases/start_erl.data", "etc/default.ini"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			return fmt.Errorf("%s=%s is not a CouchDB release directory (no %s); build one as CouchDB's installation docs describe (`make release` gives rel/couchdb)", ReleaseEnv, dir, f)
		}
	}
	return nil
}

// RealOptions configure a RealBackend.
type RealOptions struct {
	Release string // release directory; never written to
	RunDir  string // per-pod data, config and logs go under it; created if missing
	// Logf reports node starts and stops (optional).
	Logf func(format string, args ...any)
}

// RealBackend runs a real CouchDB node from a release for every pod, configured from the pod spec
// as the official image configures itself. Each pod gets its own loopback address (no root, no
// network namespace): HTTP on 5984 and Erlang distribution on DistPort there, names resolved through
// an Erlang hosts file shared by every node. A pod's data directory outlives the pod (the PVC); its
// runtime _config changes do not (the container's writable layer).
type RealBackend struct {
	kube  kubernetes.Interface
	opts  RealOptions
	hosts *hostsFile
	pool  *loopbackPool

	mu     sync.Mutex
	nodes  map[string]*RealNode // namespace/pod
	closed bool
}

// NewReal returns a RealBackend; nodes start as pods do. Close it to stop every node.
func NewReal(kube kubernetes.Interface, opts RealOptions) (*RealBackend, error) {
	if err := CheckRelease(opts.Release); err != nil {
		return nil, err
	}
	rel, err := filepath.Abs(opts.Release)
	if err != nil {
		return nil, err
	}
	opts.Release = rel
	if opts.RunDir == "" {
		return nil, errors.New("couchpods: RealOptions.RunDir is required")
	}
	if err := os.MkdirAll(opts.RunDir, 0o700); err != nil {
		return nil, err
	}
	if opts.Logf == nil {
		opts.Logf = func(string, ...any) {}
	}
	hosts, err := newHostsFile(opts.RunDir)
	if err != nil {
		return nil, err
	}
	return &RealBackend{kube: kube, opts: opts, hosts: hosts, pool: newLoopbackPool(), nodes: map[string]*RealNode{}}, nil
}

// Node returns the real node of a pod (nil if it never started).
func (b *RealBackend) Node(namespace, pod string) *RealNode {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.nodes[namespace+"/"+pod]
}

// Nodes returns every node the backend has made, running or not.
func (b *RealBackend) Nodes() map[string]*RealNode {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make(map[string]*RealNode, len(b.nodes))
	for k, v := range b.nodes {
		out[k] = v
	}
	return out
}

// Close stops every node. The run directory stays for the caller to keep or remove.
func (b *RealBackend) Close() {
	b.mu.Lock()
	b.closed = true
	nodes := make([]*RealNode, 0, len(b.nodes))
	for _, n := range b.nodes {
		nodes = append(nodes, n)
	}
	b.mu.Unlock()
	var wg sync.WaitGroup
	for _, n := range nodes {
		wg.Go(n.Stop)
	}
	wg.Wait()
}

// StartPod boots (or reboots) the pod's node. The pod spec is read at every start, as a container
// reads its environment and mounted files when it starts.
func (b *RealBackend) StartPod(ctx context.Context, pod *corev1.Pod, _ string) (kubelet.Workload, error) {
	key := pod.Namespace + "/" + pod.Name
	cfg, err := b.realConfig(ctx, pod)
	if err != nil {
		return nil, fmt.Errorf("configure couchdb for pod %s: %w", key, err)
	}
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil, errors.New("couchpods: backend closed")
	}
	node := b.nodes[key]
	if node == nil {
		ip, err := b.pool.take()
		if err != nil {
			b.mu.Unlock()
			return nil, fmt.Errorf("pod %s: %w", key, err)
		}
		node = &RealNode{key: key, ip: ip, release: b.opts.Release, hosts: b.hosts, logf: b.opts.Logf,
			dir: filepath.Join(b.opts.RunDir, pod.Namespace, pod.Name)}
		node.proxy = newFaultProxy(ip, node.URL())
		b.nodes[key] = node
	}
	b.mu.Unlock()
	if err := node.configure(cfg); err != nil {
		return nil, fmt.Errorf("pod %s: %w", key, err)
	}
	if err := node.Start(); err != nil {
		return nil, fmt.Errorf("start couchdb for pod %s: %w", key, err)
	}
	return &realWorkload{node: node}, nil
}

// realConfig is what the official image takes from a pod spec.
type realConfig struct {
	name          string // Erlang node name, or "nonode@nohost" (not distributed)
	host          string // host part of name, resolved through the hosts file
	adminUser     string
	adminPassword string
	cookie        string
	secret        string   // COUCHDB_SECRET: [chttpd_auth] secret
	extraFlags    []string // ERL_FLAGS without -name and -setcookie (those are handled above)
	iniFiles      []iniFile
}

// iniFile is one ini file the pod mounts from a ConfigMap (the Helm chart mounts chart.ini, with
// [couchdb] uuid, and seedlist.ini into default.d).
type iniFile struct{ name, body string }

func (b *RealBackend) realConfig(ctx context.Context, pod *corev1.Pod) (realConfig, error) {
	c := couchContainer(pod)
	if c == nil {
		return realConfig{}, errors.New("pod has no containers")
	}
	env, err := containerEnv(ctx, b.kube, pod, c)
	if err != nil {
		return realConfig{}, err
	}
	cfg := realConfig{
		name:          erlangName(pod, env),
		adminUser:     env["COUCHDB_USER"],
		adminPassword: env["COUCHDB_PASSWORD"],
		cookie:        erlangCookie(env),
		secret:        env["COUCHDB_SECRET"],
		extraFlags:    otherErlFlags(env["ERL_FLAGS"]),
	}
	if cfg.adminUser == "" || cfg.adminPassword == "" {
		return cfg, errors.New("no COUCHDB_USER/COUCHDB_PASSWORD: the official image exits without an admin")
	}
	if _, host, ok := strings.Cut(cfg.name, "@"); ok && cfg.name != "nonode@nohost" {
		cfg.host = host
	}
	if cfg.iniFiles, err = mountedINIFiles(ctx, b.kube, pod); err != nil {
		return cfg, err
	}
	return cfg, nil
}

// mountedINIFiles returns the ini files of the pod's ConfigMap volumes, in the order CouchDB reads a
// default.d directory (by file name).
func mountedINIFiles(ctx context.Context, kc kubernetes.Interface, pod *corev1.Pod) ([]iniFile, error) {
	var out []iniFile
	for _, v := range pod.Spec.Volumes {
		if v.ConfigMap == nil {
			continue
		}
		cm, err := kc.CoreV1().ConfigMaps(pod.Namespace).Get(ctx, v.ConfigMap.Name, metav1.GetOptions{})
		if err != nil {
			if isOptional(v.ConfigMap.Optional) {
				continue
			}
			return nil, err
		}
		for key, body := range cm.Data {
			if strings.HasSuffix(key, ".ini") || strings.HasSuffix(key, "inifile") {
				out = append(out, iniFile{name: strings.TrimSuffix(strings.TrimSuffix(key, ".ini"), "inifile"), body: body})
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out, nil
}

// otherErlFlags drops -name and -setcookie (this backend writes both itself) from ERL_FLAGS and keeps
// the rest for the VM.
func otherErlFlags(flags string) []string {
	f := strings.Fields(flags)
	var out []string
	for i := 0; i < len(f); i++ {
		if (f[i] == "-name" || f[i] == "-sname" || f[i] == "-setcookie") && i+1 < len(f) {
			i++
			continue
		}
		out = append(out, f[i])
	}
	return out
}

// realWorkload is a running real node as the kubelet sees it.
type realWorkload struct{ node *RealNode }

// Ready is the image's readiness probe: GET /_up answers 200, asked through the node's fault proxy
// as the kubelet reaches the pod (a fault without SpareUp fails it, as on an emulated node).
func (w *realWorkload) Ready(ctx context.Context) bool {
	return w.node.Running() && w.node.proxy.probe(ctx)
}

// Ports maps the container port to the node's fault proxy, on the node's own loopback address.
func (w *realWorkload) Ports() map[int32]string {
	return map[int32]string{CouchDBPort: w.node.proxy.addr}
}

// Stop stops the node; its data directory stays for a pod of the same name.
func (w *realWorkload) Stop() { w.node.Stop() }

// loopbackPool hands out loopback addresses 127.B.x.y, B chosen at random per pool so that two test
// processes on one machine rarely meet; an address whose ports are taken (another process, a node
// left over from a killed run) is skipped.
type loopbackPool struct {
	mu   sync.Mutex
	base byte
	next int
}

func newLoopbackPool() *loopbackPool {
	return &loopbackPool{base: byte(100 + rand.IntN(150)), next: 1}
}

func (p *loopbackPool) take() (net.IP, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for ; p.next < 256*255; p.next++ {
		x, y := p.next/256, p.next%256
		if y == 0 || y == 255 {
			continue
		}
		ip := net.IPv4(127, p.base, byte(x), byte(y)).To4()
		if portsFree(ip, CouchDBPort, DistPort, FaultPort) {
			p.next++
			return ip, nil
		}
	}
	return nil, fmt.Errorf("no free loopback address in 127.%d.0.0/16", p.base)
}

func portsFree(ip net.IP, ports ...int) bool {
	for _, port := range ports {
		ln, err := net.Listen("tcp", net.JoinHostPort(ip.String(), strconv.Itoa(port)))
		if err != nil {
			return false
		}
		_ = ln.Close()
	}
	return true
}

// hostsFile is the /etc/hosts-format file every node's Erlang resolver reads (ERL_INETRC names it as
// hosts_file). Erlang re-reads it when its modification time changes, so a node started before a
// later pod still resolves that pod's name: the file is rewritten whole for each new name, with a
// modification time at least a second after the last one (Erlang compares whole seconds).
type hostsFile struct {
	path   string
	inetrc string

	mu     sync.Mutex
	names  map[string]string // host -> address
	mtime  time.Time
	writes int
}

func newHostsFile(dir string) (*hostsFile, error) {
	h := &hostsFile{path: filepath.Join(dir, "hosts"), inetrc: filepath.Join(dir, "inetrc"), names: map[string]string{}}
	// Only the file: no DNS is asked for cluster names, which do not exist outside this harness.
	rc := fmt.Sprintf("{hosts_file, %q}.\n{lookup, [file]}.\n", h.path)
	if err := os.WriteFile(h.inetrc, []byte(rc), 0o600); err != nil {
		return nil, err
	}
	return h, h.writeLocked()
}

// set maps host to addr (idempotent).
func (h *hostsFile) set(host, addr string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.names[host] == addr {
		return nil
	}
	h.names[host] = addr
	return h.writeLocked()
}

func (h *hostsFile) writeLocked() error {
	var b strings.Builder
	b.WriteString("127.0.0.1 localhost\n")
	hosts := make([]string, 0, len(h.names))
	for host := range h.names {
		hosts = append(hosts, host)
	}
	sort.Strings(hosts)
	for _, host := range hosts {
		fmt.Fprintf(&b, "%s %s\n", h.names[host], host)
	}
	tmp := fmt.Sprintf("%s.%d", h.path, h.writes)
	h.writes++
	if err := os.WriteFile(tmp, []byte(b.String()), 0o644); err != nil {
		return err
	}
	mtime := time.Now().Truncate(time.Second)
	if !mtime.After(h.mtime) {
		mtime = h.mtime.Add(time.Second)
	}
	if err := os.Chtimes(tmp, mtime, mtime); err != nil {
		return err
	}
	if err := os.Rename(tmp, h.path); err != nil {
		return err
	}
	h.mtime = mtime
	return nil
}
