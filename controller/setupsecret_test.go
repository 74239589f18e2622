package controller

import (
	"fmt"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/couchdb-controller/couchdb-controller/couch"
	"github.com/couchdb-controller/couchdb-controller/couch/couchtest"
)

// TestSyncFinishWithoutSecretWarns: pods started without COUCHDB_SECRET have no [chttpd_auth]
// secret, and finish_cluster fails as on real CouchDB 3.4 (500 setup_error). The controller says so
// once, in a Warning naming the StatefulSet and the fix, keeps retrying, and finishes once the
// coordinator has a secret.
func TestSyncFinishWithoutSecretWarns(t *testing.T) {
	f := newFixture(t)
	f.objects = []runtime.Object{statefulSet(3, nil), service(true), endpoints(), secret(testPass), pod(0, true), pod(1, true), pod(2, true)}
	for ord := 0; ord < 3; ord++ {
		n, err := f.network.AddNode(couchtest.NodeConfig{Name: fmt.Sprintf("couchdb@db-%d.db.%s.svc.cluster.local", ord, testNS),
			AdminUser: "admin", AdminPassword: testPass, BindAddress: "any", EphemeralIni: true})
		if err != nil {
			t.Fatal(err)
		}
		if err := n.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(n.Stop)
		f.nodes[fmt.Sprintf("10.0.0.%d", ord+1)] = n
	}
	f.newController()
	var lastErr error
	for i := 0; i < 6; i++ {
		lastErr = f.c.sync(f.ctx, key)
	}
	if lastErr == nil || !strings.Contains(lastErr.Error(), syncFailedReason) {
		t.Fatalf("sync error %v, want the finish_cluster failure (retried with backoff)", lastErr)
	}
	raw := f.rawEvents()
	var warnings []string
	for _, e := range raw {
		if strings.HasPrefix(e, "Warning "+ReasonAuthSecretMissing+" ") {
			warnings = append(warnings, e)
		}
	}
	if len(warnings) != 1 {
		t.Fatalf("events %q, want one %s Warning over repeated failures", raw, ReasonAuthSecretMissing)
	}
	for _, want := range []string{"StatefulSet ns/db", "pod db-0", "COUCHDB_SECRET", "same value on every pod"} {
		if !strings.Contains(warnings[0], want) {
			t.Errorf("warning %q does not say %q", warnings[0], want)
		}
	}
	if strings.Contains(warnings[0], testPass) {
		t.Error("the warning carries the password")
	}
	if got := f.setupActions()["finish_cluster"]; got < 2 {
		t.Errorf("finish_cluster posted %d times, want retries", got)
	}
	if st, _ := f.c.Cluster(testNS, "main"); st.Phase == PhaseReady {
		t.Errorf("phase %s without the system databases", st.Phase)
	}

	// Once the coordinator has a secret (the user's fix restarts the pods with one), setup finishes.
	admin, err := couch.New(couch.Options{BaseURL: f.nodes["10.0.0.1"].URL(), Username: "admin", Password: testPass, RetryMax: -1})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := admin.SetConfig(f.ctx, "_local", "chttpd_auth", "secret", fixtureSecret); err != nil {
		t.Fatal(err)
	}
	f.syncUntilQuiet(3)
	if st, _ := f.c.Cluster(testNS, "main"); st.Phase != PhaseReady {
		t.Errorf("phase %s after the coordinator got a secret", st.Phase)
	}
	if diff := cmp.Diff(1, count(f.events(), ReasonClusterFormed)); diff != "" {
		t.Errorf("ClusterFormed events (-want +got):\n%s", diff)
	}
}
