package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/couchdb-controller/couchdb-controller/test/harness"
)

const (
	formationMetric = "couchdb_controller_cluster_formation_duration_seconds"
	joinMetric      = "couchdb_controller_node_join_duration_seconds"
	throttleMetric  = "couchdb_controller_kube_api_throttle_seconds"
	apiMetric       = "couchdb_controller_kube_api_requests_total"
)

// single forms 3-node clusters one after another, each only once the previous one is finished, and
// times each from its last pod's ContainersReady to pod 0 reporting cluster_finished; then scales
// clusters 3 -> 4 one at a time, timing each join. They stay (as form-<i>) through the later sections.
func (w *world) single(ctx context.Context, o options) (*SingleResult, error) {
	c, err := w.fleetController(ctx)
	if err != nil {
		return nil, err
	}
	r := &SingleResult{}
	var kinds []PathCount
	before := histogramOf(c.get("/metrics"), formationMetric)
	for i := 0; i < o.formations; i++ {
		d, err := w.formOne(ctx, fmt.Sprintf("form-%d", i))
		if err != nil {
			return nil, err
		}
		r.Formations = append(r.Formations, d)
	}
	// The controller observes the finish after its POST returns; give the metric a moment.
	_ = wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) {
		r.FormationMetric = histogramOf(c.get("/metrics"), formationMetric).minus(before)
		return int(r.FormationMetric.Count) >= o.formations, nil
	})
	// Isolated joins: one cluster at a time, each once the harness is idle again (the previous
	// join's follow-up syncs done, no pod starting).
	for i := 0; i < o.joins; i++ {
		ns := fmt.Sprintf("form-%d", i%max(o.formations, 1))
		if i >= o.formations {
			// More joins than formed clusters: form one more to join.
			ns = fmt.Sprintf("form-%d", o.formations+i)
			if _, err := w.formOne(ctx, ns); err != nil {
				return nil, err
			}
		}
		time.Sleep(time.Second)
		m0 := c.get("/metrics")
		resetRequests(w, ns)
		d, ok := w.joinOne(ctx, ns, 3)
		if !ok {
			return nil, fmt.Errorf("%s: node 3 did not join", ns)
		}
		r.Joins = append(r.Joins, d)
		// The join's follow-up syncs (the verifying one, the pod's later events) count too.
		time.Sleep(time.Second)
		kinds = addCounts(kinds, requestKinds(w, ns, 4))
		m1 := c.get("/metrics")
		r.JoinSyncs += metricSum(m1, "couchdb_controller_syncs_total", "") - metricSum(m0, "couchdb_controller_syncs_total", "")
	}
	r.JoinPaths = kinds
	return r, nil
}

// resetRequests zeroes the request counters of a namespace's emulated nodes.
func resetRequests(w *world, ns string) {
	if w.backend == nil {
		return // real nodes: not counted
	}
	for i := 0; i < 8; i++ {
		if n := w.backend.Node(ns, fmt.Sprintf("db-%d", i)); n != nil {
			n.ResetRequests()
		}
	}
}

func addCounts(a, b []PathCount) []PathCount {
	m := map[string]int{}
	for _, pc := range append(a, b...) {
		m[pc.Path] += pc.Count
	}
	return sortCounts(m)
}

// formOne creates one labelled 3-node cluster and times its formation from outside.
func (w *world) formOne(ctx context.Context, ns string) (float64, error) {
	if err := harness.EnsureNamespace(ctx, w.kube, ns); err != nil {
		return 0, err
	}
	if err := w.create(ctx, ns, "main", 3, nil); err != nil {
		return 0, err
	}
	var last time.Time
	for i := 0; i < 3; i++ {
		t, ok := w.ready.wait(ctx, ns, fmt.Sprintf("db-%d", i), 2*time.Minute)
		if !ok {
			return 0, fmt.Errorf("%s: pod db-%d not ready", ns, i)
		}
		if t.After(last) {
			last = t
		}
	}
	base := w.nodeURL(ns, "db-0")
	if base == "" {
		return 0, fmt.Errorf("%s: no node for db-0", ns)
	}
	err := wait.PollUntilContextTimeout(ctx, w.pollEvery(), 2*time.Minute, true, func(context.Context) (bool, error) {
		return setupState(ctx, base) == "cluster_finished", nil
	})
	if err != nil {
		return 0, fmt.Errorf("%s: not finished: %w", ns, err)
	}
	return max(0, time.Since(last).Seconds()), nil
}

