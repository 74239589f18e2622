package couchtest

import (
	"context"
	"testing"
	"time"

	"github.com/couchdb-controller/couchdb-controller/couch"
)

// A node's sync delay holds back the pushes into and out of its copies: a restarted node whose
// delay is set keeps missing the writes taken while it was down until the other copies' pushes
// come, and each pair's checkpoint moves only when its push completes. The writes made after the
// restart reach it at once either way.
func TestSyncDelayHoldsBackCatchUp(t *testing.T) {
	const hold = 1500 * time.Millisecond
	for _, tc := range []struct {
		name    string
		delayed int // the node whose pushes are held, -1 for none
		// wantBehind: node2's copy still lacks the writes it missed half-way through the hold.
		wantBehind bool
		// heldSource: the source whose checkpoint toward node2 must not move before the hold ends.
		heldSource int
	}{
		{name: "no delay: the restarted copy is whole long before the hold would end", delayed: -1, heldSource: -1},
		{name: "the restarted node is delayed: nothing reaches it before the hold ends", delayed: 2, wantBehind: true, heldSource: -2},
		{name: "one source is delayed: the other fills the copy, its own checkpoint waits", delayed: 0, heldSource: 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			_, nodes, clients := sessionCluster(t, nil) // 20 ms sync delay
			formCluster(t, nodes, clients)
			if err := clients[0].CreateDB(ctx, "cu", 1, 3); err != nil {
				t.Fatal(err)
			}
			m, _ := nodes[0].ShardMap("cu")
			shard := m.ShardName(m.Ranges()[0])
			putDocs(t, nodes[0], "cu", 0, 5)
			waitUntil(t, "every copy has the first writes, and every push of them is checkpointed", func() bool {
				for _, n := range nodes {
					if d, _, _ := n.CopyDocCount(shard); d != 5 {
						return false
					}
				}
				own := copyInfo(t, clients[0], nodes[2].Name(), shard)
				for _, src := range []int{0, 1} {
					if pushedTo(t, clients[0], nodes[src].Name(), shard, own.UUID) != copyInfo(t, clients[0], nodes[src].Name(), shard).seq() {
						return false
					}
				}
				return true
			})
			if tc.delayed >= 0 {
				nodes[tc.delayed].SetSyncDelay(hold)
			}
			target := copyInfo(t, clients[0], nodes[2].Name(), shard) // its file, and uuid, survive the restart
			nodes[2].Stop()
			putDocs(t, nodes[0], "cu", 5, 25) // w=2 of 3: still 201, node2 misses them
			before := map[int]int64{}
			for _, src := range []int{0, 1} {
				before[src] = pushedTo(t, clients[0], nodes[src].Name(), shard, target.UUID)
			}

			restarted := time.Now()
			if err := nodes[2].Start(); err != nil {
				t.Fatal(err)
			}
			putDocs(t, nodes[0], "cu", 25, 30) // taken while node2 runs: straight to its copy
			time.Sleep(hold / 2)
			docs, _, _ := nodes[2].CopyDocCount(shard)
			if behind := docs < 30; behind != tc.wantBehind {
				t.Fatalf("%s after the restart node2's copy holds %d of 30 documents; want behind=%v", hold/2, docs, tc.wantBehind)
			}
			if tc.wantBehind && docs != 10 {
				t.Errorf("node2's copy holds %d documents while held back, want 10 (the 5 it had and the 5 written since its restart)", docs)
			}
			for _, src := range []int{0, 1} {
				held := tc.heldSource == src || tc.heldSource == -2
				got := pushedTo(t, clients[0], nodes[src].Name(), shard, target.UUID)
				if held && got != before[src] {
					t.Errorf("checkpoint %s -> node2 moved from %d to %d before its held push ran", nodes[src].Name(), before[src], got)
				}
			}

			waitUntil(t, "node2's copy to catch up and every checkpoint to reach its source", func() bool {
				if d, _, _ := nodes[2].CopyDocCount(shard); d != 30 {
					return false
				}
				for _, src := range []int{0, 1} {
					info := copyInfo(t, clients[0], nodes[src].Name(), shard)
					if pushedTo(t, clients[0], nodes[src].Name(), shard, target.UUID) != info.seq() {
						return false
					}
				}
				return true
			})
			took := time.Since(restarted)
			if tc.heldSource != -1 && took < hold {
				t.Errorf("every push caught up %s after the restart, before the %s hold ended", took, hold)
			}
			if tc.heldSource == -1 && took >= hold {
				t.Errorf("without a delay the catch-up took %s, no faster than the %s hold the other cases assert", took, hold)
			}
		})
	}
}

