package harness_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/couchdb-controller/couchdb-controller/test/harness"
	"github.com/couchdb-controller/couchdb-controller/test/kubelet"
)

const (
	port = 5984
	gate = corev1.PodConditionType("couchdb.io/member")
)

// world is one control plane with one fake kubelet, shared by the subtests (each in its own namespace).
type world struct {
	cp      *harness.ControlPlane
	kube    kubernetes.Interface
	kl      *kubelet.Kubelet
	addrs   *kubelet.AddressMap
	backend *upBackend
}

func TestControlPlane(t *testing.T) {
	began := time.Now()
	cp := harness.StartForTest(t, harness.Options{})
	t.Logf("warm start-up: %s", time.Since(began).Round(time.Millisecond))
	w := &world{cp: cp, kube: kubernetes.NewForConfigOrDie(cp.AdminConfig()), addrs: kubelet.NewAddressMap(), backend: newUpBackend()}
	w.kl = kubelet.New(w.kube, w.backend, w.addrs)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.kl.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("kubelet: %v", err)
		}
		if n := w.addrs.Len(); n != 0 {
			t.Errorf("kubelet stopped with %d addresses still mapped", n)
		}
	})

	t.Run("Parallel", w.testParallel)
	t.Run("OrderedReady", w.testOrderedReady)
	t.Run("ReadinessGate", w.testReadinessGate)
	t.Run("ServiceAccount", w.testServiceAccount)
	t.Run("Kubeconfig", w.testKubeconfig)
	for name, rss := range cp.PeakRSS() {
		t.Logf("peak RSS so far: %s %d MiB", name, rss>>20)
	}
}

// testParallel: pods become Ready, Endpoints list their IPs and ports, pods are reachable through the
// address map and the proxy, a deleted pod comes back at the same IP, scale-down force-deletes.
func (w *world) testParallel(t *testing.T) {
	ns := w.namespace(t, "parallel")
	w.service(t, ns, false)
	w.statefulSet(t, ns, 3, appsv1.ParallelPodManagement, false)
	w.waitReadyReplicas(t, ns, 3)
	ep := w.waitEndpoints(t, ns, 3, 0)
	for _, a := range ep.Subsets[0].Addresses {
		pod := a.TargetRef.Name
		if a.IP != w.kl.IP(ns, pod) || a.Hostname != pod || a.NodeName == nil || *a.NodeName != w.kl.NodeName() {
			t.Errorf("endpoint address %+v does not match pod %s (IP %s)", a, pod, w.kl.IP(ns, pod))
		}
		if !netip.MustParsePrefix("10.244.0.0/16").Contains(netip.MustParseAddr(a.IP)) {
			t.Errorf("pod %s has IP %s outside 10.244.0.0/16", pod, a.IP)
		}
	}
	if ports := ep.Subsets[0].Ports; len(ports) != 1 || ports[0].Port != port || ports[0].Name != "couchdb" {
		t.Errorf("endpoint ports = %+v, want couchdb/%d", ports, port)
	}

	// The controller's two ways to reach a pod: in process, and through the proxy (separate process).
	ip := w.kl.IP(ns, "db-1")
	direct := &http.Client{Transport: w.addrs.Transport()}
	proxy, err := w.addrs.ServeProxy()
	if err != nil {
		t.Fatal(err)
	}
	defer proxy.Close()
	proxyURL, _ := url.Parse(proxy.URL())
	viaProxy := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(proxyURL)}}
	for name, c := range map[string]*http.Client{"address map": direct, "proxy": viaProxy} {
		if body, err := get(c, fmt.Sprintf("http://%s:%d/", ip, port)); err != nil || body != "db-1 "+ip {
			t.Errorf("GET db-1 via %s = %q, %v", name, body, err)
		}
	}

	// A deleted pod is stopped, force-deleted, recreated by the StatefulSet and comes back at its IP.
	old := w.pod(t, ns, "db-1")
	if err := w.kube.CoreV1().Pods(ns).Delete(context.Background(), "db-1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	w.eventually(t, "db-1 recreated and ready", func(ctx context.Context) (bool, string) {
		p, err := w.kube.CoreV1().Pods(ns).Get(ctx, "db-1", metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		return p.UID != old.UID && isReady(p) && p.Status.PodIP == old.Status.PodIP, fmt.Sprintf("uid %s ip %s ready %v", p.UID, p.Status.PodIP, isReady(p))
	})
	if starts, running := w.backend.state(ns, "db-1"); starts != 2 || !running {
		t.Errorf("db-1 workload started %d times, running %v; want 2, true", starts, running)
	}
	w.waitEndpoints(t, ns, 3, 0)

	// Scale-down: the StatefulSet controller deletes db-2 and db-1 gracefully; the kubelet stops them
	// and confirms the deletion, or they would stay Terminating.
	w.scale(t, ns, 1)
	w.eventually(t, "db-1 and db-2 gone", func(ctx context.Context) (bool, string) {
		pods, err := w.kube.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err.Error()
		}
		var names []string
		for _, p := range pods.Items {
			names = append(names, p.Name)
		}
		return slices.Equal(names, []string{"db-0"}), fmt.Sprint("pods ", names)
	})
	for _, name := range []string{"db-1", "db-2"} {
		if _, running := w.backend.state(ns, name); running {
			t.Errorf("%s deleted but its workload still runs", name)
		}
		if _, ok := w.addrs.Lookup(fmt.Sprintf("%s:%d", w.kl.IP(ns, name), port)); ok {
			t.Errorf("%s deleted but its address is still mapped", name)
		}
	}
	w.waitReadyReplicas(t, ns, 1)
	w.waitEndpoints(t, ns, 1, 0)
}

