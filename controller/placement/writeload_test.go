package placement

import (
	"testing"
	"testing/synctest"
	"time"

	"github.com/couchdb-controller/couchdb-controller/couch/couchtest"
)

// TestDrainFinishesUnderConstantWrites drains a member that holds copies while clients keep writing
// to every database between any two internal-replication rounds, as a steady load does: the drained
// copies (in maintenance mode "nolb" until writes are seen on them, then "true") keep receiving mem3's pushes of the staying copies' new
// writes, so each push checkpoint from them, written at the sequence where the push started, is
// behind their update_seq whenever the controller looks. Held to the current update_seq, the drain
// never ends; held to the update_seq marked when each copy became a copy to drop, it ends, and no
// acknowledged write is lost (checkRemove and check assert it on the copies' contents).
func TestDrainFinishesUnderConstantWrites(t *testing.T) {
	out := newOutsider()
	defer out.close()
	synctest.Test(t, func(t *testing.T) {
		// Pushes take 20 ms and checkpoint at their end, as mem3_rep's do.
		c := newPropClusterWith(t, 7, out, couchtest.NetworkOptions{SyncDelay: propSyncDelay, PushTime: 20 * time.Millisecond})
		defer c.stopAll()
		c.zoneCount, c.maxMoves, c.maxFills = 0, 8, 4
		// A fourth member joins and gets copies of a new database (q=4), and a rebalance gives it
		// copies of the others: it is the one to drain.
		c.replicas = 4
		c.startPod(3)
		if !c.settle(400) {
			c.fatalf("no fixpoint after the join")
		}
		if err := c.clients[0].CreateDB(c.ctx, "e", 4, 3); err != nil {
			c.fatalf("create e: %v", err)
		}
		c.nTrue["e"], c.size["e"] = 3, c.sizeFor("e")
		c.rebalance = true
		if !c.settle(400) {
			c.fatalf("no fixpoint before the drain")
		}
		c.rebalance = false
		o, _ := c.observe()
		held := 0
		for _, m := range o.in.Maps {
			held += len(m.ByNode[name(3)])
		}
		if held == 0 {
			c.fatalf("the member to drain holds no copy: %v", o.in.Maps)
		}
		three := 3
		c.target = &three
		steps := 0
		for ; c.replicas > 3 && steps < 200; steps++ {
			for _, db := range c.userDBs() {
				for i := 0; i < 4; i++ { // a few documents land in each range of each database
					c.writeTo(0, db)
				}
			}
			c.step(false)
			time.Sleep(10 * time.Millisecond) // the pushes _sync_shards queued run, and go on running
		}
		if c.replicas > 3 {
			o, _ := c.observe()
			c.fatalf("the drain of %s (%d copies) did not finish in %d steps under writes: %s", name(3), held, steps, Plan(o.in).Waiting)
		}
		t.Logf("drained %s (%d copies) in %d steps while writing; %d drops at a mark", name(3), held, steps, c.seen["drops at a mark"])
		// The drain starts in "nolb", sees the writes on the drained copies and goes to "true".
		if c.seen["drained node set to nolb"] == 0 || c.seen["drained node set to true"] == 0 {
			c.fatalf("the drained node's maintenance modes: %d times nolb, %d times true; want both", c.seen["drained node set to nolb"], c.seen["drained node set to true"])
		}
		if !c.settle(400) {
			c.fatalf("no fixpoint after the drain")
		}
		c.check()
	})
}
