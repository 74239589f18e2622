// Package couchpods runs an emulated CouchDB node (couch/couchtest) for every pod the test kubelet
// starts, configured from the pod spec exactly as the official image would configure itself: admin
// from COUCHDB_USER/COUCHDB_PASSWORD, node name from NODENAME or ERL_FLAGS, cookie from
// COUCHDB_ERLANG_COOKIE, [chttpd_auth] secret from COUCHDB_SECRET, and [couchdb] uuid, [chttpd_auth]
// secret, [cluster] n, q and seedlist, [chttpd] bind_address from the ini files the pod gets from
// ConfigMaps (the Helm chart's way; an ini value wins over COUCHDB_SECRET, as the image's entrypoint
// writes the variable only when no ini file sets the key).
//
// Every start of a pod's container is a fresh official-image container (couchtest's EphemeralIni):
// the config is read again from the pod spec, the admin password is hashed with a new salt, runtime
// _config writes (finish_cluster's copies included) are gone, and a uuid or secret the spec does not
// set is drawn at random, so a hand-made StatefulSet without them gives each start its own values.
// The node's data, _nodes and _dbs survive, like a PersistentVolumeClaim.
//
// Per-pod values (pods of one StatefulSet with different uuids, say) come from a ConfigMap file per
// pod, mounted by name with subPathExpr, which real Kubernetes supports too:
//
//	env:          - name: POD_NAME
//	                valueFrom: {fieldRef: {fieldPath: metadata.name}}
//	volumeMounts: - name: per-pod
//	                mountPath: /opt/couchdb/etc/local.d/99-pod.ini
//	                subPathExpr: $(POD_NAME).ini
//	volumes:      - name: per-pod
//	                configMap: {name: couchdb-per-pod}   # keys couchdb-0.ini, couchdb-1.ini, ...
//
// A ConfigMap volume mounted with subPath/subPathExpr gives only the files mounted; other ConfigMap
// volumes give all their .ini keys. See iniConfig for the order.
package couchpods

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/couchdb-controller/couchdb-controller/couch/couchtest"
	"github.com/couchdb-controller/couchdb-controller/test/kubelet"
)

// CouchDBPort is the container port the image listens on.
const CouchDBPort = 5984

// Backend starts one emulated node per pod and keeps it (like a PersistentVolumeClaim) across pod
// deletion, so a pod of the same name comes back with the same data and name.
type Backend struct {
	kube    kubernetes.Interface
	network *couchtest.Network       // shared by every pod, or nil: one per namespace
	netOpts couchtest.NetworkOptions // for per-namespace networks

	probes *http.Client // the readiness prober's client

	mu       sync.Mutex
	nodes    map[string]*couchtest.Node    // namespace/pod -> node
	networks map[string]*couchtest.Network // namespace -> network, when not shared
}

// New returns a Backend whose nodes share one emulated Erlang network.
func New(kube kubernetes.Interface, network *couchtest.Network) *Backend {
	return &Backend{kube: kube, network: network, probes: probeClient, nodes: map[string]*couchtest.Node{}}
}

// NewPerNamespace returns a Backend that gives each namespace its own emulated Erlang network, as
// separate CouchDB clusters have. The emulator propagates _nodes and _dbs across every node of a
// network, so with hundreds of clusters on one network the emulator, not the controller, would be
// what a benchmark measures.
func NewPerNamespace(kube kubernetes.Interface, opts couchtest.NetworkOptions) *Backend {
	return &Backend{kube: kube, netOpts: opts, probes: probeClient, nodes: map[string]*couchtest.Node{}, networks: map[string]*couchtest.Network{}}
}

// KeepAliveProbes makes the readiness prober reuse one connection per pod instead of connecting
// afresh each time. The answer is the same (GET /_up on the node's listener, which drops its
// connections when the node stops); what changes is cost: with thousands of pods in one process a
// fresh TCP connection per probe (dial, accept, close on both ends) is most of the harness's CPU, and
// that CPU is taken from the controller a benchmark measures. It holds two file descriptors per
// running pod. Call it before the kubelet starts pods.
func (b *Backend) KeepAliveProbes() {
	b.probes = &http.Client{Timeout: time.Second, Transport: &http.Transport{
		MaxIdleConns: 0, MaxIdleConnsPerHost: 1, IdleConnTimeout: time.Minute, DisableCompression: true}}
}

