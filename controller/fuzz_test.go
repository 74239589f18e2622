package controller

import (
	"context"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

// FuzzAnnotations feeds every couchdb.io/ annotation arbitrary values. Whatever users type, parsing
// must not panic, must accept only what it promises (a target in 1..1000, valid database names,
// exact booleans), and every refusal must name the StatefulSet.
func FuzzAnnotations(f *testing.F) {
	f.Add("3", "db1,db2", "true", "false", "http")
	f.Add("-1", "Users,,_secret", "yes", "1", "ftp")
	f.Add("99999999999999999999", "_users , a$b(c)+d/e-f", "", " true ", "https")
	f.Add("\x00\xff", "\xff\xfe", "\n", "TRUE", "HTTP")
	f.Fuzz(func(t *testing.T, target, replicate, paused, rebalance, scheme string) {
		ann := map[string]string{AnnotationTargetReplicas: target, AnnotationReplicate: replicate,
			AnnotationPaused: paused, AnnotationRebalance: rebalance, AnnotationScheme: scheme}
		var o Observed
		parseAnnotations(statefulSet(3, ann), &o)
		if o.TargetReplicas != nil && (*o.TargetReplicas < 1 || *o.TargetReplicas > 1000) {
			t.Fatalf("target-replicas %q accepted as %d", target, *o.TargetReplicas)
		}
		for _, db := range o.Replicate {
			if !validDBName(db) || db != strings.TrimSpace(db) {
				t.Fatalf("replicate accepted %q", db)
			}
		}
		if o.Paused != (strings.TrimSpace(paused) != "false") {
			t.Fatalf("paused %q read as %t; only \"false\" may unpause", paused, o.Paused)
		}
		if o.Rebalance && strings.TrimSpace(rebalance) != "true" {
			t.Fatalf("rebalance %q read as true", rebalance)
		}
		ok := o.TargetReplicas != nil && strings.TrimSpace(paused) == "false" && strings.TrimSpace(rebalance) == "true" && (scheme == "http" || scheme == "https")
		if ok && len(o.Problems) > 0 && allValidDBs(replicate) {
			t.Fatalf("valid annotations refused: %v", o.Problems)
		}
		for _, p := range o.Problems {
			if !strings.Contains(p.Message, "StatefulSet ns/db") || !utf8.ValidString(p.Message) {
				t.Fatalf("problem does not name the StatefulSet or is not UTF-8: %q", p.Message)
			}
		}
	})
}

func allValidDBs(list string) bool {
	for _, db := range strings.Split(list, ",") {
		if db = strings.TrimSpace(db); db != "" && !validDBName(db) {
			return false
		}
	}
	return true
}

// FuzzCredentials resolves admin credentials from fuzzed Secret bytes, env literals, envFrom prefixes
// and keys. It must not panic; what it accepts must be printable UTF-8 that basic auth can carry;
// and no refusal may echo the secret value.
func FuzzCredentials(f *testing.F) {
	f.Add("admin", []byte("s3cret-pass"), "password", "password", "", false)
	f.Add("admin", []byte("pass\n"), "password", "password", "", false)
	f.Add("ad:min", []byte("\x00\xff"), "pw", "password", "COUCHDB_", true)
	f.Add("", []byte(""), "", "", "", true)
	f.Fuzz(func(t *testing.T, user string, secretValue []byte, secretKey, refKey, prefix string, useEnvFrom bool) {
		sts := statefulSet(3, nil)
		ctr := &sts.Spec.Template.Spec.Containers[0]
		ctr.Env = []corev1.EnvVar{{Name: "COUCHDB_USER", Value: user}}
		if useEnvFrom {
			ctr.EnvFrom = []corev1.EnvFromSource{{Prefix: prefix, SecretRef: &corev1.SecretEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "creds"}}}}
		} else {
			ctr.Env = append(ctr.Env, corev1.EnvVar{Name: "COUCHDB_PASSWORD", ValueFrom: &corev1.EnvVarSource{
				SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "creds"}, Key: refKey}}})
		}
		resolve := func(value []byte) (Credentials, error) {
			sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "creds", Namespace: testNS, ResourceVersion: "7"},
				Data: map[string][]byte{secretKey: value}}
			c := &Controller{kube: fake.NewClientset(sec)}
			creds, _, err := c.resolveCredentials(context.Background(), sts)
			return creds, err
		}
		creds, err := resolve(secretValue)
		if err != nil {
			if !isPermanent(err) {
				t.Fatalf("a bad Secret is not a permanent problem: %v", err)
			}
			// The value may be a substring of the message by chance ("word"); it is echoed only if
			// the message for another value of the same length does not contain it too.
			if len(secretValue) >= 4 && strings.Contains(err.Error(), string(secretValue)) {
				_, err2 := resolve([]byte(strings.Repeat("Q", len(secretValue))))
				if err2 == nil || !strings.Contains(err2.Error(), string(secretValue)) {
					t.Fatalf("the refusal echoes the secret value: %v", err)
				}
			}
			return
		}
		for _, v := range []string{creds.Username, creds.Password} {
			if v == "" || !utf8.ValidString(v) || strings.IndexFunc(v, unicode.IsControl) >= 0 {
				t.Fatalf("accepted unusable credentials %q", creds)
			}
		}
		if strings.Contains(creds.Username, ":") {
			t.Fatalf("accepted a username with ':' (%q)", creds.Username)
		}
		if len(creds.Password) >= 4 && strings.Contains(creds.String(), creds.Password) && !strings.Contains(creds.Username, creds.Password) {
			t.Fatalf("Credentials.String shows the password")
		}
	})
}
