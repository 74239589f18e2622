package couchtest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
)

// recordedCase is one request/response pair from ../shared/couchdb-real-*.md.
type recordedCase struct {
	File    string
	Section string
	Sub     string // the "### " heading within the section, if any
	Title   string
	Method  string
	Host    string // the recorded address: 127.0.0.1, or a pod IP (10.244.0.x) in the day-2 recordings
	Port    string
	Path    string
	Auth    string // "" (none) or the user named in "(auth user:***)"
	Body    string
	CType   string // a Content-Type other than JSON, when the line names one
	Code    int
	// NoResponse is a request that got no HTTP answer ("-> HTTP (no response)"); Resp then holds the
	// client's error, e.g. "connection failed: [Errno 111] Connection refused".
	NoResponse bool
	Resp       string
	Cookie     string // the request's "(Cookie: ...)" note, e.g. "AuthSession=<cookie from node 0>"
	SetCookie  string // the answer's Set-Cookie header, when the recording shows one
}

var (
	reqLine  = regexp.MustCompile(`^(GET|PUT|POST|DELETE|HEAD) (127\.0\.0\.1|10\.244\.0\.\d+):(\d+)(\S*)(?:\s+with Content-Type: (\S+))?(?:\s+\(auth ([^:]+):\*\*\*\))?(?:\s*\(Cookie: ([^)]*)\))?`)
	codeLine = regexp.MustCompile(`^-> HTTP (\d+)`)
	noResp   = regexp.MustCompile(`^-> HTTP \(no response\)$`)
)

// Every recorded answer starts with this marker, at the start of its line, whatever the parser makes
// of it; the poll logs ("t=0.1 s  GET ...  -> HTTP 200") carry it mid-line and are not cases.
const answerMarker = "-> HTTP "

// requestHosts are the addresses the recordings sent requests to: loopback ports, or pod IPs.
var requestHosts = []string{" 127.0.0.1:", " 10.244.0."}

// countRecorded counts the recorded cases of file without the parser: the lines that start with the
// answer marker, and the request lines (a method, then the recorded host). The conformance tests
// check their own coverage against these counts, so a case the parser drops cannot go unnoticed.
func countRecorded(t *testing.T, file string) (answers, requests int) {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, answerMarker) {
			answers++
		}
		for _, m := range []string{"GET", "PUT", "POST", "DELETE", "HEAD"} {
			for _, h := range requestHosts {
				if strings.HasPrefix(l, m+h) {
					requests++
				}
			}
		}
	}
	return answers, requests
}

// sharedDir is where the recordings are read from: testdata/ holds copies of
// ../shared/couchdb-real-*.md so the tests run from any checkout; TestRecordingsMatchShared keeps the
// copies equal to ../shared when it is present.
func sharedDir(t *testing.T) string {
	t.Helper()
	return "testdata"
}

// upstreamShared finds ../shared beside the repository, if there is one.
func upstreamShared() string {
	dir, _ := os.Getwd()
	for d := dir; d != "/"; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "..", "shared", "couchdb-real-responses.md")); err == nil {
			return filepath.Join(d, "..", "shared")
		}
	}
	return ""
}

// recordingFiles are the recordings testdata/ holds and the conformance tests replay.
var recordingFiles = []string{"couchdb-real-responses.md", "couchdb-real-shards.md", "couchdb-real-sessions.md", "couchdb-real-zones.md"}

func TestRecordingsMatchShared(t *testing.T) {
	up := upstreamShared()
	if up == "" {
		t.Skip("no ../shared beside this checkout; testdata copies are used as they are")
	}
	for _, f := range recordingFiles {
		a, _ := os.ReadFile(filepath.Join(up, f))
		b, _ := os.ReadFile(filepath.Join("testdata", f))
		if string(a) != string(b) {
			t.Errorf("testdata/%s differs from %s: copy the new recording in", f, filepath.Join(up, f))
		}
	}
}

