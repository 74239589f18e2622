package controller

import (
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

func TestUpdateMatters(t *testing.T) {
	sts := func(mut func(*appsv1.StatefulSet)) *appsv1.StatefulSet {
		s := &appsv1.StatefulSet{ObjectMeta: metav1.ObjectMeta{Name: "db", UID: "u1", ResourceVersion: "1",
			Labels: map[string]string{LabelCluster: "main"}, Annotations: map[string]string{AnnotationRebalance: "true"}},
			Spec:   appsv1.StatefulSetSpec{Replicas: ptr.To[int32](3), ServiceName: "db"},
			Status: appsv1.StatefulSetStatus{Replicas: 3, ReadyReplicas: 3}}
		if mut != nil {
			mut(s)
		}
		return s
	}
	ep := func(port int32, mut func(*corev1.Endpoints)) *corev1.Endpoints {
		e := &corev1.Endpoints{ObjectMeta: metav1.ObjectMeta{Name: "db", UID: "e1", ResourceVersion: "1", Labels: map[string]string{LabelCluster: "main"}},
			Subsets: []corev1.EndpointSubset{{Ports: []corev1.EndpointPort{{Name: couchDBPortName, Port: port}},
				Addresses: []corev1.EndpointAddress{{IP: "10.0.0.1"}}}}}
		if mut != nil {
			mut(e)
		}
		return e
	}
	pod := func(mut func(*corev1.Pod)) *corev1.Pod {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "db-0", UID: "p1", ResourceVersion: "1"},
			Status: corev1.PodStatus{PodIP: "10.0.0.1", Conditions: []corev1.PodCondition{{Type: corev1.ContainersReady, Status: corev1.ConditionFalse}}}}
		if mut != nil {
			mut(p)
		}
		return p
	}
	trimmed := func(p *corev1.Pod) *corev1.Pod {
		out, err := trimPod(p)
		if err != nil {
			t.Fatal(err)
		}
		return out.(*corev1.Pod)
	}
	now := metav1.NewTime(time.Unix(1000, 0))
	cases := []struct {
		name     string
		old, cur any
		want     bool
	}{
		{"statefulset status only", sts(nil), sts(func(s *appsv1.StatefulSet) {
			s.ResourceVersion, s.Status.ReadyReplicas, s.Status.CurrentReplicas = "2", 2, 3
		}), false},
		{"statefulset replicas", sts(nil), sts(func(s *appsv1.StatefulSet) { s.ResourceVersion, s.Spec.Replicas = "2", ptr.To[int32](4) }), true},
		{"statefulset annotation", sts(nil), sts(func(s *appsv1.StatefulSet) {
			s.ResourceVersion, s.Annotations = "2", map[string]string{AnnotationTargetReplicas: "2"}
		}), true},
		{"statefulset label", sts(nil), sts(func(s *appsv1.StatefulSet) { s.ResourceVersion, s.Labels = "2", nil }), true},
		{"statefulset deleted", sts(nil), sts(func(s *appsv1.StatefulSet) { s.ResourceVersion, s.DeletionTimestamp = "2", &now }), true},
		{"statefulset recreated", sts(nil), sts(func(s *appsv1.StatefulSet) { s.ResourceVersion, s.UID = "2", "u2" }), true},
		{"endpoints address becomes ready", ep(5984, func(e *corev1.Endpoints) {
			e.Subsets[0].NotReadyAddresses, e.Subsets[0].Addresses = e.Subsets[0].Addresses, nil
		}), ep(5984, func(e *corev1.Endpoints) { e.ResourceVersion = "2" }), false},
		{"endpoints port", ep(5984, nil), ep(6984, func(e *corev1.Endpoints) { e.ResourceVersion = "2" }), true},
		{"endpoints label", ep(5984, nil), ep(5984, func(e *corev1.Endpoints) { e.ResourceVersion, e.Labels = "2", nil }), true},
		{"pod bound to a node (its zone)", trimmed(pod(nil)), trimmed(pod(func(p *corev1.Pod) { p.ResourceVersion, p.Spec.NodeName = "2", "n1" })), true},
		{"pod annotation (not kept by trimPod)", trimmed(pod(nil)), trimmed(pod(func(p *corev1.Pod) {
			p.ResourceVersion, p.Annotations = "2", map[string]string{"x": "y"}
		})), false},
		{"pod host IP (not kept by trimPod)", trimmed(pod(nil)), trimmed(pod(func(p *corev1.Pod) { p.ResourceVersion, p.Status.HostIP = "2", "192.168.0.1" })), false},
		{"pod containers ready", trimmed(pod(nil)), trimmed(pod(func(p *corev1.Pod) {
			p.ResourceVersion = "2"
			p.Status.Conditions[0].Status = corev1.ConditionTrue
		})), true},
		{"pod Ready condition (not read: ContainersReady and the member gate are)", trimmed(pod(nil)), trimmed(pod(func(p *corev1.Pod) {
			p.ResourceVersion = "2"
			p.Status.Conditions = append(p.Status.Conditions, corev1.PodCondition{Type: corev1.PodReady, Status: corev1.ConditionTrue, Reason: "x"})
		})), false},
		{"pod member condition", trimmed(pod(nil)), trimmed(pod(func(p *corev1.Pod) {
			p.ResourceVersion = "2"
			p.Status.Conditions = append(p.Status.Conditions, corev1.PodCondition{Type: ConditionMember, Status: corev1.ConditionTrue})
		})), true},
		{"pod containers ready changed again (its time is read)", trimmed(pod(nil)), trimmed(pod(func(p *corev1.Pod) {
			p.ResourceVersion, p.Status.Conditions[0].LastTransitionTime = "2", now
		})), true},
		{"pod label (a pod's cluster is its StatefulSet's)", trimmed(pod(nil)), trimmed(pod(func(p *corev1.Pod) {
			p.ResourceVersion, p.Labels = "2", map[string]string{"x": "y"}
		})), false},
		{"pod IP", trimmed(pod(nil)), trimmed(pod(func(p *corev1.Pod) { p.ResourceVersion, p.Status.PodIP = "2", "10.0.0.2" })), true},
		{"pod terminating", trimmed(pod(nil)), trimmed(pod(func(p *corev1.Pod) { p.ResourceVersion, p.DeletionTimestamp = "2", &now })), true},
		{"pod restarted", trimmed(pod(nil)), trimmed(pod(func(p *corev1.Pod) {
			p.ResourceVersion, p.Status.ContainerStatuses = "2", []corev1.ContainerStatus{{Name: "couchdb", RestartCount: 1}}
		})), true},
		{"mismatched types", sts(nil), ep(5984, nil), true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := updateMatters(tc.old, tc.cur); got != tc.want {
				t.Errorf("updateMatters = %t, want %t", got, tc.want)
			}
		})
	}
	// Whatever trimPod keeps matters, whoever added it: a field read by sync is never filtered out.
	if out, _ := trimPod(pod(func(p *corev1.Pod) { p.Spec.NodeName = "n1" })); out.(*corev1.Pod).Spec.NodeName != "" {
		if !updateMatters(trimmed(pod(nil)), trimmed(pod(func(p *corev1.Pod) { p.ResourceVersion, p.Spec.NodeName = "2", "n1" }))) {
			t.Error("a new node name is kept by trimPod but filtered out")
		}
	}
	// The comparison must not change the cached objects.
	p := trimmed(pod(nil))
	updateMatters(p, trimmed(pod(func(p *corev1.Pod) { p.ResourceVersion = "2" })))
	if p.ResourceVersion != "1" {
		t.Errorf("the cached pod's resourceVersion changed to %q", p.ResourceVersion)
	}
}