// fleetStages adds clusters up to each size, measures their formation and the steady state, then
// scales every cluster 3 -> 4 at once.
func (w *world) fleetStages(ctx context.Context, o options) (*FleetResult, error) {
	c, err := w.fleetController(ctx)
	if err != nil {
		return nil, err
	}
	r := &FleetResult{}
	first := 0
	for i, n := range o.sizes {
		last := i == len(o.sizes)-1
		steady := o.steadySmall
		if last {
			steady = o.steady
		}
		st, err := w.stage(ctx, c, first, n, steady, last, r)
		if err != nil {
			return nil, err
		}
		r.Stages = append(r.Stages, st)
		first = n
		fmt.Fprintf(os.Stderr, "bench: %d clusters measured\n", n)
	}
	m0 := c.get("/metrics")
	joins0, throttle0 := histogramOf(m0, joinMetric), histogramOf(m0, throttleMetric)
	cpu0 := cpuSeconds(c.pid())
	var burst *Burst
	profDone := make(chan string, 1)
	go func() { profDone <- c.pprofOwn("burst-cpu", "/debug/pprof/profile?seconds=30") }()
	r.HarnessBurstProfile, err = selfProfile(w.runDir, "burst", func() (err error) {
		burst, err = w.burst(ctx, "bench-", first)
		return err
	})
	r.BurstProfile = <-profDone
	if err != nil {
		return nil, err
	}
	burst.ControllerCPU = cpuSeconds(c.pid()) - cpu0
	m1 := c.get("/metrics")
	burst.Metric = histogramOf(m1, joinMetric).minus(joins0)
	burst.APIRequests = metricSum(m1, apiMetric, "") - metricSum(m0, apiMetric, "")
	thr := histogramOf(m1, throttleMetric).minus(throttle0)
	burst.Throttled, burst.ThrottledMax = thr.Sum, thr.maxBucket()
	r.Burst = burst
	r.Heap = c.pprofTop("heap", "/debug/pprof/heap")
	return r, nil
}

