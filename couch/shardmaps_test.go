package couch

import (
	"context"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
)

// The answers of GET /_node/_local/_dbs/_changes?since=..&include_docs=true recorded on a CouchDB
// 3.4.3 node built from apache/couchdb 3.4.3.post1 (this project's real-node harness, 2026-12-04):
// db1 and db2 created after _users and _replicator, then db2 deleted.
const (
	recordedChangesSince2 = `{"results":[
{"seq":3,"id":"db1","changes":[{"rev":"1-a205c27b69818b49a9a67597af3551a0"}],"doc":{"_id":"db1","_rev":"1-a205c27b69818b49a9a67597af3551a0","shard_suffix":[46,49,55,57,54,52,49,48,48,56,48],"changelog":[["add","00000000-7fffffff","couchdb@db-0.db.ns.svc.cluster.local"],["add","80000000-ffffffff","couchdb@db-0.db.ns.svc.cluster.local"]],"by_node":{"couchdb@db-0.db.ns.svc.cluster.local":["00000000-7fffffff","80000000-ffffffff"]},"by_range":{"00000000-7fffffff":["couchdb@db-0.db.ns.svc.cluster.local"],"80000000-ffffffff":["couchdb@db-0.db.ns.svc.cluster.local"]},"props":{}}},
{"seq":4,"id":"db2","changes":[{"rev":"1-42dbdc7e938a7f9f9fcad428942ee212"}],"doc":{"_id":"db2","_rev":"1-42dbdc7e938a7f9f9fcad428942ee212","shard_suffix":[46,49,55,57,54,52,49,48,48,56,48],"changelog":[["add","00000000-ffffffff","couchdb@db-0.db.ns.svc.cluster.local"]],"by_node":{"couchdb@db-0.db.ns.svc.cluster.local":["00000000-ffffffff"]},"by_range":{"00000000-ffffffff":["couchdb@db-0.db.ns.svc.cluster.local"]},"props":{}}}
],
"last_seq":4}
`
	recordedChangesAfterDelete = `{"results":[
{"seq":5,"id":"db2","changes":[{"rev":"2-29734dfea9e1083b1412da2aa6ece1a3"}],"deleted":true,"doc":{"_id":"db2","_rev":"2-29734dfea9e1083b1412da2aa6ece1a3","shard_suffix":[46,49,55,57,54,52,49,48,48,56,48],"changelog":[["add","00000000-ffffffff","couchdb@db-0.db.ns.svc.cluster.local"]],"by_node":{"couchdb@db-0.db.ns.svc.cluster.local":["00000000-ffffffff"]},"by_range":{"00000000-ffffffff":["couchdb@db-0.db.ns.svc.cluster.local"]},"props":{},"_deleted":true}}
],
"last_seq":5}
`
)

func TestShardMapsSince(t *testing.T) {
	for _, tc := range []struct {
		name, since, body string
		wantQuery         string
		wantMaps          []string
		wantDeleted       []string
		wantLast          string
		wantErr           string
	}{
		{name: "everything", since: "", body: recordedChangesSince2, wantQuery: "include_docs=true&since=0", wantMaps: []string{"db1", "db2"}, wantLast: "4"},
		{name: "a deletion", since: "4", body: recordedChangesAfterDelete, wantQuery: "include_docs=true&since=4", wantDeleted: []string{"db2"}, wantLast: "5"},
		{name: "design documents are no databases", since: "0", body: `{"results":[{"seq":1,"id":"_design/x","changes":[],"doc":{"_id":"_design/x"}}],"last_seq":1}`,
			wantQuery: "include_docs=true&since=0", wantLast: "1"},
		{name: "opaque sequences are passed back as they are", since: "0", body: `{"results":[],"last_seq":"7-g1AAAA"}`, wantQuery: "include_docs=true&since=0", wantLast: "7-g1AAAA"},
		{name: "include_docs ignored", since: "0", body: `{"results":[{"seq":3,"id":"db1","changes":[]}],"last_seq":3}`, wantQuery: "include_docs=true&since=0", wantErr: "no shard map document"},
		{name: "no last_seq", since: "0", body: `{"results":[]}`, wantQuery: "include_docs=true&since=0", wantErr: "no last_seq"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, _ := newTestClient(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path != "/_node/_local/_dbs/_changes" || r.URL.RawQuery != tc.wantQuery {
					t.Errorf("asked %s?%s", r.URL.Path, r.URL.RawQuery)
				}
				w.Header().Set("Content-Type", "application/json")
				_, _ = io.WriteString(w, tc.body)
			}))
			got, err := c.ShardMapsSince(context.Background(), tc.since)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one saying %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var maps []string
			for db, m := range got.Maps {
				maps = append(maps, db)
				if m.ID != db || m.Rev == "" || len(m.ByRange) == 0 || m.Suffix() != ".1796410080" {
					t.Errorf("map of %s read as %+v", db, m)
				}
			}
			slices.Sort(maps)
			if !slices.Equal(maps, tc.wantMaps) || !slices.Equal(got.Deleted, tc.wantDeleted) || got.LastSeq != tc.wantLast {
				t.Errorf("got maps %v deleted %v last %q, want %v %v %q", maps, got.Deleted, got.LastSeq, tc.wantMaps, tc.wantDeleted, tc.wantLast)
			}
		})
	}
}
