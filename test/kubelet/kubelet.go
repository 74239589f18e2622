// Package kubelet plays the kubelet for a control plane that has none: it binds pods to a fake Node,
// gives them stable fake IPs, starts their workload through a Backend, and reports readiness through
// the status subresource exactly as the kubelet would: ContainersReady follows the workload's
// readiness probe, Ready is ContainersReady AND every readiness gate condition True.
package kubelet

import (
	"context"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
)

// NodeName is the fake Node every pod is bound to.
const NodeName = "harness-node"

// hostIP is the fake Node's address (never dialled).
const hostIP = "10.244.255.254"

// Workload is what runs for one pod.
type Workload interface {
	Ready(ctx context.Context) bool
	Ports() map[int32]string // container port -> loopback address
	Stop()
}

// Backend starts workloads.
type Backend interface {
	StartPod(ctx context.Context, pod *corev1.Pod, podIP string) (Workload, error)
}

// Kubelet is the fake kubelet.
type Kubelet struct {
	kube    kubernetes.Interface
	backend Backend
	addrs   *AddressMap
	queue   workqueue.TypedRateLimitingInterface[string]
	lister  cache.Indexer
	probe   time.Duration

	mu        sync.Mutex
	workloads map[string]Workload // ns/name -> running workload
	uids      map[string]types.UID
	ips       map[string]string // ns/name -> IP, stable across pod restarts
	used      map[string]string // IP -> ns/name
	ready     map[string]bool
	errs      map[string]error
}

// New returns a kubelet. Call Run.
func New(kube kubernetes.Interface, backend Backend, addrs *AddressMap) *Kubelet {
	return &Kubelet{
		kube: kube, backend: backend, addrs: addrs, probe: 50 * time.Millisecond,
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(
			workqueue.NewTypedItemExponentialFailureRateLimiter[string](20*time.Millisecond, 2*time.Second),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "kubelet"}),
		workloads: map[string]Workload{}, uids: map[string]types.UID{}, ips: map[string]string{},
		used: map[string]string{}, ready: map[string]bool{}, errs: map[string]error{},
	}
}

// Run creates the Node, watches pods and works until ctx is done; then it stops every workload.
func (k *Kubelet) Run(ctx context.Context) error {
	if err := k.ensureNode(ctx); err != nil {
		return err
	}
	factory := informers.NewSharedInformerFactory(k.kube, 0)
	inf := factory.Core().V1().Pods().Informer()
	k.lister = inf.GetIndexer()
	_, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { k.enqueue(obj) },
		UpdateFunc: func(_, obj any) { k.enqueue(obj) },
		DeleteFunc: func(obj any) { k.enqueue(obj) },
	})
	if err != nil {
		return err
	}
	factory.Start(ctx.Done())
	defer factory.Shutdown()
	if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		return fmt.Errorf("kubelet: pod cache did not sync")
	}
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k.next(ctx) {
			}
		}()
	}
	// The readiness probe: re-evaluate every running workload.
	go func() {
		t := time.NewTicker(k.probe)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				k.mu.Lock()
				for key := range k.workloads {
					k.queue.Add(key)
				}
				k.mu.Unlock()
			}
		}
	}()
	<-ctx.Done()
	k.queue.ShutDown()
	wg.Wait()
	k.mu.Lock()
	defer k.mu.Unlock()
	for key, w := range k.workloads {
		w.Stop()
		delete(k.workloads, key)
	}
	return nil
}

func (k *Kubelet) enqueue(obj any) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	if key, err := cache.MetaNamespaceKeyFunc(obj); err == nil {
		k.queue.Add(key)
	}
}

func (k *Kubelet) next(ctx context.Context) bool {
	key, quit := k.queue.Get()
	if quit {
		return false
	}
	defer k.queue.Done(key)
	if err := k.sync(ctx, key); err != nil && ctx.Err() == nil {
		k.mu.Lock()
		k.errs[key] = err
		k.mu.Unlock()
		k.queue.AddRateLimited(key)
		return true
	}
	k.queue.Forget(key)
	return true
}

func (k *Kubelet) ensureNode(ctx context.Context) error {
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: NodeName, Labels: map[string]string{"kubernetes.io/hostname": NodeName}}}
	created, err := k.kube.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		created, err = k.kube.CoreV1().Nodes().Get(ctx, NodeName, metav1.GetOptions{})
	}
	if err != nil {
		return fmt.Errorf("create node: %w", err)
	}
	now := metav1.Now()
	created.Status = corev1.NodeStatus{
		Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady", LastHeartbeatTime: now, LastTransitionTime: now}},
		Addresses:  []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: hostIP}},
		Capacity:   corev1.ResourceList{corev1.ResourcePods: resource.MustParse("1000"), corev1.ResourceCPU: resource.MustParse("64"), corev1.ResourceMemory: resource.MustParse("256Gi")},
	}
	created.Status.Allocatable = created.Status.Capacity
	_, err = k.kube.CoreV1().Nodes().UpdateStatus(ctx, created, metav1.UpdateOptions{})
	return err
}

// podIP gives a pod name a stable address in 10.244.0.0/16 (a StatefulSet pod that comes back keeps
// it, which the address map relies on).
func (k *Kubelet) podIP(key string) string {
	if ip, ok := k.ips[key]; ok {
		return ip
	}
	h := fnv.New32a()
	_, _ = h.Write([]byte(key))
	n := h.Sum32() % (256*255 - 2)
	for {
		ip := fmt.Sprintf("10.244.%d.%d", n/254, n%254+1)
		if _, taken := k.used[ip]; !taken && ip != hostIP {
			k.ips[key], k.used[ip] = ip, key
			return ip
		}
		n = (n + 1) % (256*255 - 2)
	}
}

