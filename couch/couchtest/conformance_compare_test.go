package couchtest

import (
	"encoding/json"
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// tokenMap pairs the recording's opaque tokens (revision hashes, uuids, replication ids, checkpoint
// id hashes) with the emulator's, one to one: the first sighting pairs them, every later one must
// agree in both directions. So the values are not compared, but which of them are equal is.
type tokenMap struct {
	fwd, back map[string]string
	revs      map[string]string // recorded revision -> the emulator's, for later requests
}

func newTokenMap() *tokenMap {
	return &tokenMap{fwd: map[string]string{}, back: map[string]string{}, revs: map[string]string{}}
}

func (m *tokenMap) pair(class, rec, got string) bool {
	if f, ok := m.fwd[class+rec]; ok {
		return f == got
	}
	if b, ok := m.back[class+got]; ok {
		return b == rec
	}
	m.fwd[class+rec], m.back[class+got] = got, rec
	if class == "hex:" {
		// A copy's uuid names its shard-sync checkpoints (mem3_rep:make_local_id hashes it): the
		// checkpoint ids must be exactly the hashes of the paired uuids.
		m.fwd["sync:"+termHash(rec)], m.back["sync:"+termHash(got)] = termHash(got), termHash(rec)
	}
	return true
}

var (
	revHashRE   = regexp.MustCompile(`^(\d+)-([0-9a-f]{32})$`)
	hex32RE     = regexp.MustCompile(`^[0-9a-f]{32}$`)
	repIDRE     = regexp.MustCompile(`^([0-9a-f]{32})(\+continuous)?$`)
	syncIDRE    = regexp.MustCompile(`^_local/shard-sync-([A-Za-z0-9_-]{22})-([A-Za-z0-9_-]{22})$`)
	opaqueSeqRE = regexp.MustCompile(`^(\d+)-g[A-Za-z0-9_-]+$`)
	isoSecRE    = regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$`)
	isoMicroRE  = regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$`)
	microRE     = regexp.MustCompile(`^\d{16}$`)
	pidRE       = regexp.MustCompile(`^<\d+\.\d+\.\d+>$`)
	adminHashRE = regexp.MustCompile(`^-pbkdf2:sha256-([0-9a-f]{64}),([0-9a-f]{32}),(\d+)$`)
	trimmedRE   = regexp.MustCompile(`<- trimmed: (\d+) entries, (\d+) with "ok":true`)
)

// compare checks the emulator's body against the recorded one and returns the differences.
func (r *shardReplayer) compare(c recordedCase, got string) []string {
	return compareBody(&comparison{tokens: r.tokens, skipped: r.skipped}, c, got)
}

// compareBody checks the emulator's body against the recorded one of c with cmp (whose token pairs
// carry over from case to case) and returns the differences.
func compareBody(cmp *comparison, c recordedCase, got string) []string {
	if strings.HasSuffix(c.Path, "/_prometheus") {
		return comparePrometheus(c.Resp, got)
	}
	want := c.Resp
	var entries, oks int
	if m := trimmedRE.FindStringSubmatch(want); m != nil {
		entries, oks = atoi(m[1]), atoi(m[2])
		want = strings.Replace(want[:strings.Index(want, "   <- trimmed")], ",...]", "]", 1)
	}
	var w, g any
	if err := json.Unmarshal([]byte(want), &w); err != nil {
		return []string{"recorded body is not JSON: " + want}
	}
	if err := json.Unmarshal([]byte(got), &g); err != nil {
		return []string{"emulator body is not JSON: " + got}
	}
	var diffs []string
	if entries > 0 {
		// A trimmed _bulk_docs answer: its length and ok count, and the entries it shows.
		ga, _ := g.([]any)
		n := 0
		for _, e := range ga {
			if m, _ := e.(map[string]any); m["ok"] == true {
				n++
			}
		}
		if len(ga) != entries || n != oks {
			diffs = append(diffs, fmt.Sprintf("%d entries, %d ok; recorded %d, %d", len(ga), n, entries, oks))
		}
		if len(ga) >= len(w.([]any)) {
			g = ga[:len(w.([]any))]
		}
	}
	cmp.system = strings.HasSuffix(c.Path, "/_system")
	cmp.diffs = nil
	cmp.learnUUIDs(w, g)
	cmp.walk("", w, g)
	return append(diffs, cmp.diffs...)
}

type comparison struct {
	tokens  *tokenMap
	skipped map[string]int // field -> times it was not compared
	// shards, if set, compares the "shards" member of a /{db}/_shards answer instead of walk.
	shards func(c *comparison, path string, w, g any)
	system bool // a /_system answer: VM statistics are measurements of the run, compared by type
	diffs  []string
}

func (c *comparison) errorf(path, format string, args ...any) {
	c.diffs = append(c.diffs, path+": "+fmt.Sprintf(format, args...))
}

