package couchtest

import (
	"encoding/json"
	"strings"
	"testing"
)

// The recording's checkpoint ids on node1's copy of db1 00000000-7fffffff, from the copies' uuids.
func TestCheckpointIDMatchesRecording(t *testing.T) {
	const node1, node2, node4 = "f6f3c5632999a1c77b166d2f2ca7f648", "7b9df0df46e4077921aec43dee641eaa", "567bf3300f1946a377cf0cf95bf61bf5"
	for _, tc := range []struct{ src, dst, want string }{
		{node1, node4, "_local/shard-sync-Q4iGLcYPYMMx5nK6N-1OLg-aABEQ1EsJVoO8H4mwQZ1GA"},
		{node1, node2, "_local/shard-sync-Q4iGLcYPYMMx5nK6N-1OLg-wpAZXLxXUoM5Zid_g52rEw"},
		{node4, node1, "_local/shard-sync-aABEQ1EsJVoO8H4mwQZ1GA-Q4iGLcYPYMMx5nK6N-1OLg"},
	} {
		if got := checkpointID(tc.src, tc.dst); got != tc.want {
			t.Errorf("checkpointID(%s, %s) = %s, recorded %s", tc.src, tc.dst, got, tc.want)
		}
	}
}

func TestReplicationEndpoints(t *testing.T) {
	basic := func(pw string) any {
		return map[string]any{"url": "http://127.0.0.1:15984/db1", "auth": map[string]any{"basic": map[string]any{"username": "admin", "password": pw}}}
	}
	tests := map[string]struct {
		raw      any
		ok       bool
		url      string
		user, pw string
	}{
		"auth.basic":         {raw: basic("s3cret"), ok: true, url: "http://127.0.0.1:15984/db1/", user: "admin", pw: "s3cret"},
		"userinfo":           {raw: "http://admin:s3cret@127.0.0.1:15984/db1", ok: true, url: "http://127.0.0.1:15984/db1/", user: "admin", pw: "s3cret"},
		"no credentials":     {raw: "http://127.0.0.1:15984/db1/", ok: true, url: "http://127.0.0.1:15984/db1/"},
		"missing":            {raw: nil},
		"not a URL":          {raw: "db1"},
		"object without url": {raw: map[string]any{"auth": map[string]any{}}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			e, ok := parseEndpoint(tc.raw)
			if ok != tc.ok || e.url != tc.url || e.user != tc.user || e.pass != tc.pw {
				t.Errorf("parseEndpoint = %+v, %v", e, ok)
			}
		})
	}
	a, _ := parseEndpoint(basic("one"))
	b, _ := parseEndpoint("http://admin:two@127.0.0.1:15984/db1")
	tgt, _ := parseEndpoint("http://127.0.0.1:25984/db2")
	if replicationID("u", a, tgt, true) != replicationID("u", b, tgt, true) {
		t.Error("the replication id depends on the password")
	}
	if id := replicationID("u", a, tgt, true); !strings.HasSuffix(id, "+continuous") || replicationID("u", a, tgt, false)+"+continuous" != id {
		t.Errorf("continuous id %s", id)
	}
}

func TestMaskCredentials(t *testing.T) {
	doc := obj{"source": map[string]any{"url": "http://h/db", "auth": map[string]any{"basic": map[string]any{"username": "admin", "password": "s3cret"}}},
		"target": "http://admin:s3cret@h/db2"}
	b, _ := json.Marshal(maskCredentials(doc))
	if strings.Contains(string(b), "s3cret") || strings.Count(string(b), "***") != 2 {
		t.Errorf("masked doc %s", b)
	}
}

func TestPrometheusTextQuirks(t *testing.T) {
	txt := string(prometheusTextOf([]metricFamily{{"a_total", "help a", "counter", []metricSample{{"", 1}}}, {"b", "help b", "gauge", []metricSample{{`{x="y"}`, 2}}}}))
	want := "\n# HELP a_total help a\r# TYPE a_total counter\na_total 1\n\n# HELP b help b\r# TYPE b gauge\nb{x=\"y\"} 2\n"
	if txt != want {
		t.Errorf("got %q, want %q", txt, want)
	}
}
