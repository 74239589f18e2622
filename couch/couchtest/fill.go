package couchtest

import (
	"sort"
	"time"
)

// Copy sizes and fill times.
//
// A shard copy's sizes.file starts at emptyFileBytes and grows by docFileBytes at every update, as
// a couch_bt_engine file is appended to: the body plus docFileOverhead for the b-tree nodes and
// headers written with it. The recorded 88-document copy of db1 (bodies of 744 bytes in all) was a
// 32,975-37,071-byte file, about 280-325 bytes per update; 320 plus the body lands in that range.
//
// With NetworkOptions.FillRate set, internal replication moves a push's documents at that many
// bytes per second, in mem3_rep's batches of fillBatch documents, each counted as docFileBytes:
// the target copy fills batch by batch, each batch checkpointed as mem3_rep does, so a push of
// B bytes takes B / FillRate. FillTime and CopyFillBytes give the expected fill time of a new
// copy: FillTime(CopyFillBytes(a source copy)). Every (source, target) pair pushes on its own at
// that rate, so copies filling at once do not slow each other down; a fill from several sources
// (every other copy of the range pushes) takes as long as one.
const (
	emptyFileBytes  = 8348
	docFileOverhead = 320
	fillBatch       = 100 // mem3_rep's batch_size
)

// RecordedFillRate is the fill rate the recording shows (couchdb-real-shards.md 2b): a new copy of
// 88 documents (744 bytes of bodies, 88*320+744 = 28,904 bytes as this package counts them) matched
// its sources 0.11 s after POST /{db}/_sync_shards. It is what a benchmark that wants CouchDB's pace
// on the recorded 2-core machine sets as NetworkOptions.FillRate.
const RecordedFillRate = 262_000

func (d *docRec) fileBytes() int { return d.Size + docFileOverhead }

// FillTime is how long a push of bytes takes at the network's FillRate (0 when fills are instant).
func (nw *Network) FillTime(bytes int64) time.Duration {
	if nw.opts.FillRate <= 0 {
		return 0
	}
	return time.Duration(float64(bytes) / float64(nw.opts.FillRate) * float64(time.Second))
}

// CopyFillBytes is what filling an empty copy from the node's copy of shard moves: every
// document's latest revision, deleted ones included, counted as docFileBytes.
func (n *Node) CopyFillBytes(shard string) (int64, bool) {
	n.net.mu.Lock()
	defer n.net.mu.Unlock()
	c, ok := n.copies[shard]
	if !ok {
		return 0, false
	}
	var b int64
	for _, d := range c.docs {
		b += int64(d.fileBytes())
	}
	return b, true
}

// CopySizes is the sizes object GET /_node/{node}/{shard} reports for the node's copy.
func (n *Node) CopySizes(shard string) (file, external, active int64, ok bool) {
	n.net.mu.Lock()
	defer n.net.mu.Unlock()
	c, ok := n.copies[shard]
	if !ok {
		return 0, 0, 0, false
	}
	sz := c.sizes()
	return int64(sz["file"].(int)), int64(sz["external"].(int)), int64(sz["active"].(int)), true
}

// pushKey names one (source copy, target copy) pair's push.
func pushKey(sc, dc *shardCopy) string { return sc.uuid + ">" + dc.uuid }

// fillPush is push at the network's FillRate: the documents to move (those after the checkpoint, up
// to upto, that the target lacks) go over in batches, each landing after its bytes' time, each
// checkpointed. A pair already pushing is left alone; when it ends with the source moved on, it
// asks for another round. A node that stops or disconnects ends the push; the checkpoint keeps
// what landed.
func (nw *Network) fillPush(db string, src *Node, sc *shardCopy, dst *Node, dc *shardCopy, since, upto int) {
	key := pushKey(sc, dc)
	if nw.filling[key] {
		return
	}
	var docs []docBatchEntry
	for id, d := range sc.docs {
		if d.Seq <= since || d.Seq > upto {
			continue
		}
		if cur, ok := dc.docs[id]; ok && !newer(d.Rev, cur.Rev) {
			continue
		}
		docs = append(docs, docBatchEntry{id, d})
	}
	if len(docs) == 0 {
		nw.checkpoint(src, sc, dst, dc, upto)
		return
	}
	sort.Slice(docs, func(i, j int) bool { return docs[i].d.Seq < docs[j].d.Seq })
	nw.filling[key] = true
	var step func(rest []docBatchEntry)
	step = func(rest []docBatchEntry) {
		batch := rest[:min(fillBatch, len(rest))]
		bytes := 0
		for _, e := range batch {
			bytes += e.d.fileBytes()
		}
		time.AfterFunc(nw.FillTime(int64(bytes)), func() {
			nw.mu.Lock()
			defer nw.mu.Unlock()
			if !nw.connected(src, dst) {
				delete(nw.filling, key)
				return
			}
			for _, e := range batch {
				if cur, ok := dc.docs[e.id]; !ok || newer(e.d.Rev, cur.Rev) {
					dc.put(e.id, e.d)
				}
			}
			rest = rest[len(batch):]
			if len(rest) > 0 {
				nw.checkpoint(src, sc, dst, dc, batch[len(batch)-1].d.Seq)
				step(rest)
				return
			}
			nw.checkpoint(src, sc, dst, dc, upto)
			delete(nw.filling, key)
			if sc.seq > upto {
				nw.scheduleSync(db, 5*time.Millisecond, nil)
			}
		})
	}
	step(docs)
}

type docBatchEntry struct {
	id string
	d  *docRec
}
