package controller

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	core "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/klog/v2/ktesting"
	"k8s.io/utils/ptr"

	"github.com/couchdb-controller/couchdb-controller/couch"
	"github.com/couchdb-controller/couchdb-controller/couch/couchtest"
	"github.com/couchdb-controller/couchdb-controller/metrics"
)

const (
	testNS   = "ns"
	testPass = "fixture-pass-9137"
)

// fixture is the sample-controller style harness: a fake clientset and informer indexers seeded with
// the same objects, an emulated CouchDB node per pod, a fake event recorder and a fresh registry.
type fixture struct {
	t        *testing.T
	objects  []runtime.Object
	network  *couchtest.Network
	nodes    map[string]*couchtest.Node // pod IP -> node
	client   *fake.Clientset
	c        *Controller
	recorder *record.FakeRecorder
	reg      *prometheus.Registry
	ctx      context.Context
	names    map[int]string // ordinal -> node name override
	// wrap, if set, stands between the controller and each emulated node.
	wrap             func(ip string, api CouchAPI) CouchAPI
	unreachableAfter time.Duration
}

func newFixture(t *testing.T) *fixture {
	_, ctx := ktesting.NewTestContext(t)
	return &fixture{t: t, ctx: ctx, network: couchtest.NewNetwork(couchtest.NetworkOptions{SyncDelay: 20 * time.Millisecond}),
		nodes: map[string]*couchtest.Node{}, names: map[int]string{}}
}

func statefulSet(replicas int32, annotations map[string]string) *appsv1.StatefulSet {
	return &appsv1.StatefulSet{
		ObjectMeta: metav1.ObjectMeta{Name: "db", Namespace: testNS, UID: "sts-uid", ResourceVersion: "1",
			Labels: map[string]string{LabelCluster: "main"}, Annotations: annotations},
		Spec: appsv1.StatefulSetSpec{Replicas: ptr.To(replicas), ServiceName: "db",
			Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "couchdb",
				Env: []corev1.EnvVar{{Name: "COUCHDB_USER", Value: "admin"}, {Name: "COUCHDB_PASSWORD", ValueFrom: &corev1.EnvVarSource{
					SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "creds"}, Key: "password"}}}}}}}}},
	}
}

func service(labelled bool) *corev1.Service {
	s := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "db", Namespace: testNS, Labels: map[string]string{}}}
	if labelled {
		s.Labels[LabelCluster] = "main"
	}
	return s
}

func endpoints() *corev1.Endpoints {
	return &corev1.Endpoints{ObjectMeta: metav1.ObjectMeta{Name: "db", Namespace: testNS, Labels: map[string]string{LabelCluster: "main"}},
		Subsets: []corev1.EndpointSubset{{Ports: []corev1.EndpointPort{{Name: "couchdb", Port: 5984}}}}}
}

func secret(password string) *corev1.Secret {
	return &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "creds", Namespace: testNS, ResourceVersion: "1"},
		Data: map[string][]byte{"password": []byte(password)}}
}

func pod(ord int, ready bool) *corev1.Pod {
	st := corev1.ConditionFalse
	if ready {
		st = corev1.ConditionTrue
	}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("db-%d", ord), Namespace: testNS, UID: types.UID("uid-" + fmt.Sprint(ord)), ResourceVersion: "1",
			OwnerReferences: []metav1.OwnerReference{{Kind: "StatefulSet", Name: "db", UID: "sts-uid", Controller: ptr.To(true)}}},
		Status: corev1.PodStatus{PodIP: fmt.Sprintf("10.0.0.%d", ord+1),
			Conditions: []corev1.PodCondition{{Type: corev1.ContainersReady, Status: st, LastTransitionTime: metav1.Now()}}},
	}
}

// addNode starts an emulated node for the pod with ordinal ord.
func (f *fixture) addNode(ord int, password string) *couchtest.Node {
	name := f.names[ord]
	if name == "" {
		name = fmt.Sprintf("couchdb@db-%d.db.%s.svc.cluster.local", ord, testNS)
	}
	n, err := f.network.AddNode(couchtest.NodeConfig{Name: name, AdminUser: "admin", AdminPassword: password, BindAddress: "any"})
	if err != nil {
		f.t.Fatal(err)
	}
	if err := n.Start(); err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(n.Stop)
	f.nodes[fmt.Sprintf("10.0.0.%d", ord+1)] = n
	return n
}

