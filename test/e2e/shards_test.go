package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/retry"

	"github.com/couchdb-controller/couchdb-controller/controller"
	"github.com/couchdb-controller/couchdb-controller/couch"
)

// couchdb answers HTTP for one pod's emulated node (the test reads and writes data directly).
func couchdb(t *testing.T, ns, pod, password string) *couch.Client {
	t.Helper()
	n := env.backend.Node(ns, pod)
	if n == nil {
		t.Fatalf("no node for %s", pod)
	}
	c, err := couch.New(couch.Options{BaseURL: n.URL(), Username: "admin", Password: password})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func rawDo(t *testing.T, ns, pod, password, method, path, body string) (int, string) {
	t.Helper()
	n := env.backend.Node(ns, pod)
	req, _ := http.NewRequest(method, n.URL()+path, strings.NewReader(body))
	req.SetBasicAuth("admin", password)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// loadData creates db1 (q=2, n=3) through pod 0 and writes docs documents.
func loadData(t *testing.T, s clusterSpec, ns string, docs int) { loadDataQ(t, s, ns, docs, 2) }

// loadDataQ waits for the cluster to be finished first, as users create databases after setup: every
// node listing every member (waitMembers) comes before finish_cluster, and a scale-down between the
// two leaves an unfinished cluster whose _nodes names the removed pods (the planner then waits with a message to scale up or remove them).
func loadDataQ(t *testing.T, s clusterSpec, ns string, docs, q int) {
	t.Helper()
	poll(t, 30*time.Second, "cluster_finished before loading data", func(context.Context) (bool, error) {
		return setupState(t, ns, podName(s, 0)) == couch.StateClusterFinished, nil
	})
	if err := couchdb(t, ns, podName(s, 0), s.password).CreateDB(context.Background(), "db1", q, 3); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < docs; i++ {
		if code, body := rawDo(t, ns, podName(s, 0), s.password, "PUT", fmt.Sprintf("/db1/doc%03d", i), `{"i":1}`); code != 201 && code != 202 {
			t.Fatalf("write doc %d: %d %s", i, code, body)
		}
	}
}

// readAll reads every document through pod 0 and reports how many could not be read.
func readAll(t *testing.T, s clusterSpec, ns string, docs int) int {
	return readAllVia(t, s, ns, podName(s, 0), docs)
}

// readAllVia reads every document through pod and reports how many could not be read.
func readAllVia(t *testing.T, s clusterSpec, ns, pod string, docs int) int {
	missing := 0
	for i := 0; i < docs; i++ {
		if code, _ := rawDo(t, ns, pod, s.password, "GET", fmt.Sprintf("/db1/doc%03d", i), ""); code != 200 {
			missing++
		}
	}
	return missing
}

// mapNodes lists every node db1's shard map references, as pod 0 sees it.
func mapNodes(t *testing.T, s clusterSpec, ns string) []string {
	m, err := couchdb(t, ns, podName(s, 0), s.password).GetShardMap(context.Background(), "db1")
	if err != nil {
		return nil
	}
	return m.Nodes()
}

func onlyOrdinalsBelow(nodes []string, s clusterSpec, ns string, n int) bool {
	for _, node := range nodes {
		ok := false
		for i := 0; i < n; i++ {
			if node == s.nodeName(ns, i) {
				ok = true
			}
		}
		if !ok {
			return false
		}
	}
	return len(nodes) > 0
}

// scaleTo does what `kubectl scale statefulset/NAME --replicas=N` does: read the scale subresource
// and update it (retrying on a conflict, as the controller may be writing the StatefulSet).
func scaleTo(t *testing.T, ns, name string, replicas int) {
	t.Helper()
	ctx := context.Background()
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		sc, err := env.kube.AppsV1().StatefulSets(ns).GetScale(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		sc.Spec.Replicas = int32(replicas)
		_, err = env.kube.AppsV1().StatefulSets(ns).UpdateScale(ctx, name, sc, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		t.Fatalf("scale %s/%s to %d: %v", ns, name, replicas, err)
	}
}

// readThroughout reads every document through pod 0 over and over until the returned stop is
// called, which reports the most documents that were unreadable in one pass.
func readThroughout(t *testing.T, s clusterSpec, ns string, docs int) (stop func() int32) {
	var unreadable atomic.Int32
	done := make(chan struct{})
	quit := make(chan struct{})
	passes := 0
	go func() {
		defer close(done)
		for {
			select {
			case <-quit:
				return
			default:
			}
			if m := readAll(t, s, ns, docs); int32(m) > unreadable.Load() {
				unreadable.Store(int32(m))
			}
			passes++
			time.Sleep(20 * time.Millisecond) // pacing between passes, not a wait
		}
	}()
	return func() int32 {
		close(quit)
		<-done
		if passes == 0 {
			t.Error("the reader never completed a pass")
		}
		return unreadable.Load()
	}
}

func TestTargetReplicasDrainsWithoutDataLoss(t *testing.T) {
	ns := newNamespace(t)
	s := newSpec("drain", 5)
	s.parallel = true
	startController(t, ns)
	s.create(t, ns)
	waitMembers(t, s, ns, 5, 60*time.Second)
	const docs = 60
	loadData(t, s, ns, docs)
	// A reader checks every document stays readable throughout the drain.
	stopReading := readThroughout(t, s, ns, docs)
	patch := []byte(`{"metadata":{"annotations":{"couchdb.io/target-replicas":"3"}}}`)
	if _, err := env.kube.AppsV1().StatefulSets(ns).Patch(context.Background(), "drain", types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	poll(t, 120*time.Second, "spec.replicas to reach 3", func(ctx context.Context) (bool, error) {
		sts, err := env.kube.AppsV1().StatefulSets(ns).Get(ctx, "drain", metav1.GetOptions{})
		return err == nil && *sts.Spec.Replicas == 3, nil
	})
	waitMembers(t, s, ns, 3, 60*time.Second)
	if n := stopReading(); n > 0 {
		t.Errorf("%d documents were unreadable at some point during the drain", n)
	}
	if nodes := mapNodes(t, s, ns); !onlyOrdinalsBelow(nodes, s, ns, 3) {
		t.Errorf("db1's map still references %v", nodes)
	}
	if m := readAll(t, s, ns, docs); m != 0 {
		t.Errorf("%d documents missing after the drain", m)
	}
	for _, reason := range []string{"Draining", "ShardCopyAdded", "ShardCopyRemoved", "NodeRemoved", "ScaledDown"} {
		waitEvent(t, ns, reason) // events are written asynchronously by the broadcaster
	}
}

func TestPlainScaleDownHeals(t *testing.T) {
	ns := newNamespace(t)
	s := newSpec("heal", 5)
	s.parallel = true
	startController(t, ns)
	s.create(t, ns)
	waitMembers(t, s, ns, 5, 60*time.Second)
	const docs = 40
	loadData(t, s, ns, docs)
	poll(t, 10*time.Second, "internal replication to settle", func(context.Context) (bool, error) { return readAll(t, s, ns, docs) == 0, nil })

	// kubectl scale --replicas=3: nodes 3 and 4 are lost; their copies are re-created from survivors.
	scaleTo(t, ns, "heal", 3)
	var m couch.ShardMap
	poll(t, 120*time.Second, "every range of db1 back to n=3 full copies, on live members only", func(ctx context.Context) (bool, error) {
		var err error
		if m, err = couchdb(t, ns, podName(s, 0), s.password).GetShardMap(ctx, "db1"); err != nil {
			return false, nil
		}
		for _, rng := range m.Ranges() {
			if nodes := m.ByRange[rng]; len(nodes) != 3 || !onlyOrdinalsBelow(nodes, s, ns, 3) {
				return false, nil
			}
		}
		return len(m.Ranges()) == 2 && fullCopies(ns, s, m, 3), nil
	})
	t.Logf("healed map: %v", m.ByRange)
	waitMembers(t, s, ns, 3, 60*time.Second)
	if m := readAll(t, s, ns, docs); m != 0 {
		t.Errorf("%d documents missing after healing", m)
	}
}

func TestScaleToOneRaisesDataAtRiskAndScaleUpRecovers(t *testing.T) {
	ctx := context.Background()
	ns := newNamespace(t)
	s := newSpec("risk", 5)
	s.parallel = true
	rc := startController(t, ns)
	s.create(t, ns)
	waitMembers(t, s, ns, 5, 60*time.Second)
	const docs = 40
	loadDataQ(t, s, ns, docs, 8)
	poll(t, 10*time.Second, "internal replication to settle", func(context.Context) (bool, error) { return readAll(t, s, ns, docs) == 0, nil })
	c0 := couchdb(t, ns, podName(s, 0), s.password)
	before, err := c0.GetShardMap(ctx, "db1")
	if err != nil {
		t.Fatal(err)
	}
	// kubectl scale --replicas=1 with n=3: ranges whose three copies are all on nodes 1-4 have no live
	// copy left. Nothing of db1 may change; DataAtRisk names it.
	scaleTo(t, ns, "risk", 1)
	waitEvent(t, ns, "DataAtRisk")
	ev := events(t, ns, "DataAtRisk")
	if !strings.Contains(ev[0].Message, "db1") {
		t.Errorf("DataAtRisk does not name db1: %s", ev[0].Message)
	}
	// Several resyncs later, still nothing removed: the same map, range by range, at the same
	// revision, and every departed node still in _nodes (the controller may mark it decom, so new
	// databases are not placed on it, but never deletes it while it holds the last copies).
	base, since := counterSum(t, rc, "couchdb_controller_syncs_total"), time.Now()
	poll(t, 60*time.Second, "two resync periods and three more syncs that change nothing", func(ctx context.Context) (bool, error) {
		now, err := c0.GetShardMap(ctx, "db1")
		if err != nil {
			return false, fmt.Errorf("db1's map: %w", err)
		}
		if now.Rev != before.Rev {
			return false, fmt.Errorf("db1's map was rewritten (%s -> %s) while data was at risk:\n%s", before.Rev, now.Rev, cmp.Diff(before.ByRange, now.ByRange))
		}
		for _, rng := range before.Ranges() {
			if d := cmp.Diff(sorted(before.ByRange[rng]), sorted(now.ByRange[rng])); d != "" {
				return false, fmt.Errorf("range %s changed while data was at risk (-before +after):\n%s", rng, d)
			}
		}
		for i := 1; i < 5; i++ {
			if _, err := c0.GetNodeDoc(ctx, s.nodeName(ns, i)); err != nil {
				return false, fmt.Errorf("departed node %s's _nodes doc: %w", s.nodeName(ns, i), err)
			}
		}
		return time.Since(since) >= 2*inProcessResync && counterSum(t, rc, "couchdb_controller_syncs_total") >= base+3, nil
	})
	// Databases with a live copy left are healed meanwhile (their lost references go); db1 and the
	// departed nodes are not touched.
	for _, e := range events(t, ns, controller.ReasonNodeRemoved) {
		t.Errorf("NodeRemoved while data was at risk: %s", e.Message)
	}
	for _, e := range events(t, ns, controller.ReasonShardCopyRemoved) {
		if strings.Contains(e.Message, " db1 ") {
			t.Errorf("a copy of db1 was removed while its data was at risk: %s", e.Message)
		}
	}
	// Scaling back up brings the copies back; every document is readable again.
	scaleTo(t, ns, "risk", 5)
	waitMembers(t, s, ns, 5, 90*time.Second)
	poll(t, 60*time.Second, "every document readable again", func(context.Context) (bool, error) { return readAll(t, s, ns, docs) == 0, nil })
}

func sorted(in []string) []string {
	out := slices.Clone(in)
	slices.Sort(out)
	return out
}
