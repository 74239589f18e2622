package kubelet

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

const gate corev1.PodConditionType = "couchdb.io/member"

func gatedPod(gateStatus corev1.ConditionStatus) *corev1.Pod {
	p := &corev1.Pod{Spec: corev1.PodSpec{
		Containers:     []corev1.Container{{Name: "couchdb", Image: "couchdb:3.4.3"}},
		ReadinessGates: []corev1.PodReadinessGate{{ConditionType: gate}},
	}}
	if gateStatus != "" {
		p.Status.Conditions = []corev1.PodCondition{{Type: gate, Status: gateStatus}}
	}
	return p
}

func TestPodReady(t *testing.T) {
	tests := map[string]struct {
		pod             *corev1.Pod
		containersReady bool
		want            bool
		reason          string
	}{
		"no gates, containers ready":     {&corev1.Pod{}, true, true, ""},
		"no gates, containers not ready": {&corev1.Pod{}, false, false, reasonContainersNotReady},
		"gate unset":                     {gatedPod(""), true, false, reasonReadinessGatesNotReady},
		"gate false":                     {gatedPod(corev1.ConditionFalse), true, false, reasonReadinessGatesNotReady},
		"gate true":                      {gatedPod(corev1.ConditionTrue), true, true, ""},
		"gate true, containers not":      {gatedPod(corev1.ConditionTrue), false, false, reasonContainersNotReady},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, reason := podReady(tc.pod, tc.containersReady)
			if got != tc.want || reason != tc.reason {
				t.Fatalf("podReady = %v %q, want %v %q", got, reason, tc.want, tc.reason)
			}
		})
	}
}

// decoded is the part of a status patch the tests look at.
type decoded struct {
	Status struct {
		Phase      corev1.PodPhase
		PodIP      string
		Conditions []corev1.PodCondition
		Containers []corev1.ContainerStatus `json:"containerStatuses"`
	}
}

func TestStatusPatch(t *testing.T) {
	now := metav1.NewTime(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC))
	earlier := metav1.NewTime(now.Add(-time.Minute))
	pod := gatedPod(corev1.ConditionTrue)
	patch, err := statusPatch(pod, "10.244.1.2", true, now)
	if err != nil || patch == nil {
		t.Fatalf("first patch: %s, %v", patch, err)
	}
	var d decoded
	if err := json.Unmarshal(patch, &d); err != nil {
		t.Fatal(err)
	}
	var types []corev1.PodConditionType
	for _, c := range d.Status.Conditions {
		types = append(types, c.Type)
		if c.Status != corev1.ConditionTrue {
			t.Errorf("condition %s = %s, want True", c.Type, c.Status)
		}
	}
	// The gate condition is someone else's: the patch must not carry it, so merging by type keeps it.
	if diff := cmp.Diff([]corev1.PodConditionType{corev1.PodScheduled, corev1.PodInitialized, corev1.ContainersReady, corev1.PodReady}, types); diff != "" {
		t.Errorf("patched conditions (-want +got):\n%s", diff)
	}
	if d.Status.Phase != corev1.PodRunning || d.Status.PodIP != "10.244.1.2" || len(d.Status.Containers) != 1 || !d.Status.Containers[0].Ready {
		t.Errorf("status = %+v", d.Status)
	}

	// Applied, the same report needs no patch.
	pod.Status.Phase, pod.Status.PodIP, pod.Status.HostIP, pod.Status.StartTime = corev1.PodRunning, "10.244.1.2", hostIP, &earlier
	for _, c := range d.Status.Conditions {
		c.LastTransitionTime = earlier
		pod.Status.Conditions = append(pod.Status.Conditions, c)
	}
	pod.Status.ContainerStatuses = d.Status.Containers
	if p, _ := statusPatch(pod, "10.244.1.2", true, now); p != nil {
		t.Fatalf("no change, yet patched: %s", p)
	}

	// The probe fails: ContainersReady and Ready turn False with fresh transition times; others keep theirs.
	patch, _ = statusPatch(pod, "10.244.1.2", false, now)
	d = decoded{}
	if err := json.Unmarshal(patch, &d); err != nil {
		t.Fatal(err)
	}
	for _, c := range d.Status.Conditions {
		changed := c.Type == corev1.ContainersReady || c.Type == corev1.PodReady
		wantTime := earlier
		if changed {
			wantTime = now
		}
		if changed != (c.Status == corev1.ConditionFalse) || !c.LastTransitionTime.Equal(&wantTime) {
			t.Errorf("condition %s = %s at %s", c.Type, c.Status, c.LastTransitionTime)
		}
	}

	// The gate going False (the controller's doing) makes Ready False though containers are ready.
	findCondition(pod.Status.Conditions, gate).Status = corev1.ConditionFalse
	patch, _ = statusPatch(pod, "10.244.1.2", true, now)
	d = decoded{}
	if err := json.Unmarshal(patch, &d); err != nil {
		t.Fatal(err)
	}
	if c := findCondition(d.Status.Conditions, corev1.PodReady); c == nil || c.Status != corev1.ConditionFalse || c.Reason != reasonReadinessGatesNotReady {
		t.Errorf("Ready = %+v, want False/%s", c, reasonReadinessGatesNotReady)
	}
}
