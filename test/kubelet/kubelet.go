// Package kubelet plays the kubelet for a control plane that has none (test/harness): it binds
// pending pods to a fake Node, gives each pod name a stable fake IP from 10.244.0.0/16, starts the
// pod's workload through a Backend, and reports through the status subresource what a kubelet would:
// ContainersReady follows the workload's readiness probe, Ready is ContainersReady AND every readiness
// gate condition True. Pods being deleted have their workload stopped and are then force-deleted,
// which is the kubelet's part of pod termination.
//
// The AddressMap it maintains translates podIP:containerPort to the workload's loopback listener, so
// the controller can reach pods without root and without dialling a fake address.
package kubelet

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"
)

// NodeName is the default name of the fake Node.
const NodeName = "harness-node"

// Workload is what runs for one pod (e.g. an emulated CouchDB node).
type Workload interface {
	// Ready is the readiness probe (CouchDB's: GET /_up answers 200). It must honour ctx.
	Ready(ctx context.Context) bool
	// Ports maps each container port to the loopback address that serves it ("127.0.0.1:PORT").
	Ports() map[int32]string
	// Stop stops the workload. Keeping data for a pod of the same name is the Backend's business.
	Stop()
}

// InProcessWorkload is a Workload served by handlers in this process (an emulated CouchDB node): the
// proxy calls a port's handler rather than forwarding to its listener. The handler must answer as its
// listener does, a stopped workload included (Ports' listeners stay what in-process users dial).
type InProcessWorkload interface {
	Workload
	Handlers() map[int32]http.Handler
}

// Backend starts the workload of a pod that has been bound to the Node.
type Backend interface {
	StartPod(ctx context.Context, pod *corev1.Pod, podIP string) (Workload, error)
}

// NodeSpec is one fake Node: its labels (e.g. topology.kubernetes.io/zone) and taints.
type NodeSpec struct {
	Name   string
	Labels map[string]string
	Taints []corev1.Taint
}

// Options tune a Kubelet; zero values take the defaults.
type Options struct {
	NodeName string // default NodeName; ignored when Nodes is set
	// Nodes are the fake Nodes this Kubelet registers and runs pods on (default: one Node named
	// NodeName, without taints). As the scheduler it binds a pending pod to one of the Nodes that its
	// spec.nodeSelector matches and whose NoSchedule taints (as listed here) it tolerates: the
	// (ordinal mod count)-th of them in this order, where the ordinal is the number after the pod
	// name's last "-" (a StatefulSet pod's), 0 for other pods. So db-0, db-1, db-2 land on three
	// different Nodes, and a deleted db-1 comes back on the same one; while that Node carries a
	// taint added since that the pod does not tolerate, the pod stays pending.
	Nodes        []NodeSpec
	ProbePeriod  time.Duration // readiness probe interval, default 100ms
	ProbeTimeout time.Duration // per probe, default 1s
	// FailureThreshold is how many probes in a row must fail before a ready pod turns NotReady; the
	// kubelet's default is 3, so one slow answer on a loaded machine does not flap the pod.
	FailureThreshold int
	Workers          int // pods synced in parallel, default 4
	// Reported, if set, gets the API server's answer to every status write, as soon as it returns:
	// a benchmark times a transition (ContainersReady) from the moment it is committed rather than
	// from whenever its own watch delivers it, which on a loaded machine can be after the controller
	// under test has already acted on it.
	Reported func(pod *corev1.Pod)
}

// Kubelet is the fake kubelet. Create it with New, then call Run.
type Kubelet struct {
	kube    kubernetes.Interface
	backend Backend
	addrs   *AddressMap
	opts    Options
	queue   workqueue.TypedRateLimitingInterface[string]
	pods    cache.Indexer
	nodes   corelisters.NodeLister

	mu      sync.Mutex
	ipam    *ipam
	running map[string]*runningPod // namespace/name
}

// runningPod is one started workload and its prober.
type runningPod struct {
	uid      types.UID
	ip       string
	workload Workload
	podAddrs []string // AddressMap keys it owns
	ready    atomic.Bool
	cancel   context.CancelFunc
	done     chan struct{}
}

// New returns a Kubelet with default Options.
func New(kube kubernetes.Interface, backend Backend, addrs *AddressMap) *Kubelet {
	return NewWithOptions(kube, backend, addrs, Options{})
}

