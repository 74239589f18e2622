// Package controller keeps labelled CouchDB StatefulSets formed, joined and replicated. The
// controller turns every StatefulSet, Endpoints and pod event into one queue key per CouchDB cluster;
// sync observes Kubernetes and every node, asks the pure planner what to do, and applies it.
package controller

import (
	"context"
	"fmt"
	"sync"
	"time"

	"golang.org/x/time/rate"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	appslisters "k8s.io/client-go/listers/apps/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"

	"github.com/couchdb-controller/couchdb-controller/metrics"
)

// Config wires a Controller.
type Config struct {
	KubeClient    kubernetes.Interface
	Namespace     string        // "" watches every namespace
	Resync        time.Duration // periodic re-check of every cluster; default 60s
	CouchFactory  CouchFactory
	Metrics       *metrics.Recorder
	EventRecorder record.EventRecorder // optional; a broadcaster to the API server is made when nil
	// CredentialBackoff is the first wait after CouchDB rejects the credentials (doubling up to
	// 5 minutes). CouchDB 3.4+ locks an account after 5 failures in 5 minutes. Default 30s.
	CredentialBackoff time.Duration
	// UnreachableAfter is how long a node must fail before a CouchDBUnreachable Warning. Default 1m.
	UnreachableAfter time.Duration
	// MaxMoves bounds the shard copies being filled at once per cluster (default 8); MaxFillsPerNode
	// the fills one node takes part in at once (default 4: 3 -> 5 with rebalance fills the two new
	// members, so 2 each would cap it at 4 moves). See placement.Input.
	MaxMoves, MaxFillsPerNode int
	// CatchUpTimeout bounds how long a restarted member's couchdb.io/member condition waits for its
	// copies to catch up before it is set True with a Warning (default 10m).
	CatchUpTimeout time.Duration
	// Now replaces time.Now in tests.
	Now func() time.Time
	// BeforeAction, when set, is called before each action is applied; an error stops the sync as
	// if the process had died there. Fault-injection tests use it to kill the controller at an exact
	// step instead of relying on timing.
	BeforeAction func(ctx context.Context, cluster cache.ObjectName, a Action) error
}

// Controller is the couchdb-controller.
type Controller struct {
	cfg         Config
	kube        kubernetes.Interface
	factory     informers.SharedInformerFactory
	podFactory  informers.SharedInformerFactory
	nodeFactory informers.SharedInformerFactory
	stsLister   appslisters.StatefulSetLister
	epLister    corelisters.EndpointsLister
	podLister   corelisters.PodLister
	podIndexer  cache.Indexer
	nodeLister  corelisters.NodeLister
	synced      []cache.InformerSynced
	queue       workqueue.TypedRateLimitingInterface[cache.ObjectName]
	recorder    record.EventRecorder
	broadcaster record.EventBroadcaster
	metrics     *metrics.Recorder

	// syncHandler is a field so tests can count or replace it.
	syncHandler func(ctx context.Context, key cache.ObjectName) error

	mu        sync.Mutex
	clusters  map[cache.ObjectName]*clusterState
	hasSynced bool
}