func (b *Backend) networkOf(namespace string) *couchtest.Network {
	if b.network != nil {
		return b.network
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	nw := b.networks[namespace]
	if nw == nil {
		nw = couchtest.NewNetwork(b.netOpts)
		b.networks[namespace] = nw
	}
	return nw
}

// Node returns the emulated node of a pod, for fault injection and assertions.
func (b *Backend) Node(namespace, pod string) *couchtest.Node {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.nodes[namespace+"/"+pod]
}

// Nodes returns every node the backend has made, running or not.
func (b *Backend) Nodes() map[string]*couchtest.Node {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make(map[string]*couchtest.Node, len(b.nodes))
	for k, v := range b.nodes {
		out[k] = v
	}
	return out
}

// StartPod boots (or reboots) the pod's node.
func (b *Backend) StartPod(ctx context.Context, pod *corev1.Pod, podIP string) (kubelet.Workload, error) {
	key := pod.Namespace + "/" + pod.Name
	b.mu.Lock()
	node := b.nodes[key]
	b.mu.Unlock()
	cfg, err := b.nodeConfig(ctx, pod)
	if err != nil {
		return nil, fmt.Errorf("configure couchdb for pod %s: %w", key, err)
	}
	if node != nil {
		// A new container reads its ini files and environment again, from the pod it now belongs to.
		if err := node.SetBootConfig(cfg); err != nil {
			return nil, fmt.Errorf("reconfigure emulated node for pod %s: %w", key, err)
		}
	} else {
		node, err = b.networkOf(pod.Namespace).AddNode(cfg)
		if err != nil {
			return nil, fmt.Errorf("add emulated node for pod %s: %w", key, err)
		}
		b.mu.Lock()
		b.nodes[key] = node
		b.mu.Unlock()
	}
	if err := node.Start(); err != nil {
		return nil, fmt.Errorf("start emulated node for pod %s: %w", key, err)
	}
	return &Workload{node: node, probes: b.probes}, nil
}

func (b *Backend) nodeConfig(ctx context.Context, pod *corev1.Pod) (couchtest.NodeConfig, error) {
	c := couchContainer(pod)
	if c == nil {
		return couchtest.NodeConfig{}, fmt.Errorf("pod has no containers")
	}
	env, err := containerEnv(ctx, b.kube, pod, c)
	if err != nil {
		return couchtest.NodeConfig{}, err
	}
	ini, err := iniConfig(ctx, b.kube, pod)
	if err != nil {
		return couchtest.NodeConfig{}, err
	}
	cfg := couchtest.NodeConfig{
		Name:          erlangName(pod, env),
		AdminUser:     env["COUCHDB_USER"],
		AdminPassword: env["COUCHDB_PASSWORD"],
		Cookie:        erlangCookie(env),
		// The official image bakes in bind_address = any, so its nodes boot cluster_enabled.
		BindAddress:  "any",
		EphemeralIni: true,
		UUID:         ini["couchdb"]["uuid"],
		Secret:       env["COUCHDB_SECRET"],
	}
	if v := ini["chttpd_auth"]["secret"]; v != "" {
		cfg.Secret = v
	}
	if v := ini["chttpd"]["bind_address"]; v != "" {
		cfg.BindAddress = v
	}
	if v, err := strconv.Atoi(ini["cluster"]["n"]); err == nil {
		cfg.N = v
	}
	if v, err := strconv.Atoi(ini["cluster"]["q"]); err == nil {
		cfg.Q = v
	}
	if s := ini["cluster"]["seedlist"]; s != "" {
		for _, seed := range strings.Split(s, ",") {
			if seed = strings.TrimSpace(seed); seed != "" {
				cfg.Seedlist = append(cfg.Seedlist, seed)
			}
		}
	}
	if cfg.AdminUser == "" || cfg.AdminPassword == "" {
		// The image refuses to start without an admin; so does this backend.
		return cfg, fmt.Errorf("no COUCHDB_USER/COUCHDB_PASSWORD: the official image exits without an admin")
	}
	return cfg, nil
}

func couchContainer(pod *corev1.Pod) *corev1.Container {
	for i := range pod.Spec.Containers {
		if pod.Spec.Containers[i].Name == "couchdb" {
			return &pod.Spec.Containers[i]
		}
	}
	if len(pod.Spec.Containers) > 0 {
		return &pod.Spec.Containers[0]
	}
	return nil
}

// Workload is one running node as the kubelet sees it.
type Workload struct {
	node   *couchtest.Node
	probes *http.Client
}

// probeClient connects afresh for every probe, as the kubelet's HTTP prober does: idle connections
// kept to thousands of pods would cost two file descriptors each in this one process.
var probeClient = &http.Client{Timeout: time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

// Ready is the image's readiness probe: GET /_up answers 200.
func (w *Workload) Ready(ctx context.Context) bool {
	if !w.node.Running() {
		return false
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, w.node.URL()+"/_up", nil)
	if err != nil {
		return false
	}
	resp, err := w.probes.Do(req)
	if err != nil {
		return false
	}
	_, _ = io.Copy(io.Discard, resp.Body) // a drained body lets a kept-alive connection be reused
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// Ports maps the container port to the node's loopback listener.
func (w *Workload) Ports() map[int32]string { return map[int32]string{CouchDBPort: w.node.Addr()} }

// Handlers serve the container port in process (kubelet.InProcessWorkload): the node's handler
// answers a stopped node's requests by dropping the connection, as a closed listener refuses them.
func (w *Workload) Handlers() map[int32]http.Handler {
	return map[int32]http.Handler{CouchDBPort: w.node.Handler()}
}

// Stop stops the node; its data stays for a pod of the same name.
func (w *Workload) Stop() { w.node.Stop() }
