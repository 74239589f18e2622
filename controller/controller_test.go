package controller

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv1 "k8s.io/api/autoscaling/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/strategicpatch"
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
	// fixtureSecret is every fixture node's [chttpd_auth] secret, as the Helm chart sets one
	// (COUCHDB_SECRET); without it finish_cluster fails (TestSyncFinishWithoutSecretWarns).
	fixtureSecret = "fixture-secret-4411"
)

// fixture is the sample-controller style harness: a fake clientset and informer indexers seeded with
// the same objects, an emulated CouchDB node per pod, a fake event recorder and a fresh registry.
// Every request the controller sends to CouchDB goes through a recording transport, and every seeded
// object is deep-copied so that, when the test ends, the fixture can check the cache was not mutated.
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
	cookies  map[int]string // ordinal -> Erlang cookie override (nodes connect only with equal cookies)
	// wrap, if set, stands between the controller and each emulated node.
	wrap             func(ip string, api CouchAPI) CouchAPI
	unreachableAfter time.Duration
	// beforeAction, if set, is Config.BeforeAction: it sees every action just before it is applied.
	beforeAction func(a Action) error
	// ephemeral nodes restart like the official image's: a new admin hash salt, runtime config lost.
	ephemeral bool
	// lagScale keeps a scale update out of the informer cache until catchUpScale, as a watch that
	// has not delivered it yet; served is the API server's StatefulSet meanwhile.
	lagScale bool
	served   *appsv1.StatefulSet

	calls     *couchRecorder
	transport *http.Transport
	cached    []cachedObject // what was put into the caches, and a deep copy of it
}

type cachedObject struct{ obj, copy runtime.Object }

func newFixture(t *testing.T) *fixture {
	_, ctx := ktesting.NewTestContext(t)
	// Few pbkdf2 iterations: each node hashes the admin password at every start, and 600,000 per
	// node would make these tests slow without testing anything more.
	f := &fixture{t: t, ctx: ctx, network: couchtest.NewNetwork(couchtest.NetworkOptions{SyncDelay: 20 * time.Millisecond, PasswordIterations: 1000}),
		nodes: map[string]*couchtest.Node{}, names: map[int]string{}, calls: &couchRecorder{},
		transport: http.DefaultTransport.(*http.Transport).Clone()}
	t.Cleanup(f.transport.CloseIdleConnections)
	t.Cleanup(f.checkCacheUnmutated)
	return f
}

// checkCacheUnmutated is the endpointslice cache-mutation check, run for every fixture test: objects
// handed to the informer caches must be exactly as they were when the test put them there.
func (f *fixture) checkCacheUnmutated() {
	for _, c := range f.cached {
		if diff := cmp.Diff(c.copy, c.obj); diff != "" {
			m, _ := c.obj.(metav1.Object)
			f.t.Errorf("cached %T %s/%s was mutated (-before +after):\n%s", c.obj, m.GetNamespace(), m.GetName(), diff)
		}
	}
}

// couchCall is one HTTP request the controller sent to an emulated node.
type couchCall struct {
	IP     string // the pod's IP
	Method string
	Path   string
	Query  string // the raw query string
	Action string // POST /_cluster_setup: the "action" of the body
}

func (c couchCall) String() string {
	s := c.IP + " " + c.Method + " " + c.Path
	if c.Action != "" {
		s += " " + c.Action
	}
	return s
}

type couchRecorder struct {
	mu    sync.Mutex
	calls []couchCall
}

func (r *couchRecorder) add(c couchCall) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, c)
}

// recordingTransport records each request before passing it on.
type recordingTransport struct {
	ip   string
	rec  *couchRecorder
	next http.RoundTripper
}

