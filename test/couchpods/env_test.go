package couchpods

import (
	"context"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

// TestContainerEnvReadsEachSourceOnce: the variables resolve as the kubelet resolves them, and each
// Secret or ConfigMap is read once, however many variables name it.
func TestContainerEnvReadsEachSourceOnce(t *testing.T) {
	optional := true
	secretKey := func(name, key string, opt *bool) *corev1.EnvVarSource {
		return &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: name}, Key: key, Optional: opt}}
	}
	objects := []struct {
		kind, name string
		data       map[string]string
	}{
		{"Secret", "admin", map[string]string{"user": "admin", "password": "s3cret", "cookie": "monster"}},
		{"ConfigMap", "settings", map[string]string{"node": "db-0.db", "flags": "-name couchdb"}},
		{"Secret", "extra", map[string]string{"A": "1"}},
	}
	for _, tc := range []struct {
		name    string
		c       corev1.Container
		want    map[string]string
		wantErr string
		gets    map[string]int
	}{
		{
			name: "three keys of one Secret, two of one ConfigMap, envFrom and a downward field",
			c: corev1.Container{
				EnvFrom: []corev1.EnvFromSource{{Prefix: "X_", SecretRef: &corev1.SecretEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "extra"}}}},
				Env: []corev1.EnvVar{
					{Name: "COUCHDB_USER", ValueFrom: secretKey("admin", "user", nil)},
					{Name: "COUCHDB_PASSWORD", ValueFrom: secretKey("admin", "password", nil)},
					{Name: "COUCHDB_ERLANG_COOKIE", ValueFrom: secretKey("admin", "cookie", nil)},
					{Name: "NODENAME", ValueFrom: &corev1.EnvVarSource{ConfigMapKeyRef: &corev1.ConfigMapKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "settings"}, Key: "node"}}},
					{Name: "FLAGS", ValueFrom: &corev1.EnvVarSource{ConfigMapKeyRef: &corev1.ConfigMapKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "settings"}, Key: "flags"}}},
					{Name: "POD", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
					{Name: "GREETING", Value: "hello $(POD)"},
				},
			},
			want: map[string]string{"X_A": "1", "COUCHDB_USER": "admin", "COUCHDB_PASSWORD": "s3cret", "COUCHDB_ERLANG_COOKIE": "monster",
				"NODENAME": "db-0.db", "FLAGS": "-name couchdb", "POD": "db-0", "GREETING": "hello db-0"},
			gets: map[string]int{"secrets/extra": 1, "secrets/admin": 1, "configmaps/settings": 1},
		},
		{
			name: "a missing optional Secret is read once and left out",
			c: corev1.Container{Env: []corev1.EnvVar{
				{Name: "A", ValueFrom: secretKey("gone", "a", &optional)},
				{Name: "B", ValueFrom: secretKey("gone", "b", &optional)},
			}},
			want: map[string]string{},
			gets: map[string]int{"secrets/gone": 1},
		},
		{
			name:    "a missing required Secret fails",
			c:       corev1.Container{Env: []corev1.EnvVar{{Name: "A", ValueFrom: secretKey("gone", "a", nil)}}},
			wantErr: `env A: secrets "gone" not found`,
			gets:    map[string]int{"secrets/gone": 1},
		},
		{
			name:    "a missing key of a required Secret fails",
			c:       corev1.Container{Env: []corev1.EnvVar{{Name: "A", ValueFrom: secretKey("admin", "nope", nil)}}},
			wantErr: "secret admin has no key nope",
			gets:    map[string]int{"secrets/admin": 1},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			kc := fake.NewClientset()
			ctx := context.Background()
			for _, o := range objects {
				meta := metav1.ObjectMeta{Name: o.name, Namespace: "ns"}
				var err error
				if o.kind == "Secret" {
					data := map[string][]byte{}
					for k, v := range o.data {
						data[k] = []byte(v)
					}
					_, err = kc.CoreV1().Secrets("ns").Create(ctx, &corev1.Secret{ObjectMeta: meta, Data: data}, metav1.CreateOptions{})
				} else {
					_, err = kc.CoreV1().ConfigMaps("ns").Create(ctx, &corev1.ConfigMap{ObjectMeta: meta, Data: o.data}, metav1.CreateOptions{})
				}
				if err != nil {
					t.Fatal(err)
				}
			}
			kc.ClearActions()
			pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "db-0", Namespace: "ns"}}
			got, err := containerEnv(ctx, kc, pod, &tc.c)
			switch {
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
			case tc.wantErr == "" && err != nil:
				t.Fatal(err)
			case tc.wantErr == "":
				if diff := cmp.Diff(tc.want, got); diff != "" {
					t.Errorf("env (-want +got):\n%s", diff)
				}
			}
			gets := map[string]int{}
			for _, a := range kc.Actions() {
				if a.GetVerb() == "get" {
					gets[a.GetResource().Resource+"/"+a.(interface{ GetName() string }).GetName()]++
				}
			}
			if diff := cmp.Diff(tc.gets, gets); diff != "" {
				t.Errorf("GETs (-want +got):\n%s", diff)
			}
		})
	}
}