// NewWithOptions returns a Kubelet.
func NewWithOptions(kube kubernetes.Interface, backend Backend, addrs *AddressMap, opts Options) *Kubelet {
	if opts.NodeName == "" {
		opts.NodeName = NodeName
	}
	if len(opts.Nodes) == 0 {
		opts.Nodes = []NodeSpec{{Name: opts.NodeName}}
	}
	opts.NodeName = opts.Nodes[0].Name
	if opts.ProbePeriod <= 0 {
		opts.ProbePeriod = 100 * time.Millisecond
	}
	if opts.ProbeTimeout <= 0 {
		opts.ProbeTimeout = time.Second
	}
	if opts.FailureThreshold <= 0 {
		opts.FailureThreshold = 3
	}
	if opts.Workers <= 0 {
		opts.Workers = 4
	}
	return &Kubelet{
		kube: kube, backend: backend, addrs: addrs, opts: opts,
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(
			workqueue.NewTypedItemExponentialFailureRateLimiter[string](20*time.Millisecond, 2*time.Second),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "harness-kubelet"}),
		ipam: newIPAM(), running: map[string]*runningPod{},
	}
}

// NodeName is the name of the (first) Node this Kubelet registers.
func (k *Kubelet) NodeName() string { return k.opts.NodeName }

// owns reports whether node is one of this Kubelet's Nodes.
func (k *Kubelet) owns(node string) bool {
	for _, n := range k.opts.Nodes {
		if n.Name == node {
			return true
		}
	}
	return false
}

// IP returns the address the Kubelet gave a pod name ("" if none yet). It stays the same when a pod
// of that name is deleted and comes back.
func (k *Kubelet) IP(namespace, pod string) string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.ipam.lookup(namespace + "/" + pod)
}

// Run registers the Node, watches pods and works until ctx is done; then it stops every workload it
// started and returns nil. Pods stay bound to the Node, as they would when a real kubelet stops. An
// error means it could not start.
func (k *Kubelet) Run(ctx context.Context) error {
	logger := klog.FromContext(ctx).WithValues("node", k.opts.NodeName)
	ctx = klog.NewContext(ctx, logger)
	// Registration is retried for a while: the API server may still be settling (or restarting).
	for _, spec := range k.opts.Nodes {
		var regErr error
		if err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
			regErr = k.registerNode(ctx, spec)
			return regErr == nil, nil
		}); err != nil {
			if ctx.Err() != nil {
				return nil // stopped before it started
			}
			return regErr
		}
	}
	factory := informers.NewSharedInformerFactory(k.kube, 0)
	inf := factory.Core().V1().Pods().Informer()
	k.pods = inf.GetIndexer()
	if _, err := inf.AddEventHandler(cache.FilteringResourceEventHandler{
		FilterFunc: k.mine,
		Handler: cache.ResourceEventHandlerFuncs{
			AddFunc:    k.enqueue,
			UpdateFunc: func(_, obj any) { k.enqueue(obj) },
			DeleteFunc: k.enqueue,
		},
	}); err != nil {
		return fmt.Errorf("kubelet: watch pods: %w", err)
	}
	// Scheduling reads the Nodes' current labels and taints: a test may taint a Node to keep pods
	// off it (a zone outage) and untaint it later, which must bring its pending pods back.
	nodeInf := factory.Core().V1().Nodes().Informer()
	k.nodes = factory.Core().V1().Nodes().Lister()
	if _, err := nodeInf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		UpdateFunc: func(_, _ any) { k.enqueuePending() },
	}); err != nil {
		return fmt.Errorf("kubelet: watch nodes: %w", err)
	}
	factory.Start(ctx.Done())
	defer factory.Shutdown()
	if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced, nodeInf.HasSynced) {
		return nil // only ctx ends the wait
	}
	var wg sync.WaitGroup
	for range k.opts.Workers {
		wg.Go(func() {
			for k.processNext(ctx) {
			}
		})
	}
	<-ctx.Done()
	k.queue.ShutDown()
	wg.Wait()
	k.mu.Lock()
	keys := make([]string, 0, len(k.running))
	for key := range k.running {
		keys = append(keys, key)
	}
	k.mu.Unlock()
	for _, key := range keys {
		k.stopPod(key)
	}
	return nil
}