// testOrderedReady: pod N+1 is created only once pod N is Ready, and Ready follows the probe.
func (w *world) testOrderedReady(t *testing.T) {
	ns := w.namespace(t, "ordered")
	w.backend.setSick(ns, "db-0", true)
	w.service(t, ns, false)
	w.statefulSet(t, ns, 3, appsv1.OrderedReadyPodManagement, false)
	w.eventually(t, "db-0 running, not ready", func(ctx context.Context) (bool, string) {
		p, err := w.kube.CoreV1().Pods(ns).Get(ctx, "db-0", metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		c := condition(p, corev1.ContainersReady)
		return p.Status.Phase == corev1.PodRunning && c != nil && c.Status == corev1.ConditionFalse, fmt.Sprintf("phase %s", p.Status.Phase)
	})
	w.waitEndpoints(t, ns, 0, 1)
	if _, err := w.kube.CoreV1().Pods(ns).Get(context.Background(), "db-1", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("db-1 exists (err %v) while db-0 is not ready", err)
	}
	w.backend.setSick(ns, "db-0", false)
	w.waitReadyReplicas(t, ns, 3)
	for i := 1; i < 3; i++ {
		prev, cur := w.pod(t, ns, fmt.Sprintf("db-%d", i-1)), w.pod(t, ns, fmt.Sprintf("db-%d", i))
		if readyAt := condition(prev, corev1.PodReady).LastTransitionTime; cur.CreationTimestamp.Before(&readyAt) {
			t.Errorf("%s created at %s, before %s was ready at %s", cur.Name, cur.CreationTimestamp, prev.Name, readyAt)
		}
	}
	// A failing probe takes the pod out of the ready addresses; recovery brings it back.
	w.backend.setSick(ns, "db-2", true)
	w.waitReadyReplicas(t, ns, 2)
	w.waitEndpoints(t, ns, 2, 1)
	w.backend.setSick(ns, "db-2", false)
	w.waitReadyReplicas(t, ns, 3)
	w.waitEndpoints(t, ns, 3, 0)
}

// testReadinessGate: a pod with a readiness gate stays out of the ready addresses until someone else
// (the controller, here the test) sets the gate condition True, and the kubelet keeps that condition.
func (w *world) testReadinessGate(t *testing.T) {
	ns := w.namespace(t, "gate")
	w.service(t, ns, false)
	w.statefulSet(t, ns, 2, appsv1.ParallelPodManagement, true)
	w.eventually(t, "containers ready, pods gated", func(ctx context.Context) (bool, string) {
		n := 0
		for _, name := range []string{"db-0", "db-1"} {
			p, err := w.kube.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return false, err.Error()
			}
			cr, r := condition(p, corev1.ContainersReady), condition(p, corev1.PodReady)
			if cr != nil && cr.Status == corev1.ConditionTrue && r != nil && r.Status == corev1.ConditionFalse && r.Reason == "ReadinessGatesNotReady" {
				n++
			}
		}
		return n == 2, fmt.Sprintf("%d of 2 gated", n)
	})
	w.waitEndpoints(t, ns, 0, 2)
	w.setGate(t, ns, "db-0", corev1.ConditionTrue)
	ep := w.waitEndpoints(t, ns, 1, 1)
	if got := ep.Subsets[0].Addresses[0].TargetRef.Name; got != "db-0" {
		t.Errorf("ready address is %s, want db-0", got)
	}
	w.waitReadyReplicas(t, ns, 1)
	// Several probe periods later the kubelet has not overwritten the gate.
	p := w.pod(t, ns, "db-0")
	if c := condition(p, gate); c == nil || c.Status != corev1.ConditionTrue || !isReady(p) {
		t.Errorf("db-0 gate %+v, ready %v", c, isReady(p))
	}
	w.setGate(t, ns, "db-0", corev1.ConditionFalse)
	w.waitEndpoints(t, ns, 0, 2)
	w.setGate(t, ns, "db-0", corev1.ConditionTrue)
	w.setGate(t, ns, "db-1", corev1.ConditionTrue)
	w.waitEndpoints(t, ns, 2, 0)
	w.waitReadyReplicas(t, ns, 2)
}

