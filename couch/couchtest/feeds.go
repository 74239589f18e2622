package couchtest

import (
	"encoding/base64"
	"encoding/json"
	"net/http"
	"sort"
	"strconv"
	"strings"

	"github.com/couchdb-controller/couchdb-controller/couch"
)

// seqPos is one range's part of a clustered sequence: which copy answered and how far it was.
type seqPos struct {
	Node  string `json:"n"`
	Range string `json:"r"`
	Seq   int    `json:"s"`
}

// encodeSeq writes a clustered sequence the way fabric does: the sum of the copies' sequences, a dash
// and an opaque token (CouchDB's is a compressed Erlang term starting "g1AAAA"; ours is JSON).
func encodeSeq(pos []seqPos) string {
	sum := 0
	for _, p := range pos {
		sum += p.Seq
	}
	b, _ := json.Marshal(pos)
	return strconv.Itoa(sum) + "-g1AAAA" + base64.RawURLEncoding.EncodeToString(b)
}

// decodeSeq reads a since= value: 0, "now" (nil, true), or a sequence encodeSeq made.
func decodeSeq(s string) (map[string]int, bool) {
	out := map[string]int{}
	if s == "" || s == "0" {
		return out, false
	}
	if s == "now" {
		return nil, true
	}
	_, tok, ok := strings.Cut(s, "-g1AAAA")
	if !ok {
		return out, false
	}
	b, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil {
		return out, false
	}
	var pos []seqPos
	_ = json.Unmarshal(b, &pos)
	for _, p := range pos {
		out[p.Range] = p.Seq
	}
	return out, false
}

// purgePositions is the purge sequence's shape: the same copies, nothing purged.
func purgePositions(pos []seqPos) []seqPos {
	out := make([]seqPos, len(pos))
	for i, p := range pos {
		out[i] = seqPos{Node: p.Node, Range: p.Range}
	}
	return out
}

// bestCopy picks the answering copy of rng with the highest update sequence (ties: the first node by
// name), which is the copy whose counts GET /{db} reports.
func (nw *Network) bestCopy(coord *Node, m couch.ShardMap, rng string) (*Node, *shardCopy) {
	var bn *Node
	var bc *shardCopy
	for node, c := range nw.liveCopies(coord, m, rng) {
		if bc == nil || c.seq > bc.seq || c.seq == bc.seq && node.name < bn.name {
			bn, bc = node, c
		}
	}
	return bn, bc
}

// firstCopy is the copy that serves rng of a streamed read (_all_docs, _changes): real CouchDB keeps
// the first worker per range to answer (fabric_streams), among every copy in the map that is not
// fenced, and a copy that is still being filled has less to read and answers first. The emulator
// takes the worst case every time: the answering copy with the fewest documents (ties: the first
// node by name). So a copy added to a map unfenced, before its fill, shows up as missing documents,
// as it did on real CouchDB 3.4.3 nodes during moves.
func (nw *Network) firstCopy(coord *Node, m couch.ShardMap, rng string) *shardCopy {
	var bn *Node
	var bc *shardCopy
	for node, c := range nw.liveCopies(coord, m, rng) {
		if bc == nil || len(c.docs) < len(bc.docs) || len(c.docs) == len(bc.docs) && node.name < bn.name {
			bn, bc = node, c
		}
	}
	return bc
}

// positions is the current clustered sequence of m as coord sees it.
func (nw *Network) positions(coord *Node, m couch.ShardMap) []seqPos {
	var out []seqPos
	for _, rng := range m.Ranges() {
		if n, c := nw.bestCopy(coord, m, rng); c != nil {
			out = append(out, seqPos{Node: n.name, Range: rng, Seq: c.seq})
		}
	}
	return out
}

// winners merges the serving copy of every range (firstCopy) into one id -> doc view.
func (nw *Network) winners(coord *Node, m couch.ShardMap) map[string]*docRec {
	out := map[string]*docRec{}
	for _, rng := range m.Ranges() {
		if c := nw.firstCopy(coord, m, rng); c != nil {
			for id, d := range c.docs {
				out[id] = d
			}
		}
	}
	return out
}

