package e2e

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/apimachinery/pkg/watch"

	"github.com/couchdb-controller/couchdb-controller/controller"
	"github.com/couchdb-controller/couchdb-controller/couch"
)

// Issue 15 end to end: session cookies valid on every pod, config drift, rollouts that wait for
// catch-up.

// sessionCookie logs in on a pod (POST /_session) and returns its AuthSession cookie.
func sessionCookie(t *testing.T, ns, pod, password string) string {
	t.Helper()
	n := nodeOf(ns, pod)
	body, _ := json.Marshal(map[string]string{"name": "admin", "password": password})
	resp, err := http.Post(n.URL()+"/_session", "application/json", strings.NewReader(string(body)))
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	for _, c := range resp.Cookies() {
		if c.Name == "AuthSession" {
			return c.Value
		}
	}
	t.Fatalf("POST /_session on %s: %s without a cookie", pod, resp.Status)
	return ""
}

// cookieAccepted asks a pod whom a cookie authenticates (GET /_session).
func cookieAccepted(t *testing.T, ns, pod, cookie string) bool {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, nodeOf(ns, pod).URL()+"/_session", nil)
	req.AddCookie(&http.Cookie{Name: "AuthSession", Value: cookie})
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	var s struct {
		UserCtx struct {
			Name *string `json:"name"`
		} `json:"userCtx"`
	}
	return json.NewDecoder(resp.Body).Decode(&s) == nil && s.UserCtx.Name != nil && *s.UserCtx.Name == "admin"
}

// waitCookiesEverywhere waits until a cookie from each of the first n pods is accepted by all of
// them, and registers every admin hash the pods hold for the secret scan.
func waitCookiesEverywhere(t *testing.T, s clusterSpec, ns string, n int, what string) {
	t.Helper()
	start := time.Now()
	poll(t, 60*time.Second, "session cookies valid on every pod "+what, func(context.Context) (bool, error) {
		for i := 0; i < n; i++ {
			h, err := couchdb(t, ns, podName(s, i), s.password).GetConfig(context.Background(), "_local", "admins", "admin")
			if err == nil {
				useHash(h)
			}
		}
		for from := 0; from < n; from++ {
			c := sessionCookie(t, ns, podName(s, from), s.password)
			for to := 0; to < n; to++ {
				if !cookieAccepted(t, ns, podName(s, to), c) {
					return false, nil
				}
			}
		}
		return true, nil
	})
	t.Logf("cookies valid on all %d pods %s after %s", n, what, time.Since(start).Round(time.Millisecond))
}

// waitFinished waits until every pod lists the members and finish_cluster has run (it copies the
// coordinator's admin hash, uuid and secret once: restarts before it would be undone by it).
func waitFinished(t *testing.T, s clusterSpec, ns string) {
	t.Helper()
	waitMembers(t, s, ns, int(s.replicas), 60*time.Second)
	poll(t, 30*time.Second, "cluster_finished", func(context.Context) (bool, error) {
		return setupState(t, ns, podName(s, 0)) == couch.StateClusterFinished, nil
	})
}

// restartPod deletes a pod and waits for its successor (a new UID) to be Ready.
func restartPod(t *testing.T, ns, pod string) {
	t.Helper()
	ctx := context.Background()
	old, err := env.kube.CoreV1().Pods(ns).Get(ctx, pod, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := env.kube.CoreV1().Pods(ns).Delete(ctx, pod, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	poll(t, 60*time.Second, pod+" to come back ready", func(ctx context.Context) (bool, error) {
		p, err := env.kube.CoreV1().Pods(ns).Get(ctx, pod, metav1.GetOptions{})
		if err != nil || p.UID == old.UID {
			return false, nil
		}
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
				return true, nil
			}
		}
		return false, nil
	})
}

