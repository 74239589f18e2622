package controller

import (
	"context"
	"sort"
	"strconv"
	"time"

	"github.com/couchdb-controller/couchdb-controller/couch"
)

// The shard maps are read through one node's _dbs changes feed: the first read of a coordinator
// process takes every map in one request, later ones only the maps written since (the controller's
// own edits included). A move benchmark over 100 databases spent two thirds of its requests and most
// of each sync re-reading maps that had not changed; a database is one map document, so the feed is
// exact. A node-local sequence only means something for the _dbs file it came from, so the cache
// belongs to one coordinator process (node name and pod identity: a new pod, IP or container restart
// reads everything again), and everything is read again every mapsFullRead anyway.

// mapsFullRead bounds how long maps are only read incrementally.
const mapsFullRead = 10 * time.Minute

type shardMapCache struct {
	source string // node name and pod identity of the coordinator the maps were read through
	since  string // that node's _dbs last_seq at the last read
	maps   map[string]couch.ShardMap
	fullAt time.Time
}

// readShardMaps returns every clustered database's name (sorted) and map, as coord's _dbs has them
// now. The returned map is the controller's own copy: callers must not change it.
func (c *Controller) readShardMaps(ctx context.Context, st *clusterState, api CouchAPI, coord *NodeObs, identity string) ([]string, map[string]couch.ShardMap, error) {
	mc := &st.mapCache
	source := coord.Name + "\x00" + identity
	now := c.cfg.Now()
	full := mc.source != source || mc.maps == nil || now.Sub(mc.fullAt) >= mapsFullRead
	since := mc.since
	if full {
		since = "0"
	}
	ch, err := api.ShardMapsSince(ctx, since)
	if err != nil {
		return nil, nil, err
	}
	if !full && seqBefore(ch.LastSeq, mc.since) {
		// The node's _dbs went back in time (a different file behind the same identity): start over.
		full = true
		if ch, err = api.ShardMapsSince(ctx, "0"); err != nil {
			return nil, nil, err
		}
	}
	var maps map[string]couch.ShardMap
	if full {
		maps = map[string]couch.ShardMap{}
		mc.fullAt = now
	} else {
		// Copy on write: the Observed of the last sync may still hold the old map (status, metrics).
		maps = make(map[string]couch.ShardMap, len(mc.maps)+len(ch.Maps))
		for db, m := range mc.maps {
			maps[db] = m
		}
	}
	for _, db := range ch.Deleted {
		delete(maps, db)
	}
	for db, m := range ch.Maps {
		maps[db] = m
	}
	mc.source, mc.since, mc.maps = source, ch.LastSeq, maps
	dbs := make([]string, 0, len(maps))
	for db := range maps {
		dbs = append(dbs, db)
	}
	sort.Strings(dbs)
	return dbs, maps, nil
}

// seqBefore says whether sequence a is older than b, for the integer sequences node-local databases
// have; anything else is never older (an opaque sequence is trusted, the full read bounds it).
func seqBefore(a, b string) bool {
	x, errA := strconv.ParseInt(a, 10, 64)
	y, errB := strconv.ParseInt(b, 10, 64)
	return errA == nil && errB == nil && x < y
}