// testServiceAccount: a ServiceAccount's config has exactly its RBAC.
func (w *world) testServiceAccount(t *testing.T) {
	ns := w.namespace(t, "rbac")
	ctx := context.Background()
	if _, err := w.kube.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "ctl"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	role := &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: "pods"}, Rules: []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"list"}}}}
	if _, err := w.kube.RbacV1().Roles(ns).Create(ctx, role, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	rb := &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "pods"},
		RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: "pods"},
		Subjects: []rbacv1.Subject{{Kind: "ServiceAccount", Name: "ctl", Namespace: ns}}}
	if _, err := w.kube.RbacV1().RoleBindings(ns).Create(ctx, rb, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	cfg, err := w.cp.ServiceAccountConfig(ctx, ns, "ctl")
	if err != nil {
		t.Fatal(err)
	}
	path, err := w.cp.ServiceAccountKubeconfig(ctx, ns, "ctl")
	if err != nil {
		t.Fatal(err)
	}
	fileCfg, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]kubernetes.Interface{"config": kubernetes.NewForConfigOrDie(cfg), "kubeconfig": kubernetes.NewForConfigOrDie(fileCfg)} {
		// RBAC changes reach the authorizer's cache quickly but not instantly.
		w.eventually(t, name+" may list pods", func(ctx context.Context) (bool, string) {
			_, err := c.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
			return err == nil, fmt.Sprint(err)
		})
		if _, err := c.CoreV1().Pods("default").List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
			t.Errorf("%s: list pods in default: %v, want Forbidden", name, err)
		}
		if _, err := c.CoreV1().Pods(ns).Get(ctx, "x", metav1.GetOptions{}); !apierrors.IsForbidden(err) {
			t.Errorf("%s: get a pod: %v, want Forbidden", name, err)
		}
	}
	// The audit log names the ServiceAccount, so e2e tests can check which verbs it used.
	user := fmt.Sprintf(`"username":"system:serviceaccount:%s:ctl"`, ns)
	w.eventually(t, "the ServiceAccount in the audit log", func(context.Context) (bool, string) {
		b, err := os.ReadFile(w.cp.AuditLog())
		return err == nil && strings.Contains(string(b), user), fmt.Sprintf("%d bytes, %v", len(b), err)
	})
}

func (w *world) testKubeconfig(t *testing.T) {
	cfg, err := clientcmd.BuildConfigFromFlags("", w.cp.Kubeconfig())
	if err != nil {
		t.Fatal(err)
	}
	v, err := kubernetes.NewForConfigOrDie(cfg).Discovery().ServerVersion()
	if err != nil || v.GitVersion != harness.K8sVersion {
		t.Fatalf("server version %+v, %v; want %s", v, err, harness.K8sVersion)
	}
}

// --- fixtures and polling ---

func (w *world) namespace(t *testing.T, name string) string {
	t.Helper()
	if err := harness.EnsureNamespace(context.Background(), w.kube, name); err != nil {
		t.Fatal(err)
	}
	return name
}