// NewController builds the informers, queue and event plumbing. Nothing runs until Run.
func NewController(ctx context.Context, cfg Config) (*Controller, error) {
	if cfg.KubeClient == nil || cfg.CouchFactory == nil || cfg.Metrics == nil {
		return nil, fmt.Errorf("controller: KubeClient, CouchFactory and Metrics are required")
	}
	if cfg.Resync <= 0 {
		cfg.Resync = 60 * time.Second
	}
	if cfg.CredentialBackoff <= 0 {
		cfg.CredentialBackoff = 30 * time.Second
	}
	if cfg.UnreachableAfter <= 0 {
		cfg.UnreachableAfter = time.Minute
	}
	if cfg.MaxMoves <= 0 {
		cfg.MaxMoves = 8
	}
	if cfg.MaxFillsPerNode <= 0 {
		cfg.MaxFillsPerNode = 4
	}
	if cfg.CatchUpTimeout <= 0 {
		cfg.CatchUpTimeout = 10 * time.Minute
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	logger := klog.FromContext(ctx)
	c := &Controller{cfg: cfg, kube: cfg.KubeClient, metrics: cfg.Metrics, clusters: map[cache.ObjectName]*clusterState{}}
	c.factory = informers.NewSharedInformerFactoryWithOptions(cfg.KubeClient, 0,
		informers.WithNamespace(cfg.Namespace),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = LabelCluster }),
		// managedFields are never read and are often the largest part of an object.
		informers.WithTransform(stripManagedFields))
	// Every StatefulSet pod carries podNameLabel; the transform keeps only what sync reads so the
	// cache stays small with thousands of pods.
	c.podFactory = informers.NewSharedInformerFactoryWithOptions(cfg.KubeClient, 0,
		informers.WithNamespace(cfg.Namespace),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = podNameLabel }),
		informers.WithTransform(trimPod))
	// Nodes are cluster-scoped and unlabelled by us: a member's zone is a label of its pod's Node.
	// Only names and labels are kept.
	c.nodeFactory = informers.NewSharedInformerFactoryWithOptions(cfg.KubeClient, 0, informers.WithTransform(trimNode))
	sts := c.factory.Apps().V1().StatefulSets()
	eps := c.factory.Core().V1().Endpoints()
	pods := c.podFactory.Core().V1().Pods()
	nodes := c.nodeFactory.Core().V1().Nodes()
	if err := pods.Informer().AddIndexers(cache.Indexers{podNodeIndex: podNodeName}); err != nil {
		return nil, fmt.Errorf("pod index: %w", err)
	}
	c.stsLister, c.epLister, c.podLister, c.nodeLister = sts.Lister(), eps.Lister(), pods.Lister(), nodes.Lister()
	c.podIndexer = pods.Informer().GetIndexer()
	c.synced = []cache.InformerSynced{sts.Informer().HasSynced, eps.Informer().HasSynced, pods.Informer().HasSynced, nodes.Informer().HasSynced}

	c.queue = workqueue.NewTypedRateLimitingQueueWithConfig(
		workqueue.NewTypedMaxOfRateLimiter(
			workqueue.NewTypedItemExponentialFailureRateLimiter[cache.ObjectName](100*time.Millisecond, 5*time.Minute),
			&workqueue.TypedBucketRateLimiter[cache.ObjectName]{Limiter: rate.NewLimiter(rate.Limit(50), 300)},
		),
		workqueue.TypedRateLimitingQueueConfig[cache.ObjectName]{Name: "couchdb"})

	if cfg.EventRecorder != nil {
		c.recorder = cfg.EventRecorder
	} else {
		c.broadcaster = record.NewBroadcaster(record.WithContext(ctx))
		c.recorder = c.broadcaster.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "couchdb-controller"})
	}
	c.syncHandler = c.sync

	if _, err := sts.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { c.enqueueObject(logger, obj) },
		UpdateFunc: func(old, cur any) { c.enqueueUpdate(logger, old, cur) },
		DeleteFunc: func(obj any) { c.enqueueObject(logger, obj) },
	}); err != nil {
		return nil, fmt.Errorf("statefulset handler: %w", err)
	}
	if _, err := eps.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { c.enqueueObject(logger, obj) },
		UpdateFunc: func(old, cur any) { c.enqueueUpdate(logger, old, cur) },
		DeleteFunc: func(obj any) { c.enqueueObject(logger, obj) },
	}); err != nil {
		return nil, fmt.Errorf("endpoints handler: %w", err)
	}
	if _, err := pods.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { c.enqueuePod(obj) },
		UpdateFunc: func(old, cur any) { c.enqueuePodUpdate(old, cur) },
		DeleteFunc: func(obj any) { c.enqueuePod(obj) },
	}); err != nil {
		return nil, fmt.Errorf("pod handler: %w", err)
	}
	if _, err := nodes.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    c.enqueueNode,
		UpdateFunc: c.enqueueNodeUpdate,
		DeleteFunc: c.enqueueNode,
	}); err != nil {
		return nil, fmt.Errorf("node handler: %w", err)
	}
	return c, nil
}

// Run starts the informers and workers and blocks until ctx is done and every worker has finished
// its current sync, so a leader never releases its lease while still writing.
func (c *Controller) Run(ctx context.Context, workers int) error {
	defer utilruntime.HandleCrash()
	logger := klog.FromContext(ctx)
	if c.broadcaster != nil {
		c.broadcaster.StartStructuredLogging(3)
		c.broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: c.kube.CoreV1().Events("")})
		defer c.broadcaster.Shutdown()
	}
	c.factory.Start(ctx.Done())
	c.podFactory.Start(ctx.Done())
	c.nodeFactory.Start(ctx.Done())
	defer c.nodeFactory.Shutdown()
	defer c.podFactory.Shutdown()
	defer c.factory.Shutdown()
	logger.Info("Starting couchdb-controller", "workers", workers, "namespace", c.cfg.Namespace)
	if !cache.WaitForNamedCacheSync("couchdb", ctx.Done(), c.synced...) {
		c.queue.ShutDown()
		return fmt.Errorf("caches did not sync")
	}
	c.mu.Lock()
	c.hasSynced = true
	c.mu.Unlock()
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			wait.UntilWithContext(ctx, c.runWorker, time.Second)
		}()
	}
	<-ctx.Done()
	logger.Info("Stopping couchdb-controller")
	c.queue.ShutDownWithDrain()
	wg.Wait()
	return nil
}

