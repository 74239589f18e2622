package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"sync"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/apimachinery/pkg/watch"
)

// rolloutLag is how long the emulated nodes hold back internal replication during the rollout
// (couchtest's Node.SetSyncDelay): the recorded restart (couchdb-real-shards.md 5b) had its copy
// behind for 4.16 s after the start command. The emulator's own sync rounds would fill a restarted
// copy within the bench's 1 s sync delay, and the gate would have nothing to wait for.
const rolloutLag = 4 * time.Second

// rolloutWriteEvery is the write load: one document at a time, to the running pods in turn.
const rolloutWriteEvery = 10 * time.Millisecond

type RolloutResult struct {
	Meta     Meta           `json:"meta"`
	Lag      float64        `json:"lag"`      // s, the emulated nodes' internal-replication hold
	WriteGap float64        `json:"writeGap"` // s between writes
	Wall     float64        `json:"wall"`     // s, template patch -> every pod updated and Ready
	Pods     []RolledPod    `json:"pods"`     // in the order they were replaced
	Acked    int            `json:"acked"`    // writes answered 201 or 202
	Refused  map[string]int `json:"refused"`  // writes refused, by status or error
	Lost     int            `json:"lost"`     // acknowledged documents not readable through every pod afterwards
}

type RolledPod struct {
	Pod      string  `json:"pod"`
	Down     float64 `json:"down"`     // s, deletion -> new container running
	Probe    float64 `json:"probe"`    // s, new container running -> readiness probe passed
	Gate     float64 `json:"gate"`     // s, new container running -> couchdb.io/member True (the catch-up wait)
	Missed   int     `json:"missed"`   // acknowledged documents its copies lacked when its probe passed
	AtGate   int     `json:"atGate"`   // ... when its member gate turned True (must be 0)
	NextSafe bool    `json:"nextSafe"` // at the next pod's deletion its copies held every acknowledged document
}

// rollout measures a rolling update (a pod-template change) of a 3-pod cluster whose pods declare
// the couchdb.io/member readiness gate, under a constant write load, with the controller's default
// flags (the catch-up gate on, --catch-up-timeout at its default).
func (w *world) rollout(ctx context.Context) (*RolloutResult, error) {
	const ns = "rollout"
	r := &RolloutResult{Lag: rolloutLag.Seconds(), WriteGap: rolloutWriteEvery.Seconds(), Refused: map[string]int{}}
	c, err := w.startController(ctx, ns, "--namespace="+ns)
	if err != nil {
		return nil, err
	}
	defer c.stop()
	defer func() { _ = w.kube.CoreV1().Namespaces().Delete(context.Background(), ns, metav1.DeleteOptions{}) }()
	gated := func(sts *appsv1.StatefulSet) {
		sts.Spec.Template.Spec.ReadinessGates = []corev1.PodReadinessGate{{ConditionType: "couchdb.io/member"}}
	}
	if err := w.createWith(ctx, ns, "main", 3, nil, gated); err != nil {
		return nil, err
	}
	cl := &moveCluster{w: w, ns: ns, c: c}
	if err := cl.waitMembers(ctx, 3); err != nil {
		return nil, err
	}
	if code, b, err := cl.do(ctx, "db-0", http.MethodPut, "/load?q=2&n=3", nil); err != nil || code != http.StatusCreated {
		return nil, fmt.Errorf("create the database: %d %s %v", code, b, err)
	}
	if err := w.waitSTS(ctx, ns, func(st appsv1.StatefulSetStatus) bool { return st.ReadyReplicas == 3 }); err != nil {
		return nil, fmt.Errorf("pods Ready: %w", err)
	}
	for i := 0; i < 3; i++ {
		w.backend.Node(ns, fmt.Sprintf("db-%d", i)).SetSyncDelay(rolloutLag)
	}
	load := w.startLoad(ns)
	defer load.halt()
	time.Sleep(time.Second)

	watcher, err := w.kube.CoreV1().Pods(ns).Watch(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	type pending struct {
		RolledPod
		uid              types.UID
		deleted, started time.Time
		acked            []string
		probed, gated    bool
	}
	var rolled []*pending
	done := make(chan struct{})
	go func() {
		defer close(done)
		seen := map[types.UID]bool{}
		for ev := range watcher.ResultChan() {
			p, ok := ev.Object.(*corev1.Pod)
			if !ok || ev.Type == watch.Deleted {
				continue
			}
			var cur *pending
			if len(rolled) > 0 {
				cur = rolled[len(rolled)-1]
			}
			if p.DeletionTimestamp != nil {
				if !seen[p.UID] {
					seen[p.UID] = true
					if cur != nil {
						cur.NextSafe = len(cl.missing(ctx, cur.Pod, load.ackedSoFar())) == 0
					}
					rolled = append(rolled, &pending{RolledPod: RolledPod{Pod: p.Name}, uid: p.UID, deleted: time.Now()})
				}
				continue
			}
			if cur == nil || p.Name != cur.Pod || p.UID == cur.uid {
				continue
			}
			now := time.Now()
			if cur.acked == nil && containerRunning(p) {
				cur.acked, cur.started = load.ackedSoFar(), now
				cur.Down = now.Sub(cur.deleted).Seconds()
			}
			if cur.acked != nil && !cur.probed && podCondition(p, corev1.ContainersReady) {
				cur.probed, cur.Probe = true, now.Sub(cur.started).Seconds()
				cur.Missed = len(cl.missing(ctx, cur.Pod, cur.acked))
			}
			if cur.acked != nil && !cur.gated && podCondition(p, "couchdb.io/member") {
				cur.gated, cur.Gate = true, now.Sub(cur.started).Seconds()
				cur.AtGate = len(cl.missing(ctx, cur.Pod, cur.acked))
			}
		}
	}()

	start := time.Now()
	patch := fmt.Sprintf(`{"spec":{"template":{"metadata":{"annotations":{"bench/restartedAt":%q}}}}}`, start.Format(time.RFC3339Nano))
	if _, err := w.kube.AppsV1().StatefulSets(ns).Patch(ctx, "db", types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		watcher.Stop()
		return nil, err
	}
	err = w.waitSTS(ctx, ns, func(st appsv1.StatefulSetStatus) bool {
		return st.UpdateRevision != "" && st.CurrentRevision == st.UpdateRevision && st.UpdatedReplicas == 3 && st.ReadyReplicas == 3
	})
	r.Wall = time.Since(start).Seconds()
	load.halt()
	watcher.Stop()
	<-done
	if err != nil {
		return nil, fmt.Errorf("rollout: %w", err)
	}
	for _, p := range rolled {
		if !p.gated {
			return nil, fmt.Errorf("%s: the replacement's member gate was never seen True", p.Pod)
		}
		r.Pods = append(r.Pods, p.RolledPod)
	}
	r.Acked = len(load.ackedSoFar())
	load.mu.Lock()
	for k, v := range load.failed {
		r.Refused[k] = v
	}
	load.mu.Unlock()
	// Lost: acknowledged and still absent from some copy once internal replication settles.
	acked := load.ackedSoFar()
	_ = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 3*rolloutLag+10*time.Second, true, func(context.Context) (bool, error) {
		r.Lost = 0
		for i := 0; i < 3; i++ {
			r.Lost = max(r.Lost, len(cl.missing(ctx, fmt.Sprintf("db-%d", i), acked)))
		}
		return r.Lost == 0, nil
	})
	return r, nil
}

