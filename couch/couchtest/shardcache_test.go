package couchtest

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/couchdb-controller/couchdb-controller/couch"
)

// cacheLagCluster is 3 formed nodes with the given NetworkOptions, internal replication run only
// when asked (no sync after writes within the test).
func cacheLagCluster(t *testing.T, opts NetworkOptions) (*Network, []*Node, []*couch.Client) {
	t.Helper()
	opts.SyncDelay, opts.PasswordIterations = time.Hour, 10
	return formedThree(t, opts)
}

// waitListed waits until the node's mem3_shards cache lists every _dbs change it has.
func waitListed(t *testing.T, nd *Node) {
	t.Helper()
	waitUntil(t, nd.Name()+"'s shard cache to list its _dbs", func() bool {
		nd.net.mu.Lock()
		defer nd.net.mu.Unlock()
		return time.Now().After(nd.cacheBusy)
	})
}

// A _sync_shards lists its pairs from its node's mem3_shards cache, which lists a _dbs change
// ShardCacheLag after the node has it (after DBsPushDelay on the other nodes): posted sooner, it
// pushes nothing to the new copy, then or later.
func TestSyncShardsUsesTheShardCache(t *testing.T) {
	for name, tc := range map[string]struct {
		lag, push  time.Duration // ShardCacheLag, DBsPushDelay
		delay      time.Duration // ShardCacheDelay
		postOnEdit bool          // the POST goes to the node that made the edit, else to another
		wait       time.Duration // between the edit's answer and the POST
		fills      bool
	}{
		"no lag, POST at once on the edit node":           {postOnEdit: true, fills: true},
		"POST at once on the edit node":                   {lag: 300 * time.Millisecond, postOnEdit: true},
		"POST on the edit node after the lag":             {lag: 50 * time.Millisecond, postOnEdit: true, wait: 250 * time.Millisecond, fills: true},
		"POST at once on a node the edit has not reached": {push: 300 * time.Millisecond},
		"POST on another node after push and lag":         {lag: 50 * time.Millisecond, push: 50 * time.Millisecond, wait: 300 * time.Millisecond, fills: true},
		"POST at once, the listener not told yet":         {lag: time.Millisecond, delay: 300 * time.Millisecond, postOnEdit: true},
		"POST after the listener was told":                {lag: time.Millisecond, delay: 50 * time.Millisecond, postOnEdit: true, wait: 250 * time.Millisecond, fills: true},
	} {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			nw, nodes, clients := cacheLagCluster(t, NetworkOptions{ShardCacheLag: tc.lag, ShardCacheDelay: tc.delay, DBsPushDelay: tc.push})
			if err := clients[0].CreateDB(ctx, "db", 1, 2); err != nil {
				t.Fatal(err)
			}
			bulk(t, clients[0], "db", 20, 10)
			time.Sleep(tc.push)
			for _, nd := range nodes {
				waitListed(t, nd) // the formation's and the creation's changes
			}
			target, shard := addCopy(t, nw, clients[0], "db")
			post := clients[0]
			if !tc.postOnEdit {
				post = clients[1]
			}
			time.Sleep(tc.wait)
			if err := post.SyncShards(ctx, "db"); err != nil {
				t.Fatal(err)
			}
			if tc.fills {
				waitUntil(t, "the new copy to fill", func() bool { d, _, _ := target.CopyDocCount(shard); return d == 20 })
				return
			}
			// Past the lag and the push: nothing comes later either.
			time.Sleep(tc.lag + tc.delay + tc.push + 200*time.Millisecond)
			if d, _, _ := target.CopyDocCount(shard); d != 0 {
				t.Errorf("the new copy has %d docs; want 0 (the POST's node did not list it)", d)
			}
		})
	}
}

// mem3_shards' one listener lists a burst of _dbs changes one after another: of two edits made at
// once on one node, the second is listed a lag after the first, and a _sync_shards between the two
// fills only the first database's new copy.
func TestShardCacheListsABurstInOrder(t *testing.T) {
	ctx := context.Background()
	const lag = 200 * time.Millisecond
	nw, nodes, clients := cacheLagCluster(t, NetworkOptions{ShardCacheLag: lag})
	for _, db := range []string{"a", "b"} {
		if err := clients[0].CreateDB(ctx, db, 1, 2); err != nil {
			t.Fatal(err)
		}
		bulk(t, clients[0], db, 10, 10)
	}
	waitListed(t, nodes[0]) // the formation's and the creations' changes
	ta, sa := addCopy(t, nw, clients[0], "a")
	tb, sb := addCopy(t, nw, clients[0], "b")
	time.Sleep(lag * 3 / 2) // a listed (at lag), b not (at 2 lag)
	for _, db := range []string{"a", "b"} {
		if err := clients[0].SyncShards(ctx, db); err != nil {
			t.Fatal(err)
		}
	}
	waitUntil(t, "a's new copy to fill", func() bool { d, _, _ := ta.CopyDocCount(sa); return d == 10 })
	if d, _, _ := tb.CopyDocCount(sb); d != 0 {
		t.Errorf("b's new copy has %d docs before b's edit was listed", d)
	}
	time.Sleep(lag)
	if err := clients[0].SyncShards(ctx, "b"); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "b's new copy to fill after a later _sync_shards", func() bool { d, _, _ := tb.CopyDocCount(sb); return d == 10 })
}

// GET /{db}/_shards answers from the same cache (mem3_httpd:handle_shards_req reads mem3:shards): a
// new copy shows there once the cache lists it, which is what a client waits for before posting.
func TestShardsAnswersFromTheCache(t *testing.T) {
	ctx := context.Background()
	const delay = 200 * time.Millisecond
	nw, nodes, clients := cacheLagCluster(t, NetworkOptions{ShardCacheLag: time.Millisecond, ShardCacheDelay: delay})
	if err := clients[0].CreateDB(ctx, "db", 1, 2); err != nil {
		t.Fatal(err)
	}
	waitListed(t, nodes[0])
	target, _ := addCopy(t, nw, clients[0], "db")
	lists := func() bool {
		shards, err := clients[0].Shards(ctx, "db")
		if err != nil {
			t.Fatal(err)
		}
		for _, nodes := range shards {
			if slices.Contains(nodes, target.Name()) {
				return true
			}
		}
		return false
	}
	if lists() {
		t.Fatal("_shards lists the new copy right after the edit")
	}
	waitUntil(t, "_shards to list the new copy", lists)
}
