package couchtest

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"
)

const recordedPassword = "conformance-pw"

// notReplayable lists recorded cases the conformance test does not replay, each with its reason.
// Every other case must be checked; a case neither checked nor listed fails the test.
var notReplayable = map[string]string{}

// replayer plays a recording's cluster: node<i>@127.0.0.1 stands where the recording had port i5984.
type replayer struct {
	t       *testing.T
	nw      *Network
	nodes   map[string]*Node // recorded port -> node
	closed  string           // a port nobody listens on
	stopped map[string]bool
	revs    map[string]string // recorded revision -> the emulator's, learned from earlier answers
}

func newReplayer(t *testing.T) *replayer {
	r := &replayer{t: t, nw: NewNetwork(NetworkOptions{SyncDelay: 20 * time.Millisecond}), nodes: map[string]*Node{}, stopped: map[string]bool{}, revs: map[string]string{}}
	for i := 1; i <= 4; i++ {
		n, err := r.nw.AddNode(NodeConfig{Name: fmt.Sprintf("node%d@127.0.0.1", i), AdminUser: "admin", AdminPassword: recordedPassword, N: 3, Q: 2})
		if err != nil {
			t.Fatal(err)
		}
		r.nodes[fmt.Sprintf("%d5984", i)] = n
		if i < 4 { // node4 is booted fresh for section 11
			if err := n.Start(); err != nil {
				t.Fatal(err)
			}
		}
		t.Cleanup(n.Stop)
	}
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	r.closed = strings.TrimPrefix(l.Addr().String(), "127.0.0.1:")
	l.Close()
	return r
}

func (r *replayer) port(recorded string) string {
	if n := r.nodes[recorded]; n != nil && n.Running() {
		return strings.TrimPrefix(n.Addr(), "127.0.0.1:")
	}
	return r.closed
}

// narrate performs the out-of-band steps the recording describes between requests.
func (r *replayer) narrate(c recordedCase) {
	switch {
	case strings.Contains(c.Title, "with node3 stopped") && !r.stopped["node3"]:
		r.nodes["35984"].Stop()
		r.stopped["node3"] = true
	case strings.Contains(c.Title, "after full restart") && !r.stopped["full"]:
		for _, p := range []string{"15984", "25984", "35984"} {
			r.nodes[p].Stop()
		}
		for _, p := range []string{"15984", "25984", "35984"} {
			if err := r.nodes[p].Start(); err != nil {
				r.t.Fatal(err)
			}
		}
		r.stopped["full"] = true
	case strings.HasPrefix(c.Section, "11.") && !r.nodes["45984"].Running():
		if err := r.nodes["45984"].Start(); err != nil {
			r.t.Fatal(err)
		}
	}
}

var portInBody = regexp.MustCompile(`"port":(\d+)`)