// parseRecordings reads every fenced request/response block of a recording file, in order.
func parseRecordings(t *testing.T, file string) []recordedCase {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []recordedCase
	var section, sub, title string
	var cur *recordedCase
	inBlock, afterCode := false, false
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<22)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "```"):
			if inBlock && cur != nil && (cur.Code != 0 || cur.NoResponse) {
				cur.Resp = strings.TrimSpace(cur.Resp)
				out = append(out, *cur)
			}
			inBlock, cur, afterCode = !inBlock, nil, false
			continue
		case !inBlock && strings.HasPrefix(line, "## "):
			section, sub = strings.TrimPrefix(line, "## "), ""
		case !inBlock && strings.HasPrefix(line, "### "):
			sub = strings.TrimPrefix(line, "### ")
		case !inBlock && strings.HasPrefix(line, "**") && strings.HasSuffix(line, "**"):
			title = strings.Trim(line, "*")
		}
		if !inBlock {
			continue
		}
		if m := reqLine.FindStringSubmatch(line); m != nil && cur == nil {
			cur = &recordedCase{File: filepath.Base(file), Section: section, Sub: sub, Title: title, Method: m[1], Host: m[2], Port: m[3], Path: m[4], CType: m[5], Auth: m[6], Cookie: m[7]}
			continue
		}
		if cur == nil {
			continue
		}
		if b, ok := strings.CutPrefix(line, "body: "); ok && !afterCode {
			cur.Body = b
			continue
		}
		if m := codeLine.FindStringSubmatch(line); m != nil && !afterCode {
			cur.Code = atoi(m[1])
			afterCode = true
			continue
		}
		if noResp.MatchString(line) && !afterCode {
			cur.NoResponse = true
			afterCode = true
			continue
		}
		if c, ok := strings.CutPrefix(line, "Set-Cookie: "); ok && afterCode && cur.Resp == "" {
			cur.SetCookie = c
			continue
		}
		if afterCode {
			cur.Resp += line + "\n"
		}
	}
	return out
}

func atoi(s string) int {
	n := 0
	for _, c := range s {
		n = n*10 + int(c-'0')
	}
	return n
}

// errnoRE reads the errno a recorded client error names (Python's "[Errno 111]").
var errnoRE = regexp.MustCompile(`\[Errno (\d+)\]`)

// sameFailure reports whether err is the transport failure the recorded case c shows: the same errno
// (111 is ECONNREFUSED: nothing listened on the port).
func sameFailure(c recordedCase, err error) (bool, string) {
	m := errnoRE.FindStringSubmatch(c.Resp)
	if m == nil {
		return false, "the recording names no errno: " + c.Resp
	}
	want := syscall.Errno(atoi(m[1]))
	if err == nil {
		return false, fmt.Sprintf("got an answer, recorded %s (%v)", c.Resp, want)
	}
	if !errors.Is(err, want) {
		return false, fmt.Sprintf("got %v, recorded %s (%v)", err, c.Resp, want)
	}
	return true, ""
}

func TestParseRecordings(t *testing.T) {
	dir := sharedDir(t)
	for _, f := range recordingFiles {
		file := filepath.Join(dir, f)
		cases := parseRecordings(t, file)
		answers, requests := countRecorded(t, file)
		if answers == 0 || answers != requests || len(cases) != answers {
			t.Errorf("%s: %d cases parsed, but %d answer markers and %d request lines", f, len(cases), answers, requests)
		}
		noResponse := 0
		for _, c := range cases {
			if c.Path == "" || (c.Code == 0) == !c.NoResponse || c.NoResponse && c.Resp == "" {
				t.Errorf("%s %q: incomplete case %+v", f, c.Title, c)
			}
			if c.NoResponse {
				noResponse++
			}
		}
		t.Logf("%s: %d recorded cases (%d without an HTTP answer), %d answer markers", f, len(cases), noResponse, answers)
	}
}

// TestParseRecordingsNoResponse pins the cases without an answer: the shards recording has two,
// both a stopped node3 refusing the connection.
func TestParseRecordingsNoResponse(t *testing.T) {
	var got []string
	for _, c := range parseRecordings(t, filepath.Join(sharedDir(t), "couchdb-real-shards.md")) {
		if c.NoResponse {
			got = append(got, c.Method+" "+c.Port+c.Path+": "+c.Resp)
		}
	}
	want := []string{
		"GET 35984/_up: connection failed: [Errno 111] Connection refused",
		"GET 35984/_membership: connection failed: [Errno 111] Connection refused",
	}
	if !slices.Equal(got, want) {
		t.Errorf("cases without an answer:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestSameFailure(t *testing.T) {
	refused := recordedCase{NoResponse: true, Resp: "connection failed: [Errno 111] Connection refused"}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	_, dialErr := net.Dial("tcp", addr)
	cases := []struct {
		name string
		c    recordedCase
		err  error
		want bool
	}{
		{"a closed port", refused, dialErr, true},
		{"an answer", refused, nil, false},
		{"a reset connection", refused, &net.OpError{Op: "read", Err: syscall.ECONNRESET}, false},
		{"a timeout", refused, context.DeadlineExceeded, false},
		{"a recording without an errno", recordedCase{NoResponse: true, Resp: "connection failed"}, dialErr, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got, diff := sameFailure(tc.c, tc.err); got != tc.want {
				t.Errorf("sameFailure(%v) = %v (%s), want %v", tc.err, got, diff, tc.want)
			}
		})
	}
}
