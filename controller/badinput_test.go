package controller

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/klog/v2"
	"k8s.io/klog/v2/ktesting"

	"github.com/couchdb-controller/couchdb-controller/couch"
	"github.com/couchdb-controller/couchdb-controller/couch/couchtest"
)

// version2 makes a node look like CouchDB 2.3.1, whose cluster endpoints have the same paths as
// 3.x's (so nothing else would tell them apart) but whose shard and lockout behaviour differs.
type version2 struct{ CouchAPI }

func (version2) Welcome(context.Context) (couch.Welcome, error) {
	return couch.Welcome{CouchDB: "Welcome", Version: "2.3.1", UUID: "0a3b1c", Features: []string{"pluggable-storage-engines", "scheduler"}}, nil
}

// TestBadInputMatrix starts from a formed 3-node cluster with a fourth pod ready to join (a join is
// a write), breaks one input, and checks each outcome PRODUCT.md promises: a Warning Event that names
// the object and the fix, a log line, no crash and no write to CouchDB or Kubernetes. The first case
// is the control: the same set-up with good input does write, so "no write" can fail.
func TestBadInputMatrix(t *testing.T) {
	cases := []struct {
		name    string
		ann     map[string]string // StatefulSet annotations
		name3   string            // the node name db-3's CouchDB reports, if not the right one
		mutate  func(f *fixture)  // before the controller starts
		reason  string            // "" = the control case: a join, no Warning
		mention []string          // the Warning must name these (object, value, fix)
		objects func([]runtime.Object) []runtime.Object
	}{
		{name: "control: good input joins"},
		{name: "target-replicas not a number", ann: map[string]string{AnnotationTargetReplicas: "three"},
			reason: ReasonInvalidAnnotation, mention: []string{"ns/db", `"three"`, "whole number"}},
		{name: "target-replicas negative", ann: map[string]string{AnnotationTargetReplicas: "-1"},
			reason: ReasonInvalidAnnotation, mention: []string{"ns/db", `"-1"`}},
		{name: "target-replicas zero", ann: map[string]string{AnnotationTargetReplicas: "0"},
			reason: ReasonInvalidAnnotation, mention: []string{"ns/db", "at least 1"}},
		{name: "target-replicas overflows int", ann: map[string]string{AnnotationTargetReplicas: "99999999999999999999999"},
			reason: ReasonInvalidAnnotation, mention: []string{"ns/db", "99999999999999999999999"}},
		{name: "target-replicas huge", ann: map[string]string{AnnotationTargetReplicas: "5000"},
			reason: ReasonInvalidAnnotation, mention: []string{"ns/db", "5000", "fix the value"}},
		{name: "target-replicas binary junk", ann: map[string]string{AnnotationTargetReplicas: "\x00\xff3"},
			reason: ReasonInvalidAnnotation, mention: []string{"ns/db", `\x00\xff3`}},
		{name: "replicate names an impossible database", ann: map[string]string{AnnotationReplicate: "db1, Users ,_secret"},
			reason: ReasonInvalidAnnotation, mention: []string{"ns/db", `"Users"`, `"_secret"`, "fix the list"}},
		{name: "paused is not a boolean", ann: map[string]string{AnnotationPaused: "yes"},
			reason: ReasonInvalidAnnotation, mention: []string{"ns/db", `couchdb.io/paused="yes"`, `"true" or "false"`}},
		{name: "rebalance is not a boolean", ann: map[string]string{AnnotationRebalance: "1"},
			reason: ReasonInvalidAnnotation, mention: []string{"ns/db", `couchdb.io/rebalance="1"`}},
		{name: "scheme unknown", ann: map[string]string{AnnotationScheme: "ftp"},
			reason: ReasonInvalidAnnotation, mention: []string{"ns/db", `"ftp"`, "http or https"}},
		{name: "ca-secret missing", ann: map[string]string{AnnotationScheme: "https", AnnotationCASecret: "nope"},
			reason: ReasonInvalidAnnotation, mention: []string{"ns/nope", "ca.crt"}},
		{name: "admin-secret missing", ann: map[string]string{AnnotationAdminSecret: "nope"},
			reason: ReasonCredentialsInvalid, mention: []string{"StatefulSet ns/db", "ns/nope", "create it"}},
		{name: "admin-secret without keys", ann: map[string]string{AnnotationAdminSecret: "creds"},
			reason: ReasonCredentialsInvalid, mention: []string{"ns/creds", "adminUsername/adminPassword", "add them"}},
		{name: "secretKeyRef key missing", reason: ReasonCredentialsInvalid, mention: []string{"StatefulSet ns/db", "ns/creds", "no key password", "add it"},
			objects: replaceSecret(map[string][]byte{"pw": []byte(testPass)})},
		{name: "secret holds binary junk", reason: ReasonCredentialsInvalid, mention: []string{"StatefulSet ns/db", "not printable UTF-8"},
			objects: replaceSecret(map[string][]byte{"password": []byte("\x00\xfe" + testPass)})},
		{name: "secret has a trailing newline", reason: ReasonCredentialsInvalid, mention: []string{"StatefulSet ns/db", "trailing newline"},
			objects: replaceSecret(map[string][]byte{"password": []byte(testPass + "\n")})},
		{name: "service not labelled", reason: ReasonServiceNotLabelled, mention: []string{"ns/db", "kubectl label service/db"},
			objects: func(objs []runtime.Object) []runtime.Object {
				// The endpoints controller copies the Service's labels, so its Endpoints go unlabelled too.
				objs = replaceObject(objs, service(false), func(o runtime.Object) bool { _, ok := o.(*corev1.Service); return ok })
				return replaceObject(objs, nil, func(o runtime.Object) bool { _, ok := o.(*corev1.Endpoints); return ok })
			}},
		{name: "invalid node name", name3: "couchdb@127.0.0.1",
			reason: ReasonNodeNameInvalid, mention: []string{"db-3", "couchdb@127.0.0.1"}},
		{name: "CouchDB answers non-JSON", mutate: func(f *fixture) { f.node(3).SetFault(couchtest.Fault{NonJSON: true}) },
			reason: ReasonCouchDBBadResponse, mention: []string{"ns/db-3", "not with CouchDB 3.x JSON", "proxy"}},
		{name: "CouchDB answers truncated JSON", mutate: func(f *fixture) { f.node(3).SetFault(couchtest.Fault{Truncate: true}) },
			reason: ReasonCouchDBBadResponse, mention: []string{"ns/db-3", "not with CouchDB 3.x JSON"}},
		{name: "CouchDB 2.x", mutate: func(f *fixture) {
			f.wrap = func(ip string, api CouchAPI) CouchAPI {
				if ip == "10.0.0.4" {
					return version2{api}
				}
				return api
			}
		}, reason: ReasonCouchDBVersionUnsupported, mention: []string{"db-3", "CouchDB 2.3.1 is not supported", "upgrade"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			logger := ktesting.NewLogger(t, ktesting.NewConfig(ktesting.BufferLogs(true)))
			f := newFixture(t)
			f.ctx = klog.NewContext(context.Background(), logger)
			f.formed3()
			f.events()

			sts := statefulSet(4, tc.ann)
			f.objects = []runtime.Object{sts, service(true), endpoints(), secret(testPass), pod(0, true), pod(1, true), pod(2, true), pod(3, true)}
			if tc.objects != nil {
				f.objects = tc.objects(f.objects)
			}
			f.unreachableAfter = time.Nanosecond
			if tc.name3 != "" {
				f.names[3] = tc.name3
			}
			f.addNode(3, testPass)
			if tc.mutate != nil {
				tc.mutate(f)
			}
			f.newController()
			before := f.couchWrites()
			for i := 0; i < 4; i++ {
				if err := f.c.sync(f.ctx, key); err != nil {
					t.Fatalf("sync %d: %v", i, err)
				}
			}
			writes := f.couchWrites() - before
			kubeWrites := f.kubeWrites()
			warnings := f.warningEvents()

			if tc.reason == "" {
				if writes == 0 || len(warnings) != 0 {
					t.Fatalf("control case: %d CouchDB writes (want some), warnings %q", writes, warnings)
				}
				if got := f.node(0).ClusterNodes(); len(got) != 4 {
					t.Fatalf("control case: db-3 did not join: %v", got)
				}
				return
			}
			if st, ok := f.c.Cluster(testNS, "main"); !ok || st.Phase != PhaseDegraded {
				t.Errorf("status %+v, want phase %s (the cluster stays formed; something needs fixing)", st, PhaseDegraded)
			}
			if writes != 0 || len(kubeWrites) != 0 {
				t.Errorf("bad input led to %d CouchDB writes and Kubernetes writes %v", writes, kubeWrites)
			}
			var found string
			for _, w := range warnings {
				if strings.HasPrefix(w, tc.reason+" ") {
					found = w
				}
			}
			if found == "" {
				t.Fatalf("no %s Warning; got %q", tc.reason, warnings)
			}
			for _, m := range tc.mention {
				if !strings.Contains(found, m) {
					t.Errorf("the Warning does not mention %q: %s", m, found)
				}
			}
			if logs := logger.GetSink().(ktesting.Underlier).GetBuffer().String(); !strings.Contains(logs, `reason="`+tc.reason+`"`) {
				t.Errorf("no log line for %s:\n%s", tc.reason, logs)
			}
			if strings.Contains(strings.Join(warnings, "\n"), testPass) {
				t.Errorf("a Warning shows the password")
			}
		})
	}
}

