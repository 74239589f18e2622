package couch

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestNodeDocDecomAndUnknownFields(t *testing.T) {
	cases := map[string]struct {
		body      string
		decom     bool
		setTo     bool
		wantAfter map[string]any // the body written back after Decom = setTo
	}{
		"no decom, set": {`{"_id":"n@h","_rev":"1-a"}`, false, true,
			map[string]any{"_id": "n@h", "_rev": "1-a", "decom": true}},
		"boolean decom, cleared": {`{"_id":"n@h","_rev":"2-b","decom":true}`, true, false,
			map[string]any{"_id": "n@h", "_rev": "2-b"}},
		"string decom (mem3 accepts it), kept": {`{"_id":"n@h","_rev":"2-b","decom":"true"}`, true, true,
			map[string]any{"_id": "n@h", "_rev": "2-b", "decom": true}},
		`"false" is not decommissioned`: {`{"_id":"n@h","_rev":"2-b","decom":"false"}`, false, false,
			map[string]any{"_id": "n@h", "_rev": "2-b"}},
		"zone and unknown fields survive": {`{"_id":"n@h","_rev":"3-c","zone":"z1","future":{"x":[1,2]}}`, false, true,
			map[string]any{"_id": "n@h", "_rev": "3-c", "zone": "z1", "future": map[string]any{"x": []any{1.0, 2.0}}, "decom": true}},
		"an odd decom value is not decom and is kept until decom is set": {`{"_id":"n@h","_rev":"1-a","decom":1}`, false, false,
			map[string]any{"_id": "n@h", "_rev": "1-a", "decom": 1.0}},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			var d NodeDoc
			if err := json.Unmarshal([]byte(tc.body), &d); err != nil {
				t.Fatal(err)
			}
			if d.Decom != tc.decom {
				t.Errorf("Decom = %t, want %t", d.Decom, tc.decom)
			}
			d.Decom = tc.setTo
			raw, err := json.Marshal(d)
			if err != nil {
				t.Fatal(err)
			}
			var got map[string]any
			_ = json.Unmarshal(raw, &got)
			if diff := cmp.Diff(tc.wantAfter, got); diff != "" {
				t.Errorf("written back (-want +got):\n%s", diff)
			}
		})
	}
	var d NodeDoc
	if err := json.Unmarshal([]byte(`{"_id":["n@h"]}`), &d); err == nil {
		t.Error("an _id that is not a string was accepted")
	}
}