// mine selects the pods this Kubelet acts on: unbound ones (it is the scheduler too) and its own.
func (k *Kubelet) mine(obj any) bool {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	pod, ok := obj.(*corev1.Pod)
	return ok && (pod.Spec.NodeName == "" || k.owns(pod.Spec.NodeName))
}

func (k *Kubelet) enqueue(obj any) {
	if key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj); err == nil {
		k.queue.Add(key)
	}
}

func (k *Kubelet) processNext(ctx context.Context) bool {
	key, quit := k.queue.Get()
	if quit {
		return false
	}
	defer k.queue.Done(key)
	if err := k.sync(ctx, key); err != nil {
		if ctx.Err() == nil {
			klog.FromContext(ctx).Error(err, "Kubelet sync failed; retrying", "pod", key)
			k.queue.AddRateLimited(key)
		}
		return true
	}
	k.queue.Forget(key)
	return true
}

// sync brings one pod one step closer to what a kubelet would have done with it.
func (k *Kubelet) sync(ctx context.Context, key string) error {
	obj, exists, err := k.pods.GetByKey(key)
	if err != nil {
		return err
	}
	if !exists {
		k.stopPod(key)
		return nil
	}
	pod := obj.(*corev1.Pod)
	if k.runningUID(key) != "" && k.runningUID(key) != pod.UID {
		k.stopPod(key) // a new pod of the same name; the old one's workload must go first
	}
	switch {
	case pod.Spec.NodeName == "" && pod.DeletionTimestamp == nil:
		return k.bind(ctx, pod)
	case !k.owns(pod.Spec.NodeName):
		return nil
	case pod.DeletionTimestamp != nil:
		return k.terminate(ctx, key, pod)
	}
	r, err := k.ensureRunning(ctx, key, pod)
	if err != nil {
		return err
	}
	patch, err := statusPatch(pod, r.ip, r.ready.Load(), metav1.Now())
	if err != nil || patch == nil {
		return err
	}
	updated, err := k.kube.CoreV1().Pods(pod.Namespace).Patch(ctx, pod.Name, types.StrategicMergePatchType, patch, metav1.PatchOptions{}, "status")
	if apierrors.IsNotFound(err) {
		return nil // deleted meanwhile; the delete event follows
	}
	if err != nil {
		return fmt.Errorf("report status of %s: %w", key, err)
	}
	if k.opts.Reported != nil {
		k.opts.Reported(updated)
	}
	return nil
}

// enqueuePending requeues every pod not bound yet.
func (k *Kubelet) enqueuePending() {
	for _, obj := range k.pods.List() {
		if p, ok := obj.(*corev1.Pod); ok && p.Spec.NodeName == "" {
			k.enqueue(p)
		}
	}
}

// nodeFor picks the Node a pending pod is bound to (see Options.Nodes); "" when none fits. The pod's
// Node is chosen among the Nodes its nodeSelector and tolerations fit as configured, so it is always
// the same one; if that Node has since been tainted against it, the pod stays pending, as a pod
// whose volume lives in that Node's zone would.
func (k *Kubelet) nodeFor(pod *corev1.Pod) string {
	var fit []string
	for _, spec := range k.opts.Nodes {
		if schedulable(pod, spec) {
			fit = append(fit, spec.Name)
		}
	}
	if len(fit) == 0 {
		return ""
	}
	ord := 0
	if i := strings.LastIndexByte(pod.Name, '-'); i >= 0 {
		if v, err := strconv.Atoi(pod.Name[i+1:]); err == nil && v >= 0 {
			ord = v
		}
	}
	chosen := fit[ord%len(fit)]
	n, err := k.nodes.Get(chosen)
	if err != nil || !schedulable(pod, NodeSpec{Name: n.Name, Labels: n.Labels, Taints: n.Spec.Taints}) {
		return ""
	}
	return chosen
}

// schedulable: the pod's nodeSelector matches the Node's labels and it tolerates every NoSchedule
// taint of the Node.
func schedulable(pod *corev1.Pod, n NodeSpec) bool {
	for k, v := range pod.Spec.NodeSelector {
		if n.Labels[k] != v {
			return false
		}
	}
	for _, t := range n.Taints {
		if t.Effect != corev1.TaintEffectNoSchedule {
			continue
		}
		tolerated := false
		for _, tol := range pod.Spec.Tolerations {
			if tol.ToleratesTaint(klog.Background(), &t, false) {
				tolerated = true
			}
		}
		if !tolerated {
			return false
		}
	}
	return true
}

