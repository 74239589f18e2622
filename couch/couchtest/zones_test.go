package couchtest

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/couchdb-controller/couchdb-controller/couch"
)

// With two nodes per zone, a placement of one copy per zone puts every range's copies in three
// distinct zones and spreads them over both nodes of each zone; a rule naming more copies than a
// zone has nodes is capped there; "decom":"true" (the string) excludes a node too.
func TestZonePlacementSpreadsAndCaps(t *testing.T) {
	ctx := context.Background()
	nw := NewNetwork(NetworkOptions{SyncDelay: 20 * time.Millisecond, PasswordIterations: 10})
	var nodes []*Node
	var clients []*couch.Client
	for i := 0; i < 6; i++ {
		nd, err := nw.AddNode(NodeConfig{Name: fmt.Sprintf("n%d@127.0.0.1", i), AdminUser: "admin", AdminPassword: "s3cret", BindAddress: "any", Secret: testSecret})
		if err != nil {
			t.Fatal(err)
		}
		if err := nd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nd.Stop)
		c, _ := couch.New(couch.Options{BaseURL: nd.URL(), Username: "admin", Password: "s3cret", RetryMax: -1})
		nodes, clients = append(nodes, nd), append(clients, c)
	}
	formCluster(t, nodes, clients)
	zone := map[string]string{}
	for i, nd := range nodes {
		doc, err := clients[0].GetNodeDoc(ctx, nd.Name())
		if err != nil {
			t.Fatal(err)
		}
		doc.Zone = fmt.Sprintf("zone-%c", 'a'+i%3)
		zone[nd.Name()] = doc.Zone
		if _, err := clients[0].PutNodeDoc(ctx, doc); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := clients[0].SetConfig(ctx, "_local", "cluster", "placement", "zone-a:1,zone-b:1,zone-c:1"); err != nil {
		t.Fatal(err)
	}
	if err := clients[0].CreateDB(ctx, "spread", 8, 1); err != nil {
		t.Fatal(err)
	}
	m, _ := nodes[0].ShardMap("spread")
	used := map[string]bool{}
	for rng, ns := range m.ByRange {
		zones := map[string]bool{}
		for _, n := range ns {
			zones[zone[n]] = true
			used[n] = true
		}
		if len(ns) != 3 || len(zones) != 3 {
			t.Errorf("range %s on %v: want 3 copies in 3 zones", rng, ns)
		}
	}
	if len(used) != 6 {
		t.Errorf("copies on %d of 6 nodes", len(used))
	}

	// zone-a:3 with two nodes there: 2 copies in zone-a, plus one in zone-b.
	if _, err := clients[0].SetConfig(ctx, "_local", "cluster", "placement", "zone-a:3,zone-b:1"); err != nil {
		t.Fatal(err)
	}
	if err := clients[0].CreateDB(ctx, "capped", 2, 0); err != nil {
		t.Fatal(err)
	}
	m, _ = nodes[0].ShardMap("capped")
	for rng, ns := range m.ByRange {
		count := map[string]int{}
		for _, n := range ns {
			count[zone[n]]++
		}
		if count["zone-a"] != 2 || count["zone-b"] != 1 || len(ns) != 3 {
			t.Errorf("range %s on %v: want 2 in zone-a and 1 in zone-b", rng, ns)
		}
	}

	// Both zone-c nodes decommissioned (one as the string "true"): a rule naming zone-c fails with
	// 500 no_nodes_in_zone on this coordinator, and nothing is created.
	for i, decom := range map[int]any{2: true, 5: "true"} {
		doc, _ := clients[0].GetNodeDoc(ctx, nodes[i].Name())
		doc.Decom = decom == true
		if s, ok := decom.(string); ok {
			doc.Extra = map[string]any{"decom": s}
		}
		if _, err := clients[0].PutNodeDoc(ctx, doc); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := clients[0].SetConfig(ctx, "_local", "cluster", "placement", "zone-a:1,zone-c:1"); err != nil {
		t.Fatal(err)
	}
	err := clients[0].CreateDB(ctx, "nozone", 2, 0)
	var se *couch.StatusError
	if !errors.As(err, &se) || se.Code != 500 || se.Reason != "no_nodes_in_zone" {
		t.Fatalf("create with an empty zone: %v, want 500 no_nodes_in_zone", err)
	}
	if _, ok := nodes[0].ShardMap("nozone"); ok {
		t.Errorf("the failed creation left a shard map")
	}
	// Another coordinator without placement creates it; n is capped to the 4 allowed nodes.
	if err := clients[1].CreateDB(ctx, "nozone", 2, 6); err != nil {
		t.Fatal(err)
	}
	m, _ = nodes[1].ShardMap("nozone")
	for rng, ns := range m.ByRange {
		for _, n := range ns {
			if zone[n] == "zone-c" {
				t.Errorf("range %s has a copy on decommissioned %s", rng, n)
			}
		}
		if len(ns) != 4 {
			t.Errorf("range %s has %d copies, want n capped to the 4 allowed nodes", rng, len(ns))
		}
	}
}
