package couchtest

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// The shard recording's cluster: 4 nodes, [cluster] n=3 q=2, formed with enable_cluster on each,
// add_node x3 from node1 and finish_cluster.
const shardsPassword = "conformance-pw"

// Timings of the replay. They are short versions of CouchDB's, kept far enough apart that the order
// of events the recording saw is the only possible one.
var shardsOpts = NetworkOptions{
	SyncDelay:    150 * time.Millisecond, // CouchDB: 5 s
	DBsPushDelay: 100 * time.Millisecond, // CouchDB: a few ms, but not within the request
	Replicator: ReplicatorOptions{
		DocDelay:           60 * time.Millisecond, // null -> initializing -> running
		CheckpointInterval: 1500 * time.Millisecond,
		PollInterval:       20 * time.Millisecond,
		RetryInterval:      time.Hour, // the recording saw no retry within 40 s
	},
}

// recordedPlacement is where the recorded cluster placed each database (mem3 draws it at random). It
// is read from the recording: _shards and the _dbs docs for db1, db3 and db4, the _all_dbs listings
// of node1 and node4 for _users and _replicator. _users' 80000000-ffffffff copy on node3 and db2's
// placement are not shown anywhere; any choice replays the same.
var recordedPlacement = map[string]map[string][]string{
	"_users":      {"00000000-7fffffff": {"node2@127.0.0.1", "node3@127.0.0.1", "node4@127.0.0.1"}, "80000000-ffffffff": {"node1@127.0.0.1", "node3@127.0.0.1", "node4@127.0.0.1"}},
	"_replicator": {"00000000-7fffffff": {"node1@127.0.0.1", "node2@127.0.0.1", "node3@127.0.0.1"}, "80000000-ffffffff": {"node2@127.0.0.1", "node3@127.0.0.1", "node4@127.0.0.1"}},
	"db1":         {"00000000-7fffffff": {"node1@127.0.0.1", "node4@127.0.0.1"}, "80000000-ffffffff": {"node2@127.0.0.1", "node3@127.0.0.1"}},
	"db3":         {"00000000-7fffffff": {"node2@127.0.0.1", "node3@127.0.0.1", "node4@127.0.0.1"}, "80000000-ffffffff": {"node1@127.0.0.1", "node3@127.0.0.1", "node4@127.0.0.1"}},
	"db4":         {"00000000-7fffffff": {"node1@127.0.0.1", "node2@127.0.0.1", "node4@127.0.0.1"}, "80000000-ffffffff": {"node1@127.0.0.1", "node2@127.0.0.1", "node4@127.0.0.1"}},
	"db2":         {"00000000-7fffffff": {"node1@127.0.0.1", "node2@127.0.0.1", "node3@127.0.0.1"}, "80000000-ffffffff": {"node2@127.0.0.1", "node3@127.0.0.1", "node4@127.0.0.1"}},
}

// recordedOwners is the node the recorded scheduler ran each _replicator document's job on.
var recordedOwners = map[string]string{
	"rep-db1-db2": "node2@127.0.0.1", "rep-bad-target": "node3@127.0.0.1", "rep-bad-password": "node1@127.0.0.1",
	"rep-userinfo": "node1@127.0.0.1", "rep-dup": "node3@127.0.0.1",
}

// replayClock reads what the recorded cluster's clock read: it is set to a recorded time at the
// points the recording dates (database creation) and runs on from there.
type replayClock struct {
	mu   sync.Mutex
	base time.Time
	at   time.Time
}

func (c *replayClock) set(unix int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.base, c.at = time.Unix(unix, 0), time.Now()
}

func (c *replayClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.base.Add(time.Since(c.at))
}

type shardReplayer struct {
	t        *testing.T
	nw       *Network
	clock    *replayClock
	nodes    map[string]*Node // recorded port -> node
	placeErr []string
	tokens   *tokenMap
	skipped  map[string]int    // field -> times it was not compared
	mapEdit  string            // a _dbs doc edited by the last case, not yet seen on every node
	polled   map[string]string // "doc state" -> the first body the recording's scheduler polls printed
	pollSeen int               // how many of those the replay saw and compared
}