// The _local_docs body of a source copy, as recorded on CouchDB 3.4.3 (couchdb-real-shards.md 2b):
// two checkpoints of pushes from node1's copy and one of a push from node4's copy to it.
const recordedLocalDocs = `{"total_rows":null,"offset":null,"rows":[
{"id":"_local/shard-sync-Q4iGLcYPYMMx5nK6N-1OLg-aABEQ1EsJVoO8H4mwQZ1GA","key":"_local/shard-sync-Q4iGLcYPYMMx5nK6N-1OLg-aABEQ1EsJVoO8H4mwQZ1GA","value":{"rev":"0-1"},"doc":{"_id":"_local/shard-sync-Q4iGLcYPYMMx5nK6N-1OLg-aABEQ1EsJVoO8H4mwQZ1GA","_rev":"0-1","seq":88,"target_uuid":"567bf3300f1946a377cf0cf95bf61bf5","history":{"node1@127.0.0.1":[{"target_node":"node4@127.0.0.1","target_uuid":"567bf3300f1946a377cf0cf95bf61bf5","target_seq":88,"source_node":"node1@127.0.0.1","source_uuid":"f6f3c5632999a1c77b166d2f2ca7f648","source_seq":88,"timestamp":"2026-11-22T07:16:23.874085Z"}]}}},
{"id":"_local/shard-sync-Q4iGLcYPYMMx5nK6N-1OLg-wpAZXLxXUoM5Zid_g52rEw","key":"_local/shard-sync-Q4iGLcYPYMMx5nK6N-1OLg-wpAZXLxXUoM5Zid_g52rEw","value":{"rev":"0-1"},"doc":{"_id":"_local/shard-sync-Q4iGLcYPYMMx5nK6N-1OLg-wpAZXLxXUoM5Zid_g52rEw","_rev":"0-1","seq":88,"target_uuid":"7b9df0df46e4077921aec43dee641eaa","history":{"node1@127.0.0.1":[{"target_node":"node2@127.0.0.1","target_uuid":"7b9df0df46e4077921aec43dee641eaa","target_seq":88,"source_node":"node1@127.0.0.1","source_uuid":"f6f3c5632999a1c77b166d2f2ca7f648","source_seq":88,"timestamp":"2026-11-22T07:16:36.883044Z"}]}}},
{"id":"_local/shard-sync-aABEQ1EsJVoO8H4mwQZ1GA-Q4iGLcYPYMMx5nK6N-1OLg","key":"_local/shard-sync-aABEQ1EsJVoO8H4mwQZ1GA-Q4iGLcYPYMMx5nK6N-1OLg","value":{"rev":"0-1"},"doc":{"_id":"_local/shard-sync-aABEQ1EsJVoO8H4mwQZ1GA-Q4iGLcYPYMMx5nK6N-1OLg","_rev":"0-1","seq":88,"target_uuid":"f6f3c5632999a1c77b166d2f2ca7f648","history":{"node4@127.0.0.1":[{"target_node":"node1@127.0.0.1","target_uuid":"f6f3c5632999a1c77b166d2f2ca7f648","target_seq":88,"source_node":"node4@127.0.0.1","source_uuid":"567bf3300f1946a377cf0cf95bf61bf5","source_seq":88,"timestamp":"2026-11-22T07:16:24.022229Z"}]}}},
{"id":"_local/other","key":"_local/other","value":{"rev":"0-1"},"doc":{"_id":"_local/other","_rev":"0-1","seq":"x"}}
]}`

func TestShardCheckpointsReadsTheRecordedBody(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet || r.URL.EscapedPath() != "/_node/node1@127.0.0.1/shards%2F00000000-7fffffff%2Fdb1.1795331777/_local_docs" ||
			r.URL.Query().Get("include_docs") != "true" {
			http.Error(w, `{"error":"not_found","reason":"missing"}`, http.StatusNotFound)
			return
		}
		_, _ = w.Write([]byte(recordedLocalDocs))
	}))
	defer srv.Close()
	c, err := New(Options{BaseURL: srv.URL, Username: "admin", Password: "x", RetryMax: -1})
	if err != nil {
		t.Fatal(err)
	}
	got, err := c.ShardCheckpoints(context.Background(), "node1@127.0.0.1", "shards/00000000-7fffffff/db1.1795331777")
	if err != nil {
		t.Fatal(err)
	}
	want := []SyncCheckpoint{
		{ID: "_local/shard-sync-Q4iGLcYPYMMx5nK6N-1OLg-aABEQ1EsJVoO8H4mwQZ1GA", Seq: 88, SourceNode: "node1@127.0.0.1", SourceUUID: "f6f3c5632999a1c77b166d2f2ca7f648", TargetNode: "node4@127.0.0.1", TargetUUID: "567bf3300f1946a377cf0cf95bf61bf5"},
		{ID: "_local/shard-sync-Q4iGLcYPYMMx5nK6N-1OLg-wpAZXLxXUoM5Zid_g52rEw", Seq: 88, SourceNode: "node1@127.0.0.1", SourceUUID: "f6f3c5632999a1c77b166d2f2ca7f648", TargetNode: "node2@127.0.0.1", TargetUUID: "7b9df0df46e4077921aec43dee641eaa"},
		{ID: "_local/shard-sync-aABEQ1EsJVoO8H4mwQZ1GA-Q4iGLcYPYMMx5nK6N-1OLg", Seq: 88, SourceNode: "node4@127.0.0.1", SourceUUID: "567bf3300f1946a377cf0cf95bf61bf5", TargetNode: "node1@127.0.0.1", TargetUUID: "f6f3c5632999a1c77b166d2f2ca7f648"},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}
