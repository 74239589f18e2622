package couchtest

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/couchdb-controller/couchdb-controller/couch"
)

// fillCluster is 3 formed nodes whose internal replication runs at rate bytes/s and only when asked.
func fillCluster(t *testing.T, rate int64) (*Network, []*Node, []*couch.Client) {
	t.Helper()
	return formedThree(t, NetworkOptions{SyncDelay: time.Hour, FillRate: rate, PasswordIterations: 10})
}

// formedThree is 3 formed nodes of a network made with opts.
func formedThree(t *testing.T, opts NetworkOptions) (*Network, []*Node, []*couch.Client) {
	t.Helper()
	nw := NewNetwork(opts)
	var nodes []*Node
	var clients []*couch.Client
	for i := 1; i <= 3; i++ {
		nd, _ := nw.AddNode(NodeConfig{Name: fmt.Sprintf("node%d@127.0.0.1", i), AdminUser: "admin", AdminPassword: "s3cret", BindAddress: "any", Secret: testSecret})
		if err := nd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nd.Stop)
		c, _ := couch.New(couch.Options{BaseURL: nd.URL(), Username: "admin", Password: "s3cret", RetryMax: -1})
		nodes, clients = append(nodes, nd), append(clients, c)
	}
	formCluster(t, nodes, clients)
	return nw, nodes, clients
}

// bulk writes count documents with bodies of about size bytes into db.
func bulk(t *testing.T, c *couch.Client, db string, count, size int) {
	t.Helper()
	var docs []string
	for i := 0; i < count; i++ {
		docs = append(docs, fmt.Sprintf(`{"_id":"d%05d","v":"%s"}`, i, strings.Repeat("x", size)))
	}
	req, _ := http.NewRequest(http.MethodPost, c.BaseURL()+"/"+db+"/_bulk_docs", strings.NewReader(`{"docs":[`+strings.Join(docs, ",")+`]}`))
	req.SetBasicAuth("admin", "s3cret")
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("_bulk_docs: %d", resp.StatusCode)
	}
}

