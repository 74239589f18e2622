package couch

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// AllDBs lists the clustered databases.
func (c *Client) AllDBs(ctx context.Context) ([]string, error) {
	var dbs []string
	if err := c.getJSON(ctx, "/_all_dbs", nil, &dbs); err != nil {
		return nil, err
	}
	return dbs, nil
}

// CreateDB creates a clustered database; q or n of 0 leave CouchDB's defaults. A 412 file_exists means
// it exists already.
func (c *Client) CreateDB(ctx context.Context, name string, q, n int) error {
	query := url.Values{}
	if q > 0 {
		query.Set("q", strconv.Itoa(q))
	}
	if n > 0 {
		query.Set("n", strconv.Itoa(n))
	}
	_, _, err := c.do(ctx, request{method: http.MethodPut, path: "/" + escape(name), query: query})
	if c, se := statusCode(err); c == http.StatusPreconditionFailed && se.Err == "file_exists" {
		return nil
	}
	return err
}

// DBInfo asks GET /{db}.
func (c *Client) DBInfo(ctx context.Context, db string) (DBInfo, error) {
	var info DBInfo
	err := c.getJSON(ctx, "/"+escape(db), nil, &info)
	return info, err
}

// Shards asks GET /{db}/_shards: range -> nodes, as the shard map lists them (live or not).
func (c *Client) Shards(ctx context.Context, db string) (map[string][]string, error) {
	var body struct {
		Shards map[string][]string `json:"shards"`
	}
	if err := c.getJSON(ctx, "/"+escape(db)+"/_shards", nil, &body); err != nil {
		return nil, err
	}
	return body.Shards, nil
}

func dbsPath(db string) string { return "/_node/_local/_dbs/" + escape(db) }

// GetShardMap reads the shard map document of db from this node's _dbs. The clustered /_dbs/{db}
// answers 404 by design (mem3 treats _dbs as one shard only for info and _all_docs), so the
// node-local path is the only one that works.
func (c *Client) GetShardMap(ctx context.Context, db string) (ShardMap, error) {
	var m ShardMap
	if err := c.getJSON(ctx, dbsPath(db), nil, &m); err != nil {
		return ShardMap{}, err
	}
	if m.ID == "" {
		m.ID = db
	}
	return m, nil
}

// PutShardMap writes m with its _rev. A 409 is returned to the caller, which must re-read and re-plan:
// someone else changed the placement meanwhile.
func (c *Client) PutShardMap(ctx context.Context, m ShardMap) (string, error) {
	if err := m.Validate(); err != nil {
		return "", fmt.Errorf("shard map %s: %w", m.ID, err)
	}
	code, data, err := c.do(ctx, request{method: http.MethodPut, path: dbsPath(m.ID), body: m})
	if err != nil {
		return "", err
	}
	var ok okResponse
	if err := decode(http.MethodPut, dbsPath(m.ID), code, data, &ok); err != nil {
		return "", err
	}
	return ok.Rev, nil
}

// SeedShardMap stores m in this node's _dbs as it is, revision included (new_edits=false), as mem3's
// push of _dbs between nodes stores it. It is for a node whose _dbs lacks the database: CouchDB
// refuses every internal-replication push into a copy of a database the target node's own _dbs does
// not hold (missing_target), and a node that has just joined gets _dbs only through mem3's ring of
// pushes, which can hang.
func (c *Client) SeedShardMap(ctx context.Context, m ShardMap) error {
	if m.Rev == "" {
		return fmt.Errorf("shard map %s: no revision to store", m.ID)
	}
	if err := m.Validate(); err != nil {
		return fmt.Errorf("shard map %s: %w", m.ID, err)
	}
	_, _, err := c.do(ctx, request{method: http.MethodPut, path: dbsPath(m.ID), query: url.Values{"new_edits": {"false"}}, body: m})
	return err
}

// SyncShards asks every copy of every range of db to push to every other copy. Without it a new copy
// stays empty until the next write to its range (recorded on real CouchDB).
func (c *Client) SyncShards(ctx context.Context, db string) error {
	_, _, err := c.do(ctx, request{method: http.MethodPost, path: "/" + escape(db) + "/_sync_shards", body: struct{}{}})
	return err
}