func (f *fixture) newController() {
	f.client = fake.NewClientset(f.objects...)
	f.recorder = record.NewFakeRecorder(100)
	f.reg = prometheus.NewRegistry()
	c, err := NewController(f.ctx, Config{
		KubeClient: f.client, Metrics: metrics.New(f.reg), EventRecorder: f.recorder, CredentialBackoff: time.Minute,
		UnreachableAfter: f.unreachableAfter,
		CouchFactory: func(ep Endpoint, creds Credentials) (CouchAPI, error) {
			for ip, n := range f.nodes {
				if strings.Contains(ep.URL, "//"+ip+":") {
					api, err := couch.New(couch.Options{BaseURL: n.URL(), Username: creds.Username, Password: creds.Password, RetryMax: -1})
					if err != nil || f.wrap == nil {
						return api, err
					}
					return f.wrap(ip, api), nil
				}
			}
			return nil, fmt.Errorf("no node at %s", ep.URL)
		},
	})
	if err != nil {
		f.t.Fatal(err)
	}
	for _, obj := range f.objects {
		switch o := obj.(type) {
		case *appsv1.StatefulSet:
			_ = c.factory.Apps().V1().StatefulSets().Informer().GetIndexer().Add(o)
		case *corev1.Endpoints:
			_ = c.factory.Core().V1().Endpoints().Informer().GetIndexer().Add(o)
		case *corev1.Pod:
			_ = c.podFactory.Core().V1().Pods().Informer().GetIndexer().Add(o)
		}
	}
	f.c = c
}

var key = cache.ObjectName{Namespace: testNS, Name: "main"}

// syncUntil runs sync up to n times (what the queue's quick requeues would do), stopping early once
// a sync plans nothing.
func (f *fixture) syncUntilQuiet(n int) {
	for i := 0; i < n; i++ {
		if err := f.c.sync(f.ctx, key); err != nil {
			f.t.Fatalf("sync %d: %v", i, err)
		}
		time.Sleep(5 * time.Millisecond) // let _nodes pushes land (the emulator propagates synchronously, this is margin)
	}
}

func (f *fixture) events() []string {
	var out []string
	for {
		select {
		case e := <-f.recorder.Events:
			out = append(out, strings.SplitN(e, " ", 3)[1])
		default:
			return out
		}
	}
}

func count(list []string, s string) int {
	n := 0
	for _, x := range list {
		if x == s {
			n++
		}
	}
	return n
}

func (f *fixture) formed3() {
	f.objects = []runtime.Object{statefulSet(3, nil), service(true), endpoints(), secret(testPass), pod(0, true), pod(1, true), pod(2, true)}
	for i := 0; i < 3; i++ {
		f.addNode(i, testPass)
	}
	f.newController()
	f.syncUntilQuiet(4)
}

func TestSyncFormsThreeNodes(t *testing.T) {
	f := newFixture(t)
	f.objects = []runtime.Object{statefulSet(3, nil), service(true), endpoints(), secret(testPass), pod(0, true), pod(1, true), pod(2, true)}
	for i := 0; i < 3; i++ {
		f.addNode(i, testPass)
	}
	f.newController()
	snapshot := make([]runtime.Object, len(f.objects))
	for i, o := range f.objects {
		snapshot[i] = o.DeepCopyObject()
	}
	f.syncUntilQuiet(4)
	for ip, n := range f.nodes {
		if got := n.ClusterNodes(); len(got) != 3 {
			t.Errorf("%s lists %v", ip, got)
		}
	}
	ev := f.events()
	if count(ev, ReasonClusterFormed) != 1 || count(ev, ReasonNodeJoined) != 2 {
		t.Errorf("events %v, want one ClusterFormed and two NodeJoined", ev)
	}
	if v := testutil.ToFloat64(f.c.metrics.ClusterFormedGauge(testNS, "main")); v != 1 {
		t.Errorf("cluster_formed = %v", v)
	}
	if n := testutil.CollectAndCount(f.reg, "couchdb_controller_node_join_duration_seconds"); n != 1 {
		t.Errorf("join histogram series = %d", n)
	}
	if got := histogramCount(t, f.reg, "couchdb_controller_cluster_formation_duration_seconds"); got != 1 {
		t.Errorf("formation histogram counted %d formations, want 1", got)
	}
	st, ok := f.c.Cluster(testNS, "main")
	if !ok || st.Phase != PhaseReady || len(st.Members) != 3 {
		t.Errorf("status %+v", st)
	}
	// Cached objects are never mutated.
	for i, o := range f.objects {
		if diff := cmp.Diff(snapshot[i], o); diff != "" {
			t.Errorf("object %d mutated:\n%s", i, diff)
		}
	}
	if problems, err := testutil.GatherAndLint(f.reg); err != nil || len(problems) > 0 {
		t.Errorf("lint: %v %v", problems, err)
	}
}

