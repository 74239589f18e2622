package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/utils/ptr"

	"github.com/couchdb-controller/couchdb-controller/couch"
)

// The controller's defaults for --max-concurrent-moves and --max-fills-per-node (cmd/couchdb-controller):
// the concurrent runs use them, and the fill-time bound is computed from them.
const (
	defaultMaxMoves        = 8
	defaultMaxFillsPerNode = 4
)

const defaultsLabel = "concurrent (defaults: --max-concurrent-moves=8 --max-fills-per-node=4)"

// moves measures shard moves on one cluster of o.moveDBs databases: a rebalance 3 -> 5 and then a
// target-replicas drain 5 -> 3, once with the controller's defaults and once with
// --max-concurrent-moves=1, each on a fresh cluster with its own controller process.
func (w *world) moves(ctx context.Context, o options) (*MovesResult, error) {
	r := &MovesResult{DBs: o.moveDBs, Docs: o.moveDocs, FillRate: o.fillRate, EmulatedFillRate: emulatedFillRate(o)}
	for i, v := range []struct {
		label    string
		maxMoves int
	}{{defaultsLabel, 0}, {"--max-concurrent-moves=1", 1}} {
		run, err := w.moveVariant(ctx, o, fmt.Sprintf("moves-%d", i), v.label, v.maxMoves)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", v.label, err)
		}
		r.Runs = append(r.Runs, run)
		fmt.Fprintf(os.Stderr, "bench: moves %s measured\n", v.label)
	}
	return r, nil
}

func (w *world) moveVariant(ctx context.Context, o options, ns, label string, maxMoves int) (MoveRun, error) {
	run := MoveRun{Label: label, MaxMoves: maxMoves, FillsPerNode: defaultMaxFillsPerNode}
	if maxMoves == 0 {
		run.MaxMoves = defaultMaxMoves
	}
	rebalance, err := w.moveScenario(ctx, o, run, ns+"-rebalance", 3, "rebalance 3 -> 5",
		`{"metadata":{"annotations":{"couchdb.io/rebalance":"true"}},"spec":{"replicas":5}}`, 5,
		func(cl *moveCluster) bool { return len(cl.members()) == 5 }, (*moveCluster).rebalanced)
	if err != nil {
		return run, err
	}
	// The drain runs on a cluster created with five nodes, not on the rebalanced one: there, every
	// copy the drain adds goes back to the node the rebalance took it from, whose file is still on
	// disk (a removal from the map leaves it), so nothing would fill.
	drain, err := w.moveScenario(ctx, o, run, ns+"-drain", 5, "drain 5 -> 3 (couchdb.io/target-replicas)",
		`{"metadata":{"annotations":{"couchdb.io/target-replicas":"3"}}}`, 3,
		func(*moveCluster) bool { return true }, (*moveCluster).drained)
	if err != nil {
		return run, err
	}
	run.Phases = []MovePhase{rebalance, drain}
	return run, nil
}