// ShardCopyInfo reads the node-local info of one shard copy, e.g. shard "shards/00000000-7fffffff/db1.1795331777".
// Its doc_count + doc_del_count is how a new copy is judged caught up.
func (c *Client) ShardCopyInfo(ctx context.Context, node, shard string) (DBInfo, error) {
	var info DBInfo
	err := c.getJSON(ctx, "/_node/"+escape(node)+"/"+escape(shard), nil, &info)
	return info, err
}

// ShardCheckpoints lists the internal-replication checkpoints a shard copy holds (its
// _local/shard-sync-* docs, from GET /_node/{node}/{shard}/_local_docs?include_docs=true): those of
// pushes from it and of pushes to it. A checkpoint whose source is this copy and whose Seq equals the
// copy's update_seq says the target copy holds everything this copy holds.
func (c *Client) ShardCheckpoints(ctx context.Context, node, shard string) ([]SyncCheckpoint, error) {
	var body struct {
		Rows []struct {
			ID  string          `json:"id"`
			Doc json.RawMessage `json:"doc"`
		} `json:"rows"`
	}
	path := "/_node/" + escape(node) + "/" + escape(shard) + "/_local_docs"
	if err := c.getJSON(ctx, path, url.Values{"include_docs": {"true"}}, &body); err != nil {
		return nil, err
	}
	var out []SyncCheckpoint
	for _, r := range body.Rows {
		if !strings.HasPrefix(r.ID, "_local/shard-sync-") {
			continue // purge checkpoints and the like
		}
		var doc struct {
			Seq        int64  `json:"seq"`
			TargetUUID string `json:"target_uuid"`
			History    map[string][]struct {
				SourceNode string `json:"source_node"`
				SourceUUID string `json:"source_uuid"`
				TargetNode string `json:"target_node"`
				TargetUUID string `json:"target_uuid"`
			} `json:"history"`
		}
		if err := json.Unmarshal(r.Doc, &doc); err != nil {
			return nil, &DecodeError{Method: http.MethodGet, Path: path, Code: http.StatusOK, Err: fmt.Errorf("checkpoint %s: %w", r.ID, err)}
		}
		cp := SyncCheckpoint{ID: r.ID, Seq: doc.Seq, TargetUUID: doc.TargetUUID}
		for src, h := range doc.History { // one entry, keyed by the source node; newest first
			if len(h) == 0 {
				continue
			}
			cp.SourceNode, cp.SourceUUID, cp.TargetNode = src, h[0].SourceUUID, h[0].TargetNode
			if h[0].SourceNode != "" {
				cp.SourceNode = h[0].SourceNode
			}
			if cp.TargetUUID == "" {
				cp.TargetUUID = h[0].TargetUUID
			}
		}
		out = append(out, cp)
	}
	return out, nil
}

// NodeAllDBs lists the node-local databases (shard files included) of node.
func (c *Client) NodeAllDBs(ctx context.Context, node string) ([]string, error) {
	var dbs []string
	err := c.getJSON(ctx, "/_node/"+escape(node)+"/_all_dbs", nil, &dbs)
	return dbs, err
}

// System reads /_node/{node}/_system.
func (c *Client) System(ctx context.Context, node string) (SystemInfo, error) {
	var s SystemInfo
	err := c.getJSON(ctx, "/_node/"+escape(node)+"/_system", nil, &s)
	return s, err
}

func maintenancePath(node string) string {
	return "/_node/" + escape(node) + "/_config/couchdb/maintenance_mode"
}

// MaintenanceMode reads [couchdb] maintenance_mode of node ("" when unset).
func (c *Client) MaintenanceMode(ctx context.Context, node string) (string, error) {
	var v string
	err := c.getJSON(ctx, maintenancePath(node), nil, &v)
	if IsNotFound(err) {
		return "", nil
	}
	return v, err
}

// SetMaintenanceMode sets [couchdb] maintenance_mode of node ("true", "false" or "nolb") and returns
// the old value.
func (c *Client) SetMaintenanceMode(ctx context.Context, node, value string) (string, error) {
	raw, _ := json.Marshal(value)
	code, data, err := c.do(ctx, request{method: http.MethodPut, path: maintenancePath(node), raw: raw})
	if err != nil {
		return "", err
	}
	var old string
	if err := decode(http.MethodPut, maintenancePath(node), code, data, &old); err != nil {
		return "", err
	}
	return old, nil
}