func (w *world) waitSTS(ctx context.Context, ns string, cond func(appsv1.StatefulSetStatus) bool) error {
	return wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 5*time.Minute, true, func(ctx context.Context) (bool, error) {
		sts, err := w.kube.AppsV1().StatefulSets(ns).Get(ctx, "db", metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		return sts.Status.ObservedGeneration >= sts.Generation && cond(sts.Status), nil
	})
}

// missing lists the documents of ids that the pod's node-local copies of "load" lack: the copies'
// own _changes, not a clustered read that the other copies would answer. Every id counts as missing
// while a copy cannot be read.
func (cl *moveCluster) missing(ctx context.Context, pod string, ids []string) []string {
	m, ok := cl.shardMap("load")
	if !ok {
		return ids
	}
	node := cl.nodeName(ordinal(pod))
	have := map[string]bool{}
	for _, rng := range m.Ranges() {
		if !m.HasCopy(rng, node) {
			continue
		}
		code, body, err := cl.do(ctx, pod, http.MethodGet, "/_node/_local/"+url.PathEscape(m.ShardName(rng))+"/_changes", nil)
		var ch struct {
			Results []struct {
				ID string `json:"id"`
			} `json:"results"`
		}
		if err != nil || code != http.StatusOK || json.Unmarshal(body, &ch) != nil {
			return ids
		}
		for _, r := range ch.Results {
			have[r.ID] = true
		}
	}
	var out []string
	for _, id := range ids {
		if !have[id] {
			out = append(out, id)
		}
	}
	return out
}

func ordinal(pod string) int {
	var n int
	_, _ = fmt.Sscan(pod[strings.LastIndexByte(pod, '-')+1:], &n)
	return n
}

// benchLoad writes one document at a time to the running pods in turn and records what CouchDB
// acknowledged (201 or 202).
type benchLoad struct {
	mu     sync.Mutex
	acked  []string
	failed map[string]int
	stop   chan struct{}
	done   chan struct{}
	once   sync.Once
}

