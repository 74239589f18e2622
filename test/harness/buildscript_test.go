package harness

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestBuildScriptUsesFoundBinaries runs build.sh against binaries the user already has: those whose
// --version is of the pinned minor are linked into the cache and nothing is built; one of another
// version is passed over (with a line saying why) for the next candidate on PATH. The fakes print what
// the real binaries print.
func TestBuildScriptUsesFoundBinaries(t *testing.T) {
	script, err := buildScript()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("no bash")
	}
	dir, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	assets, path, cache := filepath.Join(dir, "assets"), filepath.Join(dir, "path"), filepath.Join(dir, "cache")
	fake := func(d, name, version string) {
		t.Helper()
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		body := "#!/bin/sh\n[ \"$1\" = --version ] && printf '%s\\n' '" + version + "'\n"
		if err := os.WriteFile(filepath.Join(d, name), []byte(body), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	fake(assets, "kube-apiserver", "Kubernetes "+K8sVersion)
	fake(assets, "etcd", "etcd Version: 3.4.23")             // wrong minor: skipped
	fake(path, "etcd", "etcd Version: 3.6.5\nGit SHA: none") // found on PATH instead
	fake(path, "kube-controller-manager", "Kubernetes v1.35.9")
	cmd := exec.Command("bash", script)
	cmd.Env = append(os.Environ(), "COUCHDB_CONTROLLER_CACHE="+cache, "KUBEBUILDER_ASSETS="+assets,
		"PATH="+path+string(os.PathListSeparator)+os.Getenv("PATH"), "K8S_CONTROLPLANE_FORCE=")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("build.sh: %v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if !strings.HasPrefix(lines[0], "controlplane: found etcd ("+filepath.Join(path, "etcd")+"), kube-apiserver (") ||
		!strings.HasSuffix(lines[0], "; building none") {
		t.Errorf("first line %q: want what was found and what is built", lines[0])
	}
	if !strings.Contains(string(out), "not using "+filepath.Join(assets, "etcd")+`: its --version says "etcd Version: 3.4.23"`) {
		t.Errorf("no line about the passed-over etcd:\n%s", out)
	}
	bin := filepath.Join(cache, "k8s-"+K8sVersion)
	for name, want := range map[string]string{"etcd": filepath.Join(path, "etcd"), "kube-apiserver": filepath.Join(assets, "kube-apiserver"),
		"kube-controller-manager": filepath.Join(path, "kube-controller-manager")} {
		want, _ = filepath.EvalSymlinks(want) // build.sh links to the resolved path
		if got, err := os.Readlink(filepath.Join(bin, name)); err != nil || got != want {
			t.Errorf("%s -> %q (%v), want %s", name, got, err, want)
		}
	}
	if !binariesIn(bin) {
		t.Errorf("%s incomplete after build.sh", bin)
	}
}
