package harness

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
)

// K8sVersion is the Kubernetes version test/controlplane/build.sh builds (etcd is the v3.6.5 it pins).
const K8sVersion = "v1.35.4"

// binaries are the programs Start runs, in start order.
var binaries = []string{"etcd", "kube-apiserver", "kube-controller-manager"}

// CacheDir is the project's cache root: $COUCHDB_CONTROLLER_CACHE, else
// ${XDG_CACHE_HOME:-$HOME/.cache}/couchdb-controller (the same rule as build.sh and the Makefile).
func CacheDir() string {
	if c := os.Getenv("COUCHDB_CONTROLLER_CACHE"); c != "" {
		return c
	}
	base := os.Getenv("XDG_CACHE_HOME")
	if base == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			home = os.TempDir()
		}
		base = filepath.Join(home, ".cache")
	}
	return filepath.Join(base, "couchdb-controller")
}

// BinDir is where build.sh puts the binaries of K8sVersion.
func BinDir() string { return filepath.Join(CacheDir(), "k8s-"+K8sVersion) }

// BinariesPresent reports whether every binary is in dir (BinDir() when dir is "").
func BinariesPresent() bool { return binariesIn(BinDir()) }

func binariesIn(dir string) bool {
	for _, b := range binaries {
		if fi, err := os.Stat(filepath.Join(dir, b)); err != nil || fi.Mode()&0o111 == 0 {
			return false
		}
	}
	return true
}

// EnsureBinaries runs build.sh when a binary is missing from BinDir. build.sh first links binaries
// the user already has (KUBEBUILDER_ASSETS, then PATH) whose --version is of the pinned minor, and
// builds only the rest (about 10 minutes on 2 cores when it builds all three). Its output goes to
// stderr so a waiting test run shows progress.
func EnsureBinaries(ctx context.Context) error {
	if BinariesPresent() {
		return nil
	}
	script, err := buildScript()
	if err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, "bash", script)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("build control plane with %s: %w", script, err)
	}
	if !BinariesPresent() {
		return fmt.Errorf("%s finished but %s is incomplete", script, BinDir())
	}
	return nil
}

// buildScript finds test/controlplane/build.sh: beside this source file when built from a checkout,
// else above the working directory (go test runs in the package directory).
func buildScript() (string, error) {
	const rel = "test/controlplane/build.sh"
	var candidates []string
	if _, file, _, ok := runtime.Caller(0); ok && filepath.IsAbs(file) {
		candidates = append(candidates, filepath.Join(filepath.Dir(file), "..", "controlplane", "build.sh"))
	}
	if wd, err := os.Getwd(); err == nil {
		for d := wd; ; d = filepath.Dir(d) {
			candidates = append(candidates, filepath.Join(d, rel))
			if filepath.Dir(d) == d {
				break
			}
		}
	}
	for _, c := range candidates {
		if _, err := os.Stat(c); err == nil {
			return c, nil
		}
	}
	return "", errors.New("control-plane binaries missing and " + rel + " not found; run it from the repository")
}
