package controller

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/couchdb-controller/couchdb-controller/couch/couchtest"
)

// TestPostWaitsForTheShardCacheToListNewCopies: with mem3_shards' cache a while behind _dbs (as on
// CouchDB 3.4.3, where a post the cache does not list a new copy for pushes nothing to it), the
// _sync_shards that follows a map edit goes out once GET /{db}/_shards lists the new copies, and
// the copies fill from that one post. No write-triggered push runs (internal replication after an
// hour), so a post that came too soon would leave them empty.
func TestPostWaitsForTheShardCacheToListNewCopies(t *testing.T) {
	for _, lag := range []time.Duration{0, 40 * time.Millisecond, 150 * time.Millisecond} {
		t.Run(fmt.Sprint(lag), func(t *testing.T) {
			f := newFixture(t)
			f.network = couchtest.NewNetwork(couchtest.NetworkOptions{SyncDelay: time.Hour, ShardCacheLag: lag, PasswordIterations: 1000})
			f.formed3()
			f.createDB(0, "db1", 4, 2, 40)
			// Formation and creation wrote several maps, each listed lag after the one before.
			for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
				if _, err := f.admin(0).Shards(f.ctx, "db1"); err == nil {
					break
				}
			}
			m, _ := f.node(0).ShardMap("db1")
			var plan []Action
			targets := map[string]int{} // range -> the ordinal taking its new copy
			for _, rng := range m.Ranges() {
				for i := range 3 {
					if !m.HasCopy(rng, escapedNode(i)) {
						plan = append(plan, Action{Kind: ActAddCopy, Via: 0, DB: "db1", Range: rng, Node: escapedNode(i), NodeCount: 2})
						targets[rng] = i
						break
					}
				}
			}
			plan = append(plan, Action{Kind: ActSyncShards, Via: 0, DB: "db1"})
			if took := f.applyThroughPod0(plan); took > lag+time.Second/2 {
				t.Errorf("applyActions took %v with a cache %v behind", took, lag)
			}
			reads := 0
			for _, c := range f.couchCalls() {
				if c.Method == "GET" && c.Path == "/db1/_shards" {
					reads++
				}
			}
			if reads == 0 || lag > 0 && reads < 2 {
				t.Errorf("%d reads of /db1/_shards before the post, cache %v behind", reads, lag)
			}
			m, _ = f.node(0).ShardMap("db1")
			deadline := time.Now().Add(2 * time.Second)
			for _, a := range plan[:len(plan)-1] {
				shard := m.ShardName(a.Range)
				var want int64
				for i := range 3 {
					if i != targets[a.Range] {
						want = max(want, copyTotal(f.node(i), shard))
					}
				}
				target := f.node(targets[a.Range])
				for copyTotal(target, shard) != want && time.Now().Before(deadline) {
					time.Sleep(10 * time.Millisecond)
				}
				if got := copyTotal(target, shard); got != want || want <= 0 {
					t.Errorf("new copy %s on %s holds %d of %d documents after the post", shard, a.Node, got, want)
				}
			}
		})
	}
}

// slowNeverListing answers GET /{db}/_shards slowly and never with the new copies: a node whose
// cache is stuck, or an edit another writer undid.
type slowNeverListing struct{ CouchAPI }

func (slowNeverListing) Shards(context.Context, string) (map[string][]string, error) {
	time.Sleep(100 * time.Millisecond)
	return map[string][]string{}, nil
}

// neverListing makes every node the controller asks from now on a slowNeverListing one (the
// clients made before are dropped).
func (f *fixture) neverListing() {
	f.wrap = func(_ string, api CouchAPI) CouchAPI { return slowNeverListing{api} }
	f.c.mu.Lock()
	for _, st := range f.c.clusters {
		st.clients = map[string]CouchAPI{}
	}
	f.c.mu.Unlock()
}

// TestPostGoesAnywayAfterTheListingWait: the wait is bounded by time, however slowly the node
// answers, and the post then goes out (the fill clock's early repush covers a post that missed).
func TestPostGoesAnywayAfterTheListingWait(t *testing.T) {
	f := newFixture(t)
	f.formed3()
	f.createDB(0, "db1", 1, 2, 10)
	f.neverListing()
	m, _ := f.node(0).ShardMap("db1")
	rng := m.Ranges()[0]
	target := ""
	for i := range 3 {
		if !m.HasCopy(rng, escapedNode(i)) {
			target = escapedNode(i)
		}
	}
	plan := []Action{{Kind: ActAddCopy, Via: 0, DB: "db1", Range: rng, Node: target, NodeCount: 2}, {Kind: ActSyncShards, Via: 0, DB: "db1"}}
	if took := f.applyThroughPod0(plan); took < listWait || took > listWait+time.Second/2 {
		t.Errorf("applyActions took %v, want about listWait (%v)", took, listWait)
	}
	posted := false
	for _, c := range f.couchCalls() {
		posted = posted || c.Method == "POST" && c.Path == "/db1/_sync_shards"
	}
	if !posted {
		t.Error("no _sync_shards after the wait ran out")
	}
}

// applyThroughPod0 applies plan as a sync that observed only db-0 would, with the call log reset
// first, and says how long it took, the posts beside it (asyncpost.go) included.
func (f *fixture) applyThroughPod0(plan []Action) time.Duration {
	f.t.Helper()
	st, sts := f.c.state(key), f.cachedStatefulSet()
	o := Observed{Namespace: testNS, StatefulSet: "db", Pods: map[int]*PodObs{0: podObs(f.cachedPod("db-0"), 0, 5984)}}
	f.resetCalls()
	start := time.Now()
	if err := f.c.applyActions(f.ctx, key, st, sts, o, plan); err != nil {
		f.t.Fatal(err)
	}
	st.posts.wait()
	return time.Since(start)
}