// stage adds clusters bench-<first>..bench-<n-1>, waits until all are Ready, then measures the
// steady state over the window.
func (w *world) stage(ctx context.Context, c *ctrl, first, n int, steady time.Duration, profile bool, r *FleetResult) (Stage, error) {
	st := Stage{Clusters: n, Steady: steady.Seconds()}
	cpu0, self0, busy0, plane0 := cpuSeconds(c.pid()), cpuSeconds(os.Getpid()), machineBusy(), w.controlPlaneCPU()
	form0 := histogramOf(c.get("/metrics"), formationMetric)
	profDone := make(chan string, 1)
	if profile {
		go func() { profDone <- c.pprofTop("cpu", "/debug/pprof/profile?seconds=30") }()
	}
	start := time.Now()
	form := func() error {
		var wg sync.WaitGroup
		errs := make(chan error, n-first)
		sem := make(chan struct{}, 32)
		for i := first; i < n; i++ {
			wg.Add(1)
			sem <- struct{}{}
			go func(i int) {
				defer wg.Done()
				defer func() { <-sem }()
				if err := w.create(ctx, fmt.Sprintf("bench-%d", i), "main", 3, nil); err != nil {
					errs <- err
				}
			}(i)
		}
		wg.Wait()
		close(errs)
		if err := <-errs; err != nil {
			return err
		}
		// Polling the status API costs the controller CPU too; keep it light at scale.
		every := 200 * time.Millisecond
		if n-first > 200 {
			every = time.Second
		}
		formed := map[string]time.Duration{}
		err := wait.PollUntilContextTimeout(ctx, every, 30*time.Minute, true, func(context.Context) (bool, error) {
			for _, cl := range c.clusters() {
				var idx int
				if _, err := fmt.Sscanf(cl.Namespace, "bench-%d", &idx); err != nil || idx < first {
					continue // another section's or an earlier stage's cluster
				}
				if _, ok := formed[cl.Namespace]; !ok && cl.Phase == "Ready" && len(cl.Members) == 3 {
					formed[cl.Namespace] = time.Since(start)
				}
			}
			return len(formed) >= n-first, nil
		})
		if err != nil {
			return fmt.Errorf("%d of %d clusters formed: %w", len(formed), n-first, err)
		}
		for _, d := range formed {
			st.PerCluster = append(st.PerCluster, d.Seconds())
		}
		return nil
	}
	var err error
	if profile {
		r.HarnessFormProfile, err = selfProfile(w.runDir, "form", form)
	} else {
		err = form()
	}
	if err != nil {
		return st, err
	}
	st.FormAll = time.Since(start).Seconds()
	st.CPUForming = cpuSeconds(c.pid()) - cpu0
	st.HarnessCPUForming = cpuSeconds(os.Getpid()) - self0
	st.MachineCPUForming = machineBusy() - busy0
	st.ControlPlaneCPUForming = map[string]float64{}
	for name, v := range w.controlPlaneCPU() {
		st.ControlPlaneCPUForming[name] = v - plane0[name]
	}
	st.Formation = histogramOf(c.get("/metrics"), formationMetric).minus(form0)
	if profile {
		r.FormProfile = <-profDone
	}

	// Steady state: nothing changes for the window, at the default resync. A quiet period first
	// lets formation's follow-up syncs finish.
	time.Sleep(30 * time.Second)
	for _, node := range w.backend.Nodes() {
		node.ResetRequests()
	}
	m0 := c.get("/metrics")
	cpu1 := cpuSeconds(c.pid())
	time.Sleep(steady)
	st.CPUSteady = (cpuSeconds(c.pid()) - cpu1) / steady.Seconds()
	resyncs := steady.Seconds() / defaultResync.Seconds()
	st.APIPerSync = (metricSum(c.get("/metrics"), apiMetric, "") - metricSum(m0, apiMetric, "")) / resyncs
	gets, nodes := 0, 0
	for _, node := range w.backend.Nodes() {
		if !node.Running() {
			continue
		}
		rc := node.Requests()
		for path, n := range rc.ByPath {
			// The harness kubelet's readiness probe (GET /_up) is not the controller's.
			if strings.HasPrefix(path, "GET ") && path != "GET /_up" {
				gets += n
			}
		}
		st.Writes += rc.Writes
		nodes++
	}
	st.GetsPerNode = float64(gets) / float64(max(nodes, 1)) / resyncs
	st.PeakRSS, st.RSS = procStatusMiB(c.pid(), "VmHWM:"), procStatusMiB(c.pid(), "VmRSS:")
	if profile {
		// After the window, so that profiling does not count in the steady CPU.
		r.SteadyProfile = c.pprofOwn("steady-cpu", "/debug/pprof/profile?seconds=60")
	}
	return st, nil
}

