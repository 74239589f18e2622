package kubelet

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

// These tests drive the Kubelet against client-go's fake clientset, so its logic is covered even
// where the real control plane (test/harness) is not built. The fake does not implement the binding
// subresource; a reactor does what the API server does (set spec.nodeName).

type fakeWorkload struct {
	ready   atomic.Bool
	stopped atomic.Bool
}

func (w *fakeWorkload) Ready(context.Context) bool { return w.ready.Load() }
func (w *fakeWorkload) Ports() map[int32]string    { return map[int32]string{5984: "127.0.0.1:1"} }
func (w *fakeWorkload) Stop()                      { w.stopped.Store(true) }

type fakeBackend struct {
	mu        sync.Mutex
	workloads map[string][]*fakeWorkload // pod name -> every workload started for it
}

func (b *fakeBackend) StartPod(_ context.Context, pod *corev1.Pod, _ string) (Workload, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	w := &fakeWorkload{}
	b.workloads[pod.Name] = append(b.workloads[pod.Name], w)
	return w, nil
}

func (b *fakeBackend) last(name string) *fakeWorkload {
	b.mu.Lock()
	defer b.mu.Unlock()
	ws := b.workloads[name]
	if len(ws) == 0 {
		return nil
	}
	return ws[len(ws)-1]
}

func bindReactor(kube *fake.Clientset) k8stesting.ReactionFunc {
	return func(action k8stesting.Action) (bool, runtime.Object, error) {
		if action.GetSubresource() != "binding" {
			return false, nil, nil
		}
		b := action.(k8stesting.CreateAction).GetObject().(*corev1.Binding)
		pod, err := kube.Tracker().Get(corev1.SchemeGroupVersion.WithResource("pods"), b.Namespace, b.Name)
		if err != nil {
			return true, nil, err
		}
		p := pod.(*corev1.Pod).DeepCopy()
		p.Spec.NodeName = b.Target.Name
		return true, b, kube.Tracker().Update(corev1.SchemeGroupVersion.WithResource("pods"), p, b.Namespace)
	}
}

// preconditionReactor refuses a delete whose UID precondition names another pod, as the API server
// does and the fake tracker does not. Without it, a force-delete computed from a stale cache entry of
// the old db-0 would remove the recreated db-0.
func preconditionReactor(kube *fake.Clientset) k8stesting.ReactionFunc {
	return func(action k8stesting.Action) (bool, runtime.Object, error) {
		d := action.(k8stesting.DeleteAction)
		pre := d.GetDeleteOptions().Preconditions
		if pre == nil || pre.UID == nil {
			return false, nil, nil
		}
		obj, err := kube.Tracker().Get(corev1.SchemeGroupVersion.WithResource("pods"), d.GetNamespace(), d.GetName())
		if err != nil {
			return false, nil, nil
		}
		if uid := obj.(*corev1.Pod).UID; uid != *pre.UID {
			return true, nil, apierrors.NewConflict(corev1.Resource("pods"), d.GetName(),
				fmt.Errorf("precondition failed: UID in precondition: %s, UID in object meta: %s", *pre.UID, uid))
		}
		return false, nil, nil
	}
}