func newShardReplayer(t *testing.T) *shardReplayer {
	r := &shardReplayer{t: t, clock: &replayClock{}, nodes: map[string]*Node{}, tokens: newTokenMap(), skipped: map[string]int{}}
	r.clock.set(1795331770)
	opts := shardsOpts
	opts.Clock = r.clock.now
	opts.Placement = func(db string, ranges []string, n int, members []string) map[string][]string {
		want, ok := recordedPlacement[db]
		if !ok {
			r.placeErr = append(r.placeErr, "no recorded placement for "+db)
			return nil
		}
		for _, rng := range ranges {
			for _, node := range want[rng] {
				if !slices.Contains(members, node) || len(want[rng]) != n {
					r.placeErr = append(r.placeErr, fmt.Sprintf("%s: recorded copy of %s on %s, but the emulator offers n=%d on %v", db, rng, node, n, members))
				}
			}
		}
		return want
	}
	opts.ReplicationOwner = func(docID string, live []string) string {
		if o, ok := recordedOwners[docID]; ok && slices.Contains(live, o) {
			return o
		}
		r.placeErr = append(r.placeErr, fmt.Sprintf("no live recorded owner for %s among %v", docID, live))
		return live[0]
	}
	r.nw = NewNetwork(opts)
	for i := 1; i <= 4; i++ {
		n, err := r.nw.AddNode(NodeConfig{Name: fmt.Sprintf("node%d@127.0.0.1", i), AdminUser: "admin", AdminPassword: shardsPassword, N: 3, Q: 2, Secret: testSecret})
		if err != nil {
			t.Fatal(err)
		}
		if err := n.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(n.Stop)
		r.nodes[fmt.Sprintf("%d5984", i)] = n
	}
	return r
}

// setup forms the cluster as the recording's setup did and checks the setup output it printed.
func (r *shardReplayer) setup() {
	post := func(port, body string) {
		code, out := r.send(http.MethodPost, port, "/_cluster_setup", body, true)
		if code != http.StatusCreated || out != `{"ok":true}` {
			r.t.Fatalf("setup %s on %s: %d %s", body, port, code, out)
		}
	}
	for _, p := range []string{"15984", "25984", "35984", "45984"} {
		post(p, `{"action":"enable_cluster","bind_address":"0.0.0.0","username":"admin","password":"***","node_count":4}`)
	}
	for _, p := range []string{"25984", "35984", "45984"} {
		post("15984", `{"action":"add_node","host":"127.0.0.1","port":`+r.port(p)+`,"username":"admin","password":"***"}`)
	}
	r.clock.set(1795331775) // _users and _replicator are named after this second
	post("15984", `{"action":"finish_cluster"}`)
	for _, c := range []struct{ path, want string }{
		{"/_cluster_setup", `{"state":"cluster_finished"}`},
		{"/_membership", `{"all_nodes":["node1@127.0.0.1","node2@127.0.0.1","node3@127.0.0.1","node4@127.0.0.1"],"cluster_nodes":["node1@127.0.0.1","node2@127.0.0.1","node3@127.0.0.1","node4@127.0.0.1"]}`},
	} {
		if _, out := r.send(http.MethodGet, "15984", c.path, "", true); out != c.want {
			r.t.Fatalf("setup: %s = %s, recorded %s", c.path, out, c.want)
		}
	}
	r.clock.set(1795331777) // db1 and db3 are named after this second
}

func (r *shardReplayer) port(recorded string) string {
	n := r.nodes[recorded]
	if n == nil {
		return recorded // 127.0.0.1:1, where nothing listens, stays
	}
	return strings.TrimPrefix(n.Addr(), "127.0.0.1:")
}

var recordedAddr = regexp.MustCompile(`127\.0\.0\.1:([1-4]5984)`)

// send makes one request as the recording did and returns the answer with the emulator's ports
// written back as the recorded ones; a transport failure comes back as code 0 and its text.
func (r *shardReplayer) send(method, port, path, body string, auth bool) (int, string) {
	code, out, err := r.do(method, port, path, body, auth)
	if err != nil {
		return 0, err.Error()
	}
	return code, out
}

