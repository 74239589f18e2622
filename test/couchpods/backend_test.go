package couchpods

import (
	"context"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/couchdb-controller/couchdb-controller/couch/couchtest"
)

// statefulPod is a pod of a StatefulSet "db" as the StatefulSet controller makes it from one
// template: a shared ini ConfigMap copied whole, and a per-pod file chosen with subPathExpr.
func statefulPod(name string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "ns"},
		Spec: corev1.PodSpec{
			Hostname: name, Subdomain: "db",
			Containers: []corev1.Container{{
				Name: "couchdb",
				Env: []corev1.EnvVar{
					{Name: "COUCHDB_USER", Value: "admin"},
					{Name: "COUCHDB_PASSWORD", Value: "pw"},
					{Name: "COUCHDB_SECRET", Value: "env-secret"},
					{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
					{Name: "NODENAME", Value: "$(POD_NAME).db.ns.svc.cluster.local"},
				},
				VolumeMounts: []corev1.VolumeMount{{Name: "per-pod", MountPath: "/opt/couchdb/etc/local.d/99-pod.ini", SubPathExpr: "$(POD_NAME).ini"}},
			}},
			Volumes: []corev1.Volume{
				{Name: "config", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: "shared"}}}},
				{Name: "per-pod", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: "per-pod"}}}},
			},
		},
	}
}

func TestPerPodUUIDAndRestart(t *testing.T) {
	ctx := context.Background()
	kube := fake.NewClientset(
		&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "shared", Namespace: "ns"}, Data: map[string]string{
			"inifile": "[couchdb]\nuuid = shared-uuid\n[cluster]\nq = 4\n",
		}},
		&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "per-pod", Namespace: "ns"}, Data: map[string]string{
			"db-1.ini": "[couchdb]\nuuid = own-uuid-1\n",
		}},
	)
	nw := couchtest.NewNetwork(couchtest.NetworkOptions{PasswordIterations: 10})
	b := New(kube, nw)
	var works []interface{ Stop() }
	t.Cleanup(func() {
		for _, w := range works {
			w.Stop()
		}
	})
	for _, name := range []string{"db-0", "db-1"} {
		w, err := b.StartPod(ctx, statefulPod(name), "")
		if err != nil {
			t.Fatal(err)
		}
		works = append(works, w)
	}
	want := map[string]string{"db-0": "shared-uuid", "db-1": "own-uuid-1"}
	for pod, uuid := range want {
		n := b.Node("ns", pod)
		if got, _ := n.Config("couchdb", "uuid"); got != uuid {
			t.Errorf("%s: [couchdb] uuid %q, want %q", pod, got, uuid)
		}
		if got, _ := n.Config("chttpd_auth", "secret"); got != "env-secret" {
			t.Errorf("%s: secret from COUCHDB_SECRET not applied: %q", pod, got)
		}
		if got, _ := n.Config("cluster", "q"); got != "4" {
			t.Errorf("%s: [cluster] q %q, want 4", pod, got)
		}
	}

	// Fixing the per-pod file and recreating the pod: the new container reads the new value and
	// hashes the password afresh, and runtime config is gone.
	n1 := b.Node("ns", "db-1")
	h1, _ := n1.Config("admins", "admin")
	cm, _ := kube.CoreV1().ConfigMaps("ns").Get(ctx, "per-pod", metav1.GetOptions{})
	cm.Data = map[string]string{}
	if _, err := kube.CoreV1().ConfigMaps("ns").Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	works[1].Stop()
	deadline := time.Now().Add(5 * time.Second)
	for n1.Running() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	w, err := b.StartPod(ctx, statefulPod("db-1"), "")
	if err != nil {
		t.Fatal(err)
	}
	works[1] = w
	if got, _ := n1.Config("couchdb", "uuid"); got != "shared-uuid" {
		t.Errorf("after the fix and a restart, db-1's uuid is %q, want shared-uuid", got)
	}
	if h, _ := n1.Config("admins", "admin"); h == h1 {
		t.Errorf("the restarted container kept its old hash")
	}
}