func TestKubeletLifecycle(t *testing.T) {
	gated := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "db-0", Namespace: "ns", UID: "uid-1"},
		Spec: corev1.PodSpec{
			Containers:     []corev1.Container{{Name: "couchdb", Ports: []corev1.ContainerPort{{ContainerPort: 5984}}}},
			ReadinessGates: []corev1.PodReadinessGate{{ConditionType: "couchdb.io/member"}},
		},
	}
	elsewhere := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "other", Namespace: "ns"}, Spec: corev1.PodSpec{NodeName: "node-b"}}
	kube := fake.NewClientset(gated, elsewhere)
	kube.PrependReactor("create", "pods", bindReactor(kube))
	kube.PrependReactor("delete", "pods", preconditionReactor(kube))
	backend := &fakeBackend{workloads: map[string][]*fakeWorkload{}}
	addrs := NewAddressMap()
	var reportedMu sync.Mutex
	var reportedReady []string // pods the API server confirmed ContainersReady for, in order
	k := NewWithOptions(kube, backend, addrs, Options{ProbePeriod: 10 * time.Millisecond, Reported: func(p *corev1.Pod) {
		if c := findCondition(p.Status.Conditions, corev1.ContainersReady); c != nil && c.Status == corev1.ConditionTrue {
			reportedMu.Lock()
			reportedReady = append(reportedReady, p.Name)
			reportedMu.Unlock()
		}
	}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- k.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()

	get := func(name string) *corev1.Pod {
		p, err := kube.CoreV1().Pods("ns").Get(context.Background(), name, metav1.GetOptions{})
		if err != nil {
			return nil
		}
		return p
	}
	until := func(what string, cond func() (bool, string)) {
		t.Helper()
		var seen string
		if err := wait.PollUntilContextTimeout(context.Background(), 5*time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) {
			var ok bool
			ok, seen = cond()
			return ok, nil
		}); err != nil {
			t.Fatalf("waiting for %s: %v (last: %s)", what, err, seen)
		}
	}
	status := func(p *corev1.Pod, c corev1.PodConditionType) corev1.ConditionStatus {
		if p == nil {
			return "gone"
		}
		if cond := findCondition(p.Status.Conditions, c); cond != nil {
			return cond.Status
		}
		return ""
	}

	// Bound, started, Running at its IP, but not ready: the probe fails.
	until("db-0 running", func() (bool, string) {
		p := get("db-0")
		return p != nil && p.Spec.NodeName == NodeName && p.Status.Phase == corev1.PodRunning && p.Status.PodIP == k.IP("ns", "db-0") &&
			status(p, corev1.ContainersReady) == corev1.ConditionFalse, fmt.Sprintf("%+v", p.Status)
	})
	if _, ok := addrs.Lookup(k.IP("ns", "db-0") + ":5984"); !ok {
		t.Error("db-0's port is not mapped")
	}
	// The probe passes: ContainersReady, but the gate holds Ready back.
	backend.last("db-0").ready.Store(true)
	until("containers ready", func() (bool, string) {
		p := get("db-0")
		return status(p, corev1.ContainersReady) == corev1.ConditionTrue && status(p, corev1.PodReady) == corev1.ConditionFalse, fmt.Sprint(p.Status.Conditions)
	})
	// The status write that made it ready is handed to Reported, with the API server's answer. The
	// fake API server stores the object before the kubelet's write returns, so the test can see the
	// condition a moment before Reported runs: wait for it rather than look once.
	until("Reported to get db-0 with ContainersReady True", func() (bool, string) {
		reportedMu.Lock()
		defer reportedMu.Unlock()
		return slices.Contains(reportedReady, "db-0"), fmt.Sprint(reportedReady)
	})
	// Someone else opens the gate; the kubelet turns Ready and keeps the gate condition.
	patch := `{"status":{"conditions":[{"type":"couchdb.io/member","status":"True"}]}}`
	if _, err := kube.CoreV1().Pods("ns").Patch(context.Background(), "db-0", "application/strategic-merge-patch+json", []byte(patch), metav1.PatchOptions{}, "status"); err != nil {
		t.Fatal(err)
	}
	until("ready", func() (bool, string) {
		p := get("db-0")
		return status(p, corev1.PodReady) == corev1.ConditionTrue && status(p, "couchdb.io/member") == corev1.ConditionTrue, fmt.Sprint(p.Status.Conditions)
	})

	// Graceful deletion (the fake cannot do it, so set the timestamp): stop, then force-delete.
	p := get("db-0")
	now := metav1.Now()
	p.DeletionTimestamp = &now
	if _, err := kube.CoreV1().Pods("ns").Update(context.Background(), p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	until("db-0 deleted", func() (bool, string) { return get("db-0") == nil, "still there" })
	if w := backend.last("db-0"); !w.stopped.Load() {
		t.Error("db-0 deleted before its workload stopped")
	}
	if addrs.Len() != 0 {
		t.Errorf("%d addresses mapped after the only pod went", addrs.Len())
	}

	// The StatefulSet recreates db-0: a new workload at the same address.
	ip := k.IP("ns", "db-0")
	again := gated.DeepCopy()
	again.UID, again.Spec.ReadinessGates = "uid-2", nil
	if _, err := kube.CoreV1().Pods("ns").Create(context.Background(), again, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	until("db-0 back", func() (bool, string) {
		p := get("db-0")
		return p != nil && p.Status.PodIP == ip && backend.last("db-0") != nil && !backend.last("db-0").stopped.Load(), fmt.Sprintf("%+v", p)
	})
	backend.last("db-0").ready.Store(true)
	until("db-0 ready again", func() (bool, string) {
		p := get("db-0")
		return status(p, corev1.PodReady) == corev1.ConditionTrue, fmt.Sprint(p.Status.Conditions)
	})
	backend.mu.Lock()
	n := len(backend.workloads["db-0"])
	backend.mu.Unlock()
	if n != 2 {
		t.Errorf("db-0 started %d times, want 2", n)
	}
	if err := kube.CoreV1().Pods("ns").Delete(context.Background(), "db-0", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	until("db-0 stopped", func() (bool, string) { return backend.last("db-0").stopped.Load(), "running" })

	// A pod on another node is none of this kubelet's business.
	if p := get("other"); p == nil || p.Status.Phase != "" || backend.last("other") != nil {
		t.Errorf("touched another node's pod: %+v", p)
	}
	// The node was registered Ready.
	node, err := kube.CoreV1().Nodes().Get(context.Background(), NodeName, metav1.GetOptions{})
	if err != nil || len(node.Status.Conditions) != 1 || node.Status.Conditions[0].Status != corev1.ConditionTrue {
		t.Errorf("node %+v, %v", node, err)
	}
	if _, err := kube.CoreV1().Pods("ns").Get(context.Background(), "db-0", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("db-0: %v", err)
	}
	if addrs.Len() != 0 {
		t.Errorf("%d addresses mapped after db-0 went again", addrs.Len())
	}
}

// flakyWorkload answers its readiness probes from a script: true/false per probe, then the last value.
type flakyWorkload struct {
	mu     sync.Mutex
	script []bool
	probes int
}

func (w *flakyWorkload) Ready(context.Context) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	i := min(w.probes, len(w.script)-1)
	w.probes++
	return w.script[i]
}
func (w *flakyWorkload) Ports() map[int32]string { return map[int32]string{5984: "127.0.0.1:1"} }
func (w *flakyWorkload) Stop()                   {}

type scriptBackend struct{ w *flakyWorkload }

func (b scriptBackend) StartPod(context.Context, *corev1.Pod, string) (Workload, error) {
	return b.w, nil
}

// TestProbeFailureThreshold: like the kubelet's default failureThreshold of 3, two failed probes in a
// row leave a ready pod Ready; the third makes it NotReady. Each script ends on the state it leaves
// the pod in, so the test waits for that report instead of racing a one-probe flap.
func TestProbeFailureThreshold(t *testing.T) {
	for _, tc := range []struct {
		name   string
		script []bool
		want   []string // ContainersReady as reported after the first ready report, repeats folded
	}{
		{"two failures", []bool{true, true, false, false, true}, []string{"True"}},
		{"three failures", []bool{true, true, false, false, false}, []string{"True", "False"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "db-0", Namespace: "ns", UID: "u"},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "couchdb"}}}}
			kube := fake.NewClientset(p)
			kube.PrependReactor("create", "pods", bindReactor(kube))
			var mu sync.Mutex
			var reports []string
			kube.PrependReactor("patch", "pods", func(a k8stesting.Action) (bool, runtime.Object, error) {
				pa, ok := a.(k8stesting.PatchAction)
				if !ok || a.GetSubresource() != "status" {
					return false, nil, nil
				}
				var patch struct {
					Status corev1.PodStatus `json:"status"`
				}
				if err := json.Unmarshal(pa.GetPatch(), &patch); err != nil {
					t.Errorf("status patch: %v", err)
				}
				for _, c := range patch.Status.Conditions {
					if c.Type == corev1.ContainersReady {
						mu.Lock()
						if len(reports) == 0 || reports[len(reports)-1] != string(c.Status) {
							reports = append(reports, string(c.Status))
						}
						mu.Unlock()
					}
				}
				return false, nil, nil
			})
			w := &flakyWorkload{script: tc.script}
			k := NewWithOptions(kube, scriptBackend{w}, NewAddressMap(), Options{ProbePeriod: 10 * time.Millisecond})
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- k.Run(ctx) }()
			final := string(condStatus(tc.script[len(tc.script)-1]))
			if err := wait.PollUntilContextTimeout(ctx, 5*time.Millisecond, 10*time.Second, true, func(ctx context.Context) (bool, error) {
				w.mu.Lock()
				probes := w.probes
				w.mu.Unlock()
				got, err := kube.CoreV1().Pods("ns").Get(ctx, "db-0", metav1.GetOptions{})
				if err != nil {
					return false, err
				}
				c := findCondition(got.Status.Conditions, corev1.ContainersReady)
				return probes > len(tc.script)+3 && c != nil && string(c.Status) == final && k.queue.Len() == 0, nil
			}); err != nil {
				mu.Lock()
				t.Fatalf("ContainersReady never settled at %s (reports %v): %v", final, reports, err)
			}
			cancel()
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			mu.Lock()
			defer mu.Unlock()
			got := reports
			// The first report of a starting pod may come before any probe passed.
			if len(got) > 0 && got[0] == "False" {
				got = got[1:]
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("ContainersReady reports %v, want %v after the first ready one", reports, tc.want)
			}
		})
	}
}

