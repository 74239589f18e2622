package couchtest

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/couchdb-controller/couchdb-controller/couch"
)

func startCluster(t *testing.T, n int, bind string) (*Network, []*Node, []*couch.Client) {
	t.Helper()
	nw := NewNetwork(NetworkOptions{SyncDelay: 20 * time.Millisecond})
	var nodes []*Node
	var clients []*couch.Client
	for i := 1; i <= n; i++ {
		nd, err := nw.AddNode(NodeConfig{Name: fmt.Sprintf("node%d@127.0.0.1", i), AdminUser: "admin", AdminPassword: "s3cret", BindAddress: bind, Secret: testSecret})
		if err != nil {
			t.Fatal(err)
		}
		if err := nd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nd.Stop)
		c, err := couch.New(couch.Options{BaseURL: nd.URL(), Username: "admin", Password: "s3cret", RetryMax: -1})
		if err != nil {
			t.Fatal(err)
		}
		nodes = append(nodes, nd)
		clients = append(clients, c)
	}
	return nw, nodes, clients
}

func formCluster(t *testing.T, nodes []*Node, clients []*couch.Client) {
	t.Helper()
	ctx := context.Background()
	for _, nd := range nodes[1:] {
		if err := clients[0].AddNodeDoc(ctx, nd.Name()); err != nil {
			t.Fatal(err)
		}
	}
	if err := clients[0].FinishCluster(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestFormationThroughNodesDocs(t *testing.T) {
	ctx := context.Background()
	_, nodes, clients := startCluster(t, 3, "any")
	for i, c := range clients {
		st, err := c.SetupState(ctx)
		if err != nil || st != couch.StateClusterEnabled {
			t.Fatalf("node %d state %q err %v, want cluster_enabled (official image profile)", i, st, err)
		}
	}
	formCluster(t, nodes, clients)
	want := []string{"node1@127.0.0.1", "node2@127.0.0.1", "node3@127.0.0.1"}
	for i, c := range clients {
		m, err := c.Membership(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(m.ClusterNodes, want) || !slices.Equal(m.AllNodes, want) {
			t.Errorf("node %d membership %+v", i, m)
		}
		st, _ := c.SetupState(ctx)
		if st != couch.StateClusterFinished {
			t.Errorf("node %d state %s, want cluster_finished", i, st)
		}
	}
	// A repeated finish_cluster is 400 already finished, which the client treats as done.
	if err := clients[1].FinishCluster(ctx); err != nil {
		t.Errorf("repeat finish: %v", err)
	}
	w0, _ := clients[0].Welcome(ctx)
	w2, _ := clients[2].Welcome(ctx)
	if w0.UUID != w2.UUID {
		t.Errorf("finish_cluster did not copy the uuid: %s vs %s", w0.UUID, w2.UUID)
	}
}

func TestDeletedNodeKeepsStaleViewAndDoesNotRejoin(t *testing.T) {
	ctx := context.Background()
	_, nodes, clients := startCluster(t, 3, "any")
	formCluster(t, nodes, clients)
	if removed, err := clients[0].RemoveNodeDoc(ctx, "node3@127.0.0.1"); err != nil || !removed {
		t.Fatalf("removed %t: %v", removed, err)
	}
	if removed, err := clients[0].RemoveNodeDoc(ctx, "node3@127.0.0.1"); err != nil || removed {
		t.Fatalf("again: removed %t: %v, want false and no error", removed, err)
	}
	m1, _ := clients[1].Membership(ctx)
	m3, _ := clients[2].Membership(ctx)
	if slices.Contains(m1.ClusterNodes, "node3@127.0.0.1") {
		t.Errorf("node2 still lists node3: %v", m1.ClusterNodes)
	}
	if !slices.Contains(m3.ClusterNodes, "node3@127.0.0.1") || len(m3.ClusterNodes) != 3 {
		t.Errorf("node3 should keep its stale view, got %v", m3.ClusterNodes)
	}
	if !slices.Contains(m1.AllNodes, "node3@127.0.0.1") {
		t.Errorf("node3 should stay connected, all_nodes %v", m1.AllNodes)
	}
	nodes[2].Stop()
	if err := nodes[2].Start(); err != nil {
		t.Fatal(err)
	}
	_, err := clients[0].GetNodeDoc(ctx, "node3@127.0.0.1")
	if !couch.IsNotFound(err) {
		t.Errorf("node3 re-added itself after restart: %v", err)
	}
	// Re-adding without a rev is a new revision 3.
	if err := clients[0].AddNodeDoc(ctx, "node3@127.0.0.1"); err != nil {
		t.Fatal(err)
	}
	d, err := clients[0].GetNodeDoc(ctx, "node3@127.0.0.1")
	if err != nil || d.Rev[:2] != "3-" {
		t.Errorf("re-added doc %+v err %v, want rev 3", d, err)
	}
}

func TestAddNodeWrongRemotePasswordAnswers201AndAddsNothing(t *testing.T) {
	ctx := context.Background()
	_, nodes, clients := startCluster(t, 2, "any")
	port := nodes[1].Addr()[len("127.0.0.1:"):]
	var p int
	fmt.Sscan(port, &p)
	err := clients[0].AddNode(ctx, couch.AddNodeRequest{Host: "127.0.0.1", Port: p, Name: "node2", Username: "admin", Password: "wrong"})
	if err != nil {
		t.Fatalf("add_node with a wrong remote password must answer 201 as CouchDB does, got %v", err)
	}
	m, _ := clients[0].Membership(ctx)
	if len(m.ClusterNodes) != 1 {
		t.Errorf("nothing may be added, cluster_nodes %v", m.ClusterNodes)
	}
	if err := clients[0].AddNode(ctx, couch.AddNodeRequest{Host: "127.0.0.1", Port: p, Name: "node2", Username: "admin", Password: "s3cret"}); err != nil {
		t.Fatal(err)
	}
	m, _ = clients[0].Membership(ctx)
	if len(m.ClusterNodes) != 2 {
		t.Errorf("add_node with the right password must add, cluster_nodes %v", m.ClusterNodes)
	}
}

func TestLockoutAfterFiveFailures(t *testing.T) {
	ctx := context.Background()
	_, nodes, _ := startCluster(t, 1, "any")
	bad, _ := couch.New(couch.Options{BaseURL: nodes[0].URL(), Username: "admin", Password: "nope", RetryMax: -1})
	good, _ := couch.New(couch.Options{BaseURL: nodes[0].URL(), Username: "admin", Password: "s3cret", RetryMax: -1})
	for i := 0; i < 5; i++ {
		if _, err := bad.Membership(ctx); !couch.IsUnauthorized(err) {
			t.Fatalf("attempt %d: %v, want 401", i, err)
		}
	}
	if _, err := good.Membership(ctx); !couch.IsLocked(err) {
		t.Fatalf("after 5 failures even the right password must be locked out, got %v", err)
	}
}

func TestShardCopyFillsOnlyAfterSyncShards(t *testing.T) {
	ctx := context.Background()
	nw := NewNetwork(NetworkOptions{SyncDelay: time.Hour}) // no write-triggered sync in this test
	var clients []*couch.Client
	var nodes []*Node
	for i := 1; i <= 3; i++ {
		nd, _ := nw.AddNode(NodeConfig{Name: fmt.Sprintf("node%d@127.0.0.1", i), AdminUser: "admin", AdminPassword: "pw", BindAddress: "any", Secret: testSecret})
		if err := nd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nd.Stop)
		c, _ := couch.New(couch.Options{BaseURL: nd.URL(), Username: "admin", Password: "pw"})
		clients = append(clients, c)
		nodes = append(nodes, nd)
	}
	formCluster(t, nodes, clients)
	if err := clients[0].CreateDB(ctx, "db1", 1, 2); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 20; i++ {
		if _, _, err := doPut(clients[0].BaseURL(), fmt.Sprintf("/db1/doc%03d", i)); err != nil {
			t.Fatal(err)
		}
	}
	m, err := clients[0].GetShardMap(ctx, "db1")
	if err != nil {
		t.Fatal(err)
	}
	rng := m.Ranges()[0]
	var target string
	for _, nd := range nodes {
		if !m.HasCopy(rng, nd.Name()) {
			target = nd.Name()
		}
	}
	m.AddCopy(rng, target)
	if _, err := clients[0].PutShardMap(ctx, m); err != nil {
		t.Fatal(err)
	}
	tn := nw.Node(target)
	if d, _, ok := tn.CopyDocCount(m.ShardName(rng)); !ok || d != 0 {
		t.Fatalf("new copy must exist empty at once, got %d ok=%v", d, ok)
	}
	info, err := clients[0].ShardCopyInfo(ctx, target, m.ShardName(rng))
	if err != nil || info.DocCount != 0 {
		t.Fatalf("shard copy info %+v %v", info, err)
	}
	if err := clients[0].SyncShards(ctx, "db1"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(2 * time.Second)
	for {
		info, err = clients[0].ShardCopyInfo(ctx, target, m.ShardName(rng))
		if err == nil && info.DocCount == 20 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("copy never filled: %+v %v", info, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