func (rt recordingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	c := couchCall{IP: rt.ip, Method: r.Method, Path: r.URL.EscapedPath(), Query: r.URL.RawQuery}
	if r.Method == http.MethodPost && strings.HasSuffix(c.Path, "/_cluster_setup") && r.Body != nil {
		body, err := io.ReadAll(r.Body)
		_ = r.Body.Close()
		if err != nil {
			return nil, err
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		var req struct {
			Action string `json:"action"`
		}
		_ = json.Unmarshal(body, &req)
		c.Action = req.Action
	}
	rt.rec.add(c)
	return rt.next.RoundTrip(r)
}

// couchCalls returns the requests recorded since the last resetCalls.
func (f *fixture) couchCalls() []couchCall {
	f.calls.mu.Lock()
	defer f.calls.mu.Unlock()
	return append([]couchCall(nil), f.calls.calls...)
}

func (f *fixture) resetCalls() {
	f.calls.mu.Lock()
	defer f.calls.mu.Unlock()
	f.calls.calls = nil
}

// couchWriteCalls lists the recorded requests that are not GET or HEAD.
func (f *fixture) couchWriteCalls() []string {
	var out []string
	for _, c := range f.couchCalls() {
		if c.Method != http.MethodGet && c.Method != http.MethodHead {
			out = append(out, c.String())
		}
	}
	return out
}

// setupActions counts the recorded POSTs to /_cluster_setup by action.
func (f *fixture) setupActions() map[string]int {
	out := map[string]int{}
	for _, c := range f.couchCalls() {
		if c.Action != "" {
			out[c.Action]++
		}
	}
	return out
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

// gatedPod is a ready pod that declares the couchdb.io/member readiness gate.
func gatedPod(ord int) *corev1.Pod {
	p := pod(ord, true)
	p.Spec.ReadinessGates = []corev1.PodReadinessGate{{ConditionType: ConditionMember}}
	return p
}

// addNode starts an emulated node for the pod with ordinal ord.
func (f *fixture) addNode(ord int, password string) *couchtest.Node {
	name := f.names[ord]
	if name == "" {
		name = fmt.Sprintf("couchdb@db-%d.db.%s.svc.cluster.local", ord, testNS)
	}
	n, err := f.network.AddNode(couchtest.NodeConfig{Name: name, AdminUser: "admin", AdminPassword: password, BindAddress: "any", EphemeralIni: f.ephemeral,
		Secret: fixtureSecret, Cookie: f.cookies[ord]})
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
	f.recorder = record.NewFakeRecorder(1000)
	f.reg = prometheus.NewRegistry()
	cfg := Config{
		KubeClient: f.client, Metrics: metrics.New(f.reg), EventRecorder: f.recorder, CredentialBackoff: time.Minute,
		UnreachableAfter: f.unreachableAfter,
		CouchFactory: func(ep Endpoint, creds Credentials) (CouchAPI, error) {
			for ip, n := range f.nodes {
				if strings.Contains(ep.URL, "//"+ip+":") {
					hc := &http.Client{Transport: recordingTransport{ip: ip, rec: f.calls, next: f.transport}}
					api, err := couch.New(couch.Options{BaseURL: n.URL(), Username: creds.Username, Password: creds.Password, RetryMax: -1, HTTPClient: hc})
					if err != nil || f.wrap == nil {
						return api, err
					}
					return f.wrap(ip, api), nil
				}
			}
			return nil, fmt.Errorf("no node at %s", ep.URL)
		},
	}
	if f.beforeAction != nil {
		cfg.BeforeAction = func(_ context.Context, _ cache.ObjectName, a Action) error { return f.beforeAction(a) }
	}
	c, err := NewController(f.ctx, cfg)
	if err != nil {
		f.t.Fatal(err)
	}
	f.c = c
	for _, obj := range f.objects {
		f.cache(obj)
	}
	// The API server's side of the controller's two writes, played against the informer caches so
	// that the next sync sees them (as it would once the watch delivers them).
	f.client.PrependReactor("patch", "pods", f.reactPodStatusPatch)
	f.client.PrependReactor("update", "statefulsets", f.reactScale)
}

// cache puts obj into the informer cache that holds its kind (an informer event, in effect) and
// remembers a deep copy of it for the cache-mutation check.
func (f *fixture) cache(obj runtime.Object) {
	var err error
	switch o := obj.(type) {
	case *appsv1.StatefulSet:
		err = f.c.factory.Apps().V1().StatefulSets().Informer().GetIndexer().Add(o)
	case *corev1.Endpoints:
		err = f.c.factory.Core().V1().Endpoints().Informer().GetIndexer().Add(o)
	case *corev1.Pod:
		err = f.c.podFactory.Core().V1().Pods().Informer().GetIndexer().Add(o)
	case *corev1.Node:
		err = f.c.nodeFactory.Core().V1().Nodes().Informer().GetIndexer().Add(o)
	default:
		return // Services, Secrets: read from the API, not from a cache
	}
	if err != nil {
		f.t.Fatal(err)
	}
	f.cached = append(f.cached, cachedObject{obj, obj.DeepCopyObject()})
}

// uncache deletes a pod from the informer cache, as a watch delete event would.
func (f *fixture) uncache(p *corev1.Pod) {
	if err := f.c.podFactory.Core().V1().Pods().Informer().GetIndexer().Delete(p); err != nil {
		f.t.Fatal(err)
	}
}

// cachedPod returns the informer's copy of a pod.
func (f *fixture) cachedPod(name string) *corev1.Pod {
	p, err := f.c.podLister.Pods(testNS).Get(name)
	if err != nil {
		f.t.Fatal(err)
	}
	return p
}

// cachedStatefulSet returns the informer's copy of StatefulSet db.
func (f *fixture) cachedStatefulSet() *appsv1.StatefulSet {
	s, err := f.c.stsLister.StatefulSets(testNS).Get("db")
	if err != nil {
		f.t.Fatal(err)
	}
	return s
}

// updatePod replaces the cached pod with a changed copy and a new resourceVersion, as the kubelet's
// status update would.
func (f *fixture) updatePod(name string, change func(*corev1.Pod)) {
	p := f.cachedPod(name).DeepCopy()
	change(p)
	p.ResourceVersion = bumpRV(p.ResourceVersion)
	f.cache(p)
}

func bumpRV(rv string) string {
	var n int
	_, _ = fmt.Sscan(rv, &n)
	return fmt.Sprint(n + 1)
}

// reactPodStatusPatch applies a strategic merge patch of a pod's status to the cached pod.
func (f *fixture) reactPodStatusPatch(action core.Action) (bool, runtime.Object, error) {
	pa := action.(core.PatchAction)
	if pa.GetSubresource() != "status" {
		return false, nil, nil
	}
	cur, err := f.c.podLister.Pods(pa.GetNamespace()).Get(pa.GetName())
	if err != nil {
		return true, nil, err
	}
	old, err := json.Marshal(cur)
	if err != nil {
		return true, nil, err
	}
	merged, err := strategicpatch.StrategicMergePatch(old, pa.GetPatch(), &corev1.Pod{})
	if err != nil {
		return true, nil, err
	}
	p := &corev1.Pod{}
	if err := json.Unmarshal(merged, p); err != nil {
		return true, nil, err
	}
	p.ResourceVersion = bumpRV(cur.ResourceVersion)
	f.cache(p)
	return true, p, nil
}

// reactScale plays the scale subresource: it honours the resourceVersion precondition and changes
// spec.replicas of the cached StatefulSet.
func (f *fixture) reactScale(action core.Action) (bool, runtime.Object, error) {
	ua := action.(core.UpdateAction)
	if ua.GetSubresource() != "scale" {
		return false, nil, nil
	}
	scale := ua.GetObject().(*autoscalingv1.Scale)
	cur, err := f.c.stsLister.StatefulSets(ua.GetNamespace()).Get(scale.Name)
	if err != nil {
		return true, nil, err
	}
	if f.served != nil {
		cur = f.served
	}
	if scale.ResourceVersion != "" && scale.ResourceVersion != cur.ResourceVersion {
		return true, nil, apierrors.NewConflict(appsv1.Resource("statefulsets"), scale.Name, fmt.Errorf("resourceVersion %s, current %s", scale.ResourceVersion, cur.ResourceVersion))
	}
	s := cur.DeepCopy()
	s.Spec.Replicas = ptr.To(scale.Spec.Replicas)
	s.ResourceVersion = bumpRV(cur.ResourceVersion)
	if f.lagScale {
		f.served = s
	} else {
		f.cache(s)
	}
	out := scale.DeepCopy()
	out.ResourceVersion = s.ResourceVersion
	return true, out, nil
}

// catchUpScale delivers a lagged scale update to the informer cache.
func (f *fixture) catchUpScale() {
	if f.served != nil {
		f.cache(f.served)
		f.served = nil
	}
}

// kubeActions lists what the controller asked of the API server, list and watch left out, as
// "verb resource[/subresource] namespace/name", with the member condition of a status patch and the
// replicas of a scale update.
func (f *fixture) kubeActions() []string {
	var out []string
	for _, a := range f.client.Actions() {
		if a.GetVerb() == "list" || a.GetVerb() == "watch" {
			continue
		}
		res := a.GetResource().Resource
		if a.GetSubresource() != "" {
			res += "/" + a.GetSubresource()
		}
		name, detail := "", ""
		switch a := a.(type) {
		case core.PatchAction:
			name = a.GetName()
			var p struct {
				Status struct {
					Conditions []corev1.PodCondition `json:"conditions"`
				} `json:"status"`
			}
			_ = json.Unmarshal(a.GetPatch(), &p)
			for _, c := range p.Status.Conditions {
				detail += fmt.Sprintf(" %s=%s", c.Type, c.Status)
			}
		case core.UpdateAction:
			if m, err := metaName(a.GetObject()); err == nil {
				name = m
			}
			if s, ok := a.GetObject().(*autoscalingv1.Scale); ok {
				detail = fmt.Sprintf(" replicas=%d", s.Spec.Replicas)
			}
		case interface{ GetName() string }: // get, delete
			name = a.GetName()
		}
		out = append(out, fmt.Sprintf("%s %s %s/%s%s", a.GetVerb(), res, a.GetNamespace(), name, detail))
	}
	return out
}

func metaName(obj runtime.Object) (string, error) {
	m, ok := obj.(metav1.Object)
	if !ok {
		return "", fmt.Errorf("%T has no metadata", obj)
	}
	return m.GetName(), nil
}

var key = cache.ObjectName{Namespace: testNS, Name: "main"}

// syncUntilQuiet runs sync n times (what the queue's quick requeues would do).
func (f *fixture) syncUntilQuiet(n int) {
	for i := 0; i < n; i++ {
		if err := f.c.sync(f.ctx, key); err != nil {
			f.t.Fatalf("sync %d: %v", i, err)
		}
		time.Sleep(5 * time.Millisecond) // let _nodes pushes land (the emulator propagates synchronously, this is margin)
	}
}

// rawEvents drains the recorder: "Type Reason message" of each event.
func (f *fixture) rawEvents() []string {
	var out []string
	for {
		select {
		case e := <-f.recorder.Events:
			out = append(out, e)
		default:
			return out
		}
	}
}

// events drains the recorder and returns the reasons.
func (f *fixture) events() []string {
	var out []string
	for _, e := range f.rawEvents() {
		out = append(out, strings.SplitN(e, " ", 3)[1])
	}
	return out
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

// countReasons counts events by reason.
func countReasons(reasons []string) map[string]int {
	out := map[string]int{}
	for _, r := range reasons {
		out[r]++
	}
	return out
}

// series gathers the named metrics (without the couchdb_controller_ prefix) as
// `name{label="value",...}` -> value, leaving out the namespace="ns" and cluster="main" labels every
// fixture series carries. A histogram gives its sample count, as name_count.
func (f *fixture) series(names ...string) map[string]float64 {
	f.t.Helper()
	mfs, err := f.reg.Gather()
	if err != nil {
		f.t.Fatal(err)
	}
	want := map[string]bool{}
	for _, n := range names {
		want["couchdb_controller_"+n] = true
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		if !want[mf.GetName()] {
			continue
		}
		name := strings.TrimPrefix(mf.GetName(), "couchdb_controller_")
		for _, m := range mf.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				if l.GetName() == "namespace" && l.GetValue() == testNS || l.GetName() == "cluster" && l.GetValue() == "main" {
					continue
				}
				labels = append(labels, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
			}
			sort.Strings(labels)
			k := name
			if len(labels) > 0 {
				k += "{" + strings.Join(labels, ",") + "}"
			}
			switch {
			case m.Gauge != nil:
				out[k] = m.GetGauge().GetValue()
			case m.Counter != nil:
				out[k] = m.GetCounter().GetValue()
			case m.Histogram != nil:
				out[name+"_count"] = float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return out
}

// delta is after - before for every series that changed.
func delta(before, after map[string]float64) map[string]float64 {
	out := map[string]float64{}
	for k, v := range after {
		if d := v - before[k]; d != 0 {
			out[k] = d
		}
	}
	for k, v := range before {
		if _, ok := after[k]; !ok && v != 0 {
			out[k] = -v
		}
	}
	return out
}

// admin is a client for the emulated node of pod ordinal ord that bypasses the recording, for the
// test's own reads and writes.
func (f *fixture) admin(ord int) *couch.Client {
	c, err := couch.New(couch.Options{BaseURL: f.node(ord).URL(), Username: "admin", Password: testPass, RetryMax: -1})
	if err != nil {
		f.t.Fatal(err)
	}
	return c
}

// nodeDocRevs reads the _rev of every _nodes document on the node of pod ordinal ord.
func (f *fixture) nodeDocRevs(ord int) map[string]string {
	out := map[string]string{}
	for _, name := range f.node(ord).ClusterNodes() {
		d, err := f.admin(ord).GetNodeDoc(f.ctx, name)
		if err != nil {
			f.t.Fatal(err)
		}
		out[name] = d.Rev
	}
	return out
}

// formedN forms an n-node cluster; gated pods declare the couchdb.io/member readiness gate.
func (f *fixture) formedN(n int, gated bool) {
	f.objects = []runtime.Object{statefulSet(int32(n), nil), service(true), endpoints(), secret(testPass)}
	for i := 0; i < n; i++ {
		p := pod(i, true)
		if gated {
			p = gatedPod(i)
		}
		f.objects = append(f.objects, p)
		f.addNode(i, testPass)
	}
	f.newController()
	f.syncUntilQuiet(n + 2)
	if got := f.node(0).ClusterNodes(); len(got) != n {
		f.t.Fatalf("fixture: %d-node formation left _nodes %v", n, got)
	}
}

func (f *fixture) formed3() { f.formedN(3, false) }

func TestSyncFormsThreeNodes(t *testing.T) {
	f := newFixture(t)
	f.objects = []runtime.Object{statefulSet(3, nil), service(true), endpoints(), secret(testPass), pod(0, true), pod(1, true), pod(2, true)}
	for i := 0; i < 3; i++ {
		f.addNode(i, testPass)
	}
	f.newController()
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
	if diff := cmp.Diff(map[string]int{"finish_cluster": 1}, f.setupActions()); diff != "" {
		t.Errorf("POSTs to /_cluster_setup by action (-want +got):\n%s", diff)
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
	// The credentials are read once; nothing is written (no pod declares the readiness gate).
	if diff := cmp.Diff([]string{"get secrets ns/creds"}, f.kubeActions()); diff != "" {
		t.Errorf("Kubernetes actions (-want +got):\n%s", diff)
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
	if got := f.kubeActions(); len(got) != 0 {
		t.Errorf("API requests in steady state: %v", got)
	}
	if ev := f.events(); len(ev) != 0 {
		t.Errorf("events in steady state: %v", ev)
	}
}

// TestSyncFormsSingleNode: a one-replica cluster is finished like any other, never with
// enable_single_node (which pins [cluster] n=1 and spoils every later scale-up).
func TestSyncFormsSingleNode(t *testing.T) {
	f := newFixture(t)
	f.objects = []runtime.Object{statefulSet(1, nil), service(true), endpoints(), secret(testPass), pod(0, true)}
	n := f.addNode(0, testPass)
	f.newController()
	f.syncUntilQuiet(3)
	if s, _ := f.admin(0).SetupState(f.ctx); s != couch.StateClusterFinished {
		t.Errorf("state %s, want cluster_finished", s)
	}
	actions := f.setupActions()
	if actions["enable_single_node"] != 0 {
		t.Errorf("enable_single_node was POSTed %d times", actions["enable_single_node"])
	}
	if diff := cmp.Diff(map[string]int{"finish_cluster": 1}, actions); diff != "" {
		t.Errorf("POSTs to /_cluster_setup by action (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{ReasonClusterFormed}, f.events()); diff != "" {
		t.Errorf("events (-want +got):\n%s", diff)
	}
	want := map[string]float64{
		"cluster_formed":                1,
		`cluster_nodes{kind="desired"}`: 1, `cluster_nodes{kind="member"}`: 1, `cluster_nodes{kind="reachable"}`: 1,
		`node_state{pod="db-0",state="member"}`:                  1,
		`cluster_phase{phase="Ready"}`:                           1,
		"cluster_formation_duration_seconds_count":               1,
		"node_join_duration_seconds_count":                       0, // the node is in its own _nodes from boot: nothing joined
		`actions_total{action="FinishCluster",result="success"}`: 1,
	}
	if diff := cmp.Diff(want, f.series("cluster_formed", "cluster_nodes", "node_state", "cluster_phase",
		"cluster_formation_duration_seconds", "node_join_duration_seconds", "actions_total")); diff != "" {
		t.Errorf("metrics (-want +got):\n%s", diff)
	}
	for _, db := range []string{"_users", "_replicator"} {
		m, ok := n.ShardMap(db)
		if !ok {
			t.Errorf("system database %s was not created", db)
			continue
		}
		for _, rng := range m.Ranges() {
			if diff := cmp.Diff([]string{n.Name()}, m.ByRange[rng]); diff != "" {
				t.Errorf("%s range %s copies (-want +got):\n%s", db, rng, diff)
			}
		}
	}
	if diff := cmp.Diff([]string{"get secrets ns/creds"}, f.kubeActions()); diff != "" {
		t.Errorf("Kubernetes actions (-want +got):\n%s", diff)
	}
}

// TestSyncJoinsScaleUp: 3 -> 5; both new nodes join, their join latency is observed, their
// couchdb.io/member condition follows membership.
func TestSyncJoinsScaleUp(t *testing.T) {
	f := newFixture(t)
	f.formed3()
	f.events()
	joinsBefore := f.series("node_join_duration_seconds")["node_join_duration_seconds_count"]
	f.client.ClearActions()
	sts := statefulSet(5, nil)
	sts.ResourceVersion = "2"
	f.cache(sts)
	for i := 3; i < 5; i++ {
		f.addNode(i, testPass)
		f.cache(gatedPod(i))
	}
	f.syncUntilQuiet(3)
	for _, n := range f.nodes {
		if got := n.ClusterNodes(); len(got) != 5 {
			t.Errorf("%s lists %v", n.Name(), got)
		}
	}
	var joined []string
	for _, e := range f.rawEvents() {
		if strings.HasPrefix(e, corev1.EventTypeNormal+" "+ReasonNodeJoined+" ") {
			joined = append(joined, e)
		} else if !dayTwoCopyEvent(e, "db-3", "db-4") {
			t.Errorf("unexpected event %q", e)
		}
	}
	want := []string{
		"Normal NodeJoined Node " + nodeName(3) + " of pod db-3 joined the cluster",
		"Normal NodeJoined Node " + nodeName(4) + " of pod db-4 joined the cluster",
	}
	if diff := cmp.Diff(want, joined); diff != "" {
		t.Errorf("NodeJoined events (-want +got):\n%s", diff)
	}
	got := f.series("node_join_duration_seconds", "cluster_nodes", "node_state")
	if d := got["node_join_duration_seconds_count"] - joinsBefore; d != 2 {
		t.Errorf("join histogram counted %v more joins, want 2", d)
	}
	delete(got, "node_join_duration_seconds_count")
	wantSeries := map[string]float64{
		`cluster_nodes{kind="desired"}`: 5, `cluster_nodes{kind="member"}`: 5, `cluster_nodes{kind="reachable"}`: 5,
	}
	for i := 0; i < 5; i++ {
		wantSeries[fmt.Sprintf(`node_state{pod="db-%d",state="member"}`, i)] = 1
	}
	if diff := cmp.Diff(wantSeries, got); diff != "" {
		t.Errorf("metrics (-want +got):\n%s", diff)
	}
	// The gate's condition is False while the node is joining and True once _membership shows it.
	wantKube := []string{
		"patch pods/status ns/db-3 couchdb.io/member=False",
		"patch pods/status ns/db-4 couchdb.io/member=False",
		"patch pods/status ns/db-3 couchdb.io/member=True",
		"patch pods/status ns/db-4 couchdb.io/member=True",
	}
	if diff := cmp.Diff(wantKube, f.kubeActions()); diff != "" {
		t.Errorf("Kubernetes actions (-want +got):\n%s", diff)
	}
	for _, name := range []string{"db-3", "db-4"} {
		if pv := podObs(f.cachedPod(name), 0, 0); pv.MemberCondition == nil || !*pv.MemberCondition {
			t.Errorf("pod %s: couchdb.io/member condition %v, want True", name, pv.MemberCondition)
		}
	}
}

// TestSyncPodRestartStaysMember: a restarted pod keeps its _nodes document; nothing re-adds it.
func TestSyncPodRestartStaysMember(t *testing.T) {
	f := newFixture(t)
	f.formed3()
	f.events()
	revs := f.nodeDocRevs(0)
	members := map[string][]string{}
	for ip, n := range f.nodes {
		members[ip] = sortedCopy(n.ClusterNodes())
	}
	joinsBefore := f.series("node_join_duration_seconds")
	f.resetCalls()
	f.client.ClearActions()

	f.node(1).Stop()
	p := pod(1, false)
	p.UID, p.ResourceVersion = "uid-1-new", "2"
	f.cache(p)
	f.syncUntilQuiet(1)
	if err := f.node(1).Start(); err != nil {
		t.Fatal(err)
	}
	p = pod(1, true)
	p.UID, p.ResourceVersion = "uid-1-new", "3"
	f.cache(p)
	f.syncUntilQuiet(2)

	st, _ := f.c.Cluster(testNS, "main")
	if st.Phase != PhaseReady {
		t.Errorf("phase %s after restart, nodes %+v", st.Phase, st.Nodes)
	}
	if w := f.couchWriteCalls(); len(w) != 0 {
		t.Errorf("CouchDB writes around a restart (no re-add expected): %v", w)
	}
	if ev := f.events(); len(ev) != 0 {
		t.Errorf("events %v, want none (in particular no NodeJoined)", ev)
	}
	for ip, n := range f.nodes {
		if diff := cmp.Diff(members[ip], sortedCopy(n.ClusterNodes())); diff != "" {
			t.Errorf("%s membership changed (-before +after):\n%s", ip, diff)
		}
	}
	if diff := cmp.Diff(revs, f.nodeDocRevs(0)); diff != "" {
		t.Errorf("_nodes revisions changed (-before +after):\n%s", diff)
	}
	if diff := cmp.Diff(joinsBefore, f.series("node_join_duration_seconds")); diff != "" {
		t.Errorf("a restart was counted as a join (-before +after):\n%s", diff)
	}
	if v := f.series("node_state")[`node_state{pod="db-1",state="member"}`]; v != 1 {
		t.Errorf("node_state of db-1: %v", f.series("node_state"))
	}
	if got := f.kubeActions(); len(got) != 0 {
		t.Errorf("Kubernetes actions around a restart: %v", got)
	}
}

// TestSyncPausedChangesNothing: a paused cluster is observed and reported, never changed.
func TestSyncPausedChangesNothing(t *testing.T) {
	f := newFixture(t)
	objs := []runtime.Object{statefulSet(3, map[string]string{AnnotationPaused: "true"}), service(true), endpoints(), secret(testPass)}
	for i := 0; i < 3; i++ {
		objs = append(objs, gatedPod(i)) // a gate makes a condition write possible
		f.addNode(i, testPass)
	}
	f.objects = objs
	f.newController()
	f.syncUntilQuiet(3)
	for ip, n := range f.nodes {
		if n.Requests().Writes != 0 || len(n.ClusterNodes()) != 1 {
			t.Errorf("%s: paused cluster was changed: %v", ip, n.Requests().ByPath)
		}
	}
	if w := f.couchWriteCalls(); len(w) != 0 {
		t.Errorf("CouchDB writes while paused: %v", w)
	}
	if diff := cmp.Diff([]string{"get secrets ns/creds"}, f.kubeActions()); diff != "" {
		t.Errorf("Kubernetes actions while paused (-want +got):\n%s", diff)
	}
	if ev := f.rawEvents(); len(ev) != 0 {
		t.Errorf("events while paused: %q", ev)
	}
	if st, _ := f.c.Cluster(testNS, "main"); st.Phase != PhasePaused {
		t.Errorf("phase %s", st.Phase)
	}
	want := map[string]float64{
		`cluster_phase{phase="Paused"}`:          1,
		"cluster_formed":                         0,
		`syncs_total{result="success"}`:          3,
		`cluster_nodes{kind="desired"}`:          3,
		`cluster_nodes{kind="member"}`:           1, // each node lists only itself; the coordinator is db-0
		`cluster_nodes{kind="reachable"}`:        3,
		`node_state{pod="db-0",state="member"}`:  1,
		`node_state{pod="db-1",state="joining"}`: 1,
		`node_state{pod="db-2",state="joining"}`: 1,
	}
	if diff := cmp.Diff(want, f.series("cluster_phase", "cluster_formed", "syncs_total", "cluster_nodes", "node_state", "actions_total")); diff != "" {
		t.Errorf("metrics (-want +got):\n%s", diff)
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

// TestSyncInvalidNodeName: a node whose name cannot be a member is reported and never written to.
func TestSyncInvalidNodeName(t *testing.T) {
	f := newFixture(t)
	f.names[2] = "couchdb@127.0.0.1"
	f.objects = []runtime.Object{statefulSet(3, nil), service(true), endpoints(), secret(testPass), pod(0, true), pod(1, true), pod(2, true)}
	for i := 0; i < 3; i++ {
		f.addNode(i, testPass)
	}
	f.newController()
	f.syncUntilQuiet(4)
	if got := f.node(0).ClusterNodes(); len(got) != 2 {
		t.Errorf("members %v: the loopback-named node must not join", got)
	}
	var invalid []string
	for _, e := range f.rawEvents() {
		reason := strings.SplitN(e, " ", 3)[1]
		switch reason {
		case ReasonNodeNameInvalid:
			invalid = append(invalid, e)
		case ReasonClusterFormed:
			t.Errorf("the cluster was finished without db-2: %q", e)
		}
	}
	if len(invalid) != 1 || !strings.HasPrefix(invalid[0], corev1.EventTypeWarning+" ") ||
		!strings.Contains(invalid[0], "db-2") || !strings.Contains(invalid[0], `"couchdb@127.0.0.1"`) {
		t.Errorf("NodeNameInvalid events %q, want one Warning naming db-2 and its node name", invalid)
	}
	for _, w := range f.couchWriteCalls() {
		if strings.HasPrefix(w, "10.0.0.3 ") || strings.Contains(w, "127.0.0.1") {
			t.Errorf("write to or about the invalid node: %s", w)
		}
	}
	states := f.series("node_state")
	want := map[string]float64{
		`node_state{pod="db-0",state="member"}`:  1,
		`node_state{pod="db-1",state="member"}`:  1,
		`node_state{pod="db-2",state="invalid"}`: 1,
	}
	if diff := cmp.Diff(want, states); diff != "" {
		t.Errorf("node_state (-want +got):\n%s", diff)
	}
	if w := f.kubeWrites(); len(w) != 0 {
		t.Errorf("Kubernetes writes: %v", w)
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
				sts.ResourceVersion = "2"
				f.cache(sts)
			}
			for _, n := range f.nodes {
				n.ResetRequests()
			}
			f.client.ClearActions()
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
			if got := f.kubeActions(); len(got) != 0 {
				t.Errorf("Kubernetes actions while forgetting: %v", got)
			}
		})
	}
}

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