func TestSyncSteadyStateMakesNoWrites(t *testing.T) {
	f := newFixture(t)
	f.formed3()
	f.events()
	for _, n := range f.nodes {
		n.ResetRequests()
	}
	f.client.ClearActions()
	if err := f.c.sync(f.ctx, key); err != nil {
		t.Fatal(err)
	}
	for ip, n := range f.nodes {
		r := n.Requests()
		if r.Writes != 0 {
			t.Errorf("%s: %d writes in steady state: %v", ip, r.Writes, r.ByPath)
		}
		if r.ByMethod["GET"] > 2 {
			t.Errorf("%s: %d GETs in one steady-state sync, budget is 2: %v", ip, r.ByMethod["GET"], r.ByPath)
		}
	}
	for _, a := range f.client.Actions() {
		if a.GetVerb() != "get" && a.GetVerb() != "list" && a.GetVerb() != "watch" {
			t.Errorf("API write in steady state: %s %s", a.GetVerb(), a.GetResource().Resource)
		}
	}
	if ev := f.events(); len(ev) != 0 {
		t.Errorf("events in steady state: %v", ev)
	}
}

func TestSyncFormsSingleNode(t *testing.T) {
	f := newFixture(t)
	f.objects = []runtime.Object{statefulSet(1, nil), service(true), endpoints(), secret(testPass), pod(0, true)}
	n := f.addNode(0, testPass)
	f.newController()
	f.syncUntilQuiet(3)
	c, _ := couch.New(couch.Options{BaseURL: n.URL(), Username: "admin", Password: testPass})
	if s, _ := c.SetupState(f.ctx); s != couch.StateClusterFinished {
		t.Errorf("state %s, want cluster_finished", s)
	}
}

func TestSyncJoinsScaleUp(t *testing.T) {
	f := newFixture(t)
	f.formed3()
	f.events()
	sts := statefulSet(5, nil)
	sts.ResourceVersion = "2"
	_ = f.c.factory.Apps().V1().StatefulSets().Informer().GetIndexer().Update(sts)
	for i := 3; i < 5; i++ {
		f.addNode(i, testPass)
		_ = f.c.podFactory.Core().V1().Pods().Informer().GetIndexer().Add(pod(i, true))
	}
	f.syncUntilQuiet(3)
	for _, n := range f.nodes {
		if got := n.ClusterNodes(); len(got) != 5 {
			t.Errorf("%s lists %v", n.Name(), got)
		}
	}
	if ev := f.events(); count(ev, ReasonNodeJoined) != 2 || count(ev, ReasonClusterFormed) != 0 {
		t.Errorf("events %v", ev)
	}
}

func TestSyncPodRestartStaysMember(t *testing.T) {
	f := newFixture(t)
	f.formed3()
	f.nodes["10.0.0.2"].Stop()
	p := pod(1, false)
	p.UID = "uid-1-new"
	_ = f.c.podFactory.Core().V1().Pods().Informer().GetIndexer().Update(p)
	f.syncUntilQuiet(1)
	if err := f.nodes["10.0.0.2"].Start(); err != nil {
		t.Fatal(err)
	}
	p = pod(1, true)
	p.UID = "uid-1-new"
	_ = f.c.podFactory.Core().V1().Pods().Informer().GetIndexer().Update(p)
	f.syncUntilQuiet(2)
	st, _ := f.c.Cluster(testNS, "main")
	if st.Phase != PhaseReady {
		t.Errorf("phase %s after restart, nodes %+v", st.Phase, st.Nodes)
	}
}

func TestSyncPausedChangesNothing(t *testing.T) {
	f := newFixture(t)
	f.objects = []runtime.Object{statefulSet(3, map[string]string{AnnotationPaused: "true"}), service(true), endpoints(), secret(testPass), pod(0, true), pod(1, true), pod(2, true)}
	for i := 0; i < 3; i++ {
		f.addNode(i, testPass)
	}
	f.newController()
	f.syncUntilQuiet(3)
	for _, n := range f.nodes {
		if n.Requests().Writes != 0 || len(n.ClusterNodes()) != 1 {
			t.Errorf("paused cluster was changed: %v", n.Requests().ByPath)
		}
	}
	if st, _ := f.c.Cluster(testNS, "main"); st.Phase != PhasePaused {
		t.Errorf("phase %s", st.Phase)
	}
}

func TestSyncDuplicateCluster(t *testing.T) {
	f := newFixture(t)
	other := statefulSet(3, nil)
	other.Name, other.UID = "db2", "other"
	f.objects = []runtime.Object{statefulSet(3, nil), other, service(true), endpoints(), secret(testPass), pod(0, true)}
	n := f.addNode(0, testPass)
	f.newController()
	f.syncUntilQuiet(2)
	ev := f.events()
	if count(ev, ReasonDuplicateCluster) != 2 {
		t.Errorf("events %v, want DuplicateCluster on both StatefulSets once", ev)
	}
	if r := n.Requests(); len(r.ByMethod) != 0 {
		t.Errorf("CouchDB was contacted: %v", r.ByPath)
	}
}