func TestSessionCookiesValidOnEveryPod(t *testing.T) {
	ns := newNamespace(t)
	s := newSpec("sess", 3)
	s.memberGate = true
	startController(t, ns)
	s.create(t, ns)
	waitFinished(t, s, ns)
	waitCookiesEverywhere(t, s, ns, 3, "after formation")

	scaleTo(t, ns, s.name, 4)
	waitMembers(t, s, ns, 4, 60*time.Second)
	waitCookiesEverywhere(t, s, ns, 4, "after a scale-up")

	restartPod(t, ns, podName(s, 1))
	waitCookiesEverywhere(t, s, ns, 4, "after a pod restart")
	restartPod(t, ns, podName(s, 0))
	waitCookiesEverywhere(t, s, ns, 4, "after the coordinator's restart")
	if n := len(events(t, ns, controller.ReasonAdminHashCopied)); n == 0 {
		t.Error("no AdminHashCopied event")
	}
	// What the controller showed is scanned for the hashes (useHash above) with the passwords at
	// the end of the suite.
}

// perPodUUIDs gives each pod of s its own ini file from ConfigMap <name>-perpod (key <pod>.ini),
// mounted with subPathExpr, as a hand-made StatefulSet might by mistake.
func perPodUUIDs(s *clusterSpec) {
	s.mutate = func(sts *appsv1.StatefulSet) {
		spec := &sts.Spec.Template.Spec
		spec.Volumes = append(spec.Volumes, corev1.Volume{Name: "perpod", VolumeSource: corev1.VolumeSource{
			ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: sts.Name + "-perpod"}}}})
		spec.Containers[0].VolumeMounts = append(spec.Containers[0].VolumeMounts, corev1.VolumeMount{Name: "perpod",
			MountPath: "/opt/couchdb/etc/local.d/99-pod.ini", SubPathExpr: "$(POD_NAME).ini"})
	}
}

func putPerPodINI(t *testing.T, ns string, s clusterSpec, uuids []string) {
	t.Helper()
	data := map[string]string{}
	for i, u := range uuids {
		data[podName(s, i)+".ini"] = "[couchdb]\nuuid = " + u + "\n"
	}
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: s.name + "-perpod", Namespace: ns}, Data: data}
	_, err := env.kube.CoreV1().ConfigMaps(ns).Update(context.Background(), cm, metav1.UpdateOptions{})
	if err != nil {
		_, err = env.kube.CoreV1().ConfigMaps(ns).Create(context.Background(), cm, metav1.CreateOptions{})
	}
	if err != nil {
		t.Fatal(err)
	}
}