func (k *Kubelet) bind(ctx context.Context, pod *corev1.Pod) error {
	node := k.nodeFor(pod)
	if node == "" {
		return nil // no Node fits: it stays pending, as with a real scheduler
	}
	b := &corev1.Binding{
		ObjectMeta: metav1.ObjectMeta{Name: pod.Name, Namespace: pod.Namespace, UID: pod.UID},
		Target:     corev1.ObjectReference{Kind: "Node", Name: node},
	}
	err := k.kube.CoreV1().Pods(pod.Namespace).Bind(ctx, b, metav1.CreateOptions{})
	if err != nil && !apierrors.IsConflict(err) && !apierrors.IsNotFound(err) {
		return fmt.Errorf("bind %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	return nil // the update event brings the bound pod back
}

// terminate plays the kubelet's part of a graceful deletion: stop the workload, then confirm with a
// zero grace period (nothing else would, and the pod would stay Terminating forever).
func (k *Kubelet) terminate(ctx context.Context, key string, pod *corev1.Pod) error {
	k.stopPod(key)
	zero := int64(0)
	err := k.kube.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{
		GracePeriodSeconds: &zero, Preconditions: &metav1.Preconditions{UID: &pod.UID},
	})
	if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		return fmt.Errorf("force-delete %s: %w", key, err)
	}
	return nil
}

func (k *Kubelet) runningUID(key string) types.UID {
	k.mu.Lock()
	defer k.mu.Unlock()
	if r := k.running[key]; r != nil {
		return r.uid
	}
	return ""
}

// ensureRunning starts the pod's workload and prober once per pod UID.
func (k *Kubelet) ensureRunning(ctx context.Context, key string, pod *corev1.Pod) (*runningPod, error) {
	k.mu.Lock()
	r := k.running[key]
	ip, ipErr := k.ipam.assign(key)
	k.mu.Unlock()
	if r != nil {
		return r, nil
	}
	if ipErr != nil {
		return nil, ipErr
	}
	w, err := k.backend.StartPod(ctx, pod.DeepCopy(), ip)
	if err != nil {
		return nil, fmt.Errorf("start workload of %s: %w", key, err)
	}
	pctx, cancel := context.WithCancel(ctx)
	r = &runningPod{uid: pod.UID, ip: ip, workload: w, cancel: cancel, done: make(chan struct{})}
	var handlers map[int32]http.Handler
	if ipw, ok := w.(InProcessWorkload); ok {
		handlers = ipw.Handlers()
	}
	for port, loopback := range w.Ports() {
		addr := fmt.Sprintf("%s:%d", ip, port)
		if h, ok := handlers[port]; ok {
			k.addrs.SetHandler(addr, loopback, h)
		} else {
			k.addrs.Set(addr, loopback)
		}
		r.podAddrs = append(r.podAddrs, addr)
	}
	k.mu.Lock()
	k.running[key] = r
	k.mu.Unlock()
	go k.probe(pctx, key, r)
	return r, nil
}

// probe runs the readiness probe every ProbePeriod and requeues the pod when the answer changes.
func (k *Kubelet) probe(ctx context.Context, key string, r *runningPod) {
	defer close(r.done)
	t := time.NewTicker(k.opts.ProbePeriod)
	defer t.Stop()
	failures := 0
	for {
		pctx, cancel := context.WithTimeout(ctx, k.opts.ProbeTimeout)
		ready := r.workload.Ready(pctx)
		cancel()
		if ctx.Err() != nil {
			return
		}
		if ready {
			failures = 0
		} else if failures++; r.ready.Load() && failures < k.opts.FailureThreshold {
			ready = true // not yet: the kubelet waits for failureThreshold failures in a row
		}
		if r.ready.Swap(ready) != ready {
			k.queue.Add(key)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// stopPod stops a pod's prober and workload and unmaps its addresses.
func (k *Kubelet) stopPod(key string) {
	k.mu.Lock()
	r := k.running[key]
	delete(k.running, key)
	k.mu.Unlock()
	if r == nil {
		return
	}
	r.cancel()
	<-r.done
	for _, a := range r.podAddrs {
		k.addrs.Delete(a)
	}
	r.workload.Stop()
}