// learnUUIDs pairs uuids first, so that checkpoint ids anywhere in the body can be checked against them.
func (c *comparison) learnUUIDs(w, g any) {
	switch x := w.(type) {
	case map[string]any:
		if y, ok := g.(map[string]any); ok {
			for k, v := range x {
				if s, ok := v.(string); ok && (k == "uuid" || strings.HasSuffix(k, "_uuid")) && hex32RE.MatchString(s) {
					if gs, ok := y[k].(string); ok && hex32RE.MatchString(gs) {
						c.tokens.pair("hex:", s, gs)
					}
				}
				c.learnUUIDs(v, y[k])
			}
		}
	case []any:
		if y, ok := g.([]any); ok && len(x) == len(y) {
			x, y = c.order("", x, y)
			for i := range x {
				c.learnUUIDs(x[i], y[i])
			}
		}
	}
}

// order puts lists whose order follows opaque tokens into a comparable order, after checking that
// the emulator ordered them by its own tokens as CouchDB does by its.
func (c *comparison) order(path string, w, g []any) ([]any, []any) {
	key := func(e any) string {
		m, _ := e.(map[string]any)
		if _, job := m["history"]; job && m["doc_id"] != nil {
			return fmt.Sprint(m["doc_id"]) // /_scheduler/jobs, which CouchDB sorts by replication id
		}
		if doc, ok := m["doc"].(map[string]any); ok && strings.HasPrefix(fmt.Sprint(m["id"]), "_local/shard-sync-") {
			for src, h := range doc["history"].(map[string]any) {
				return src + ">" + fmt.Sprint(h.([]any)[0].(map[string]any)["target_node"])
			}
		}
		return ""
	}
	if len(w) == 0 || key(w[0]) == "" {
		return w, g
	}
	if path != "" {
		sorted := sort.SliceIsSorted(g, func(i, j int) bool {
			a, b := g[i].(map[string]any), g[j].(map[string]any)
			if a["id"] != b["id"] {
				return fmt.Sprint(a["id"]) < fmt.Sprint(b["id"])
			}
			return fmt.Sprint(a["doc_id"]) < fmt.Sprint(b["doc_id"])
		})
		if !sorted {
			c.errorf(path, "not sorted by id")
		}
	}
	ws, gs := append([]any(nil), w...), append([]any(nil), g...)
	sort.SliceStable(ws, func(i, j int) bool { return key(ws[i]) < key(ws[j]) })
	sort.SliceStable(gs, func(i, j int) bool { return key(gs[i]) < key(gs[j]) })
	return ws, gs
}

func (c *comparison) walk(path string, w, g any) {
	switch x := w.(type) {
	case map[string]any:
		y, ok := g.(map[string]any)
		if !ok {
			c.errorf(path, "recorded an object, got %v", g)
			return
		}
		for k := range y {
			if _, ok := x[k]; !ok {
				c.errorf(path, "extra field %q", k)
			}
		}
		for k, v := range x {
			gv, ok := y[k]
			if !ok {
				c.errorf(path, "missing field %q", k)
				continue
			}
			if k == "shards" && path == "" && c.shards != nil {
				c.shards(c, path+"/"+k, v, gv)
				continue
			}
			c.field(path+"/"+k, k, v, gv)
		}
	case []any:
		y, ok := g.([]any)
		if !ok || len(x) != len(y) {
			c.errorf(path, "recorded %d elements, got %v", len(x), g)
			return
		}
		x, y = c.order(path, x, y)
		for i := range x {
			c.walk(path+"/"+strconv.Itoa(i), x[i], y[i])
		}
	case string:
		c.str(path, x, g)
	case float64:
		if c.system && !strings.HasSuffix(path, "/internal_replication_jobs") && !strings.HasSuffix(path, "/process_limit") {
			if _, ok := g.(float64); !ok {
				c.errorf(path, "recorded a number, got %v", g)
			}
			return
		}
		if g != w {
			c.errorf(path, "recorded %v, got %v", w, g)
		}
	default:
		if g != w {
			c.errorf(path, "recorded %v, got %v", w, g)
		}
	}
}

// field compares one member; the storage sizes a couch_bt_engine file has on disk are the only values
// the emulator cannot reproduce (they follow couch_file's block layout and snappy compression), so
// sizes.file and sizes.active are counted as skipped and only checked to be numbers.
func (c *comparison) field(path, key string, w, g any) {
	if key == "ref" && path == "/ref" {
		// A 500's ref is a hash of the stack trace CouchDB logged: compared by type.
		if _, ok := g.(float64); !ok {
			c.errorf(path, "recorded a number, got %v", g)
		}
		c.skipped["ref"]++
		return
	}
	if strings.HasSuffix(path, "/sizes/file") || strings.HasSuffix(path, "/sizes/active") {
		if _, ok := g.(float64); !ok {
			c.errorf(path, "recorded a number, got %v", g)
		}
		c.skipped["sizes."+key]++
		return
	}
	c.walk(path, w, g)
}