func TestConfigDriftReportedAndCleared(t *testing.T) {
	skipOnRealNodes(t, "the real-node backend passes a pod's ConfigMap ini files but not per-pod files mounted with subPathExpr, which this test uses to give pods different uuids")
	ns := newNamespace(t)
	s := newSpec("drift", 3)
	perPodUUIDs(&s)
	putPerPodINI(t, ns, s, []string{"11111111111111111111111111111111", "22222222222222222222222222222222", "11111111111111111111111111111111"})
	rc := startController(t, ns)
	s.create(t, ns)
	waitFinished(t, s, ns)
	// finish_cluster copied db-0's uuid at runtime; the pods' own values come back at their next
	// start, which is when drift shows.
	for i := 0; i < 3; i++ {
		restartPod(t, ns, podName(s, i))
	}
	poll(t, 30*time.Second, podName(s, 1)+" to run with its own uuid", func(ctx context.Context) (bool, error) {
		u, err := couchdb(t, ns, podName(s, 1), s.password).GetConfig(ctx, "_local", "couchdb", "uuid")
		return err == nil && u == "22222222222222222222222222222222", nil
	})
	poll(t, 60*time.Second, "a ConfigDrift Warning", func(context.Context) (bool, error) {
		return len(events(t, ns, controller.ReasonConfigDrift)) > 0, nil
	})
	ev := events(t, ns, controller.ReasonConfigDrift)[0]
	for _, want := range []string{"[couchdb] uuid", podName(s, 0) + ", " + podName(s, 2), podName(s, 1)} {
		if !strings.Contains(ev.Message, want) {
			t.Errorf("ConfigDrift %q does not name %q", ev.Message, want)
		}
	}
	for _, v := range []string{"1111111111111111", "2222222222222222"} {
		if strings.Contains(ev.Message, v) {
			t.Error("ConfigDrift shows a uuid")
		}
	}
	drift := map[string]string{"namespace": ns, "cluster": s.cluster, "key": "couchdb.uuid"}
	poll(t, 20*time.Second, "config_drift 1", func(context.Context) (bool, error) {
		return metricValue(t, rc, "couchdb_controller_config_drift", drift) == 1, nil
	})
	st, _ := rc.ctrl.Cluster(ns, s.cluster)
	if len(st.ConfigDrift) != 1 || st.ConfigDrift[0].Key != "couchdb.uuid" {
		t.Errorf("status configDrift %+v", st.ConfigDrift)
	}
	if got := couchdb(t, ns, podName(s, 1), s.password); got != nil {
		u, _ := got.GetConfig(context.Background(), "_local", "couchdb", "uuid")
		if u != "22222222222222222222222222222222" {
			t.Error("the controller wrote the uuid the pod sets itself")
		}
	}

	// The fix: one value for every pod, and the pod that differed restarted.
	putPerPodINI(t, ns, s, []string{"11111111111111111111111111111111", "11111111111111111111111111111111", "11111111111111111111111111111111"})
	restartPod(t, ns, podName(s, 1))
	poll(t, 60*time.Second, "config_drift back to 0", func(context.Context) (bool, error) {
		return metricValue(t, rc, "couchdb_controller_config_drift", drift) == 0, nil
	})
	poll(t, 20*time.Second, "the Warning to clear from the status", func(context.Context) (bool, error) {
		st, _ := rc.ctrl.Cluster(ns, s.cluster)
		for _, w := range st.Warnings {
			if strings.Contains(w, "[couchdb] uuid") {
				return false, nil
			}
		}
		return len(st.ConfigDrift) == 0, nil
	})
}

// writeLoad writes one document at a time to the pods in turn, skipping pods that are down, and
// records the ids CouchDB acknowledged (201 or 202).
type writeLoad struct {
	mu     sync.Mutex
	acked  []string
	failed map[string]int // refused writes by status (or error), for the failure message
	stop   chan struct{}
	done   chan struct{}
}

func startWriteLoad(t *testing.T, ns string, s clusterSpec, db string, every time.Duration) *writeLoad {
	w := &writeLoad{stop: make(chan struct{}), done: make(chan struct{}), failed: map[string]int{}}
	go func() {
		defer close(w.done)
		client := &http.Client{Timeout: 2 * time.Second}
		for i := 0; ; i++ {
			select {
			case <-w.stop:
				return
			case <-time.After(every):
			}
			n := nodeOf(ns, podName(s, i%int(s.replicas)))
			if n == nil || !n.Running() {
				continue
			}
			id := fmt.Sprintf("w%06d", i)
			req, _ := http.NewRequest(http.MethodPut, n.URL()+"/"+db+"/"+id, strings.NewReader(`{"i":`+fmt.Sprint(i)+`}`))
			req.SetBasicAuth("admin", s.password)
			req.Header.Set("Content-Type", "application/json")
			resp, err := client.Do(req)
			if err != nil {
				w.mu.Lock()
				w.failed["error"]++
				w.mu.Unlock()
				continue
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			_ = resp.Body.Close()
			w.mu.Lock()
			if resp.StatusCode == http.StatusCreated || resp.StatusCode == http.StatusAccepted {
				w.acked = append(w.acked, id)
			} else {
				w.failed[resp.Status]++
			}
			w.mu.Unlock()
		}
	}()
	t.Cleanup(w.halt)
	return w
}

func (w *writeLoad) halt() {
	select {
	case <-w.stop:
	default:
		close(w.stop)
	}
	<-w.done
}

func (w *writeLoad) ackedSoFar() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.acked...)
}

