package harness

import (
	"context"
	"os"
	"testing"
)

// E2EEnv is the environment variable that makes the control plane mandatory: with
// COUCHDB_CONTROLLER_E2E=1 (as `make test` and CI set it) missing binaries are built, never skipped.
const E2EEnv = "COUCHDB_CONTROLLER_E2E"

// SkipUnlessAvailable skips t when the binaries are absent and E2EEnv is not "1", so a plain
// `go test ./...` on a fresh machine does not spend 10 minutes building Kubernetes.
func SkipUnlessAvailable(t testing.TB) {
	t.Helper()
	if !BinariesPresent() && os.Getenv(E2EEnv) != "1" {
		t.Skipf("control-plane binaries not in %s and %s!=1: skipping (build them with `make controlplane`, or run `make test`)", BinDir(), E2EEnv)
	}
}

// StartForTest skips like SkipUnlessAvailable, starts a control plane with progress logged to t,
// and stops it when the test ends. The run directory is removed after a passing test and kept (its
// path logged) after a failing one.
func StartForTest(t testing.TB, opts Options) *ControlPlane {
	t.Helper()
	SkipUnlessAvailable(t)
	if opts.Logf == nil {
		opts.Logf = t.Logf
	}
	cp, err := Start(context.Background(), opts)
	if err != nil {
		t.Fatalf("start control plane: %v", err)
	}
	keep := opts.RunDir != ""
	t.Cleanup(func() {
		cp.Stop()
		if t.Failed() || keep {
			t.Logf("control-plane logs: %s", cp.RunDir())
			return
		}
		_ = os.RemoveAll(cp.RunDir())
	})
	return cp
}