func (w *world) service(t *testing.T, ns string, publishNotReady bool) {
	t.Helper()
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "db", Namespace: ns},
		Spec: corev1.ServiceSpec{
			ClusterIP: corev1.ClusterIPNone, Selector: map[string]string{"app": "db"}, PublishNotReadyAddresses: publishNotReady,
			Ports: []corev1.ServicePort{{Name: "couchdb", Port: port, TargetPort: intstr.FromInt32(port)}},
		},
	}
	if _, err := w.kube.CoreV1().Services(ns).Create(context.Background(), svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func (w *world) statefulSet(t *testing.T, ns string, replicas int32, policy appsv1.PodManagementPolicyType, gated bool) {
	t.Helper()
	labels := map[string]string{"app": "db"}
	spec := corev1.PodSpec{Containers: []corev1.Container{{
		Name: "couchdb", Image: "couchdb:3.4.3",
		Ports: []corev1.ContainerPort{{Name: "couchdb", ContainerPort: port}},
	}}}
	if gated {
		spec.ReadinessGates = []corev1.PodReadinessGate{{ConditionType: gate}}
	}
	sts := &appsv1.StatefulSet{
		ObjectMeta: metav1.ObjectMeta{Name: "db", Namespace: ns},
		Spec: appsv1.StatefulSetSpec{
			Replicas: &replicas, ServiceName: "db", PodManagementPolicy: policy,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: spec},
		},
	}
	if _, err := w.kube.AppsV1().StatefulSets(ns).Create(context.Background(), sts, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func (w *world) scale(t *testing.T, ns string, replicas int) {
	t.Helper()
	patch := fmt.Appendf(nil, `{"spec":{"replicas":%d}}`, replicas)
	if _, err := w.kube.AppsV1().StatefulSets(ns).Patch(context.Background(), "db", types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
}

// setGate sets the readiness-gate condition as the controller does: a status patch of that one
// condition, merged by type.
func (w *world) setGate(t *testing.T, ns, pod string, status corev1.ConditionStatus) {
	t.Helper()
	patch := fmt.Appendf(nil, `{"status":{"conditions":[{"type":%q,"status":%q,"lastTransitionTime":%q}]}}`,
		gate, status, time.Now().UTC().Format(time.RFC3339))
	if _, err := w.kube.CoreV1().Pods(ns).Patch(context.Background(), pod, types.StrategicMergePatchType, patch, metav1.PatchOptions{}, "status"); err != nil {
		t.Fatal(err)
	}
}

func (w *world) pod(t *testing.T, ns, name string) *corev1.Pod {
	t.Helper()
	p, err := w.kube.CoreV1().Pods(ns).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// waitReadyReplicas waits until the StatefulSet has as many pods as it wants and n of them Ready.
func (w *world) waitReadyReplicas(t *testing.T, ns string, n int32) {
	t.Helper()
	w.eventually(t, fmt.Sprintf("readyReplicas=%d", n), func(ctx context.Context) (bool, string) {
		s, err := w.kube.AppsV1().StatefulSets(ns).Get(ctx, "db", metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		return s.Status.ReadyReplicas == n && s.Status.Replicas == *s.Spec.Replicas,
			fmt.Sprintf("spec %d replicas %d ready %d", *s.Spec.Replicas, s.Status.Replicas, s.Status.ReadyReplicas)
	})
}

// waitEndpoints waits until Endpoints db lists ready and notReady addresses, each with the pod's IP.
func (w *world) waitEndpoints(t *testing.T, ns string, ready, notReady int) *corev1.Endpoints {
	t.Helper()
	var ep *corev1.Endpoints
	w.eventually(t, fmt.Sprintf("endpoints %d ready, %d not ready", ready, notReady), func(ctx context.Context) (bool, string) {
		var err error
		if ep, err = w.kube.CoreV1().Endpoints(ns).Get(ctx, "db", metav1.GetOptions{}); err != nil {
			return false, err.Error()
		}
		var r, nr []corev1.EndpointAddress
		for _, s := range ep.Subsets {
			r, nr = append(r, s.Addresses...), append(nr, s.NotReadyAddresses...)
		}
		for _, a := range slices.Concat(r, nr) {
			if a.TargetRef == nil || a.IP != w.kl.IP(ns, a.TargetRef.Name) {
				return false, fmt.Sprintf("address %+v is not its pod's IP", a)
			}
		}
		return len(r) == ready && len(nr) == notReady, fmt.Sprintf("%d ready, %d not ready", len(r), len(nr))
	})
	return ep
}

// eventually polls cond (which says what it saw) until it holds, failing the test after 30 s.
func (w *world) eventually(t *testing.T, what string, cond func(ctx context.Context) (bool, string)) {
	t.Helper()
	var seen string
	err := wait.PollUntilContextTimeout(context.Background(), 50*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		var ok bool
		ok, seen = cond(ctx)
		return ok, nil
	})
	if err != nil {
		t.Fatalf("waiting for %s: %v; last seen: %s", what, err, seen)
	}
}

func condition(p *corev1.Pod, t corev1.PodConditionType) *corev1.PodCondition {
	for i := range p.Status.Conditions {
		if p.Status.Conditions[i].Type == t {
			return &p.Status.Conditions[i]
		}
	}
	return nil
}

func isReady(p *corev1.Pod) bool {
	c := condition(p, corev1.PodReady)
	return c != nil && c.Status == corev1.ConditionTrue
}

func get(c *http.Client, u string) (string, error) {
	req, err := http.NewRequestWithContext(context.Background(), http.MethodGet, u, nil)
	if err != nil {
		return "", err
	}
	resp, err := c.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}
