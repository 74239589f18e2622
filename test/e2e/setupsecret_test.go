package e2e

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/couchdb-controller/couchdb-controller/controller"
	"github.com/couchdb-controller/couchdb-controller/couch"
)

// TestMissingAuthSecretWarnsUntilFixed: a StatefulSet whose pods carry no COUCHDB_SECRET cannot be
// finished (CouchDB 3.4's finish_cluster answers 500 setup_error when the coordinator has no
// [chttpd_auth] secret to copy). The controller says so in an AuthSecretMissing Warning naming the
// StatefulSet and the fix; once the user adds COUCHDB_SECRET (a rolling update), the cluster is
// finished and the system databases exist.
func TestMissingAuthSecretWarnsUntilFixed(t *testing.T) {
	ns := newNamespace(t)
	s := newSpec("nosecret", 2)
	s.parallel = true
	var removed corev1.EnvVar
	s.mutate = func(sts *appsv1.StatefulSet) {
		c := &sts.Spec.Template.Spec.Containers[0]
		i := slices.IndexFunc(c.Env, func(e corev1.EnvVar) bool { return e.Name == "COUCHDB_SECRET" })
		if i < 0 {
			t.Fatal("the fixture's pods carry no COUCHDB_SECRET to remove")
		}
		removed = c.Env[i]
		c.Env = slices.Delete(c.Env, i, i+1)
	}
	startController(t, ns)
	s.create(t, ns)
	waitMembers(t, s, ns, 2, 90*time.Second)
	waitEvent(t, ns, controller.ReasonAuthSecretMissing)
	ev := events(t, ns, controller.ReasonAuthSecretMissing)
	if ev[0].Type != corev1.EventTypeWarning || ev[0].InvolvedObject.Kind != "StatefulSet" || ev[0].InvolvedObject.Name != s.name {
		t.Errorf("event %s %s on %s %s", ev[0].Type, ev[0].Reason, ev[0].InvolvedObject.Kind, ev[0].InvolvedObject.Name)
	}
	for _, want := range []string{"StatefulSet " + ns + "/" + s.name, "COUCHDB_SECRET", "same value on every pod"} {
		if !strings.Contains(ev[0].Message, want) {
			t.Errorf("warning %q does not say %q", ev[0].Message, want)
		}
	}
	if st := setupState(t, ns, podName(s, 0)); st == couch.StateClusterFinished {
		t.Fatalf("setup state %s without a secret", st)
	}

	// The fix the Warning names: COUCHDB_SECRET on every pod, from the Secret.
	ctx := context.Background()
	sts, err := env.kube.AppsV1().StatefulSets(ns).Get(ctx, s.name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	c := &sts.Spec.Template.Spec.Containers[0]
	c.Env = append(c.Env, removed)
	if _, err := env.kube.AppsV1().StatefulSets(ns).Update(ctx, sts, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	poll(t, 180*time.Second, "the cluster to be finished after the rolling update", func(context.Context) (bool, error) {
		return setupState(t, ns, podName(s, 0)) == couch.StateClusterFinished, nil
	})
	waitEvent(t, ns, controller.ReasonClusterFormed)
}