func (r *replayer) do(c recordedCase) (int, string) {
	body := c.Body
	pw := recordedPassword
	if strings.Contains(c.Title, "wrong remote password") {
		body = strings.Replace(body, `"password":"***"`, `"password":"wrong"`, 1)
	}
	body = strings.ReplaceAll(body, `"***"`, `"`+pw+`"`)
	body = portInBody.ReplaceAllStringFunc(body, func(m string) string {
		return `"port":` + r.port(strings.TrimPrefix(m, `"port":`))
	})
	path := c.Path
	for rec, got := range r.revs {
		path = strings.ReplaceAll(path, rec, got)
		body = strings.ReplaceAll(body, rec, got)
	}
	var rd io.Reader
	if c.Body != "" || c.Method == http.MethodPost {
		rd = strings.NewReader(body)
	}
	req, _ := http.NewRequest(c.Method, "http://127.0.0.1:"+r.port(c.Port)+path, rd)
	switch c.CType {
	case "":
		if rd != nil {
			req.Header.Set("Content-Type", "application/json")
		}
	default:
		req.Header.Set("Content-Type", c.CType)
	}
	if c.CType != "" && c.Auth == "" {
		c.Auth = "admin" // the 415 line does not print its credentials; it was sent as the admin
	}
	if c.Auth != "" {
		p := pw
		if strings.Contains(c.Title, "wrong password") || c.Auth != "admin" {
			p = "wrong"
		}
		req.SetBasicAuth(c.Auth, p)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	out := string(b)
	// Ports in bodies are the listener's; the recording's are i5984.
	for rec, n := range r.nodes {
		if n.Running() {
			out = strings.ReplaceAll(out, `"`+strings.TrimPrefix(n.Addr(), "127.0.0.1:")+`"`, `"`+rec+`"`)
		}
	}
	return resp.StatusCode, out
}

var (
	hexRE = regexp.MustCompile(`^[0-9a-f]{32}$`)
	revRE = regexp.MustCompile(`^(\d+)-[0-9a-f]{32}$`)
)

// learnRevs records which emulator revision stands for which recorded one, walking both answers.
func (r *replayer) learnRevs(want, got string) {
	var w, g any
	if json.Unmarshal([]byte(want), &w) != nil || json.Unmarshal([]byte(got), &g) != nil {
		return
	}
	var walk func(a, b any)
	walk = func(a, b any) {
		switch x := a.(type) {
		case map[string]any:
			if y, ok := b.(map[string]any); ok {
				for k, v := range x {
					walk(v, y[k])
				}
			}
		case []any:
			if y, ok := b.([]any); ok && len(y) == len(x) {
				for i := range x {
					walk(x[i], y[i])
				}
			}
		case string:
			if y, ok := b.(string); ok && revRE.MatchString(x) && revRE.MatchString(y) && x != y {
				r.revs[x] = y
			}
		}
	}
	walk(w, g)
}

// normalize blanks what differs by nature: revision hashes (not their numbers), uuids and secrets,
// and which nodes a randomly placed shard landed on (only the number of copies per range is kept).
func normalize(v any) any {
	switch x := v.(type) {
	case map[string]any:
		out := map[string]any{}
		for k, e := range x {
			if k == "shards" {
				if m, ok := e.(map[string]any); ok {
					counts := map[string]any{}
					for rng, nodes := range m {
						if l, ok := nodes.([]any); ok {
							counts[rng] = float64(len(l))
						}
					}
					out[k] = counts
					continue
				}
			}
			out[k] = normalize(e)
		}
		return out
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = normalize(e)
		}
		return out
	case string:
		if hexRE.MatchString(x) {
			return "<hex>"
		}
		if m := revRE.FindStringSubmatch(x); m != nil {
			return m[1] + "-<hash>"
		}
	}
	return v
}

func sameJSON(want, got string) (bool, string) {
	var w, g any
	if err := json.Unmarshal([]byte(want), &w); err != nil {
		return want == got, "recorded body is not JSON"
	}
	if err := json.Unmarshal([]byte(got), &g); err != nil {
		return false, "emulator body is not JSON: " + got
	}
	wn, gn := normalize(w), normalize(g)
	wb, _ := json.Marshal(wn)
	gb, _ := json.Marshal(gn)
	return string(wb) == string(gb), fmt.Sprintf("want %s\n got %s", wb, gb)
}

// TestConformanceClusterSetup replays every case of couchdb-real-responses.md, in order, against an
// emulated 3-node cluster (plus the fresh node4 of section 11).
func TestConformanceClusterSetup(t *testing.T) {
	cases := parseRecordings(t, filepath.Join(sharedDir(t), "couchdb-real-responses.md"))
	r := newReplayer(t)
	checked, listed := 0, 0
	for i, c := range cases {
		key := c.File + ": " + c.Title
		if reason, ok := notReplayable[key]; ok {
			t.Logf("not replayed: %s (%s)", key, reason)
			listed++
			continue
		}
		r.narrate(c)
		code, body := r.do(c)
		checked++
		if code != c.Code {
			t.Errorf("case %d %q (%s %s): status %d, recorded %d; body %s", i, c.Title, c.Method, c.Path, code, c.Code, body)
			continue
		}
		r.learnRevs(c.Resp, body)
		if ok, diff := sameJSON(c.Resp, body); !ok {
			t.Errorf("case %d %q (%s %s): body differs:\n%s", i, c.Title, c.Method, c.Path, diff)
		}
		// add_node makes the nodes connect and _nodes propagate asynchronously in CouchDB; the
		// emulator is synchronous, so nothing to wait for.
	}
	if checked+listed != len(cases) {
		t.Fatalf("%d cases, %d checked, %d listed", len(cases), checked, listed)
	}
	t.Logf("conformance: couchdb-real-responses.md: %d cases checked, %d listed as not replayable", checked, listed)
	_ = sort.Strings
}