// burst scales prefix0..prefix<n-1> from 3 to 4 replicas at once and times each join from outside:
// pod 3's ContainersReady (one watch over every namespace) to the node in pod 0's _membership.
func (w *world) burst(ctx context.Context, prefix string, n int) (*Burst, error) {
	want := map[string]bool{}
	for i := 0; i < n; i++ {
		want[fmt.Sprintf("%s%d", prefix, i)] = true
	}
	start := time.Now()
	// The patches go out while the observer loop below runs: the first pods turn ready and join
	// before the last patch is sent (seconds, for 1,000), and a loop that began only after the
	// patches timed those joins from their ready to its own start.
	patched := make(chan float64, 1)
	go func() {
		var wg sync.WaitGroup
		sem := make(chan struct{}, 64)
		patch := []byte(`{"spec":{"replicas":4}}`)
		for ns := range want {
			wg.Add(1)
			sem <- struct{}{}
			go func(ns string) {
				defer wg.Done()
				defer func() { <-sem }()
				_, _ = w.kube.AppsV1().StatefulSets(ns).Patch(ctx, "db", types.MergePatchType, patch, metav1.PatchOptions{})
			}(ns)
		}
		wg.Wait()
		patched <- time.Since(start).Seconds()
	}()
	b := &Burst{Clusters: n}
	joined := map[string]bool{}
	var trace strings.Builder // namespace, ready, joined, latency: the slow joins can be found in the controller's log
	deadline := time.Now().Add(10 * time.Minute)
	// One observer loop for every cluster (a goroutine polling each would cost the shared cores
	// more than the controller): every 5 ms it checks pod 0's _membership of each cluster whose new
	// pod is ready and has not joined yet.
	for len(joined) < n && time.Now().Before(deadline) {
		for ns := range want {
			if joined[ns] {
				continue
			}
			ready, ok := w.ready.at(ns, "db-3")
			if !ok {
				continue
			}
			name := fmt.Sprintf("couchdb@db-3.db.%s.svc.cluster.local", ns)
			if node := w.backend.Node(ns, "db-0"); node != nil && contains(node.ClusterNodes(), name) {
				joined[ns] = true
				now := time.Now()
				b.Joins = append(b.Joins, max(0, now.Sub(ready).Seconds()))
				fmt.Fprintf(&trace, "%s\t%s\t%s\t%.1f\n", ns, ready.UTC().Format(traceTime), now.UTC().Format(traceTime), 1000*now.Sub(ready).Seconds())
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	b.AllJoined = time.Since(start).Seconds()
	b.Patched = <-patched
	_ = os.WriteFile(filepath.Join(w.runDir, "burst-joins.tsv"), []byte("namespace\tready\tjoined\tms\n"+trace.String()), 0o644)
	if len(joined) < n {
		return b, fmt.Errorf("burst: %d of %d clusters joined their fourth node in 10 minutes", len(joined), n)
	}
	return b, nil
}

// traceTime is the layout of burst-joins.tsv's times, klog's time of day to the microsecond.
const traceTime = "15:04:05.000000"

// setupState is pod 0's GET /_cluster_setup state, as an admin ("" on any failure).
func setupState(ctx context.Context, base string) string {
	var body struct {
		State string `json:"state"`
	}
	_ = getJSON(ctx, base+"/_cluster_setup", &body)
	return body.State
}

// joins scales clusters prefix<first>..prefix<n-1> to 4 and measures each join from outside, at most
// 100 at a time.
func (w *world) joins(ctx context.Context, prefix string, first, n int) []float64 {
	var mu sync.Mutex
	var out []float64
	var wg sync.WaitGroup
	sem := make(chan struct{}, 100)
	for i := first; i < n; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func(ns string) {
			defer wg.Done()
			defer func() { <-sem }()
			if d, ok := w.joinOne(ctx, ns, 3); ok {
				mu.Lock()
				out = append(out, d)
				mu.Unlock()
			}
		}(fmt.Sprintf("%s%d", prefix, i))
	}
	wg.Wait()
	return out
}

// joinOne raises the StatefulSet to ord+1 replicas and times pod ord's ContainersReady to its node
// appearing in pod 0's _membership, polled every 2 ms.
func (w *world) joinOne(ctx context.Context, ns string, ord int) (float64, bool) {
	pod := fmt.Sprintf("db-%d", ord)
	patch := []byte(fmt.Sprintf(`{"spec":{"replicas":%d}}`, ord+1))
	if _, err := w.kube.AppsV1().StatefulSets(ns).Patch(ctx, "db", types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		return 0, false
	}
	ready, ok := w.ready.wait(ctx, ns, pod, 5*time.Minute)
	if !ok {
		return 0, false
	}
	want := fmt.Sprintf("couchdb@%s.db.%s.svc.cluster.local", pod, ns)
	var took float64
	err := wait.PollUntilContextTimeout(ctx, w.pollEvery(), 5*time.Minute, true, func(context.Context) (bool, error) {
		if contains(w.clusterNodes(ctx, ns, "db-0"), want) {
			took = max(0, time.Since(ready).Seconds())
			return true, nil
		}
		return false, nil
	})
	return took, err == nil
}

// readyLog records when the API server confirmed each pod's ContainersReady: the harness kubelet
// hands it the answer to every status write (kubelet.Options.Reported). A watch of its own would
// deliver the transition later, on a loaded machine after the controller under test had acted on it.
type readyLog struct {
	mu    sync.Mutex
	times map[string]readyAt // namespace/pod
}

type readyAt struct {
	uid string
	at  time.Time
}

func newReadyLog() *readyLog { return &readyLog{times: map[string]readyAt{}} }

func (r *readyLog) reported(p *corev1.Pod) {
	if !containersReady(p) {
		return
	}
	key := p.Namespace + "/" + p.Name
	r.mu.Lock()
	defer r.mu.Unlock()
	if cur, ok := r.times[key]; !ok || cur.uid != string(p.UID) {
		r.times[key] = readyAt{string(p.UID), time.Now()}
	}
}

func (r *readyLog) at(ns, pod string) (time.Time, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	t, ok := r.times[ns+"/"+pod]
	return t.at, ok
}

func (r *readyLog) wait(ctx context.Context, ns, pod string, timeout time.Duration) (time.Time, bool) {
	var t time.Time
	err := wait.PollUntilContextTimeout(ctx, time.Millisecond, timeout, true, func(context.Context) (bool, error) {
		var ok bool
		t, ok = r.at(ns, pod)
		return ok, nil
	})
	return t, err == nil
}

func containersReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.ContainersReady && c.Status == corev1.ConditionTrue {
			return true
		}
	}
	return false
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// couchdiscover runs the approach the controller replaces, through the same harness: a loop per
// cluster that every 5 s lists the pods and adds each ready one that is not yet a member to pod 0's
// _nodes (couchdiscover does this from a sidecar in every pod; the latency distribution is the same).
// Its clusters are not labelled, so the controller leaves them alone. It returns the join latencies of
// one scale-up per cluster, measured exactly as for the controller's isolated joins.
func (w *world) couchdiscover(ctx context.Context, n int) (*PollerResult, error) {
	pctx, stop := context.WithCancel(ctx)
	defer stop()
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		ns := fmt.Sprintf("poll-%d", i)
		if err := w.create(ctx, ns, "", 3, nil); err != nil {
			return nil, err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			t := time.NewTicker(5 * time.Second)
			defer t.Stop()
			for {
				w.pollOnce(pctx, ns)
				select {
				case <-pctx.Done():
					return
				case <-t.C:
				}
			}
		}()
	}
	// Formation by the poller: wait until each cluster lists 3 members.
	err := wait.PollUntilContextTimeout(ctx, time.Second, 10*time.Minute, true, func(context.Context) (bool, error) {
		for i := 0; i < n; i++ {
			node := w.backend.Node(fmt.Sprintf("poll-%d", i), "db-0")
			if node == nil || len(node.ClusterNodes()) < 3 {
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		return nil, fmt.Errorf("couchdiscover-style clusters did not form: %w", err)
	}
	out := w.joins(ctx, "poll-", 0, n)
	stop()
	wg.Wait()
	return &PollerResult{Joins: out}, nil
}

// pollOnce is one couchdiscover round for a cluster: every ready pod not in pod 0's _nodes is added.
func (w *world) pollOnce(ctx context.Context, ns string) {
	pods, err := w.kube.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return
	}
	first := w.backend.Node(ns, "db-0")
	if first == nil || !first.Running() {
		return
	}
	members := first.ClusterNodes()
	for i := range pods.Items {
		p := &pods.Items[i]
		name := fmt.Sprintf("couchdb@%s.db.%s.svc.cluster.local", p.Name, ns)
		if !containersReady(p) || contains(members, name) {
			continue
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodPut, first.URL()+"/_node/_local/_nodes/"+name, strings.NewReader("{}"))
		req.SetBasicAuth("admin", benchPassword)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
		}
	}
}

const benchPassword = "bench-password"

// create makes one namespace with a CouchDB StatefulSet of replicas pods and its headless Service,
// labelled couchdb.io/cluster=cluster (unlabelled when cluster is ""), with the given annotations.
func (w *world) create(ctx context.Context, ns, cluster string, replicas int32, annotations map[string]string) error {
	return w.createWith(ctx, ns, cluster, replicas, annotations, nil)
}

// createWith is create with a last change to the StatefulSet before it is created.
func (w *world) createWith(ctx context.Context, ns, cluster string, replicas int32, annotations map[string]string, mutate func(*appsv1.StatefulSet)) error {
	if err := harness.EnsureNamespace(ctx, w.kube, ns); err != nil {
		return err
	}
	labels := map[string]string{}
	if cluster != "" {
		labels["couchdb.io/cluster"] = cluster
	}
	if _, err := w.kube.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "admin"},
		StringData: map[string]string{"adminUsername": "admin", "adminPassword": benchPassword, "cookieAuthSecret": "bench-cookie-auth-secret", "erlangCookie": "bench-erlang-cookie"}}, metav1.CreateOptions{}); err != nil {
		return err
	}
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "db", Labels: labels}, Spec: corev1.ServiceSpec{ClusterIP: corev1.ClusterIPNone,
		Selector: map[string]string{"app": "db"}, Ports: []corev1.ServicePort{{Name: "couchdb", Port: 5984, TargetPort: intstr.FromInt32(5984)}}}}
	if _, err := w.kube.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		return err
	}
	ref := func(k string) *corev1.EnvVarSource {
		return &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "admin"}, Key: k}}
	}
	ann := map[string]string{"couchdb.io/admin-secret": "admin"}
	for k, v := range annotations {
		ann[k] = v
	}
	sts := &appsv1.StatefulSet{ObjectMeta: metav1.ObjectMeta{Name: "db", Labels: labels, Annotations: ann},
		Spec: appsv1.StatefulSetSpec{Replicas: &replicas, ServiceName: "db", PodManagementPolicy: appsv1.ParallelPodManagement,
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "db"}},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "db"}}, Spec: corev1.PodSpec{
				Containers: []corev1.Container{{Name: "couchdb", Image: "couchdb:3.4.3", Ports: []corev1.ContainerPort{{Name: "couchdb", ContainerPort: 5984}},
					Env: []corev1.EnvVar{{Name: "COUCHDB_USER", ValueFrom: ref("adminUsername")}, {Name: "COUCHDB_PASSWORD", ValueFrom: ref("adminPassword")},
						// The same [chttpd_auth] secret on every pod, as the Helm chart sets it: CouchDB's
						// finish_cluster fails without one.
						{Name: "COUCHDB_SECRET", ValueFrom: ref("cookieAuthSecret")},
						// One Erlang cookie for the cluster, as the Helm chart sets it from its Secret:
						// real nodes with different cookies never connect.
						{Name: "COUCHDB_ERLANG_COOKIE", ValueFrom: ref("erlangCookie")},
						{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
						{Name: "NODENAME", Value: "$(POD_NAME).db." + ns + ".svc.cluster.local"}}}}}}}}
	if mutate != nil {
		mutate(sts)
	}
	_, err := w.kube.AppsV1().StatefulSets(ns).Create(ctx, sts, metav1.CreateOptions{})
	return err
}