// do is send with the transport failure as an error.
func (r *shardReplayer) do(method, port, path, body string, auth bool) (int, string, error) {
	body = strings.ReplaceAll(body, "***", shardsPassword)
	body = recordedAddr.ReplaceAllStringFunc(body, func(m string) string { return "127.0.0.1:" + r.port(m[len("127.0.0.1:"):]) })
	var rd io.Reader
	if body != "" || method == http.MethodPost {
		rd = strings.NewReader(body)
	}
	req, _ := http.NewRequest(method, "http://127.0.0.1:"+r.port(port)+path, rd)
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if auth {
		req.SetBasicAuth("admin", shardsPassword)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	out := string(b)
	for rec, n := range r.nodes {
		if n.Running() {
			out = strings.ReplaceAll(out, n.Addr(), "127.0.0.1:"+rec)
		}
	}
	if strings.Contains(out, shardsPassword) {
		r.t.Errorf("%s %s returned the password", method, path)
	}
	if strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		out = strings.TrimSuffix(out, "\n")
	}
	return resp.StatusCode, out, nil
}

// getJSON is an out-of-band read for the polls between cases.
func (r *shardReplayer) getJSON(port, path string) (int, map[string]any) {
	code, out := r.send(http.MethodGet, port, path, "", true)
	var m map[string]any
	_ = json.Unmarshal([]byte(out), &m)
	return code, m
}

