package couchtest

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"
)

func putDocs(t *testing.T, n *Node, db string, from, to int) {
	t.Helper()
	for i := from; i < to; i++ {
		req, _ := http.NewRequest(http.MethodPut, fmt.Sprintf("%s/%s/doc%04d", n.URL(), db, i), strings.NewReader(`{"v":"`+strings.Repeat("x", 100)+`"}`))
		req.SetBasicAuth("admin", "s3cret")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusCreated {
			t.Fatalf("PUT doc%04d: %d", i, resp.StatusCode)
		}
	}
}

// Writes made while a node was down reach its copy only through internal replication after it is
// back: right after the restart its copy lags, then mem3's push fills it and checkpoints the pair.
func TestRestartedNodeCatchesUpByInternalReplication(t *testing.T) {
	ctx := context.Background()
	nw, nodes, clients := sessionCluster(t, nil)
	nw.mu.Lock()
	nw.opts.SyncDelay = time.Second
	nw.mu.Unlock()
	formCluster(t, nodes, clients)
	if err := clients[0].CreateDB(ctx, "cu", 1, 3); err != nil {
		t.Fatal(err)
	}
	m, _ := nodes[0].ShardMap("cu")
	shard := m.ShardName(m.Ranges()[0])
	putDocs(t, nodes[0], "cu", 0, 5)
	waitUntil(t, "every copy has the first writes", func() bool {
		for _, n := range nodes {
			if d, _, _ := n.CopyDocCount(shard); d != 5 {
				return false
			}
		}
		return true
	})
	nodes[2].Stop()
	putDocs(t, nodes[0], "cu", 5, 25) // w=2 of 3: still 201
	// The sync round after the writes runs, and cannot reach node2.
	waitUntil(t, "the post-write sync round", func() bool {
		nw.mu.Lock()
		defer nw.mu.Unlock()
		return len(nw.pendingSync) == 0
	})
	if err := nodes[2].Start(); err != nil {
		t.Fatal(err)
	}
	if d, _, _ := nodes[2].CopyDocCount(shard); d != 5 {
		t.Fatalf("right after the restart node2's copy has %d docs, want the 5 it had", d)
	}
	waitUntil(t, "node2's copy to catch up", func() bool { d, _, _ := nodes[2].CopyDocCount(shard); return d == 25 })
	cps, err := clients[0].ShardCheckpoints(ctx, nodes[2].Name(), shard)
	if err != nil {
		t.Fatal(err)
	}
	sources := map[string]bool{}
	for _, cp := range cps {
		sources[cp.SourceNode] = true
	}
	if !sources[nodes[0].Name()] || !sources[nodes[1].Name()] {
		t.Errorf("node2's copy holds checkpoints from %v, want both other copies", sources)
	}
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waited 10 s for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