// A push held for a node that stops before it runs is dropped; the node's next start brings it.
func TestSyncDelayHeldPushDroppedWhenNodeStops(t *testing.T) {
	ctx := context.Background()
	_, nodes, clients := sessionCluster(t, nil)
	formCluster(t, nodes, clients)
	if err := clients[0].CreateDB(ctx, "cu", 1, 3); err != nil {
		t.Fatal(err)
	}
	m, _ := nodes[0].ShardMap("cu")
	shard := m.ShardName(m.Ranges()[0])
	nodes[2].SetSyncDelay(300 * time.Millisecond)
	nodes[2].Stop()
	putDocs(t, nodes[0], "cu", 0, 10)
	if err := nodes[2].Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond) // the restart's sync round has run and its push is held
	nodes[2].Stop()
	time.Sleep(400 * time.Millisecond) // the held push's time has come while node2 is down
	if d, _, _ := nodes[2].CopyDocCount(shard); d != 0 {
		t.Fatalf("node2's copy got %d documents while it was down", d)
	}
	if got := nodes[2].SyncDelay(); got != 300*time.Millisecond {
		t.Errorf("the sync delay after a restart is %s, want it kept", got)
	}
	if err := nodes[2].Start(); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "node2's copy to catch up after its next start", func() bool { d, _, _ := nodes[2].CopyDocCount(shard); return d == 10 })
}

type copyStat struct {
	UUID string
	Seq  any
}

func (c copyStat) seq() int64 {
	if f, ok := c.Seq.(float64); ok {
		return int64(f)
	}
	return -1
}

func copyInfo(t *testing.T, c *couch.Client, node, shard string) copyStat {
	t.Helper()
	info, err := c.ShardCopyInfo(context.Background(), node, shard)
	if err != nil {
		t.Fatal(err)
	}
	return copyStat{UUID: info.UUID, Seq: info.UpdateSeq}
}

// pushedTo is the sequence of node's copy up to which mem3 pushed it to the copy with uuid target,
// as its checkpoint says (0 without one): what the controller's catch-up gate reads.
func pushedTo(t *testing.T, c *couch.Client, node, shard, target string) int64 {
	t.Helper()
	cps, err := c.ShardCheckpoints(context.Background(), node, shard)
	if err != nil {
		t.Fatal(err)
	}
	src := copyInfo(t, c, node, shard)
	var seq int64
	for _, cp := range cps {
		if cp.SourceUUID == src.UUID && cp.TargetUUID == target {
			seq = max(seq, cp.Seq)
		}
	}
	return seq
}

// A node that restarts again while a push to it is held gets the push of its new run: the held one
// is void, and the new run's round does not wait on it.
func TestSyncDelayRestartWithinHold(t *testing.T) {
	ctx := context.Background()
	_, nodes, clients := sessionCluster(t, nil)
	formCluster(t, nodes, clients)
	if err := clients[0].CreateDB(ctx, "cu", 1, 3); err != nil {
		t.Fatal(err)
	}
	m, _ := nodes[0].ShardMap("cu")
	shard := m.ShardName(m.Ranges()[0])
	const hold = 500 * time.Millisecond
	nodes[2].SetSyncDelay(hold)
	nodes[2].Stop()
	putDocs(t, nodes[0], "cu", 0, 10)
	if err := nodes[2].Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond) // the first run's push is held
	nodes[2].Stop()
	if err := nodes[2].Start(); err != nil {
		t.Fatal(err)
	}
	second := time.Now()
	waitUntil(t, "node2's copy to catch up in its second run", func() bool { d, _, _ := nodes[2].CopyDocCount(shard); return d == 10 })
	if took := time.Since(second); took < hold {
		t.Errorf("caught up %s into the second run, before its own %s hold ended", took, hold)
	}
}