// copyIDs lists the documents one node's copy of one range holds (node-local _changes).
func copyIDs(t *testing.T, ns, pod, password, shard string) (map[string]bool, error) {
	n := nodeOf(ns, pod)
	req, _ := http.NewRequest(http.MethodGet, n.URL()+"/_node/_local/"+url.PathEscape(shard)+"/_changes", nil)
	req.SetBasicAuth("admin", password)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var ch struct {
		Results []struct {
			ID string `json:"id"`
		} `json:"results"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&ch); err != nil {
		return nil, fmt.Errorf("%s %s: %s: %w", pod, shard, resp.Status, err)
	}
	out := map[string]bool{}
	for _, r := range ch.Results {
		out[r.ID] = true
	}
	return out, nil
}

func TestRollingUpdateWaitsForCatchUp(t *testing.T) {
	ns := newNamespace(t)
	s := newSpec("roll", 3)
	s.memberGate = true
	startController(t, ns)
	s.create(t, ns)
	waitFinished(t, s, ns)
	if err := couchdb(t, ns, podName(s, 0), s.password).CreateDB(context.Background(), "load", 2, 3); err != nil {
		t.Fatal(err)
	}
	m, err := couchdb(t, ns, podName(s, 0), s.password).GetShardMap(context.Background(), "load")
	if err != nil {
		t.Fatal(err)
	}
	waitReadyAddresses(t, ns, s.name, 3)
	load := startWriteLoad(t, ns, s, "load", 10*time.Millisecond)
	if err := wait.PollUntilContextTimeout(context.Background(), 20*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		return len(load.ackedSoFar()) > 20, nil
	}); err != nil {
		load.mu.Lock()
		t.Fatalf("no writes acknowledged: refused %v", load.failed)
	}

	// Watch deletions: at each one after the first, the pod restarted before must hold every
	// document acknowledged so far in each of its copies.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w, err := env.kube.CoreV1().Pods(ns).Watch(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	type deletion struct {
		pod     string
		at      time.Time
		missing []string
	}
	var mu sync.Mutex
	var deletions []deletion
	seen := map[types.UID]bool{}
	// missingOn lists the acknowledged documents of acked that the pod's copies lack.
	missingOn := func(pod string, acked []string) []string {
		var missing []string
		node := s.nodeName(ns, ordinalOf(pod))
		for _, rng := range m.Ranges() {
			if !m.HasCopy(rng, node) {
				continue
			}
			ids, err := copyIDs(t, ns, pod, s.password, m.ShardName(rng))
			if err != nil {
				missing = append(missing, err.Error())
				continue
			}
			for _, id := range acked {
				if shardOf(m.Ranges(), id) == rng && !ids[id] {
					missing = append(missing, rng+"/"+id)
				}
			}
		}
		return missing
	}
	// The moment a recreated pod's gate opens, its copies must hold what was acknowledged before
	// its predecessor went down (what it missed is the catch-up).
	ackedAtDeletion := map[string][]string{}
	gateChecked := map[types.UID]bool{}
	var gateMissing []string
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		for ev := range w.ResultChan() {
			p, ok := ev.Object.(*corev1.Pod)
			if ok && p.DeletionTimestamp == nil && !gateChecked[p.UID] && !seen[p.UID] && memberTrue(p) {
				if acked, ok := ackedAtDeletion[p.Name]; ok {
					gateChecked[p.UID] = true
					if miss := missingOn(p.Name, acked); len(miss) > 0 {
						mu.Lock()
						gateMissing = append(gateMissing, fmt.Sprintf("%s: %d missing, e.g. %v", p.Name, len(miss), miss[:min(3, len(miss))]))
						mu.Unlock()
					}
				}
			}
			if !ok || ev.Type != watch.Modified && ev.Type != watch.Deleted || p.DeletionTimestamp == nil || seen[p.UID] {
				continue
			}
			ackedAtDeletion[p.Name] = load.ackedSoFar()
			seen[p.UID] = true
			d := deletion{pod: p.Name, at: time.Now()}
			mu.Lock()
			prev := ""
			if len(deletions) > 0 {
				prev = deletions[len(deletions)-1].pod
			}
			mu.Unlock()
			if prev != "" {
				d.missing = missingOn(prev, load.ackedSoFar())
			}
			mu.Lock()
			deletions = append(deletions, d)
			mu.Unlock()
		}
	}()

	start := time.Now()
	patch := fmt.Sprintf(`{"spec":{"template":{"metadata":{"annotations":{"e2e/restartedAt":%q}}}}}`, start.Format(time.RFC3339Nano))
	if _, err := env.kube.AppsV1().StatefulSets(ns).Patch(context.Background(), s.name, types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	poll(t, 180*time.Second, "the rollout to finish", func(ctx context.Context) (bool, error) {
		sts, err := env.kube.AppsV1().StatefulSets(ns).Get(ctx, s.name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		st := sts.Status
		return st.ObservedGeneration >= sts.Generation && st.UpdateRevision != "" && st.CurrentRevision == st.UpdateRevision &&
			st.UpdatedReplicas == 3 && st.ReadyReplicas == 3, nil
	})
	took := time.Since(start)
	load.halt()
	cancel()
	<-watched
	t.Logf("rolling update of 3 pods under %d acknowledged writes took %s", len(load.ackedSoFar()), took.Round(time.Millisecond))

	mu.Lock()
	for _, g := range gateMissing {
		t.Errorf("couchdb.io/member turned True before the restarted pod caught up: %s", g)
	}
	if len(deletions) != 3 {
		t.Errorf("%d pod deletions, want 3: %+v", len(deletions), deletions)
	}
	for i, d := range deletions {
		if len(d.missing) > 0 {
			t.Errorf("%s was deleted while %s had not caught up: missing %d documents, e.g. %v", d.pod, deletions[i-1].pod, len(d.missing), d.missing[:min(5, len(d.missing))])
		}
	}
	mu.Unlock()

	// No acknowledged write is lost: every one is readable, and every copy holds it once the
	// cluster settles.
	acked := load.ackedSoFar()
	for _, id := range acked {
		if code, _ := rawDo(t, ns, podName(s, 0), s.password, http.MethodGet, "/load/"+id, ""); code != http.StatusOK {
			t.Errorf("acknowledged document %s: GET %d", id, code)
		}
	}
	poll(t, 30*time.Second, "every copy to hold every acknowledged document", func(context.Context) (bool, error) {
		for i := 0; i < 3; i++ {
			node := s.nodeName(ns, i)
			for _, rng := range m.Ranges() {
				if !m.HasCopy(rng, node) {
					continue
				}
				ids, err := copyIDs(t, ns, podName(s, i), s.password, m.ShardName(rng))
				if err != nil {
					return false, nil
				}
				for _, id := range acked {
					if shardOf(m.Ranges(), id) == rng && !ids[id] {
						return false, nil
					}
				}
			}
		}
		return true, nil
	})
}

func ordinalOf(pod string) int {
	i := strings.LastIndexByte(pod, '-')
	var n int
	_, _ = fmt.Sscan(pod[i+1:], &n)
	return n
}

// shardOf is the range of ranges holding document id: mem3_hash's crc32 of term_to_binary(id) (for a
// binary: tag 131, BINARY_EXT 109, a 4-byte length, the bytes).
func shardOf(ranges []string, id string) string {
	b := make([]byte, 6, 6+len(id))
	b[0], b[1] = 131, 109
	binary.BigEndian.PutUint32(b[2:], uint32(len(id)))
	h := crc32.ChecksumIEEE(append(b, id...))
	for _, r := range ranges {
		var lo, hi uint32
		if _, err := fmt.Sscanf(r, "%08x-%08x", &lo, &hi); err == nil && h >= lo && h <= hi {
			return r
		}
	}
	return ""
}

func memberTrue(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == controller.ConditionMember {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}
