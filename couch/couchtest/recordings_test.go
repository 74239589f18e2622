package couchtest

import (
	"bufio"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// recordedCase is one request/response pair from ../shared/couchdb-real-*.md.
type recordedCase struct {
	File    string
	Section string
	Sub     string // the "### " heading within the section, if any
	Title   string
	Method  string
	Port    string
	Path    string
	Auth    string // "" (none) or the user named in "(auth user:***)"
	Body    string
	CType   string // a Content-Type other than JSON, when the line names one
	Code    int
	Resp    string
}

var (
	reqLine  = regexp.MustCompile(`^(GET|PUT|POST|DELETE|HEAD) 127\.0\.0\.1:(\d+)(\S*)(?:\s+with Content-Type: (\S+))?(?:\s+\(auth ([^:]+):\*\*\*\))?`)
	codeLine = regexp.MustCompile(`^-> HTTP (\d+)`)
)

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

func TestRecordingsMatchShared(t *testing.T) {
	up := upstreamShared()
	if up == "" {
		t.Skip("no ../shared beside this checkout; testdata copies are used as they are")
	}
	for _, f := range []string{"couchdb-real-responses.md", "couchdb-real-shards.md"} {
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
			if inBlock && cur != nil && cur.Code != 0 {
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
			cur = &recordedCase{File: filepath.Base(file), Section: section, Sub: sub, Title: title, Method: m[1], Port: m[2], Path: m[3], CType: m[4], Auth: m[5]}
			continue
		}
		if cur == nil {
			continue
		}
		if b, ok := strings.CutPrefix(line, "body: "); ok && !afterCode {
			cur.Body = b
			continue
		}
		if m := codeLine.FindStringSubmatch(line); m != nil {
			cur.Code = atoi(m[1])
			afterCode = true
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

func TestParseRecordings(t *testing.T) {
	dir := sharedDir(t)
	for _, f := range []string{"couchdb-real-responses.md", "couchdb-real-shards.md"} {
		cases := parseRecordings(t, filepath.Join(dir, f))
		if len(cases) < 50 {
			t.Errorf("%s: only %d cases parsed", f, len(cases))
		}
		for _, c := range cases {
			if c.Code == 0 || c.Path == "" {
				t.Errorf("%s %q: incomplete case %+v", f, c.Title, c)
			}
		}
		t.Logf("%s: %d recorded cases", f, len(cases))
	}
}