func TestSyncServiceNotLabelled(t *testing.T) {
	f := newFixture(t)
	f.objects = []runtime.Object{statefulSet(3, nil), service(false), secret(testPass), pod(0, true)}
	n := f.addNode(0, testPass)
	f.newController()
	f.syncUntilQuiet(2)
	ev := f.events()
	if count(ev, ReasonServiceNotLabelled) != 1 {
		t.Errorf("events %v", ev)
	}
	if len(n.Requests().ByMethod) != 0 {
		t.Error("CouchDB contacted although the Service is not labelled")
	}
}

func TestSyncWrongCredentialsBacksOff(t *testing.T) {
	f := newFixture(t)
	f.objects = []runtime.Object{statefulSet(3, nil), service(true), endpoints(), secret("wrong-password"), pod(0, true), pod(1, true), pod(2, true)}
	for i := 0; i < 3; i++ {
		f.addNode(i, testPass)
	}
	f.newController()
	f.syncUntilQuiet(5)
	failures := 0
	for _, n := range f.nodes {
		failures += n.Requests().Failures
	}
	if failures != 1 {
		t.Errorf("failed logins = %d over 5 syncs, want 1 (one probe, then backoff)", failures)
	}
	ev := f.events()
	if count(ev, ReasonCredentialsInvalid) != 1 {
		t.Errorf("events %v, want one CredentialsInvalid", ev)
	}
	for _, e := range ev {
		if strings.Contains(e, "wrong-password") || strings.Contains(e, testPass) {
			t.Error("an event carries a password")
		}
	}
	// Fixing the Secret is noticed at once, without waiting for the backoff.
	fixed := secret(testPass)
	fixed.ResourceVersion = "2"
	if _, err := f.client.CoreV1().Secrets(testNS).Update(f.ctx, fixed, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	f.syncUntilQuiet(4)
	if st, _ := f.c.Cluster(testNS, "main"); st.Phase != PhaseReady {
		t.Errorf("phase %s after fixing the Secret", st.Phase)
	}
}

func TestSyncInvalidNodeName(t *testing.T) {
	f := newFixture(t)
	f.names[2] = "couchdb@127.0.0.1"
	f.objects = []runtime.Object{statefulSet(3, nil), service(true), endpoints(), secret(testPass), pod(0, true), pod(1, true), pod(2, true)}
	for i := 0; i < 3; i++ {
		f.addNode(i, testPass)
	}
	f.newController()
	f.syncUntilQuiet(4)
	if got := f.nodes["10.0.0.1"].ClusterNodes(); len(got) != 2 {
		t.Errorf("members %v: the loopback-named node must not join", got)
	}
	if ev := f.events(); count(ev, ReasonNodeNameInvalid) != 1 || count(ev, ReasonClusterFormed) != 0 {
		t.Errorf("events %v", ev)
	}
}

func TestSyncForgetsDeletedOrUnlabelledCluster(t *testing.T) {
	for _, how := range []string{"deleted", "unlabelled"} {
		t.Run(how, func(t *testing.T) {
			f := newFixture(t)
			f.formed3()
			sts := statefulSet(3, nil)
			if how == "deleted" {
				_ = f.c.factory.Apps().V1().StatefulSets().Informer().GetIndexer().Delete(sts)
			} else {
				sts.Labels = map[string]string{}
				_ = f.c.factory.Apps().V1().StatefulSets().Informer().GetIndexer().Update(sts)
			}
			for _, n := range f.nodes {
				n.ResetRequests()
			}
			if err := f.c.sync(f.ctx, key); err != nil {
				t.Fatal(err)
			}
			if _, ok := f.c.Cluster(testNS, "main"); ok {
				t.Error("status still lists the cluster")
			}
			if n := testutil.CollectAndCount(f.reg, "couchdb_controller_cluster_formed", "couchdb_controller_node_state", "couchdb_controller_cluster_nodes"); n != 0 {
				t.Errorf("%d series left", n)
			}
			for _, n := range f.nodes {
				if len(n.Requests().ByMethod) != 0 {
					t.Error("CouchDB contacted while forgetting")
				}
			}
		})
	}
}

var _ = core.Action(nil)

func histogramCount(t *testing.T, reg *prometheus.Registry, name string) uint64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			return mf.GetMetric()[0].GetHistogram().GetSampleCount()
		}
	}
	return 0
}
