package couchtest

import "time"

// timedPush is push when a push takes NetworkOptions.PushTime, as mem3_rep's do on real CouchDB:
// it reads the source's changes up to upto when it starts, and its documents and its checkpoint
// land when it ends, at upto. Pushes into the source that land meanwhile (mem3 pushing other
// copies' new writes into it) are after upto, so under a write load a copy's checkpoints trail its
// update_seq at every moment; this is what real drains under load see (a checkpoint written only at
// the end of a push, never at the copy's current update_seq). A pair already pushing is left alone;
// when its push ends with the source moved on, it asks for another round, as mem3's event listener
// does for an updated copy. A node that stops or disconnects meanwhile ends the push unsaved.
func (nw *Network) timedPush(db string, src *Node, sc *shardCopy, dst *Node, dc *shardCopy, upto int) {
	key := pushKey(sc, dc)
	if nw.filling[key] {
		return
	}
	nw.filling[key] = true
	time.AfterFunc(nw.opts.PushTime, func() {
		nw.mu.Lock()
		defer nw.mu.Unlock()
		delete(nw.filling, key)
		if !src.running || !dst.running || !nw.connected(src, dst) {
			return
		}
		dc.merge(sc, upto)
		nw.checkpoint(src, sc, dst, dc, upto)
		if sc.seq > upto {
			nw.scheduleSync(db, 5*time.Millisecond, nil)
		}
	})
}