// HasSynced reports whether the caches have synced (for /readyz).
func (c *Controller) HasSynced() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.hasSynced
}

func (c *Controller) runWorker(ctx context.Context) {
	for c.processNext(ctx) {
	}
}

func (c *Controller) processNext(ctx context.Context) bool {
	key, quit := c.queue.Get()
	if quit {
		return false
	}
	defer c.queue.Done(key)
	err := c.syncHandler(ctx, key)
	if err == nil {
		c.queue.Forget(key)
		return true
	}
	utilruntime.HandleErrorWithContext(ctx, err, "Syncing CouchDB cluster failed", "cluster", key.String())
	c.queue.AddRateLimited(key)
	return true
}

func (c *Controller) enqueueUpdate(logger klog.Logger, old, cur any) {
	o, ok1 := old.(metav1.Object)
	n, ok2 := cur.(metav1.Object)
	if ok1 && ok2 && o.GetResourceVersion() == n.GetResourceVersion() || !updateMatters(old, cur) {
		return
	}
	c.enqueueObject(logger, old) // the label may have changed: the old cluster must notice
	c.enqueueObject(logger, cur)
}

func (c *Controller) enqueueObject(_ klog.Logger, obj any) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	m, ok := obj.(metav1.Object)
	if !ok {
		return
	}
	if name := m.GetLabels()[LabelCluster]; name != "" {
		c.queue.Add(cache.ObjectName{Namespace: m.GetNamespace(), Name: name})
	}
}

func (c *Controller) enqueuePodUpdate(old, cur any) {
	o, ok1 := old.(*corev1.Pod)
	n, ok2 := cur.(*corev1.Pod)
	if ok1 && ok2 && o.ResourceVersion == n.ResourceVersion || !updateMatters(old, cur) {
		return
	}
	c.enqueuePod(cur)
}

// enqueuePod maps a pod to its cluster through its controlling StatefulSet.
func (c *Controller) enqueuePod(obj any) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return
	}
	ref := metav1.GetControllerOf(pod)
	if ref == nil || ref.Kind != "StatefulSet" {
		return
	}
	sts, err := c.stsLister.StatefulSets(pod.Namespace).Get(ref.Name)
	if err != nil {
		return // not a labelled StatefulSet
	}
	if name := sts.Labels[LabelCluster]; name != "" {
		c.queue.Add(cache.ObjectName{Namespace: pod.Namespace, Name: name})
	}
}

// stripManagedFields drops metadata.managedFields before an object enters the cache.
func stripManagedFields(obj any) (any, error) {
	if m, err := meta.Accessor(obj); err == nil {
		m.SetManagedFields(nil)
	}
	return obj, nil
}

// trimPod keeps the fields sync reads; informers store the result. Of the conditions, sync reads
// ContainersReady and couchdb.io/member (their status and when they last changed); of the metadata,
// no label (a pod's cluster is its controlling StatefulSet's). At 1,000 clusters the cache holds
// 4,000 pods, and the dropped labels and conditions were about 1 KB of each.
func trimPod(obj any) (any, error) {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil
	}
	out := &corev1.Pod{
		TypeMeta: pod.TypeMeta,
		ObjectMeta: metav1.ObjectMeta{
			Name: pod.Name, Namespace: pod.Namespace, UID: pod.UID, ResourceVersion: pod.ResourceVersion,
			OwnerReferences: pod.OwnerReferences, DeletionTimestamp: pod.DeletionTimestamp,
		},
		Spec:   corev1.PodSpec{ReadinessGates: pod.Spec.ReadinessGates, NodeName: pod.Spec.NodeName},
		Status: corev1.PodStatus{Phase: pod.Status.Phase, PodIP: pod.Status.PodIP},
	}
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.ContainersReady || c.Type == ConditionMember {
			out.Status.Conditions = append(out.Status.Conditions, corev1.PodCondition{Type: c.Type, Status: c.Status, LastTransitionTime: c.LastTransitionTime})
		}
	}
	for _, c := range pod.Spec.Containers {
		out.Spec.Containers = append(out.Spec.Containers, corev1.Container{Name: c.Name, Ports: c.Ports})
	}
	for _, s := range pod.Status.ContainerStatuses {
		out.Status.ContainerStatuses = append(out.Status.ContainerStatuses, corev1.ContainerStatus{Name: s.Name, RestartCount: s.RestartCount, Ready: s.Ready})
	}
	return out, nil
}

var _ = appsv1.StatefulSet{}