func (c *comparison) str(path, w string, g any) {
	gs, ok := g.(string)
	if !ok {
		c.errorf(path, "recorded %q, got %v", w, g)
		return
	}
	tokens := c.tokens
	switch {
	case revHashRE.MatchString(w):
		wm, gm := revHashRE.FindStringSubmatch(w), revHashRE.FindStringSubmatch(gs)
		if gm == nil || wm[1] != gm[1] || !tokens.pair("rev:", wm[2], gm[2]) {
			c.errorf(path, "revision %s, got %s (or it pairs inconsistently)", w, gs)
			return
		}
		tokens.revs[w] = gs
	case adminHashRE.MatchString(w):
		// An admin hash: the derived key and the salt are random per node, so they are paired; which
		// nodes hold the same hash is what the recording shows. The iteration count is paired too: the
		// replay lowers it (TestConformanceSessions checks the recorded one is the default).
		wm, gm := adminHashRE.FindStringSubmatch(w), adminHashRE.FindStringSubmatch(gs)
		if gm == nil || !tokens.pair("iter:", wm[3], gm[3]) || !tokens.pair("dk:", wm[1], gm[1]) || !tokens.pair("salt:", wm[2], gm[2]) {
			c.errorf(path, "admin hash %s, got %s (or it pairs inconsistently)", w, gs)
			return
		}
		tokens.revs[w] = gs
	case repIDRE.MatchString(w):
		wm, gm := repIDRE.FindStringSubmatch(w), repIDRE.FindStringSubmatch(gs)
		if gm == nil || wm[2] != gm[2] || !tokens.pair("hex:", wm[1], gm[1]) {
			c.errorf(path, "id %s, got %s (or it pairs inconsistently)", w, gs)
		}
	case syncIDRE.MatchString(w):
		wm, gm := syncIDRE.FindStringSubmatch(w), syncIDRE.FindStringSubmatch(gs)
		if gm == nil || !tokens.pair("sync:", wm[1], gm[1]) || !tokens.pair("sync:", wm[2], gm[2]) {
			c.errorf(path, "checkpoint id %s, got %s: not the hashes of the paired copies' uuids", w, gs)
		}
	case opaqueSeqRE.MatchString(w):
		// fabric's sequences: the sum of the copies' sequences, then an encoded Erlang term naming
		// the copies; the sum is compared, the encoding is the emulator's own.
		wm, gm := opaqueSeqRE.FindStringSubmatch(w), opaqueSeqRE.FindStringSubmatch(gs)
		if gm == nil || wm[1] != gm[1] {
			c.errorf(path, "sequence %s, got %s", w, gs)
		}
	case isoSecRE.MatchString(w), isoMicroRE.MatchString(w), microRE.MatchString(w), pidRE.MatchString(w):
		// Wall-clock times and Erlang pids: compared by form.
		for _, re := range []*regexp.Regexp{isoSecRE, isoMicroRE, microRE, pidRE} {
			if re.MatchString(w) && !re.MatchString(gs) {
				c.errorf(path, "recorded %q, got %q", w, gs)
			}
		}
	default:
		if w != gs {
			c.errorf(path, "recorded %q, got %q", w, gs)
		}
	}
}

// comparePrometheus compares the text the recording shows: its first 30 lines, with the quirks
// CouchDB 3.4.3 has (a leading empty line, a bare CR between # HELP and # TYPE). The sample values
// are compared except the log counters, which count what the node happened to log.
func comparePrometheus(want, got string) []string {
	if !strings.HasPrefix(got, "\n# HELP ") {
		return []string{fmt.Sprintf("body does not start with an empty line and # HELP: %.40q", got)}
	}
	wl := strings.Split(strings.ReplaceAll(want, `\r`, "\r"), "\n")
	if i := len(wl) - 1; strings.Contains(wl[i], "<- trimmed") {
		wl = wl[:i]
	}
	gl := strings.Split(got[1:], "\n")
	var diffs []string
	if len(gl) < len(wl) {
		return []string{fmt.Sprintf("%d lines, the recording shows %d", len(gl), len(wl))}
	}
	logLine := regexp.MustCompile(`^(couchdb_couch_log_requests_total\{level="[a-z_]+"\}) \d+$`)
	for i, w := range wl {
		g := gl[i]
		if m := logLine.FindStringSubmatch(w); m != nil {
			if !strings.HasPrefix(g, m[1]+" ") {
				diffs = append(diffs, fmt.Sprintf("line %d: %q, recorded %q", i+2, g, w))
			}
			continue
		}
		if g != w {
			diffs = append(diffs, fmt.Sprintf("line %d: %q, recorded %q", i+2, g, w))
		}
	}
	return diffs
}