func replaceSecret(data map[string][]byte) func([]runtime.Object) []runtime.Object {
	return func(objs []runtime.Object) []runtime.Object {
		s := secret(testPass)
		s.Data = data
		return replaceObject(objs, s, func(o runtime.Object) bool { _, ok := o.(*corev1.Secret); return ok })
	}
}

func replaceObject(objs []runtime.Object, with runtime.Object, match func(runtime.Object) bool) []runtime.Object {
	out := []runtime.Object{}
	for _, o := range objs {
		if match(o) {
			o = with
		}
		if o != nil {
			out = append(out, o)
		}
	}
	return out
}

// node returns the emulated node of the pod with ordinal ord.
func (f *fixture) node(ord int) *couchtest.Node { return f.nodes[fmt.Sprintf("10.0.0.%d", ord+1)] }

func (f *fixture) couchWrites() int {
	n := 0
	for _, node := range f.nodes {
		n += node.Requests().Writes
	}
	return n
}

// kubeWrites lists the writes the controller made through the clientset (events go to the
// recorder, not here).
func (f *fixture) kubeWrites() []string {
	var out []string
	for _, a := range f.client.Actions() {
		switch a.GetVerb() {
		case "create", "update", "patch", "delete":
			out = append(out, a.GetVerb()+" "+a.GetResource().Resource+"/"+a.GetSubresource())
		}
	}
	return out
}

// warningEvents drains the recorder: "Reason message" of each Warning.
func (f *fixture) warningEvents() []string {
	var out []string
	for {
		select {
		case e := <-f.recorder.Events:
			if rest, ok := strings.CutPrefix(e, corev1.EventTypeWarning+" "); ok {
				out = append(out, rest)
			}
		default:
			return out
		}
	}
}
