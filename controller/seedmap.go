package controller

import (
	"context"
	"sort"

	"k8s.io/klog/v2"

	"github.com/couchdb-controller/couchdb-controller/couch"
)

// CouchDB creates a new copy's file on its node only when a push into it finds the database in
// that node's own _dbs (mem3_util:get_or_create_db_int via mem3_shards:opts_for_db); otherwise the
// push fails with missing_target and mem3_sync drops it. A node gets _dbs from the others through
// mem3's ring of pushes (each node pushes to the next in _nodes), and on CouchDB 3.4.3 the push
// into a node that had just joined once hung for 60 s, until rexi killed it: every push into the
// new copies of the rebalance onto the two new nodes failed meanwhile (1,752 missing_target on each
// old node), and the moves waited a minute on copies no post could create.
//
// So when the fill clock has found a watched copy without a file for emptyRepushAfter after its
// map edit (fillClock.uncreated), the post of its database first copies the map from the node
// that takes the post into that node's _dbs, revision included, as mem3's own push would, if that
// node has no map of the database at all. A node that has one (even an older revision) is left to
// mem3: it knows the database, so pushes into it create the copy.

// seedMaps copies db's shard map from api's node into the _dbs of each node of targets that has
// none. It runs beside the sync, before the post; failures leave things as they were (the post
// and the fill clock's repush go on as before).
func seedMaps(ctx context.Context, api CouchAPI, db string, targets map[string]CouchAPI) {
	if len(targets) == 0 {
		return
	}
	logger := klog.FromContext(ctx)
	m, err := api.GetShardMap(ctx, db)
	if err != nil {
		logger.V(2).Info("Could not read a shard map to copy", "db", db, "err", err)
		return
	}
	nodes := make([]string, 0, len(targets))
	for n := range targets {
		nodes = append(nodes, n)
	}
	sort.Strings(nodes)
	for _, node := range nodes {
		t := targets[node]
		if _, err := t.GetShardMap(ctx, db); err == nil || !couch.IsNotFound(err) {
			continue // it knows the database, or cannot say
		}
		if err := t.SeedShardMap(ctx, m); err != nil {
			logger.Info("Could not copy a shard map into a node's _dbs", "db", db, "node", node, "err", err)
			continue
		}
		logger.Info("Copied a shard map into a node whose _dbs lacked it: CouchDB refuses pushes into its new copies (missing_target) until mem3 brings it there",
			"db", db, "node", node, "rev", m.Rev)
	}
}