// waitFor polls cond the way the recording polled its tables, until it holds.
func (r *shardReplayer) waitFor(what string, cond func() bool) {
	r.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			r.t.Fatalf("waited 20 s for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// holdsFor checks that cond stays true for d: the recording's "condition NOT met within 10 s".
func (r *shardReplayer) holdsFor(what string, d time.Duration, cond func() bool) {
	r.t.Helper()
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		if !cond() {
			r.t.Fatalf("%s stopped holding", what)
		}
	}
}

const range0, range8 = "00000000-7fffffff", "80000000-ffffffff"

func shardPath(node, rng, db string) string {
	return "/_node/" + node + "@127.0.0.1/shards%2F" + rng + "%2F" + db + ".1795331777"
}

// copyCounts reads doc_count/doc_del_count/update_seq of a node-local copy, as the tables show them.
func (r *shardReplayer) copyCounts(node, rng, db string) string {
	code, m := r.getJSON("15984", shardPath(node, rng, db))
	if code != http.StatusOK {
		return fmt.Sprintf("HTTP %d", code)
	}
	return fmt.Sprintf("%v/%v/%v", m["doc_count"], m["doc_del_count"], m["update_seq"])
}

// checkpointSeq is the seq of the shard-sync checkpoint on src's copy whose history targets dst.
func (r *shardReplayer) checkpointSeq(src, dst, rng, db string) float64 {
	_, m := r.getJSON("15984", shardPath(src, rng, db)+"/_local_docs?include_docs=true")
	rows, _ := m["rows"].([]any)
	for _, row := range rows {
		doc, _ := row.(map[string]any)["doc"].(map[string]any)
		hist, _ := doc["history"].(map[string]any)
		entries, _ := hist[src+"@127.0.0.1"].([]any)
		if len(entries) > 0 && entries[0].(map[string]any)["target_node"] == dst+"@127.0.0.1" {
			return doc["seq"].(float64)
		}
	}
	return -1
}

// synced is the recording's progress signal: the copies agree and every source has checkpointed the
// target at its own update_seq.
func (r *shardReplayer) synced(db, rng, target string, sources ...string) bool {
	want := r.copyCounts(sources[0], rng, db)
	for _, s := range sources {
		c := r.copyCounts(s, rng, db)
		seq, _ := strconv.ParseFloat(strings.Split(c, "/")[2], 64)
		if c != want || r.checkpointSeq(s, target, rng, db) != seq {
			return false
		}
	}
	return r.copyCounts(target, rng, db) == want
}

func (r *shardReplayer) schedState(doc string) (int, any, map[string]any) {
	code, m := r.getJSON("15984", "/_scheduler/docs/_replicator/"+doc)
	return code, m["state"], m
}

// narrateBefore performs what the recording did out of band before case c.
func (r *shardReplayer) narrateBefore(c recordedCase, prev recordedCase) {
	if r.mapEdit != "" && !strings.Contains(c.Title, "right after the edit") {
		// The recording saw a _dbs edit on every node within 0.02 s; its next requests came later
		// than that, while the replay's come within a millisecond.
		db := r.mapEdit
		r.mapEdit = ""
		_, m := r.getJSON("15984", "/_node/_local/_dbs/"+db)
		r.waitFor("the "+db+" edit to reach every node", func() bool {
			for _, n := range r.nodes {
				if n.Running() {
					if _, o := r.getJSON("15984", "/_node/"+n.Name()+"/_dbs/"+db); o["_rev"] != m["_rev"] {
						return false
					}
				}
			}
			return true
		})
	}
	switch {
	case strings.HasPrefix(c.Section, "5.") && !strings.HasPrefix(prev.Section, "5."):
		r.nodes["35984"].Stop() // "node3 stopped (SIGTERM to its VM), then 2 s"
	case strings.HasPrefix(c.Sub, "5b.") && !strings.HasPrefix(prev.Sub, "5b."):
		if err := r.nodes["35984"].Start(); err != nil {
			r.t.Fatal(err)
		}
		// Writes made while node3 was down reach its copy without _sync_shards (4.16 s).
		r.waitFor("node3's copy to catch up", func() bool { return r.synced("db1", range8, "node3", "node2") })
	case strings.HasPrefix(c.Sub, "5c.") && !strings.HasPrefix(prev.Sub, "5c."):
		r.nodes["35984"].Stop()
		if err := r.nodes["35984"].Start(); err != nil {
			r.t.Fatal(err)
		}
	case c.Title == "PUT /db2":
		r.clock.set(1795331849) // db2's instance_start_time
	case strings.HasPrefix(c.Title, "DELETE /_replicator/rep-userinfo?rev="):
		// The script read the rewritten document's revision, which the recording does not show.
		_, m := r.getJSON("15984", "/_replicator/rep-userinfo")
		rec := strings.TrimPrefix(c.Path, "/_replicator/rep-userinfo?rev=")
		if got, _ := m["_rev"].(string); revGen(got) == revGen(rec) {
			r.tokens.revs[rec] = got
		} else {
			r.t.Errorf("rep-userinfo is at %q; the recording deleted generation %d", got, revGen(rec))
		}
	}
}

// narrateAfter performs the waits and polls the recording made after case c.
func (r *shardReplayer) narrateAfter(c recordedCase) {
	sd := shardsOpts.SyncDelay
	switch c.Title {
	case "POST /db1/_bulk_docs (200 docs doc000..doc199)":
		// "Waited 8 s after the bulk write", longer than the sync delay: every copy pushed once.
		r.waitFor("db1's post-write sync", func() bool {
			return r.synced("db1", range0, "node4", "node1") && r.synced("db1", range0, "node1", "node4") &&
				r.synced("db1", range8, "node3", "node2") && r.synced("db1", range8, "node2", "node3")
		})
	case "GET /_node/node2@127.0.0.1/_dbs/db1 right after the edit (has it reached node2@127.0.0.1's copy of _dbs?)":
		r.waitFor("the edit to reach every node's _dbs", func() bool {
			for _, n := range []string{"node1", "node2", "node3", "node4"} {
				if _, m := r.getJSON("15984", "/_node/"+n+"@127.0.0.1/_dbs/db1"); revGen(fmt.Sprint(m["_rev"])) != 2 {
					return false
				}
			}
			return r.copyCounts("node2", range0, "db1") == "0/0/0"
		})
		// 2a: no _sync_shards, no writes: the new copy stays empty (10 s, twice the sync delay).
		r.holdsFor("node2's new copy staying empty", 3*sd, func() bool { return r.copyCounts("node2", range0, "db1") == "0/0/0" })
	case "POST /db1/_sync_shards":
		r.waitFor("node2's copy to match its sources", func() bool { return r.synced("db1", range0, "node2", "node1", "node4") })
	case "POST /db3/_bulk_docs (100 docs d3-000..d3-099)":
		r.waitFor("db3's post-write sync", func() bool {
			return r.synced("db3", range0, "node2", "node3", "node4") && r.synced("db3", range8, "node1", "node3", "node4")
		})
	case "PUT /_node/_local/_dbs/db3: add 00000000-7fffffff on node1@127.0.0.1":
		r.waitFor("node1's new db3 copy", func() bool { return r.copyCounts("node1", range0, "db3") == "0/0/0" })
		r.holdsFor("node1's new db3 copy staying empty", 3*sd, func() bool { return r.copyCounts("node1", range0, "db3") == "0/0/0" })
	case "PUT /db3/w0 (one write into 00000000-7fffffff; no _sync_shards)":
		if got := r.copyCounts("node1", range0, "db3"); got != "1/0/1" {
			r.t.Errorf("right after w0 node1's copy is %s, recorded 1/0/1", got)
		}
		r.waitFor("the write's sync to fill node1's copy", func() bool { return r.copyCounts("node1", range0, "db3") == "57/0/57" })
	case "POST /db3/_sync_shards immediately (10 ms after the PUT was sent)":
		r.waitFor("node2's db3 copy to match", func() bool { return r.synced("db3", range8, "node2", "node1", "node3", "node4") })
	case "GET /db1 via node2@127.0.0.1 itself (port 25984)":
		r.waitFor("maintenance writes to reach node2", func() bool {
			return r.copyCounts("node2", range0, "db1") == "89/0/89" && r.copyCounts("node2", range8, "db1") == "113/0/113"
		})
	case "PUT /_replicator/rep-db1-db2 (auth.basic form)":
		r.pollStates(map[string][]any{"rep-db1-db2": {nil, "initializing", "running"}}, func() bool {
			_, st, m := r.schedState("rep-db1-db2")
			info, _ := m["info"].(map[string]any)
			return st == "running" && info != nil && info["docs_written"] == 207.0
		})
	case "PUT /_replicator/rep-dup (same source/target URLs as rep-db1-db2, different source password)":
		r.pollStates(map[string][]any{
			"rep-bad-target":   {nil, "initializing", "running", "crashing"},
			"rep-bad-password": {nil, "initializing", "running", "crashing"},
			"rep-userinfo":     {nil, "initializing", "running", "completed"},
			"rep-dup":          {nil, "initializing", "crashing"},
		}, func() bool {
			_, a, _ := r.schedState("rep-bad-target")
			_, b, _ := r.schedState("rep-bad-password")
			_, u, _ := r.schedState("rep-userinfo")
			_, d, _ := r.schedState("rep-dup")
			_, _, m := r.schedState("rep-db1-db2")
			info, _ := m["info"].(map[string]any)
			// The recording watched 40 s, past rep-db1-db2's first checkpoint (30 s).
			return a == "crashing" && b == "crashing" && u == "completed" && d == "crashing" && info != nil && info["checkpointed_source_seq"] != "0"
		})
		if code, _, _ := r.schedState("rep-bad-doc"); code != http.StatusNotFound {
			r.t.Errorf("rep-bad-doc: scheduler answered %d, recorded 404", code)
		}
	}
}

// pollStates polls scheduler docs until done, checking that each goes through its recorded states in
// order (a poll may miss short ones, as the recording's 0.5 s polls missed "initializing"). The first
// body seen in a state is compared with the one the recording printed for that state, if any.
func (r *shardReplayer) pollStates(want map[string][]any, done func() bool) {
	pos := map[string]int{}
	seen := map[string]bool{}
	r.waitFor("replication states", func() bool {
		for doc, states := range want {
			_, body := r.send(http.MethodGet, "15984", "/_scheduler/docs/_replicator/"+doc, "", true)
			var m map[string]any
			_ = json.Unmarshal([]byte(body), &m)
			st := m["state"]
			i := slices.Index(states[pos[doc]:], st)
			if i < 0 {
				r.t.Fatalf("%s went to state %v after %v; recorded sequence %v", doc, st, states[pos[doc]], states)
			}
			pos[doc] += i
			key := fmt.Sprintf("%s %v", doc, st)
			if rec, ok := r.polled[key]; ok && !seen[key] {
				seen[key] = true
				r.pollSeen++
				if diffs := r.compare(recordedCase{Path: "/_scheduler/docs/_replicator/" + doc, Resp: rec}, body); len(diffs) > 0 {
					r.t.Errorf("polled %s: body differs from the recording's first one in that state:\n  %s", key, strings.Join(diffs, "\n  "))
				}
			}
		}
		return done()
	})
}

var pollLine = regexp.MustCompile(`^t=[\d.]+ s  GET 127\.0\.0\.1:\d+/_scheduler/docs/_replicator/(\S+)  -> HTTP 200$`)

// parsePolled reads the "first verbatim body seen for each state" blocks of the recording's polls,
// which are not request/response cases of their own.
func parsePolled(t *testing.T, file string) map[string]string {
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	lines := strings.Split(string(b), "\n")
	for i, l := range lines {
		m := pollLine.FindStringSubmatch(l)
		if m == nil || i+1 >= len(lines) {
			continue
		}
		var body map[string]any
		if json.Unmarshal([]byte(lines[i+1]), &body) == nil {
			out[fmt.Sprintf("%s %v", m[1], body["state"])] = lines[i+1]
		}
	}
	return out
}

// expandTrimmed rebuilds the request bodies the recording shortened.
func expandTrimmed(body string) string {
	if !strings.Contains(body, "<- trimmed") {
		return body
	}
	var docs []string
	switch {
	case strings.Contains(body, `{"_id":"doc000","n":0}`):
		for i := 0; i < 200; i++ {
			docs = append(docs, fmt.Sprintf(`{"_id":"doc%03d","n":%d}`, i, i))
		}
	case strings.Contains(body, `{"_id":"d3-000"}`):
		for i := 0; i < 100; i++ {
			docs = append(docs, fmt.Sprintf(`{"_id":"d3-%03d"}`, i))
		}
	}
	return `{"docs":[` + strings.Join(docs, ",") + `]}`
}

// requestBody is the body the recorded request carried, with what the recording masked restored.
func requestBody(c recordedCase) string {
	body := expandTrimmed(c.Body)
	switch {
	case strings.Contains(c.Title, "source password wrong"):
		body = strings.Replace(body, `"password":"***"`, `"password":"wrong"`, 1)
	case strings.Contains(c.Title, "different source password"):
		body = strings.Replace(body, `"password":"***"`, `"password":"another-pw"`, 1)
	}
	return body
}

// TestConformanceShards replays every case of couchdb-real-shards.md, in order, against an emulated
// 4-node cluster formed as the recording's was, and compares status codes and bodies; a request the
// recording saw refused must be refused the same way (a stopped node's closed listener). A case
// counts as matched only when that comparison ran and found no difference, and every recorded case
// (counted in the file, not by the parser) must match.
func TestConformanceShards(t *testing.T) {
	file := filepath.Join(sharedDir(t), "couchdb-real-shards.md")
	cases := parseRecordings(t, file)
	recorded, _ := countRecorded(t, file)
	r := newShardReplayer(t)
	r.polled = parsePolled(t, file)
	r.setup()
	matched, refused := 0, 0
	var prev recordedCase
	for i, c := range cases {
		r.narrateBefore(c, prev)
		path := c.Path
		body := requestBody(c)
		for rec, got := range r.tokens.revs {
			path = strings.ReplaceAll(path, rec, got)
			body = strings.ReplaceAll(body, rec, got)
		}
		code, got, err := r.do(c.Method, c.Port, path, body, c.Auth != "")
		name := fmt.Sprintf("case %d %q (%s %s)", i+1, c.Title, c.Method, c.Path)
		switch {
		case c.NoResponse:
			if ok, diff := sameFailure(c, err); !ok {
				t.Errorf("%s: %s", name, diff)
			} else {
				matched++
				refused++
			}
		case err != nil:
			t.Errorf("%s: %v, recorded HTTP %d", name, err, c.Code)
		case code != c.Code:
			t.Errorf("%s: status %d, recorded %d; body %s", name, code, c.Code, got)
		default:
			if diffs := r.compare(c, got); len(diffs) > 0 {
				t.Errorf("%s: body differs:\n  %s", name, strings.Join(diffs, "\n  "))
			} else {
				matched++
			}
		}
		if len(r.placeErr) > 0 {
			t.Fatalf("%s: %s", name, strings.Join(r.placeErr, "; "))
		}
		if c.Method == http.MethodPut && strings.HasPrefix(c.Path, "/_node/_local/_dbs/") && code == http.StatusCreated {
			r.mapEdit = strings.TrimPrefix(c.Path, "/_node/_local/_dbs/")
		}
		r.narrateAfter(c)
		prev = c
	}
	var skipped []string
	total := 0
	for f, n := range r.skipped {
		skipped = append(skipped, fmt.Sprintf("%s x%d", f, n))
		total += n
	}
	sort.Strings(skipped)
	if matched != recorded || len(cases) != recorded {
		t.Errorf("couchdb-real-shards.md records %d cases; %d parsed, %d matched", recorded, len(cases), matched)
	}
	t.Logf("couchdb-real-shards.md: %d of %d recorded cases matched (%d of them refused connections), %d fields skipped (%s); %d of the %d polled scheduler bodies seen and compared",
		matched, recorded, refused, total, strings.Join(skipped, ", "), r.pollSeen, len(r.polled))
}