// shardMapFields are the keys ShardMap interprets; everything else is kept in Extra.
var shardMapFields = []string{"_id", "_rev", "shard_suffix", "changelog", "by_node", "by_range", "props"}

// UnmarshalJSON keeps fields the controller does not interpret (engine, future fields) in Extra so
// that a read-modify-write never drops them.
func (m *ShardMap) UnmarshalJSON(data []byte) error {
	type plain ShardMap
	var p plain
	if err := json.Unmarshal(data, &p); err != nil {
		return err
	}
	var all map[string]json.RawMessage
	if err := json.Unmarshal(data, &all); err != nil {
		return err
	}
	*m = ShardMap(p)
	m.Extra = nil
	for k, v := range all {
		if slices.Contains(shardMapFields, k) {
			continue
		}
		var x any
		if err := json.Unmarshal(v, &x); err != nil {
			return err
		}
		if m.Extra == nil {
			m.Extra = map[string]any{}
		}
		m.Extra[k] = x
	}
	return nil
}

// MarshalJSON writes the known fields and Extra.
func (m ShardMap) MarshalJSON() ([]byte, error) {
	out := map[string]any{}
	for k, v := range m.Extra {
		out[k] = v
	}
	out["_id"] = m.ID
	if m.Rev != "" {
		out["_rev"] = m.Rev
	}
	out["shard_suffix"] = nonNil(m.ShardSuffix)
	out["changelog"] = nonNilChangelog(m.Changelog)
	out["by_node"] = nonNilMap(m.ByNode)
	out["by_range"] = nonNilMap(m.ByRange)
	if m.Props == nil {
		out["props"] = map[string]any{}
	} else {
		out["props"] = m.Props
	}
	return json.Marshal(out)
}

func nonNil(s []int) []int {
	if s == nil {
		return []int{}
	}
	return s
}

func nonNilChangelog(s [][]string) [][]string {
	if s == nil {
		return [][]string{}
	}
	return s
}

func nonNilMap(m map[string][]string) map[string][]string {
	if m == nil {
		return map[string][]string{}
	}
	return m
}

// Suffix decodes shard_suffix (character codes of "." + creation time).
func (m ShardMap) Suffix() string {
	var b strings.Builder
	for _, r := range m.ShardSuffix {
		b.WriteRune(rune(r))
	}
	return b.String()
}

// ShardName is the node-local name of the copy of range rng: "shards/<range>/<db><suffix>".
func (m ShardMap) ShardName(rng string) string {
	return "shards/" + rng + "/" + m.ID + m.Suffix()
}

// Ranges lists the ranges of the map, sorted.
func (m ShardMap) Ranges() []string {
	out := make([]string, 0, len(m.ByRange))
	for r := range m.ByRange {
		out = append(out, r)
	}
	sort.Strings(out)
	return out
}

