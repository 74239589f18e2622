package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// secretScan collects every admin password the suite uses and everything the controllers under test
// showed (logs, metrics, status API; Events are read from the API server at the end). After the
// last test, TestMain fails the suite if any password appears anywhere.
var secretScan = struct {
	mu        sync.Mutex
	passwords map[string]bool
	outputs   []scanned
}{passwords: map[string]bool{}}

type scanned struct{ what, text string }

// clusterTests counts the tests that made a namespace for a cluster (newNamespace): when any ran,
// the scan must have something to scan.
var clusterTests atomic.Int32

// usePassword registers a password the suite gives CouchDB or a Secret.
func usePassword(pw string) {
	secretScan.mu.Lock()
	defer secretScan.mu.Unlock()
	secretScan.passwords[pw] = true
}

// useHash registers a CouchDB admin password hash the suite saw ("-pbkdf2:sha256-KEY,SALT,ITER"):
// it is as secret as the password, so the whole string, its derived key and its salt are looked for.
func useHash(h string) {
	usePassword(h)
	for _, part := range strings.FieldsFunc(h, func(r rune) bool { return r == ',' || r == '-' || r == ':' }) {
		if len(part) >= 16 {
			usePassword(part)
		}
	}
}

// shown registers output of a controller under test.
func shown(what, text string) {
	secretScan.mu.Lock()
	defer secretScan.mu.Unlock()
	secretScan.outputs = append(secretScan.outputs, scanned{what, text})
}

// metricsText renders a registry as /metrics would.
func metricsText(reg prometheus.Gatherer) string {
	rec := httptest.NewRecorder()
	promhttp.HandlerFor(reg, promhttp.HandlerOpts{}).ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	return rec.Body.String()
}

func statusJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// leaks returns one line per (password, output) pair where the password shows, never the password
// itself.
func leaks(passwords map[string]bool, outputs []scanned) []string {
	var out []string
	for pw := range passwords {
		for _, o := range outputs {
			if pw != "" && strings.Contains(o.text, pw) {
				out = append(out, fmt.Sprintf("a password of %d bytes appears in %s", len(pw), o.what))
			}
		}
	}
	sort.Strings(out)
	return out
}

// scanSuiteForPasswords is TestMain's last step: Events of every namespace are added to what the
// controllers showed, and every password is looked for.
func scanSuiteForPasswords() (report string, ok bool) {
	evs, err := env.kube.CoreV1().Events("").List(context.Background(), metav1.ListOptions{})
	if err != nil {
		return "secret scan: cannot list events: " + err.Error(), false
	}
	var b strings.Builder
	for _, e := range evs.Items {
		b.WriteString(e.Reason + " " + e.Message + "\n")
	}
	shown("events", b.String())
	secretScan.mu.Lock()
	defer secretScan.mu.Unlock()
	size := 0
	for _, o := range secretScan.outputs {
		size += len(o.text)
	}
	found := leaks(secretScan.passwords, secretScan.outputs)
	summary := fmt.Sprintf("secret scan: %d passwords against %d outputs (%d bytes of logs, metrics, status and %d events)",
		len(secretScan.passwords), len(secretScan.outputs), size, len(evs.Items))
	if len(found) > 0 {
		return summary + ": FAIL\n" + strings.Join(found, "\n"), false
	}
	if clusterTests.Load() == 0 {
		// A filtered run (go test -run X ./...) that selected no test with a cluster: nothing ran that
		// could show a password, so there is nothing to scan, and that is not a failure.
		return summary + ": skipped: no test ran a cluster", true
	}
	if len(secretScan.passwords) == 0 || size == 0 {
		return summary + ": FAIL: nothing was scanned", false
	}
	return summary + ": clean", true
}

// TestSecretScanFindsAPlantedPassword keeps the suite's scan honest: it must see a password in any
// output, and must not print it.
func TestSecretScanFindsAPlantedPassword(t *testing.T) {
	pws := map[string]bool{"planted-pw-0192": true}
	got := leaks(pws, []scanned{{"logs", "ok"}, {"status", `{"x":"planted-pw-0192"}`}})
	if len(got) != 1 || !strings.Contains(got[0], "status") || strings.Contains(got[0], "planted") {
		t.Errorf("leaks = %q", got)
	}
	if got := leaks(pws, []scanned{{"logs", "planted-pw-019"}}); len(got) != 0 {
		t.Errorf("a prefix counted as the password: %q", got)
	}
}