// addCopy adds a copy of db's only range on the node that lacks one and returns it and the shard.
func addCopy(t *testing.T, nw *Network, c *couch.Client, db string) (*Node, string) {
	t.Helper()
	ctx := context.Background()
	m, err := c.GetShardMap(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	rng := m.Ranges()[0]
	var target *Node
	for _, nd := range nw.Nodes() {
		if !m.HasCopy(rng, nd.Name()) {
			target = nd
		}
	}
	m.AddCopy(rng, target.Name())
	if _, err := c.PutShardMap(ctx, m); err != nil {
		t.Fatal(err)
	}
	return target, m.ShardName(rng)
}

// A new copy fills at the fill rate: after _sync_shards it grows batch by batch (each batch
// checkpointed) and is complete after about CopyFillBytes / FillRate, not at once.
func TestCopyFillsAtTheFillRate(t *testing.T) {
	ctx := context.Background()
	const docs, size = 400, 1000
	nw, nodes, clients := fillCluster(t, 1_000_000) // ~0.54 MB at 1 MB/s: about 0.54 s
	if err := clients[0].CreateDB(ctx, "big", 1, 2); err != nil {
		t.Fatal(err)
	}
	bulk(t, clients[0], "big", docs, size)
	target, shard := addCopy(t, nw, clients[0], "big")
	var source *Node
	for _, nd := range nodes {
		if nd != target {
			source = nd
			break
		}
	}
	fill, ok := source.CopyFillBytes(shard)
	if !ok || fill < docs*size {
		t.Fatalf("CopyFillBytes = %d, %v; want at least the %d bytes of bodies", fill, ok, docs*size)
	}
	want := nw.FillTime(fill)
	if want < 400*time.Millisecond || want > 2*time.Second {
		t.Fatalf("FillTime(%d) = %v at 1 MB/s", fill, want)
	}
	start := time.Now()
	if err := clients[0].SyncShards(ctx, "big"); err != nil {
		t.Fatal(err)
	}
	sawPartial := false
	for {
		d, _, _ := target.CopyDocCount(shard)
		if d > 0 && d < docs {
			sawPartial = true
			cps, err := clients[0].ShardCheckpoints(ctx, target.Name(), shard)
			if err != nil || len(cps) == 0 {
				t.Errorf("a partly filled copy has no checkpoint: %v %v", cps, err)
			}
		}
		if d == docs {
			break
		}
		if time.Since(start) > 5*want {
			t.Fatalf("the copy has %d of %d docs after %v", d, docs, time.Since(start))
		}
		time.Sleep(20 * time.Millisecond)
	}
	took := time.Since(start)
	// Not faster than the rate allows; slower only by what a loaded machine adds to the timers.
	if took < want*9/10 || took > want*4 {
		t.Errorf("filled in %v, expected about %v", took, want)
	}
	if !sawPartial {
		t.Errorf("the copy went from empty to full at once")
	}
	// The filled copy reports the same sizes as its source.
	sf, se, _, _ := source.CopySizes(shard)
	tf, te, _, _ := target.CopySizes(shard)
	if sf != tf || se != te {
		t.Errorf("sizes: source file %d external %d, target file %d external %d", sf, se, tf, te)
	}
}

// sizes.file grows with the data, not only with the number of updates.
func TestSizesFileGrowsWithData(t *testing.T) {
	ctx := context.Background()
	nw, _, clients := fillCluster(t, 0)
	for _, db := range []string{"small", "large"} {
		if err := clients[0].CreateDB(ctx, db, 1, 3); err != nil {
			t.Fatal(err)
		}
	}
	bulk(t, clients[0], "small", 50, 10)
	bulk(t, clients[0], "large", 50, 5000)
	file := func(db string) int64 {
		m, _ := nw.Nodes()[0].ShardMap(db)
		f, _, _, ok := nw.Nodes()[0].CopySizes(m.ShardName(m.Ranges()[0]))
		if !ok {
			t.Fatalf("no copy of %s", db)
		}
		return f
	}
	s, l := file("small"), file("large")
	if l < s+50*4900 {
		t.Errorf("sizes.file small %d, large %d: the large bodies are not in the file size", s, l)
	}
	m, _ := nw.Nodes()[0].ShardMap("large")
	var info struct {
		Sizes struct{ File int64 } `json:"sizes"`
	}
	code, body, err := getAs(clients[0].BaseURL()+"/_node/"+nw.Nodes()[0].Name()+"/"+strings.ReplaceAll(m.ShardName(m.Ranges()[0]), "/", "%2F"), &info)
	if err != nil || code != http.StatusOK || info.Sizes.File != l {
		t.Errorf("GET of the copy: %d %s %v, want sizes.file %d", code, body, err, l)
	}
}

func getAs(url string, out any) (int, string, error) {
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	req.SetBasicAuth("admin", "s3cret")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), json.Unmarshal(b, out)
}

// At RecordedFillRate the recording's new copy (db1's 00000000-7fffffff: doc000..doc199 as
// {"n":i} split over q=2 put 88 documents, 744 bytes of bodies, there) fills in the 0.11 s the
// recording measured after _sync_shards.
func TestRecordedFillRateMatchesTheRecording(t *testing.T) {
	ctx := context.Background()
	nw, nodes, clients := fillCluster(t, RecordedFillRate)
	if err := clients[0].CreateDB(ctx, "db1", 2, 2); err != nil {
		t.Fatal(err)
	}
	var docs []string
	for i := 0; i < 200; i++ {
		docs = append(docs, fmt.Sprintf(`{"_id":"doc%03d","n":%d}`, i, i))
	}
	req, _ := http.NewRequest(http.MethodPost, clients[0].BaseURL()+"/db1/_bulk_docs", strings.NewReader(`{"docs":[`+strings.Join(docs, ",")+`]}`))
	req.SetBasicAuth("admin", "s3cret")
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	m, _ := nodes[0].ShardMap("db1")
	shard := m.ShardName("00000000-7fffffff")
	src := nw.Node(m.ByRange["00000000-7fffffff"][0])
	d, _, _ := src.CopyDocCount(shard)
	_, ext, _, _ := src.CopySizes(shard)
	fill, _ := src.CopyFillBytes(shard)
	got := nw.FillTime(fill)
	if d != 88 || ext != 744 || got < 100*time.Millisecond || got > 120*time.Millisecond {
		t.Errorf("%d docs, external %d, fill time %v; recorded 88 docs, 744 bytes, 0.11 s", d, ext, got)
	}
	t.Logf("recorded copy: %d docs, %d bytes to move, %v at RecordedFillRate", d, fill, got)
}