// Nodes lists every node that holds a copy, sorted.
func (m ShardMap) Nodes() []string {
	out := make([]string, 0, len(m.ByNode))
	for n := range m.ByNode {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// HasCopy reports whether node holds a copy of rng.
func (m ShardMap) HasCopy(rng, node string) bool { return slices.Contains(m.ByRange[rng], node) }

// AddCopy places a copy of rng on node the way the documented manual procedure does: a changelog
// entry, by_node and by_range. It reports false (and changes nothing) when the copy is there already.
func (m *ShardMap) AddCopy(rng, node string) bool {
	if m.HasCopy(rng, node) {
		return false
	}
	if m.ByRange == nil {
		m.ByRange = map[string][]string{}
	}
	if m.ByNode == nil {
		m.ByNode = map[string][]string{}
	}
	m.Changelog = append(m.Changelog, []string{"add", rng, node})
	m.ByRange[rng] = append(m.ByRange[rng], node)
	m.ByNode[node] = append(m.ByNode[node], rng)
	sort.Strings(m.ByNode[node])
	return true
}

// RemoveCopy drops node's copy of rng from the map (its file stays on disk, as CouchDB leaves it). It
// reports false when there is no such copy.
func (m *ShardMap) RemoveCopy(rng, node string) bool {
	if !m.HasCopy(rng, node) {
		return false
	}
	m.Changelog = append(m.Changelog, []string{"remove", rng, node})
	m.ByRange[rng] = slices.DeleteFunc(slices.Clone(m.ByRange[rng]), func(n string) bool { return n == node })
	m.ByNode[node] = slices.DeleteFunc(slices.Clone(m.ByNode[node]), func(r string) bool { return r == rng })
	if len(m.ByNode[node]) == 0 {
		delete(m.ByNode, node)
	}
	return true
}

// Validate applies the checks CouchDB 3.2.1+ applies on PUT (mem3_bdu): by_node and by_range exist and
// agree with each other.
func (m ShardMap) Validate() error {
	if m.ByNode == nil {
		return fmt.Errorf("by_node is mandatory")
	}
	if m.ByRange == nil {
		return fmt.Errorf("by_range is mandatory")
	}
	for node, ranges := range m.ByNode {
		for _, r := range ranges {
			if !slices.Contains(m.ByRange[r], node) {
				return fmt.Errorf("by_range for %s missing %s", r, node)
			}
		}
	}
	for r, nodes := range m.ByRange {
		for _, n := range nodes {
			if !slices.Contains(m.ByNode[n], r) {
				return fmt.Errorf("by_node for %s missing %s", n, r)
			}
		}
	}
	return nil
}

// Clone deep-copies m.
func (m ShardMap) Clone() ShardMap {
	out := m
	out.ShardSuffix = slices.Clone(m.ShardSuffix)
	out.Changelog = make([][]string, len(m.Changelog))
	for i, e := range m.Changelog {
		out.Changelog[i] = slices.Clone(e)
	}
	out.ByNode = cloneMap(m.ByNode)
	out.ByRange = cloneMap(m.ByRange)
	if m.Props != nil {
		b, _ := json.Marshal(m.Props)
		out.Props = nil
		_ = json.Unmarshal(b, &out.Props)
	}
	if m.Extra != nil {
		b, _ := json.Marshal(m.Extra)
		out.Extra = nil
		_ = json.Unmarshal(b, &out.Extra)
	}
	return out
}

func cloneMap(m map[string][]string) map[string][]string {
	if m == nil {
		return nil
	}
	out := make(map[string][]string, len(m))
	for k, v := range m {
		out[k] = slices.Clone(v)
	}
	return out
}

// ShardMapChanges is what changed in a node's _dbs since a sequence: the shard maps written since
// (whole documents), the databases deleted since, and the sequence to ask from next time.
type ShardMapChanges struct {
	Maps    map[string]ShardMap
	Deleted []string
	LastSeq string // opaque: passed back as since
}

// ShardMapsSince reads every shard map document of this node's _dbs changed after since ("" or "0":
// all of them) in one request: GET /_node/_local/_dbs/_changes?include_docs=true. A deleted database
// comes with its last map and "deleted": true (recorded on CouchDB 3.4.3). Design documents are not
// databases (the clustered _all_dbs skips them too) and are left out.
func (c *Client) ShardMapsSince(ctx context.Context, since string) (ShardMapChanges, error) {
	if since == "" {
		since = "0"
	}
	var feed struct {
		Results []struct {
			ID      string   `json:"id"`
			Deleted bool     `json:"deleted"`
			Doc     ShardMap `json:"doc"`
		} `json:"results"`
		LastSeq json.RawMessage `json:"last_seq"`
	}
	q := url.Values{"since": {since}, "include_docs": {"true"}}
	if err := c.getJSON(ctx, "/_node/_local/_dbs/_changes", q, &feed); err != nil {
		return ShardMapChanges{}, err
	}
	out := ShardMapChanges{Maps: map[string]ShardMap{}, LastSeq: strings.Trim(string(feed.LastSeq), `"`)}
	if out.LastSeq == "" || out.LastSeq == "null" {
		return ShardMapChanges{}, fmt.Errorf("GET /_node/_local/_dbs/_changes: no last_seq in the answer")
	}
	for _, r := range feed.Results {
		switch {
		case strings.HasPrefix(r.ID, "_design/"):
		case r.Deleted:
			out.Deleted = append(out.Deleted, r.ID)
		case r.Doc.ByRange == nil:
			return ShardMapChanges{}, fmt.Errorf("GET /_node/_local/_dbs/_changes: no shard map document for %q in the answer", r.ID)
		default:
			m := r.Doc
			if m.ID == "" {
				m.ID = r.ID
			}
			out.Maps[r.ID] = m
		}
	}
	return out, nil
}
