package couchtest

import "time"

// mem3_shards' cache of shard maps, behind a node's _dbs.
//
// CouchDB does not read a node's _dbs when it lists the copies of a database: mem3_shards keeps the
// maps in an ets table that a changes listener on _dbs refreshes (mem3_shards:listen_for_changes,
// changes_callback, cache_insert), one change after another. POST /{db}/_sync_shards lists its
// pairs from that table (mem3_httpd:handle_sync_req: mem3:ushards, mem3_shards:for_shard_range) and
// casts one mem3_sync push per pair; a copy the table does not list yet gets none, then or later,
// and stays empty until another _sync_shards or a write to the range. With
// NetworkOptions.ShardCacheLag the emulator's nodes list a _dbs change that long after their _dbs
// has it, a burst of changes one after another, as the single listener does.

// listLater sets when the node's cache lists d, the change about to be stored as db's map doc, and
// what it lists until then.
func (n *Node) listLater(db string, d *mapDoc) {
	lag := n.net.opts.ShardCacheLag
	if lag <= 0 {
		return
	}
	now := time.Now()
	d.prev = listedChain(n.dbsDB[db], now)
	// The listener hears of the change ShardCacheDelay after it, then takes changes in order: this
	// one waits for those before it.
	at := n.cacheBusy
	if heard := now.Add(n.net.opts.ShardCacheDelay); at.Before(heard) {
		at = heard
	}
	at = at.Add(lag)
	n.cacheBusy = at
	d.listed = at
}

// listedChain copies d and the docs before it down to the newest one listed by now, which ends the
// chain: nothing older is listed again.
func listedChain(d *mapDoc, now time.Time) *mapDoc {
	if d == nil {
		return nil
	}
	c := *d
	if now.Before(d.listed) {
		c.prev = listedChain(d.prev, now)
	} else {
		c.prev = nil
	}
	return &c
}

// shardCache is db's map doc as the node's mem3_shards cache lists it now (nil: not at all).
func (n *Node) shardCache(db string) *mapDoc {
	d := n.dbsDB[db]
	if d == nil || d.listed.IsZero() {
		return d
	}
	now := time.Now()
	for d != nil && now.Before(d.listed) {
		d = d.prev
	}
	return d
}

// RecordedShardCacheDelay and RecordedShardCacheLag are a ShardCacheDelay and ShardCacheLag like
// CouchDB 3.4.3's on the recorded 2-core machine (TestRealSyncShardsRightAfterMapEdit): a single
// edit was listed 3-56 ms after its PUT answered on the node that took it; of a wave of 20 edits
// written at once on one node, the first was listed 20 ms, the median 28 ms and the last 314 ms
// after the last PUT answered, and when the 20 posts followed at once, 12 of the 20 new copies got
// no push at all. 15 ms to hear of a change and 1 ms per change put a single edit at 16 ms and a
// wave of 20 at 16-35 ms (the few stragglers of the recorded wave, up to 314 ms, are not modelled).
// The harnesses that run the controller set them, so that a controller which posts before the
// cache lists its copies stalls there as it does on real nodes.
const (
	RecordedShardCacheDelay = 15 * time.Millisecond
	RecordedShardCacheLag   = time.Millisecond
)