// moveScenario measures one change on a fresh cluster of pods pods in its own namespace, with its
// own controller process (the variant's flags) and its own reader: the cluster is loaded, the patch
// applied, and the moves timed from started to done. Every document is read through pod 0 all along
// and through each of the staying nodes afterwards.
func (w *world) moveScenario(ctx context.Context, o options, run MoveRun, ns string, pods int, name, patch string, staying int,
	started func(*moveCluster) bool, done func(*moveCluster) (bool, string)) (MovePhase, error) {
	extra := []string{"--namespace=" + ns}
	if run.Label != defaultsLabel {
		extra = append(extra, fmt.Sprintf("--max-concurrent-moves=%d", run.MaxMoves))
	}
	c, err := w.startController(ctx, ns, extra...)
	if err != nil {
		return MovePhase{}, err
	}
	defer c.stop()
	defer func() {
		// Its pods stop with the namespace, so the later sections' harness is idle again.
		_ = w.kube.CoreV1().Namespaces().Delete(context.Background(), ns, metav1.DeleteOptions{})
	}()
	if err := w.create(ctx, ns, "main", int32(pods), nil); err != nil {
		return MovePhase{}, err
	}
	cl := &moveCluster{w: w, ns: ns, c: c}
	if err := cl.waitMembers(ctx, pods); err != nil {
		return MovePhase{}, err
	}
	if w.real != nil && w.realVer == "" {
		w.realVer = w.realVersion(ctx, ns)
	}
	dbs, err := cl.load(ctx, o.moveDBs, o.moveDocs)
	if err != nil {
		return MovePhase{}, err
	}
	rd := cl.startReader(dbs, o.moveDocs)
	var p MovePhase
	phase := func() (err error) {
		p, err = cl.phase(ctx, o, run, name, patch, func() bool { return started(cl) }, func() (bool, string) { return done(cl) })
		return err
	}
	if w.real == nil && run.Label == defaultsLabel {
		// The harness shares the cores with the controller: where its own CPU goes during the
		// concurrent moves is how the reader's cost was found (seventh stop, BENCHMARKS.md).
		var prof string
		prof, err = selfProfile(w.runDir, ns, phase, "-cum", "-show=couchtest|couchpods|kubelet|main\\.|encoding/json|gcBgMarkWorker")
		p.HarnessProfile = prof
	} else {
		err = phase()
	}
	unreadable, passes := rd.stop()
	if err != nil {
		return p, err
	}
	if passes == 0 {
		return p, fmt.Errorf("%s: the reader never completed a pass over the %d databases", name, len(dbs))
	}
	if unreadable > 0 && w.real == nil {
		return p, fmt.Errorf("%s: %d documents were unreadable through db-0 in one pass while copies moved (%d passes)", name, unreadable, passes)
	}
	// Real nodes: counted and reported, not failed (see renderRealMoves).
	p.Missed, p.MissedPasses = unreadable, rd.missedPasses()
	for i := range staying {
		if bad := cl.unreadable(ctx, fmt.Sprintf("db-%d", i), dbs, o.moveDocs, true); bad > 0 {
			return p, fmt.Errorf("%s: %d documents unreadable through db-%d afterwards", name, bad, i)
		}
	}
	p.Passes = passes
	return p, nil
}

// moveCluster is the cluster whose copies move, seen through its emulated nodes.
type moveCluster struct {
	w      *world
	ns     string
	c      *ctrl
	dbs    []string       // every database, system ones included
	copies map[string]int // database -> copies per range once loaded

	mapsRead map[string]couch.ShardMap // the last read of every map (real nodes: reused for mapsMaxAge)
	mapsAt   time.Time
}

func (cl *moveCluster) nodeName(i int) string {
	return fmt.Sprintf("couchdb@db-%d.db.%s.svc.cluster.local", i, cl.ns)
}

// members is pod 0's _nodes.
func (cl *moveCluster) members() []string {
	return cl.w.clusterNodes(context.Background(), cl.ns, "db-0")
}

func (cl *moveCluster) waitMembers(ctx context.Context, n int) error {
	err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 3*time.Minute, true, func(context.Context) (bool, error) {
		url := cl.w.nodeURL(cl.ns, "db-0")
		return url != "" && len(cl.members()) == n && setupState(ctx, url) == "cluster_finished", nil
	})
	if err != nil {
		// Say why, for the run that cannot be repeated at will: what the controller waits for, and
		// what each node lists in its own _nodes.
		var views []string
		for i := range n {
			pod := fmt.Sprintf("db-%d", i)
			views = append(views, fmt.Sprintf("%s lists %d", pod, len(cl.w.clusterNodes(context.Background(), cl.ns, pod))))
		}
		return fmt.Errorf("%s: %d members and cluster_finished not reached: %w (nodes: %s; controller status: %+v)",
			cl.ns, n, err, strings.Join(views, ", "), cl.c.clusters())
	}
	return nil
}

func (cl *moveCluster) do(ctx context.Context, pod, method, path string, body any) (int, []byte, error) {
	base := cl.w.nodeURL(cl.ns, pod)
	if base == "" {
		return 0, nil, fmt.Errorf("no node for %s/%s", cl.ns, pod)
	}
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, base+path, rd)
	if err != nil {
		return 0, nil, err
	}
	req.SetBasicAuth("admin", benchPassword)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

func docID(i int) string { return fmt.Sprintf("d%05d", i) }

