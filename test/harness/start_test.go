package harness

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// fakeBinaries writes shell scripts named like the control-plane binaries.
func fakeBinaries(t *testing.T, etcdScript string) string {
	t.Helper()
	dir := t.TempDir()
	for _, b := range binaries {
		script := "#!/bin/sh\nexit 0\n"
		if b == "etcd" {
			script = "#!/bin/sh\n" + etcdScript
		}
		if err := os.WriteFile(filepath.Join(dir, b), []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestStartReportsAnEarlyExit(t *testing.T) {
	bin := fakeBinaries(t, "echo 'etcd: unknown flag --nope' >&2\nexit 3\n")
	began := time.Now()
	_, err := Start(context.Background(), Options{BinDir: bin, RunDir: t.TempDir(), Timeout: time.Minute})
	if err == nil {
		t.Fatal("Start succeeded with an etcd that exits")
	}
	for _, want := range []string{"etcd exited", "exit status 3", "unknown flag --nope", "logs in"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	if d := time.Since(began); d > 10*time.Second {
		t.Errorf("took %s to notice the exit", d)
	}
}

func TestStartStopsWhatItStartedOnTimeout(t *testing.T) {
	run := t.TempDir()
	// An etcd that never answers /health; it records its PID (exec keeps it) and ignores nothing.
	bin := fakeBinaries(t, "echo $$ > "+filepath.Join(run, "etcd.pid")+"\nexec sleep 300\n")
	_, err := Start(context.Background(), Options{BinDir: bin, RunDir: run, Timeout: 500 * time.Millisecond})
	if err == nil || !strings.Contains(err.Error(), "wait for etcd") {
		t.Fatalf("Start = %v, want a timeout waiting for etcd", err)
	}
	b, err := os.ReadFile(filepath.Join(run, "etcd.pid"))
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(pid, 0); err == nil {
		t.Fatalf("etcd (pid %d) still runs after a failed Start", pid)
	}
}

func TestStartRefusesAnIncompleteBinDir(t *testing.T) {
	bin := fakeBinaries(t, "exit 0\n")
	if err := os.Remove(filepath.Join(bin, "kube-apiserver")); err != nil {
		t.Fatal(err)
	}
	if _, err := Start(context.Background(), Options{BinDir: bin, RunDir: t.TempDir()}); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Fatalf("Start = %v, want binaries missing", err)
	}
}