func (w *world) startLoad(ns string) *benchLoad {
	l := &benchLoad{failed: map[string]int{}, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(l.done)
		client := &http.Client{Timeout: 2 * time.Second}
		for i := 0; ; i++ {
			select {
			case <-l.stop:
				return
			case <-time.After(rolloutWriteEvery):
			}
			n := w.backend.Node(ns, fmt.Sprintf("db-%d", i%3))
			if n == nil || !n.Running() {
				continue
			}
			id := fmt.Sprintf("w%06d", i)
			req, _ := http.NewRequest(http.MethodPut, n.URL()+"/load/"+id, strings.NewReader(fmt.Sprintf(`{"i":%d}`, i)))
			req.SetBasicAuth("admin", benchPassword)
			req.Header.Set("Content-Type", "application/json")
			resp, err := client.Do(req)
			l.mu.Lock()
			switch {
			case err != nil:
				l.failed["error"]++
			case resp.StatusCode == http.StatusCreated || resp.StatusCode == http.StatusAccepted:
				l.acked = append(l.acked, id)
			default:
				l.failed[resp.Status]++
			}
			l.mu.Unlock()
			if err == nil {
				_, _ = io.Copy(io.Discard, resp.Body)
				_ = resp.Body.Close()
			}
		}
	}()
	return l
}

func (l *benchLoad) halt() {
	l.once.Do(func() { close(l.stop) })
	<-l.done
}

func (l *benchLoad) ackedSoFar() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.acked...)
}

func containerRunning(p *corev1.Pod) bool {
	for _, c := range p.Status.ContainerStatuses {
		if c.State.Running != nil {
			return true
		}
	}
	return false
}

func podCondition(p *corev1.Pod, typ corev1.PodConditionType) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == typ {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func renderRollout(b *strings.Builder, r *RolloutResult) {
	fmt.Fprintf(b, "## Rolling update with the catch-up gate\n\n")
	if r == nil {
		fmt.Fprintf(b, "Not measured yet: `go run ./test/bench -only rollout -out test/bench/BENCHMARKS.md`.\n\n")
		return
	}
	fmt.Fprintf(b, "%s\n\n", r.Meta)
	fmt.Fprintf(b, "A pod-template change on a 3-pod cluster (`updateStrategy: RollingUpdate`, pods with the `couchdb.io/member`\n")
	fmt.Fprintf(b, "readiness gate, one database q=2 n=3) under one write every %.0f ms to the running pods in turn. The emulated\n", 1000*r.WriteGap)
	fmt.Fprintf(b, "nodes hold back internal replication for %.0f s (`Node.SetSyncDelay`; the recorded CouchDB restart had its copy\n", r.Lag)
	fmt.Fprintf(b, "behind for 4.16 s), so a replaced pod lacks the writes taken while it was down until then. The wait is from the\n")
	fmt.Fprintf(b, "new container's start to its member gate turning True; \"missed\" counts the acknowledged documents its copies\n")
	fmt.Fprintf(b, "lacked when its readiness probe passed (what it would have served, and left as a copy, without the gate).\n")
	fmt.Fprintf(b, "The pushes that fill it start at the first sync round after its start (the bench's 1 s sync delay) plus the hold,\n")
	fmt.Fprintf(b, "and the controller looks again every second while a member catches up, so the wait's floor is about the hold.\n\n")
	fmt.Fprintf(b, "**Rollout: %.1f s** for 3 pods; %d writes acknowledged, %d refused%s, **%d lost**.\n\n", r.Wall, r.Acked, sumCounts(r.Refused), refusedKinds(r.Refused), r.Lost)
	fmt.Fprintf(b, "| pod | down (deletion -> container running) | probe passed after | catch-up wait (member gate True after) | missed at probe | missing at gate | next pod deleted only after catch-up |\n|---|---|---|---|---|---|---|\n")
	for _, p := range r.Pods {
		next := "yes"
		if !p.NextSafe {
			next = "**no**"
		}
		if p.Pod == r.Pods[len(r.Pods)-1].Pod {
			next = "(last)"
		}
		fmt.Fprintf(b, "| %s | %.2f s | %.2f s | %.2f s | %d | %d | %s |\n", p.Pod, p.Down, p.Probe, p.Gate, p.Missed, p.AtGate, next)
	}
	fmt.Fprintf(b, "\n")
}

func refusedKinds(m map[string]int) string {
	var parts []string
	for k, v := range m {
		parts = append(parts, fmt.Sprintf("%s: %d", k, v))
	}
	sort.Strings(parts)
	if len(parts) == 0 {
		return ""
	}
	return " (" + strings.Join(parts, ", ") + ")"
}

func sumCounts(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}