// A streamed read takes each range from the first copy to answer, and a copy still being filled
// answers first: _all_docs misses documents through an unfenced new copy, and sees them all once its
// node is in maintenance mode (as on real CouchDB 3.4.3 nodes during moves).
func TestAllDocsReadsTheFillingCopyUnlessFenced(t *testing.T) {
	ctx := context.Background()
	const docs = 50
	nw, _, clients := fillCluster(t, 1_000_000)
	if err := clients[0].CreateDB(ctx, "moving", 1, 2); err != nil {
		t.Fatal(err)
	}
	bulk(t, clients[0], "moving", docs, 10)
	rows := func() int {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, clients[0].BaseURL()+"/moving/_all_docs", nil)
		req.SetBasicAuth("admin", "s3cret")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var out struct {
			Rows []json.RawMessage `json:"rows"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
			t.Fatal(err)
		}
		return len(out.Rows)
	}
	if got := rows(); got != docs {
		t.Fatalf("before the move: %d rows, want %d", got, docs)
	}
	target, _ := addCopy(t, nw, clients[0], "moving") // in the map, not filled (no _sync_shards)
	if got := rows(); got != 0 {
		t.Errorf("through the unfenced empty copy: %d rows, want 0", got)
	}
	if _, err := clients[0].SetMaintenanceMode(ctx, target.Name(), "true"); err != nil {
		t.Fatal(err)
	}
	if got := rows(); got != docs {
		t.Errorf("with the filling copy's node fenced: %d rows, want %d", got, docs)
	}
}

// ShardMaps reads every named map at once, as ShardMap reads each: the same maps and revisions, and
// none for a database that does not exist.
func TestShardMapsReadsEachMapOnce(t *testing.T) {
	_, nodes, clients := fillCluster(t, 0)
	ctx := context.Background()
	for _, db := range []string{"db1", "db2"} {
		if err := clients[0].CreateDB(ctx, db, 2, 3); err != nil {
			t.Fatal(err)
		}
	}
	got := nodes[1].ShardMaps([]string{"db1", "db2", "nodb"}, nil)
	if len(got) != 2 {
		t.Fatalf("ShardMaps: %d maps, want db1 and db2: %v", len(got), got)
	}
	for _, db := range []string{"db1", "db2"} {
		one, ok := nodes[1].ShardMap(db)
		if !ok || !reflect.DeepEqual(got[db], one) || got[db].Rev == "" {
			t.Errorf("%s: ShardMaps gave %+v, ShardMap %+v (%v)", db, got[db], one, ok)
		}
	}
	// Given the maps read before, it returns those still current and reads the others again.
	stale := got["db2"].Clone()
	stale.Rev = "0-stale"
	again := nodes[1].ShardMaps([]string{"db1", "db2"}, map[string]couch.ShardMap{"db1": got["db1"], "db2": stale})
	if !reflect.DeepEqual(again["db1"], got["db1"]) || !reflect.DeepEqual(again["db2"], got["db2"]) {
		t.Errorf("ShardMaps with earlier reads: %+v, want %+v", again, got)
	}
}
