package couch

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"testing"
)

// bodyTransport answers every request with one status and body, without a network.
type bodyTransport struct {
	code int
	body []byte
}

func (b bodyTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	return &http.Response{StatusCode: b.code, Body: io.NopCloser(bytes.NewReader(b.body)), Header: http.Header{}, Request: r}, nil
}

// FuzzResponses feeds arbitrary bodies to every response parser: none may panic, and a nil error must
// come with a well-formed value.
func FuzzResponses(f *testing.F) {
	for _, s := range []string{
		`{"all_nodes":["node1@127.0.0.1"],"cluster_nodes":["node1@127.0.0.1"]}`,
		`{"state":"cluster_finished"}`, `{"status":"ok","seeds":{}}`, `{"status":"maintenance_mode"}`,
		`{"name":"node1@127.0.0.1"}`, `{"error":"unauthorized","reason":"Name or password is incorrect."}`,
		`{"shards":{"00000000-7fffffff":["node3@127.0.0.1"]}}`, `{"doc_count":88,"doc_del_count":0,"update_seq":88}`,
		`"true"`, `[]`, `<html>`, `{"all_nodes":["a`,
	} {
		for _, code := range []int{200, 201, 404, 409, 500} {
			f.Add(code, []byte(s))
		}
	}
	f.Fuzz(func(t *testing.T, code int, body []byte) {
		if code < 100 || code > 599 {
			return
		}
		c, err := New(Options{BaseURL: "http://fuzz:5984", HTTPClient: &http.Client{Transport: bodyTransport{code, body}}, RetryMax: -1})
		if err != nil {
			t.Fatal(err)
		}
		ctx := context.Background()
		if m, err := c.Membership(ctx); err == nil && (m.AllNodes == nil || m.ClusterNodes == nil) {
			t.Errorf("nil lists without error: %+v", m)
		}
		if s, err := c.SetupState(ctx); err == nil && s == "" {
			t.Error("empty state without error")
		}
		if u, err := c.Up(ctx); err == nil && u.Status == "" {
			t.Error("empty up status without error")
		}
		if n, err := c.LocalNodeName(ctx); err == nil && n == "" {
			t.Error("empty name without error")
		}
		_, _ = c.Shards(ctx, "db")
		_, _ = c.ShardCopyInfo(ctx, "n@h", "shards/0-1/db.1")
		_, _ = c.SchedulerDoc(ctx, "id")
		_, _ = c.MaintenanceMode(ctx, "n@h")
		_, _ = c.AllDBs(ctx)
	})
}

// FuzzShardMap checks the map helpers keep by_node and by_range consistent on any parsable map.
func FuzzShardMap(f *testing.F) {
	f.Add([]byte(`{"_id":"db1","_rev":"1-c","shard_suffix":[46,49],"changelog":[],"by_node":{"a@h":["00000000-7fffffff"]},"by_range":{"00000000-7fffffff":["a@h"]},"props":{}}`), "00000000-7fffffff", "b@h")
	f.Add([]byte(`{"_id":"db3","by_node":{},"by_range":{}}`), "r", "n")
	f.Add([]byte(`{"_id":"x","by_node":{"a":["r"]},"by_range":{"r":["b"]}}`), "r", "a")
	f.Fuzz(func(t *testing.T, raw []byte, rng, node string) {
		var m ShardMap
		if json.Unmarshal(raw, &m) != nil || m.Validate() != nil {
			return
		}
		c := m.Clone()
		c.AddCopy(rng, node)
		if err := c.Validate(); err != nil {
			t.Fatalf("AddCopy broke a valid map: %v", err)
		}
		if !c.HasCopy(rng, node) {
			t.Fatal("AddCopy did not add")
		}
		c.RemoveCopy(rng, node)
		if err := c.Validate(); err != nil {
			t.Fatalf("RemoveCopy broke a valid map: %v", err)
		}
		if c.HasCopy(rng, node) {
			t.Fatal("RemoveCopy did not remove")
		}
		out, err := json.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		var back ShardMap
		if err := json.Unmarshal(out, &back); err != nil || back.Validate() != nil {
			t.Fatalf("round trip: %v", err)
		}
	})
}