func (k *Kubelet) sync(ctx context.Context, key string) error {
	obj, exists, err := k.lister.GetByKey(key)
	if err != nil {
		return err
	}
	if !exists {
		k.stop(key)
		return nil
	}
	pod := obj.(*corev1.Pod)
	k.mu.Lock()
	if uid, ok := k.uids[key]; ok && uid != pod.UID {
		// A new pod of the same name: the old one's workload must be gone first.
		if w := k.workloads[key]; w != nil {
			w.Stop()
			delete(k.workloads, key)
		}
	}
	k.uids[key] = pod.UID
	k.mu.Unlock()
	if pod.DeletionTimestamp != nil {
		k.stop(key)
		// Nothing confirms termination without a kubelet; confirm it as the kubelet would.
		zero := int64(0)
		err := k.kube.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero, Preconditions: &metav1.Preconditions{UID: &pod.UID}})
		if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
			return fmt.Errorf("force-delete %s: %w", key, err)
		}
		return nil
	}
	if pod.Spec.NodeName == "" {
		b := &corev1.Binding{ObjectMeta: metav1.ObjectMeta{Name: pod.Name, Namespace: pod.Namespace, UID: pod.UID},
			Target: corev1.ObjectReference{Kind: "Node", Name: NodeName}}
		if err := k.kube.CoreV1().Pods(pod.Namespace).Bind(ctx, b, metav1.CreateOptions{}); err != nil && !apierrors.IsConflict(err) {
			return fmt.Errorf("bind %s: %w", key, err)
		}
		return nil // the update event brings us back
	}
	if pod.Spec.NodeName != NodeName {
		return nil
	}
	k.mu.Lock()
	ip := k.podIP(key)
	w := k.workloads[key]
	k.mu.Unlock()
	if w == nil {
		w, err = k.backend.StartPod(ctx, pod, ip)
		if err != nil {
			return fmt.Errorf("start workload of %s: %w", key, err)
		}
		k.mu.Lock()
		k.workloads[key] = w
		k.mu.Unlock()
		for port, addr := range w.Ports() {
			k.addrs.Set(fmt.Sprintf("%s:%d", ip, port), addr)
		}
	}
	ready := w.Ready(ctx)
	return k.report(ctx, pod, ip, ready)
}

func (k *Kubelet) stop(key string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if w := k.workloads[key]; w != nil {
		w.Stop()
		delete(k.workloads, key)
	}
	delete(k.ready, key)
}

func condStatus(b bool) corev1.ConditionStatus {
	if b {
		return corev1.ConditionTrue
	}
	return corev1.ConditionFalse
}

// report patches the pod status when something the kubelet owns changed. Conditions are merged by
// type, so the readiness-gate conditions other parties set are left alone.
func (k *Kubelet) report(ctx context.Context, pod *corev1.Pod, ip string, containersReady bool) error {
	gates := true
	for _, g := range pod.Spec.ReadinessGates {
		found := false
		for _, c := range pod.Status.Conditions {
			if c.Type == g.ConditionType {
				found = c.Status == corev1.ConditionTrue
			}
		}
		gates = gates && found
	}
	ready := containersReady && gates
	cur := map[corev1.PodConditionType]corev1.ConditionStatus{}
	for _, c := range pod.Status.Conditions {
		cur[c.Type] = c.Status
	}
	if pod.Status.Phase == corev1.PodRunning && pod.Status.PodIP == ip &&
		cur[corev1.ContainersReady] == condStatus(containersReady) && cur[corev1.PodReady] == condStatus(ready) &&
		cur[corev1.PodScheduled] == corev1.ConditionTrue {
		return nil
	}
	now := metav1.Now()
	cond := func(t corev1.PodConditionType, v bool) corev1.PodCondition {
		c := corev1.PodCondition{Type: t, Status: condStatus(v), LastTransitionTime: now}
		if cur[t] == c.Status { // keep the old transition time when nothing changed
			for _, old := range pod.Status.Conditions {
				if old.Type == t {
					c.LastTransitionTime = old.LastTransitionTime
				}
			}
		}
		return c
	}
	start := pod.Status.StartTime
	if start == nil {
		start = &now
	}
	var statuses []corev1.ContainerStatus
	for _, c := range pod.Spec.Containers {
		statuses = append(statuses, corev1.ContainerStatus{Name: c.Name, Image: c.Image, ImageID: "harness://" + c.Image, Ready: containersReady,
			Started: &containersReady, ContainerID: "harness://" + string(pod.UID) + "/" + c.Name,
			State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: *start}}})
	}
	patch := map[string]any{"status": map[string]any{
		"phase": corev1.PodRunning, "podIP": ip, "podIPs": []corev1.PodIP{{IP: ip}}, "hostIP": hostIP,
		"hostIPs": []corev1.HostIP{{IP: hostIP}}, "startTime": start,
		"conditions": []corev1.PodCondition{
			cond(corev1.PodScheduled, true), cond(corev1.PodInitialized, true),
			cond(corev1.ContainersReady, containersReady), cond(corev1.PodReady, ready),
		},
		"containerStatuses": statuses,
	}}
	data, err := json.Marshal(patch)
	if err != nil {
		return err
	}
	_, err = k.kube.CoreV1().Pods(pod.Namespace).Patch(ctx, pod.Name, types.StrategicMergePatchType, data, metav1.PatchOptions{}, "status")
	if apierrors.IsNotFound(err) {
		return nil
	}
	return err
}

// IP returns the IP the kubelet gave a pod ("" if none yet).
func (k *Kubelet) IP(namespace, pod string) string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.ips[namespace+"/"+pod]
}
