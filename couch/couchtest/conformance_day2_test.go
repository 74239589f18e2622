package couchtest

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/couchdb-controller/couchdb-controller/couch"
)

// The day-2 recordings (couchdb-real-sessions.md, couchdb-real-zones.md) come from one 3-pod cluster
// started the way the official image and the Helm chart start it: members
// couchdb@couchdb-{0,1,2}.couchdb.acc.svc.cluster.local at 10.244.0.{10,11,12}:5984, the same
// plaintext admin password, [couchdb] uuid and [chttpd_auth] secret on each, q=2 n=3.
const podPassword = "conformance-pw"

// podReplayer plays a day-2 recording: the pod at 10.244.0.1<i> is emulated node i.
type podReplayer struct {
	t       *testing.T
	nw      *Network
	clock   *replayClock
	nodes   map[string]*Node // recorded IP -> node
	clients []*couch.Client
	tokens  *tokenMap
	skipped map[string]int
	cookies map[string]string // "node <i>" -> the AuthSession value POST /_session answered there
}

func podName(i int) string { return fmt.Sprintf("couchdb@couchdb-%d.couchdb.acc.svc.cluster.local", i) }

func newPodReplayer(t *testing.T) *podReplayer {
	r := &podReplayer{t: t, clock: &replayClock{}, nodes: map[string]*Node{}, tokens: newTokenMap(), skipped: map[string]int{}, cookies: map[string]string{}}
	r.clock.set(1796395200)
	// 600,000 iterations cost seconds per key under -race; the count is paired, not compared, and
	// TestConformanceSessions checks that the recorded count is the emulator's default.
	r.nw = NewNetwork(NetworkOptions{SyncDelay: 20 * time.Millisecond, Clock: r.clock.now, PasswordIterations: 1000})
	for i := 0; i < 3; i++ {
		n, err := r.nw.AddNode(NodeConfig{Name: podName(i), AdminUser: "admin", AdminPassword: podPassword, BindAddress: "any",
			EphemeralIni: true, UUID: "a2a9a7f6c1d24e1d9a0c6a3b5e8f7d10", Secret: "4f6c0c1e2d3b4a59"})
		if err != nil {
			t.Fatal(err)
		}
		if err := n.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(n.Stop)
		r.nodes[fmt.Sprintf("10.244.0.1%d", i)] = n
		c, err := couch.New(couch.Options{BaseURL: n.URL(), Username: "admin", Password: podPassword, RetryMax: -1})
		if err != nil {
			t.Fatal(err)
		}
		r.clients = append(r.clients, c)
	}
	ctx := context.Background()
	for i := 1; i < 3; i++ {
		if err := r.clients[0].AddNodeDoc(ctx, podName(i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.clients[0].FinishCluster(ctx); err != nil {
		t.Fatal(err)
	}
	return r
}

func (r *podReplayer) node(ip string) *Node {
	n := r.nodes[ip]
	if n == nil {
		r.t.Fatalf("the recording names %s, which is no pod of the cluster", ip)
	}
	return n
}

var cookieRef = regexp.MustCompile(`^AuthSession=<cookie from (node \d)>$`)

// do sends case c as the recording did and returns the answer and its Set-Cookie header.
func (r *podReplayer) do(c recordedCase) (int, string, string) {
	path, body := c.Path, strings.ReplaceAll(c.Body, "***", podPassword)
	for rec, got := range r.tokens.revs {
		path = strings.ReplaceAll(path, rec, got)
		body = strings.ReplaceAll(body, rec, got)
	}
	var rd io.Reader
	if c.Body != "" {
		rd = strings.NewReader(body)
	}
	req, _ := http.NewRequest(c.Method, r.node(c.Host).URL()+path, rd)
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.Auth != "" {
		req.SetBasicAuth(c.Auth, podPassword)
	}
	if c.Cookie != "" {
		m := cookieRef.FindStringSubmatch(c.Cookie)
		if m == nil || r.cookies[m[1]] == "" {
			r.t.Fatalf("%q: the recording sends a cookie the replay does not have: %s", c.Title, c.Cookie)
		}
		req.AddCookie(&http.Cookie{Name: "AuthSession", Value: r.cookies[m[1]]})
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		r.t.Fatalf("%s %s: %v", c.Method, c.Path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	out := strings.TrimSuffix(string(b), "\n")
	if strings.Contains(out, podPassword) {
		r.t.Errorf("%s %s returned the password", c.Method, c.Path)
	}
	return resp.StatusCode, out, resp.Header.Get("Set-Cookie")
}

// setCookieShape is the recorded Set-Cookie with its cookie and date made patterns.
func setCookieShape(recorded string) *regexp.Regexp {
	q := regexp.QuoteMeta(recorded)
	q = strings.Replace(q, regexp.QuoteMeta("<cookie>"), `[A-Za-z0-9_-]+`, 1)
	q = regexp.MustCompile(`Expires=[^;]+;`).ReplaceAllString(q, `Expires=[A-Z][a-z]{2}, \d\d-[A-Z][a-z]{2}-\d{4} \d\d:\d\d:\d\d GMT;`)
	return regexp.MustCompile("^" + q + "$")
}

// replayPods replays every case of a day-2 recording with narrate run before each, and reports how
// many matched. A case matches only when its status, its body and its Set-Cookie compared equal.
func replayPods(t *testing.T, file string, narrate func(r *podReplayer, c recordedCase)) {
	path := filepath.Join(sharedDir(t), file)
	cases := parseRecordings(t, path)
	recorded, _ := countRecorded(t, path)
	r := newPodReplayer(t)
	matched := 0
	for i, c := range cases {
		if narrate != nil {
			narrate(r, c)
		}
		code, got, setCookie := r.do(c)
		name := fmt.Sprintf("case %d %q (%s %s%s)", i+1, c.Title, c.Method, c.Host, c.Path)
		if code != c.Code {
			t.Errorf("%s: status %d, recorded %d; body %s", name, code, c.Code, got)
			continue
		}
		if c.SetCookie != "" {
			if !setCookieShape(c.SetCookie).MatchString(setCookie) {
				t.Errorf("%s: Set-Cookie %q, recorded %q", name, setCookie, c.SetCookie)
				continue
			}
			v := strings.TrimPrefix(strings.SplitN(setCookie, ";", 2)[0], "AuthSession=")
			r.cookies["node "+strings.TrimPrefix(c.Host, "10.244.0.1")] = v
		}
		if diffs := compareBody(&comparison{tokens: r.tokens, skipped: r.skipped}, c, got); len(diffs) > 0 {
			t.Errorf("%s: body differs:\n  %s", name, strings.Join(diffs, "\n  "))
			continue
		}
		matched++
	}
	var skipped []string
	for f, n := range r.skipped {
		skipped = append(skipped, fmt.Sprintf("%s x%d", f, n))
	}
	sort.Strings(skipped)
	if matched != recorded || len(cases) != recorded {
		t.Errorf("%s records %d cases; %d parsed, %d matched", file, recorded, len(cases), matched)
	}
	t.Logf("%s: %d of %d recorded cases matched; fields compared by type only: %s", file, matched, recorded, strings.Join(skipped, ", "))
}

// TestConformanceSessions replays couchdb-real-sessions.md. Before it, node 1 had just been
// restarted (its own fresh salt) while node 2 held node 0's hash (finish_cluster's copy).
func TestConformanceSessions(t *testing.T) {
	for _, c := range parseRecordings(t, filepath.Join(sharedDir(t), "couchdb-real-sessions.md")) {
		for _, m := range regexp.MustCompile(`-pbkdf2:sha256-[0-9a-f]{64},[0-9a-f]{32},(\d+)`).FindAllStringSubmatch(c.Resp+c.Body, -1) {
			if m[1] != strconv.Itoa(DefaultPasswordIterations) {
				t.Errorf("%q: recorded %s iterations, the emulator's default is %d", c.Title, m[1], DefaultPasswordIterations)
			}
		}
	}
	restarted := false
	replayPods(t, "couchdb-real-sessions.md", func(r *podReplayer, c recordedCase) {
		if !restarted {
			restarted = true
			n := r.node("10.244.0.11")
			n.Stop()
			if err := n.Start(); err != nil {
				t.Fatal(err)
			}
		}
	})
}

// TestConformanceZones replays couchdb-real-zones.md. Before it, node 2's _nodes doc had been edited
// three times (it is at generation 4), and the databases were created at the recorded seconds.
func TestConformanceZones(t *testing.T) {
	prepared := false
	replayPods(t, "couchdb-real-zones.md", func(r *podReplayer, c recordedCase) {
		ctx := context.Background()
		if !prepared {
			prepared = true
			for _, decom := range []bool{true, false, false} {
				doc, err := r.clients[0].GetNodeDoc(ctx, podName(2))
				if err != nil {
					t.Fatal(err)
				}
				doc.Decom = decom
				if _, err := r.clients[0].PutNodeDoc(ctx, doc); err != nil {
					t.Fatal(err)
				}
			}
			r.clock.set(1796395292)
		}
		if c.Title == "PUT /zdb5?q=4&n=3 (node 2 is decom: only 2 nodes allowed)" {
			r.clock.set(1796395293)
		}
	})
}
