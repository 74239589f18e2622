package e2e

import (
	"context"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestLeaderFailover runs two controller replicas with leader election, kills the leader with
// SIGKILL (no lease release), and checks the other takes over within the lease period and finishes a
// join without duplicate work.
func TestLeaderFailover(t *testing.T) {
	ns := newNamespace(t)
	bin := controllerBinary(t)
	procEnv := startProxy(t)
	lease := "failover-" + ns
	type replica struct {
		cmd     *exec.Cmd
		metrics string
		logs    *syncBuffer
	}
	start := func(id string) *replica {
		r := &replica{logs: &syncBuffer{}}
		r.cmd, r.metrics, _ = startServing(t, r.logs, func(metrics, probe string) *exec.Cmd {
			cmd := exec.Command(bin, "--kubeconfig="+env.cp.Kubeconfig(), "--namespace="+ns, "--leader-elect",
				"--leader-elect-namespace="+ns, "--leader-elect-id="+lease, "--metrics-bind-address="+metrics,
				"--health-probe-bind-address="+probe, "--resync=2s")
			cmd.Env = append(slices.Clone(procEnv), "POD_NAME="+id)
			return cmd
		})
		t.Cleanup(func() {
			_ = r.cmd.Process.Kill()
			_ = r.cmd.Wait()
			shown("logs of "+id, r.logs.String())
			if t.Failed() {
				t.Logf("%s logs:\n%s", id, r.logs.String())
			}
		})
		return r
	}
	replicas := map[string]*replica{"ctrl-a": start("ctrl-a"), "ctrl-b": start("ctrl-b")}
	s := newSpec("fo", 3)
	s.parallel = true
	s.create(t, ns)
	waitMembers(t, s, ns, 3, 60*time.Second)
	l, err := env.kube.CoordinationV1().Leases(ns).Get(context.Background(), lease, metav1.GetOptions{})
	if err != nil || l.Spec.HolderIdentity == nil {
		t.Fatalf("lease: %v", err)
	}
	leader := *l.Spec.HolderIdentity
	other := "ctrl-a"
	if leader == "ctrl-a" {
		other = "ctrl-b"
	}
	_ = replicas[leader].cmd.Process.Kill() // SIGKILL: the lease is not released
	killed := time.Now()
	scaleTo(t, ns, "fo", 4)
	waitMembers(t, s, ns, 4, 60*time.Second)
	took := time.Since(killed)
	if took > 40*time.Second { // lease 15 s + renew retries + the join
		t.Errorf("the standby took %s to act; the lease is 15 s", took)
	}
	poll(t, 10*time.Second, "the standby to report leadership", func(context.Context) (bool, error) {
		return strings.Contains(httpBody("http://"+replicas[other].metrics+"/metrics"), "couchdb_controller_leader 1"), nil
	})
	d, err := couchdb(t, ns, podName(s, 0), s.password).GetNodeDoc(context.Background(), s.nodeName(ns, 3))
	if err != nil || !strings.HasPrefix(d.Rev, "1-") {
		t.Errorf("db-3's _nodes doc %+v (%v): a harmful repeat would have made a new revision", d, err)
	}
	t.Logf("leader %s killed; %s joined db-3 %s later", leader, other, took.Round(time.Millisecond))
}