// TestKubeletBindsAcrossNodes: with several Nodes, a pod goes to the (ordinal mod count)-th Node it
// fits (nodeSelector, NoSchedule taints), the same one again when it comes back, and a pod that
// tolerates no taint stays on the untainted Node.
func TestKubeletBindsAcrossNodes(t *testing.T) {
	const zoneKey = "topology.kubernetes.io/zone"
	taint := corev1.Taint{Key: "example.com/pool", Value: "zones", Effect: corev1.TaintEffectNoSchedule}
	nodes := []NodeSpec{{Name: "plain"}}
	for _, z := range []string{"zone-a", "zone-b", "zone-c"} {
		nodes = append(nodes, NodeSpec{Name: z + "-node", Labels: map[string]string{zoneKey: z, "example.com/pool": "zones"}, Taints: []corev1.Taint{taint}})
	}
	zonal := func(name string) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "ns", UID: "uid-" + types.UID(name)},
			Spec: corev1.PodSpec{NodeSelector: map[string]string{"example.com/pool": "zones"},
				Tolerations: []corev1.Toleration{{Key: taint.Key, Operator: corev1.TolerationOpEqual, Value: taint.Value, Effect: taint.Effect}}}}
	}
	plain := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "web-4", Namespace: "ns", UID: "uid-web"}}
	objs := []runtime.Object{plain}
	for i := range 5 {
		objs = append(objs, zonal(fmt.Sprintf("db-%d", i)))
	}
	kube := fake.NewClientset(objs...)
	kube.PrependReactor("create", "pods", bindReactor(kube))
	k := NewWithOptions(kube, &fakeBackend{workloads: map[string][]*fakeWorkload{}}, NewAddressMap(), Options{Nodes: nodes, ProbePeriod: 10 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- k.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	want := map[string]string{"db-0": "zone-a-node", "db-1": "zone-b-node", "db-2": "zone-c-node", "db-3": "zone-a-node", "db-4": "zone-b-node", "web-4": "plain"}
	got := map[string]string{}
	if err := wait.PollUntilContextTimeout(ctx, 5*time.Millisecond, 10*time.Second, true, func(ctx context.Context) (bool, error) {
		for name := range want {
			p, err := kube.CoreV1().Pods("ns").Get(ctx, name, metav1.GetOptions{})
			if err != nil || p.Status.PodIP == "" {
				return false, nil
			}
			got[name] = p.Spec.NodeName
		}
		return true, nil
	}); err != nil {
		t.Fatalf("pods not all bound and running: %v (bound: %v)", err, got)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("bindings (-want +got):\n%s", diff)
	}
	for _, n := range nodes {
		node, err := kube.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if node.Labels[zoneKey] != n.Labels[zoneKey] || len(node.Spec.Taints) != len(n.Taints) || len(node.Status.Conditions) != 1 {
			t.Errorf("node %s: labels %v, taints %v, conditions %v", n.Name, node.Labels, node.Spec.Taints, node.Status.Conditions)
		}
	}
}
