package controller

import (
	"context"
	"slices"
	"time"

	"k8s.io/klog/v2"

	"github.com/couchdb-controller/couchdb-controller/couch"
)

// A POST /{db}/_sync_shards pushes only between the copies its node's mem3_shards cache lists
// (mem3_httpd:handle_sync_req reads mem3:ushards and mem3_shards:for_shard_range, not _dbs), and
// that cache follows _dbs through one changes listener, one change at a time. On CouchDB 3.4.3 a
// single edit was listed 3-56 ms after its PUT answered on the node that took it, and when 20
// edits and then their 20 posts went to one node at once, 16 of the 20 new copies got no push at
// all and stayed empty until the next post (test/couchpods TestRealSyncShardsRightAfterMapEdit).
// A concurrent move writes up to --max-concurrent-moves maps in one wave and posts right after,
// which is that case. So a post that follows an edit adding copies first waits, up to listWait,
// for GET /{db}/_shards on the same node (the same cache) to list them, beside the sync
// (asyncpost.go). If the wait runs out, the post goes anyway and the fill clock's early repush
// (emptyRepushAfter) covers it.

const (
	listPoll = 2 * time.Millisecond
	listWait = time.Second
)

// awaitListed waits until api, the node that takes post (db's _sync_shards), lists every copy of
// adds, or listWait has passed, or the node cannot say. It runs beside the sync (asyncpost.go).
func awaitListed(ctx context.Context, api CouchAPI, post Action, adds []Action) {
	start := time.Now()
	// Bounded by the time, not the number of polls: on a loaded node one GET can take 100 ms.
	for polls := 1; time.Since(start) < listWait; polls++ {
		shards, err := api.Shards(ctx, post.DB)
		if err != nil && !couch.IsNotFound(err) || err == nil && allListed(shards, adds) {
			// a 404 is a database the cache does not list yet
			klog.FromContext(ctx).V(4).Info("Shard cache listed the new copies", "db", post.DB, "copies", len(adds), "after", time.Since(start), "polls", polls, "err", err)
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(listPoll):
		}
	}
	klog.FromContext(ctx).V(2).Info("Shard cache did not list the new copies: posting anyway", "db", post.DB, "copies", len(adds), "waited", time.Since(start))
}

// allListed says whether shards (range -> nodes, as GET /{db}/_shards answers) lists every copy of
// adds.
func allListed(shards map[string][]string, adds []Action) bool {
	for _, a := range adds {
		if !slices.Contains(shards[a.Range], a.Node) {
			return false
		}
	}
	return true
}