// load creates n databases (q=2, n=3) through pod 0, writes docs documents into each, and waits
// until internal replication has brought every copy to the same documents.
func (cl *moveCluster) load(ctx context.Context, n, docs int) ([]string, error) {
	var dbs []string
	for i := 0; i < n; i++ {
		db := fmt.Sprintf("db%03d", i)
		if code, b, err := cl.do(ctx, "db-0", http.MethodPut, "/"+db+"?q=2&n=3", nil); err != nil || code != http.StatusCreated {
			return nil, fmt.Errorf("create %s: %d %s %v", db, code, b, err)
		}
		var batch []map[string]any
		for j := 0; j < docs; j++ {
			batch = append(batch, map[string]any{"_id": docID(j), "i": j, "db": db})
		}
		if code, b, err := cl.do(ctx, "db-0", http.MethodPost, "/"+db+"/_bulk_docs", map[string]any{"docs": batch}); err != nil || code != http.StatusCreated {
			return nil, fmt.Errorf("write %s: %d %s %v", db, code, b, err)
		}
		dbs = append(dbs, db)
	}
	code, b, err := cl.do(ctx, "db-0", http.MethodGet, "/_all_dbs", nil)
	if err != nil || code != http.StatusOK || json.Unmarshal(b, &cl.dbs) != nil {
		return nil, fmt.Errorf("_all_dbs: %d %s %v", code, b, err)
	}
	err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 2*time.Minute, true, func(context.Context) (bool, error) {
		for _, db := range dbs {
			m, ok := cl.shardMap(db)
			if !ok {
				return false, nil
			}
			total := int64(0)
			for _, rng := range m.Ranges() {
				var counts []int64
				for _, node := range m.ByRange[rng] {
					d, ok := cl.copyDocCount(ctx, podOf(node), m.ShardName(rng))
					if !ok {
						return false, nil
					}
					counts = append(counts, d)
				}
				if slices.Min(counts) != slices.Max(counts) {
					return false, nil
				}
				total += counts[0]
			}
			if total != int64(docs) {
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		return nil, fmt.Errorf("internal replication did not settle after loading: %w", err)
	}
	maps, ok := cl.maps()
	if !ok {
		return nil, fmt.Errorf("a shard map is missing after loading")
	}
	cl.copies = map[string]int{}
	for db, m := range maps {
		for _, rng := range m.Ranges() {
			cl.copies[db] = max(cl.copies[db], len(m.ByRange[rng]))
		}
	}
	return dbs, nil
}

// podOf is the pod of a node named couchdb@<pod>.db.<ns>.svc.cluster.local.
func podOf(node string) string {
	_, host, _ := strings.Cut(node, "@")
	pod, _, _ := strings.Cut(host, ".")
	return pod
}

// copyDocCount is the documents of a node's copy of shard: read in process from an emulated node,
// over HTTP as the admin from a real one.
func (cl *moveCluster) copyDocCount(ctx context.Context, pod, shard string) (int64, bool) {
	if cl.w.real != nil {
		n := cl.w.real.Node(cl.ns, pod)
		if n == nil {
			return 0, false
		}
		d, _, ok := n.CopyDocCount(ctx, "admin", benchPassword, shard)
		return d, ok
	}
	n := cl.w.backend.Node(cl.ns, pod)
	if n == nil {
		return 0, false
	}
	d, _, _ := n.CopyDocCount(shard)
	return d, true
}

// shardMap is db's map as pod 0 holds it: in process from an emulated node, GET
// /_node/_local/_dbs/{db} from a real one.
func (cl *moveCluster) shardMap(db string) (couch.ShardMap, bool) {
	if cl.w.real != nil {
		code, b, err := cl.do(context.Background(), "db-0", http.MethodGet, "/_node/_local/_dbs/"+url.PathEscape(db), nil)
		var m couch.ShardMap
		if err != nil || code != http.StatusOK || json.Unmarshal(b, &m) != nil {
			return couch.ShardMap{}, false
		}
		return m, true
	}
	n := cl.w.backend.Node(cl.ns, "db-0")
	if n == nil {
		return couch.ShardMap{}, false
	}
	return n.ShardMap(db)
}

// maps is every database's shard map as pod 0 holds it, and a read less than mapsMaxAge old is
// reused: the end-state checks poll it (the check and the change detector each read it). On real
// nodes it is one GET per database, made 8 at a time; on emulated ones one read under the network's
// lock, which the emulated nodes' request handling takes too: a lock taken per database, twice per
// poll, made the emulator a bottleneck of the moves it measured (the harness's mutex profile: half
// of all waiting for the network's lock was behind this poll).
func (cl *moveCluster) maps() (map[string]couch.ShardMap, bool) {
	maxAge := mapsMaxAge
	if cl.w.real == nil {
		maxAge = 5 * cl.w.pollEvery()
	}
	if cl.mapsRead != nil && time.Since(cl.mapsAt) < maxAge {
		return cl.mapsRead, true
	}
	if cl.w.real == nil {
		n := cl.w.backend.Node(cl.ns, "db-0")
		if n == nil {
			return nil, false
		}
		out := n.ShardMaps(cl.dbs, cl.mapsRead)
		if len(out) != len(cl.dbs) {
			return nil, false
		}
		cl.mapsRead, cl.mapsAt = out, time.Now()
		return out, true
	}
	got := make([]couch.ShardMap, len(cl.dbs))
	oks := make([]bool, len(cl.dbs))
	sem := make(chan struct{}, 8)
	var wg sync.WaitGroup
	for i, db := range cl.dbs {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			got[i], oks[i] = cl.shardMap(db)
		}()
	}
	wg.Wait()
	out := map[string]couch.ShardMap{}
	for i, db := range cl.dbs {
		if !oks[i] {
			return nil, false
		}
		out[db] = got[i]
	}
	cl.mapsRead, cl.mapsAt = out, time.Now()
	return out, true
}

// mapsMaxAge is how long a read of every map on real nodes is reused.
const mapsMaxAge = 150 * time.Millisecond

// revs is every map's revision, to tell whether anything changed.
func (cl *moveCluster) revs() string {
	maps, _ := cl.maps()
	var b strings.Builder
	for _, db := range cl.dbs {
		b.WriteString(maps[db].Rev)
	}
	return b.String()
}

// rebalanced says whether every database's copies are spread evenly over the five members: each
// range at its n copies, all on members, and each member holding floor or ceil of c/5 of each
// database's c copies. With ok false, why says what is not yet so.
func (cl *moveCluster) rebalanced() (ok bool, why string) {
	members := cl.members()
	if len(members) != 5 {
		return false, fmt.Sprintf("%d members", len(members))
	}
	maps, ok := cl.maps()
	if !ok {
		return false, "a map is missing"
	}
	for _, db := range cl.dbs {
		m := maps[db]
		per := map[string]int{}
		c := 0
		for _, rng := range m.Ranges() {
			if len(m.ByRange[rng]) != cl.n(db) {
				return false, fmt.Sprintf("%s range %s has %d copies", db, rng, len(m.ByRange[rng]))
			}
			for _, node := range m.ByRange[rng] {
				if !slices.Contains(members, node) {
					return false, fmt.Sprintf("%s range %s has a copy on %s, not a member", db, rng, node)
				}
				per[node]++
				c++
			}
		}
		lo, hi := c/len(members), (c+len(members)-1)/len(members)
		for _, node := range members {
			if per[node] < lo || per[node] > hi {
				return false, fmt.Sprintf("%s: %s holds %d of %d copies (want %d..%d)", db, node, per[node], c, lo, hi)
			}
		}
	}
	return true, ""
}

// drained says whether the cluster is back at three members holding every copy.
func (cl *moveCluster) drained() (bool, string) {
	want := []string{cl.nodeName(0), cl.nodeName(1), cl.nodeName(2)}
	members := cl.members()
	sort.Strings(members)
	if !slices.Equal(members, want) {
		return false, fmt.Sprintf("members %v", members)
	}
	maps, ok := cl.maps()
	if !ok {
		return false, "a map is missing"
	}
	for _, db := range cl.dbs {
		m := maps[db]
		for _, rng := range m.Ranges() {
			got := slices.Clone(m.ByRange[rng])
			sort.Strings(got)
			if len(got) != min(cl.n(db), 3) || !isSubset(got, want) {
				return false, fmt.Sprintf("%s range %s on %v", db, rng, got)
			}
		}
	}
	// The StatefulSet as the API server has it, as `kubectl get` shows it: the controller's status
	// page says so only after its next sync, which on a scale-down first waits out its retries of the
	// pod that is going away (0.15-0.2 s at the end of every drain).
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	sts, err := cl.w.kube.AppsV1().StatefulSets(cl.ns).Get(ctx, "db", metav1.GetOptions{})
	if err != nil {
		return false, fmt.Sprintf("StatefulSet: %v", err)
	}
	if r := ptr.Deref(sts.Spec.Replicas, 1); r != 3 {
		return false, fmt.Sprintf("spec.replicas %d", r)
	}
	return true, ""
}

func isSubset(a, b []string) bool {
	for _, x := range a {
		if !slices.Contains(b, x) {
			return false
		}
	}
	return true
}

// n is a database's copies per range before anything moved (every range of a database has the same).
func (cl *moveCluster) n(db string) int { return cl.copies[db] }

// copyBytes is, for each range, what filling a new copy of it moves (couchtest's CopyFillBytes of its
// first copy): the emulator fills it in that many bytes / the fill rate.
func (cl *moveCluster) copyBytes(maps map[string]couch.ShardMap) map[[2]string]float64 {
	out := map[[2]string]float64{}
	if cl.w.backend == nil {
		return out // real nodes: no fill model, no bound
	}
	for db, m := range maps {
		for _, rng := range m.Ranges() {
			if len(m.ByRange[rng]) == 0 {
				continue
			}
			if n := cl.w.backend.Node(cl.ns, podOf(m.ByRange[rng][0])); n != nil {
				if b, ok := n.CopyFillBytes(m.ShardName(rng)); ok {
					out[[2]string{db, rng}] = float64(b)
				}
			}
		}
	}
	return out
}

// phase applies patch to the StatefulSet, waits until started (the moves can begin), then until
// done, and measures the moves between.
func (cl *moveCluster) phase(ctx context.Context, o options, run MoveRun, name, patch string, started func() bool, done func() (bool, string)) (MovePhase, error) {
	p := MovePhase{Name: name}
	cl.mapsRead = nil // a fresh read, not one the loading left
	before, ok := cl.maps()
	if !ok {
		return p, fmt.Errorf("%s: could not read the maps before", name)
	}
	sizes := cl.copyBytes(before)
	t0 := time.Now()
	if _, err := cl.w.kube.AppsV1().StatefulSets(cl.ns).Patch(ctx, "db", types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		return p, err
	}
	if err := wait.PollUntilContextTimeout(ctx, 5*time.Millisecond, 3*time.Minute, true, func(context.Context) (bool, error) { return started(), nil }); err != nil {
		return p, fmt.Errorf("%s: the new nodes did not join", name)
	}
	p.Setup = time.Since(t0).Seconds()
	t1 := time.Now()
	m0 := cl.c.get("/metrics")
	cpu0 := cpuSeconds(cl.c.pid())
	for i := 0; cl.w.backend != nil && i < 5; i++ {
		if n := cl.w.backend.Node(cl.ns, fmt.Sprintf("db-%d", i)); n != nil {
			n.ResetRequests()
		}
	}
	var why string
	profile := make(chan string, 1)
	go func() { profile <- cl.c.pprofTop("moves-cpu", "/debug/pprof/profile?seconds=10") }()
	// The controller going idle (no map changing for a minute) short of the end state fails the run
	// at once, saying what is not so.
	revs, changed, logged := cl.revs(), time.Now(), time.Now()
	err := wait.PollUntilContextTimeout(ctx, 10*cl.w.pollEvery(), 20*time.Minute, true, func(context.Context) (bool, error) {
		var ok bool
		if ok, why = done(); ok {
			return true, nil
		}
		if r := cl.revs(); r != revs {
			revs, changed = r, time.Now()
		}
		if time.Since(logged) > 10*time.Second {
			logged = time.Now()
			fmt.Fprintf(os.Stderr, "bench: %s %s: %.0f s, not yet: %s\n", cl.ns, name, time.Since(t1).Seconds(), why)
		}
		if time.Since(changed) > time.Minute {
			return false, fmt.Errorf("no shard map changed for a minute")
		}
		return false, nil
	})
	if err != nil {
		return p, fmt.Errorf("%s: end state not reached (%v): %s; controller status: %+v", name, err, why, cl.c.clusters())
	}
	p.Wall = time.Since(t1).Seconds()
	p.CPU = cpuSeconds(cl.c.pid()) - cpu0
	m1 := cl.c.get("/metrics")
	p.Profile = <-profile
	if m1 == "" {
		// A controller that died (a panic) leaves the moves it started to finish on their own.
		return p, fmt.Errorf("%s: the controller no longer serves metrics at the end (see %s)", name, filepath.Join(cl.c.runDir, "controller-"+cl.c.name+".log"))
	}
	delta := func(name, match string) float64 { return metricSum(m1, name, match) - metricSum(m0, name, match) }
	p.Requests = delta("couchdb_controller_couchdb_requests_total", "")
	p.Syncs = delta("couchdb_controller_syncs_total", "")
	p.SyncBusy = delta("couchdb_controller_sync_duration_seconds_sum", "")
	p.Actions = map[string]float64{}
	for _, kind := range []string{"AddCopy", "SyncShards", "RemoveCopy", "SetMaintenance", "RemoveNode", "ScaleDown", "SetDecom"} {
		if v := delta("couchdb_controller_actions_total", `action="`+kind+`",result="success"`); v > 0 {
			p.Actions[kind] = v
		}
	}
	p.Paths = cl.requestKinds()

	cl.mapsRead = nil
	after, ok := cl.maps()
	if !ok {
		return p, fmt.Errorf("%s: could not read the maps after", name)
	}
	gain, lose := map[string]bool{}, map[string]bool{}
	for db, m := range after {
		for _, rng := range m.Ranges() {
			for _, node := range m.ByRange[rng] {
				if !before[db].HasCopy(rng, node) {
					p.Copies++
					gain[node] = true
					if o.fillRate > 0 {
						p.FillSum += sizes[[2]string{db, rng}] / o.fillRate
					}
				}
			}
			for _, node := range before[db].ByRange[rng] {
				if !m.HasCopy(rng, node) {
					p.Removed++
					lose[node] = true
				}
			}
		}
	}
	// At most MaxMoves fills at once, and each node takes part in at most FillsPerNode, as target or
	// as the staying holder of the copy being dropped; a node that leaves (it holds nothing after: a
	// drain) takes no slot for its copies (placement's countsAsFill).
	staying := map[string]bool{}
	for _, m := range after {
		for _, node := range m.Nodes() {
			staying[node] = true
		}
	}
	losing := 0
	for node := range lose {
		if staying[node] {
			losing++
		}
	}
	bound := min(run.MaxMoves, run.FillsPerNode*len(gain))
	if losing > 0 {
		bound = min(bound, run.FillsPerNode*losing)
	}
	p.Concurrency = max(1, bound)
	return p, nil
}

var (
	shardPath = regexp.MustCompile(`shards%2F[^/]+`)
	nodePath  = regexp.MustCompile(`couchdb@[^/]+`)
	dbPath    = regexp.MustCompile(`^/db\d+|/_dbs/[^/_][^/]*`)
)

// requestKinds is what the cluster's nodes were asked since their counters were reset, by method and
// path with database, shard and node names replaced, most frequent first: the readiness probes and
// the bench's own reader excluded, this is the controller's work.
func (cl *moveCluster) requestKinds() []PathCount { return requestKinds(cl.w, cl.ns, 5) }

func requestKinds(w *world, ns string, pods int) []PathCount {
	if w.backend == nil {
		return nil // real nodes: not counted
	}
	counts := map[string]int{}
	for i := 0; i < pods; i++ {
		n := w.backend.Node(ns, fmt.Sprintf("db-%d", i))
		if n == nil {
			continue
		}
		for path, c := range n.Requests().ByPath {
			if path == "GET /_up" || strings.HasSuffix(path, "/_all_docs") {
				continue
			}
			method, p, _ := strings.Cut(path, " ")
			p = shardPath.ReplaceAllString(p, "{shard}")
			p = nodePath.ReplaceAllString(p, "{node}")
			p = dbPath.ReplaceAllStringFunc(p, func(m string) string {
				if strings.HasPrefix(m, "/_dbs/") {
					return "/_dbs/{db}"
				}
				return "/{db}"
			})
			p = strings.ReplaceAll(p, "%2F", "/")
			counts[method+" "+p] += c
		}
	}
	return sortCounts(counts)
}

func sortCounts(counts map[string]int) []PathCount {
	var out []PathCount
	for k, v := range counts {
		out = append(out, PathCount{k, v})
	}
	sort.Slice(out, func(i, j int) bool {
		return out[i].Count > out[j].Count || out[i].Count == out[j].Count && out[i].Path < out[j].Path
	})
	return out
}

// reader lists every document of every database through pod 0 over and over (_all_docs, one request
// per database) and keeps the most documents missing in one pass. It reads the ids, not the bodies:
// a copy still filling lacks whole documents, which its _all_docs rows show as well, and the bodies
// made the reader the largest consumer of the shared cores (with the bodies, the bench process spent
// 45% of its CPU in the reader and in the emulated nodes' answers to it, 7 MB of JSON per pass).
// The documents are read with their content through every staying node at the end.
type reader struct {
	worst  atomic.Int64
	passes atomic.Int64
	missed atomic.Int64 // passes that missed any document
	quit   chan struct{}
	done   sync.WaitGroup
}

func (r *reader) missedPasses() int { return int(r.missed.Load()) }

func (cl *moveCluster) startReader(dbs []string, docs int) *reader {
	r := &reader{quit: make(chan struct{})}
	r.done.Add(1)
	go func() {
		defer r.done.Done()
		for {
			select {
			case <-r.quit:
				return
			default:
			}
			bad := cl.unreadable(context.Background(), "db-0", dbs, docs, false)
			if int64(bad) > r.worst.Load() {
				r.worst.Store(int64(bad))
			}
			if bad > 0 {
				r.missed.Add(1)
			}
			r.passes.Add(1)
			time.Sleep(100 * time.Millisecond) // pacing: the reader shares the cores with the controller
		}
	}()
	return r
}

func (r *reader) stop() (worst, passes int) {
	close(r.quit)
	r.done.Wait()
	return int(r.worst.Load()), int(r.passes.Load())
}

// docIndex parses a loaded document's id, "d" and five digits (fmt.Sscanf took 4% of the bench
// process's CPU in the reader, on the cores the controller shares).
func docIndex(id string) (int, bool) {
	if len(id) != 6 || id[0] != 'd' {
		return 0, false
	}
	i := 0
	for _, c := range id[1:] {
		if c < '0' || c > '9' {
			return 0, false
		}
		i = i*10 + int(c-'0')
	}
	return i, true
}

// listedIDs counts the distinct loaded documents (d00000 up to docs) an _all_docs body without
// include_docs lists: the row ids, found as "id":" (a row is {"id":...,"key":...,"value":{"rev":...}},
// and nothing else in such a body has that name). The reader lists 20,000 rows every pass, and
// decoding them with encoding/json was a quarter of the bench process's CPU during a drain, on the
// cores the controller shares. A body cut short lists fewer: counted as missing, never as read.
func listedIDs(body []byte, docs int) int {
	marker := []byte(`"id":"`)
	seen := make([]bool, docs)
	n := 0
	for {
		i := bytes.Index(body, marker)
		if i < 0 {
			return n
		}
		body = body[i+len(marker):]
		end := bytes.IndexByte(body, '"')
		if end < 0 {
			return n
		}
		if k, ok := docIndex(string(body[:end])); ok && k < docs && !seen[k] {
			seen[k] = true
			n++
		}
		body = body[end+1:]
	}
}

// unreadable counts the documents of dbs that pod does not list, or with withDocs cannot return with
// the content written.
func (cl *moveCluster) unreadable(ctx context.Context, pod string, dbs []string, docs int, withDocs bool) int {
	path := "/_all_docs"
	if withDocs {
		path += "?include_docs=true"
	}
	bad := 0
	for _, db := range dbs {
		code, b, err := cl.do(ctx, pod, http.MethodGet, "/"+db+path, nil)
		if !withDocs {
			if err != nil || code != http.StatusOK {
				bad += docs
				continue
			}
			bad += docs - listedIDs(b, docs)
			continue
		}
		var body struct {
			Rows []struct {
				ID  string `json:"id"`
				Doc *struct {
					I  int    `json:"i"`
					DB string `json:"db"`
				} `json:"doc"`
			} `json:"rows"`
		}
		if err != nil || code != http.StatusOK || json.Unmarshal(b, &body) != nil {
			bad += docs
			continue
		}
		seen := map[string]bool{}
		for _, row := range body.Rows {
			i, ok := docIndex(row.ID)
			if !ok || i >= docs {
				continue
			}
			if withDocs && (row.Doc == nil || row.Doc.I != i || row.Doc.DB != db) {
				continue
			}
			seen[row.ID] = true
		}
		bad += docs - len(seen)
	}
	return bad
}