// nodeURL is the base URL of a pod's CouchDB node, emulated or real ("" if it never started).
func (w *world) nodeURL(ns, pod string) string {
	if w.real != nil {
		if n := w.real.Node(ns, pod); n != nil {
			return n.URL()
		}
		return ""
	}
	if n := w.backend.Node(ns, pod); n != nil {
		return n.URL()
	}
	return ""
}

// clusterNodes is a pod's node's cluster_nodes: read in process from an emulated node, over HTTP
// as the admin from a real one.
func (w *world) clusterNodes(ctx context.Context, ns, pod string) []string {
	if w.real != nil {
		if n := w.real.Node(ns, pod); n != nil {
			return n.ClusterNodes(ctx, "admin", benchPassword)
		}
		return nil
	}
	if n := w.backend.Node(ns, pod); n != nil {
		return n.ClusterNodes()
	}
	return nil
}

// pollEvery is the outside observer's period: 2 ms reads in process on emulated nodes; a real
// node's authenticated HTTP read costs it real work, so 20 ms there.
func (w *world) pollEvery() time.Duration {
	if w.real != nil {
		return 20 * time.Millisecond
	}
	return 2 * time.Millisecond
}

// realVersion is the version pod 0 of a namespace's cluster reports (GET /), read while it runs.
func (w *world) realVersion(ctx context.Context, ns string) string {
	var body struct {
		Version string `json:"version"`
	}
	if getJSON(ctx, w.nodeURL(ns, "db-0")+"/", &body) != nil {
		return "real CouchDB"
	}
	return "real CouchDB " + body.Version
}

// getJSON GETs url as the admin and decodes the answer into out.
func getJSON(ctx context.Context, url string, out any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	req.SetBasicAuth("admin", benchPassword)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(out)
}