// allDocs is GET|POST /{db}/_all_docs with limit, skip, include_docs, startkey/endkey and keys.
func (n *Node) allDocs(r *http.Request, m couch.ShardMap) (int, any) {
	q := r.URL.Query()
	docs := n.net.winners(n, m)
	ids := make([]string, 0, len(docs))
	for id, d := range docs {
		if !d.Deleted {
			ids = append(ids, id)
		}
	}
	sort.Strings(ids)
	total := len(ids)
	if v := q.Get("startkey"); v != "" {
		var k string
		_ = json.Unmarshal([]byte(v), &k)
		ids = ids[sort.SearchStrings(ids, k):]
	}
	if v := q.Get("endkey"); v != "" {
		var k string
		_ = json.Unmarshal([]byte(v), &k)
		ids = ids[:sort.Search(len(ids), func(i int) bool { return ids[i] > k })]
	}
	if v, err := strconv.Atoi(q.Get("skip")); err == nil && v > 0 {
		ids = ids[min(v, len(ids)):]
	}
	if v, err := strconv.Atoi(q.Get("limit")); err == nil && v >= 0 {
		ids = ids[:min(v, len(ids))]
	}
	include := q.Get("include_docs") == "true"
	rows := make([]allDocsRow, 0, len(ids))
	for _, id := range ids {
		d := docs[id]
		row := allDocsRow{ID: id, Key: id}
		row.Value.Rev = d.Rev
		if include {
			_, row.Doc = getDoc(id, d.Rev, true, false, d.Body)
		}
		rows = append(rows, row)
	}
	return http.StatusOK, obj{"total_rows": total, "offset": 0, "rows": rows}
}

// allDocsRow is one row of _all_docs, its fields in CouchDB's order. A struct, not a map: the moves
// bench lists 20,000 rows every pass, and encoding them as maps was the largest part of the
// emulated nodes' CPU, on the cores the controller shares.
type allDocsRow struct {
	ID    string `json:"id"`
	Key   string `json:"key"`
	Value struct {
		Rev string `json:"rev"`
	} `json:"value"`
	Doc any `json:"doc,omitempty"`
}

// changes is GET /{db}/_changes (normal feed): every document's latest revision once, range by range
// in copy order, after since; deleted ones flagged. Each row's seq can be passed back as since.
func (n *Node) changes(r *http.Request, m couch.ShardMap) (int, any) {
	q := r.URL.Query()
	since, now := decodeSeq(q.Get("since"))
	pos := n.net.positions(n, m)
	if now {
		return http.StatusOK, obj{"results": []obj{}, "last_seq": encodeSeq(pos), "pending": 0}
	}
	limit := -1
	if v, err := strconv.Atoi(q.Get("limit")); err == nil && v >= 0 {
		limit = v
	}
	cur := map[string]seqPos{}
	for _, p := range pos {
		cur[p.Range] = seqPos{Node: p.Node, Range: p.Range, Seq: since[p.Range]}
	}
	include := q.Get("include_docs") == "true"
	rows := []obj{}
	for _, rng := range m.Ranges() {
		_, c := n.net.bestCopy(n, m, rng)
		if c == nil {
			continue
		}
		for _, e := range c.changesSince(since[rng]) {
			if limit >= 0 && len(rows) >= limit {
				break
			}
			p := cur[rng]
			p.Seq = e.d.Seq
			cur[rng] = p
			rows = append(rows, changeRow(e.id, e.d, include, encodeSeq(seqList(m, cur))))
		}
	}
	last := encodeSeq(seqList(m, cur))
	if limit < 0 {
		last = encodeSeq(pos)
	}
	return http.StatusOK, obj{"results": rows, "last_seq": last, "pending": 0}
}

func seqList(m couch.ShardMap, cur map[string]seqPos) []seqPos {
	var out []seqPos
	for _, rng := range m.Ranges() {
		if p, ok := cur[rng]; ok {
			out = append(out, p)
		}
	}
	return out
}

type change struct {
	id string
	d  *docRec
}

// changesSince lists the copy's documents changed after seq, in sequence order.
func (c *shardCopy) changesSince(seq int) []change {
	var out []change
	for id, d := range c.docs {
		if d.Seq > seq {
			out = append(out, change{id, d})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].d.Seq < out[j].d.Seq })
	return out
}

func changeRow(id string, d *docRec, include bool, seq any) obj {
	row := obj{"seq": seq, "id": id, "changes": []obj{{"rev": d.Rev}}}
	if d.Deleted {
		row["deleted"] = true
	}
	if include {
		doc := obj{"_id": id, "_rev": d.Rev}
		if d.Deleted {
			doc["_deleted"] = true
		}
		for k, v := range d.Body {
			doc[k] = v
		}
		row["doc"] = doc
	}
	return row
}

// changes is a shard copy's node-local feed, with integer sequences.
func (c *shardCopy) changes(r *http.Request) obj {
	since, _ := strconv.Atoi(r.URL.Query().Get("since"))
	rows := []obj{}
	for _, e := range c.changesSince(since) {
		rows = append(rows, changeRow(e.id, e.d, r.URL.Query().Get("include_docs") == "true", e.d.Seq))
	}
	return obj{"results": rows, "last_seq": c.seq, "pending": 0}
}
