package couchtest

import "time"

// Slow internal replication for one node.
//
// A restarted CouchDB node gets the writes it missed only from the other copies' mem3 pushes; the
// writes taken while it runs reach its copies directly (the coordinator writes to every live
// copy). How long those pushes take to come is not fixed: mem3_sync waits [mem3] sync_delay after a
// change, runs at most [mem3] concurrent_jobs pushes at once across every shard of the node, and
// the recorded restart (couchdb-real-shards.md 5b) had its copy behind for 4.16 s after the start
// command, 2.3 s after it answered /_up, with three writes to catch up. The emulator's sync rounds
// run as soon as NetworkOptions.SyncDelay says, which on a test's short delay makes a restarted
// node's copies whole before anyone can look. SetSyncDelay gives one node CouchDB's slower pace,
// or a much slower one (a node with thousands of shards in mem3_sync's queue), so a test can see
// its copies behind and what a client or the controller does meanwhile.

// SetSyncDelay holds back every internal-replication push into or out of the node's shard copies:
// each starts d after the sync round that would have started it. While one is held, later rounds
// join it rather than queue another (mem3_sync keeps one pending push per pair of copies), and
// when it starts it pushes what the source copy holds then. Its checkpoint is written only when the
// push completes, so the _local/shard-sync-* documents show the lag as CouchDB's do. Writes through
// the clustered API still land on the node's copies at once. The delay stays across restarts; zero
// turns it off for pushes not yet held.
func (n *Node) SetSyncDelay(d time.Duration) {
	n.net.mu.Lock()
	defer n.net.mu.Unlock()
	n.syncDelay = max(d, 0)
}

// SyncDelay is the delay SetSyncDelay set.
func (n *Node) SyncDelay() time.Duration {
	n.net.mu.Lock()
	defer n.net.mu.Unlock()
	return n.syncDelay
}

// holdPush defers the push from sc on src to dc on dst when either node has a sync delay, and
// reports whether it did. The held push checks again, when it starts, that both nodes still run
// the process they ran when it was held and still hold those copies: a push to a node that stopped
// meanwhile failed in CouchDB (the node's next start brings a new round), and a copy deleted
// meanwhile (its database, or a move) is not refilled.
func (nw *Network) holdPush(db string, src *Node, sc *shardCopy, dst *Node, dc *shardCopy) bool {
	d := max(src.syncDelay, dst.syncDelay)
	if d <= 0 {
		return false
	}
	key := pushKey(sc, dc)
	h := &heldPush{srcRun: src.started, dstRun: dst.started}
	if cur := nw.held[key]; cur != nil && *cur == *h {
		return true
	}
	// A push held for earlier runs of either node is void: it would be dropped when its time comes,
	// so this round's push is held afresh rather than joined to it.
	nw.held[key] = h
	time.AfterFunc(d, func() {
		nw.mu.Lock()
		defer nw.mu.Unlock()
		if nw.held[key] != h {
			return
		}
		delete(nw.held, key)
		if !nw.connected(src, dst) || src.started != h.srcRun || dst.started != h.dstRun || !src.holds(sc) || !dst.holds(dc) {
			return
		}
		since := 0
		if cp, ok := sc.local[checkpointID(sc.uuid, dc.uuid)]; ok {
			since, _ = cp["seq"].(int)
		}
		if sc.seq > since {
			nw.pushNow(db, src, sc, dst, dc, since, sc.seq)
		}
	})
	return true
}

// heldPush is one pair's push waiting out a sync delay, for the runs of its two nodes it was held in.
type heldPush struct{ srcRun, dstRun time.Time }

// holds reports whether c is one of the node's current shard copies.
func (n *Node) holds(c *shardCopy) bool {
	for _, o := range n.copies {
		if o == c {
			return true
		}
	}
	return false
}
