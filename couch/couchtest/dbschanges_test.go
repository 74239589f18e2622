package couchtest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/couchdb-controller/couchdb-controller/couch"
)

// TestDBsChangesSinceAndDelete replays what a CouchDB 3.4.3 node answered (recorded with this
// project's real-node harness, 2026-12-04; the couch package's shardmaps_test.go holds the bodies):
// the node-local _dbs changes feed honours since and include_docs, DELETE /{db} answers 200
// {"ok":true}, and the deleted map comes back once more with "deleted": true and its last body under
// "_deleted": true. The copies of a deleted database are gone from every node.
func TestDBsChangesSinceAndDelete(t *testing.T) {
	ctx := context.Background()
	nw := NewNetwork(NetworkOptions{SyncDelay: 20 * time.Millisecond})
	var clients []*couch.Client
	var nodes []*Node
	for i := 1; i <= 2; i++ {
		nd, _ := nw.AddNode(NodeConfig{Name: fmt.Sprintf("node%d@127.0.0.1", i), AdminUser: "admin", AdminPassword: "pw", BindAddress: "any", Secret: testSecret})
		if err := nd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nd.Stop)
		c, _ := couch.New(couch.Options{BaseURL: nd.URL(), Username: "admin", Password: "pw"})
		clients, nodes = append(clients, c), append(nodes, nd)
	}
	formCluster(t, nodes, clients)
	type row struct {
		Seq     int            `json:"seq"`
		ID      string         `json:"id"`
		Deleted bool           `json:"deleted"`
		Doc     map[string]any `json:"doc"`
	}
	changes := func(query string) (rows []row, last int) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, nodes[0].URL()+"/_node/_local/_dbs/_changes?"+query, nil)
		req.SetBasicAuth("admin", "pw")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		var feed struct {
			Results []row `json:"results"`
			LastSeq int   `json:"last_seq"`
		}
		if resp.StatusCode != http.StatusOK || json.Unmarshal(b, &feed) != nil {
			t.Fatalf("GET _changes?%s: %d %s", query, resp.StatusCode, b)
		}
		return feed.Results, feed.LastSeq
	}
	_, before := changes("since=0")
	for _, db := range []string{"db1", "db2"} {
		if err := clients[0].CreateDB(ctx, db, 2, 2); err != nil {
			t.Fatal(err)
		}
	}
	rows, last := changes(fmt.Sprintf("since=%d&include_docs=true", before))
	if len(rows) != 2 || rows[0].ID != "db1" || rows[1].ID != "db2" || last != rows[1].Seq || rows[0].Seq <= before {
		t.Fatalf("changes after creating db1 and db2: %+v last %d", rows, last)
	}
	for _, r := range rows {
		if r.Doc["_id"] != r.ID || r.Doc["_rev"] == nil || r.Doc["by_range"] == nil || r.Doc["shard_suffix"] == nil || r.Deleted {
			t.Errorf("row %s: %+v", r.ID, r)
		}
	}
	if rows, _ := changes(fmt.Sprintf("since=%d", before)); rows[0].Doc != nil {
		t.Errorf("a doc without include_docs: %+v", rows[0])
	}
	m2, err := clients[0].GetShardMap(ctx, "db2")
	if err != nil {
		t.Fatal(err)
	}
	code, body := doDelete(t, nodes[1].URL()+"/db2")
	if code != http.StatusOK || body != `{"ok":true}` {
		t.Fatalf("DELETE /db2: %d %s", code, body)
	}
	if code, _ := doDelete(t, nodes[1].URL()+"/db2"); code != http.StatusNotFound {
		t.Errorf("DELETE of a deleted database: %d, want 404", code)
	}
	time.Sleep(100 * time.Millisecond) // let _dbs propagate from node2 to node1
	rows, _ = changes(fmt.Sprintf("since=%d&include_docs=true", last))
	if len(rows) != 1 || rows[0].ID != "db2" || !rows[0].Deleted || rows[0].Doc["_deleted"] != true || rows[0].Doc["by_range"] == nil {
		t.Fatalf("changes after deleting db2: %+v", rows)
	}
	if dbs, _ := clients[0].AllDBs(ctx); slices.Contains(dbs, "db2") || !slices.Contains(dbs, "db1") {
		t.Errorf("_all_dbs after the delete: %v", dbs)
	}
	for _, nd := range nodes {
		for _, rng := range m2.Ranges() {
			if _, _, ok := nd.CopyDocCount(m2.ShardName(rng)); ok {
				t.Errorf("%s still holds %s", nd.Name(), m2.ShardName(rng))
			}
		}
	}
}

func doDelete(t *testing.T, url string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodDelete, url, nil)
	req.SetBasicAuth("admin", "pw")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(bytes.TrimSpace(b))
}
