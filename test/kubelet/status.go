package kubelet

import (
	"encoding/json"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The condition reasons the real kubelet uses (pkg/kubelet/status/generate.go).
const (
	reasonContainersNotReady     = "ContainersNotReady"
	reasonReadinessGatesNotReady = "ReadinessGatesNotReady"
)

// podReady is the kubelet's rule: Ready = ContainersReady AND every readiness gate condition True. A
// gate whose condition nobody has set yet counts as not ready.
func podReady(pod *corev1.Pod, containersReady bool) (bool, string) {
	if !containersReady {
		return false, reasonContainersNotReady
	}
	for _, g := range pod.Spec.ReadinessGates {
		c := findCondition(pod.Status.Conditions, g.ConditionType)
		if c == nil || c.Status != corev1.ConditionTrue {
			return false, reasonReadinessGatesNotReady
		}
	}
	return true, ""
}

func findCondition(cs []corev1.PodCondition, t corev1.PodConditionType) *corev1.PodCondition {
	for i := range cs {
		if cs[i].Type == t {
			return &cs[i]
		}
	}
	return nil
}

func condStatus(b bool) corev1.ConditionStatus {
	if b {
		return corev1.ConditionTrue
	}
	return corev1.ConditionFalse
}

// statusPatch returns the strategic-merge patch for the status subresource that makes pod report
// Running at ip with the given container readiness, or nil when the pod already says so. Conditions
// merge by type, so the patch carries only the four the kubelet owns and leaves readiness-gate
// conditions (set by others, e.g. the controller) untouched.
func statusPatch(pod *corev1.Pod, ip string, containersReady bool, now metav1.Time) ([]byte, error) {
	ready, readyReason := podReady(pod, containersReady)
	cReason := ""
	if !containersReady {
		cReason = reasonContainersNotReady
	}
	want := []corev1.PodCondition{
		{Type: corev1.PodScheduled, Status: corev1.ConditionTrue},
		{Type: corev1.PodInitialized, Status: corev1.ConditionTrue},
		{Type: corev1.ContainersReady, Status: condStatus(containersReady), Reason: cReason},
		{Type: corev1.PodReady, Status: condStatus(ready), Reason: readyReason},
	}
	if upToDate(pod, ip, containersReady, want) {
		return nil, nil
	}
	for i := range want {
		want[i].LastTransitionTime = now
		// A condition whose status does not change keeps its transition time, as with the kubelet.
		if old := findCondition(pod.Status.Conditions, want[i].Type); old != nil && old.Status == want[i].Status {
			want[i].LastTransitionTime = old.LastTransitionTime
		}
	}
	start := pod.Status.StartTime
	if start == nil {
		start = &now
	}
	statuses := make([]corev1.ContainerStatus, 0, len(pod.Spec.Containers))
	for _, c := range pod.Spec.Containers {
		started := true
		statuses = append(statuses, corev1.ContainerStatus{
			Name: c.Name, Image: c.Image, ImageID: "harness://" + c.Image,
			ContainerID: "harness://" + string(pod.UID) + "/" + c.Name,
			Ready:       containersReady, Started: &started,
			State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: *start}},
		})
	}
	return json.Marshal(map[string]any{"status": map[string]any{
		"phase":             corev1.PodRunning,
		"podIP":             ip,
		"podIPs":            []corev1.PodIP{{IP: ip}},
		"hostIP":            hostIP,
		"hostIPs":           []corev1.HostIP{{IP: hostIP}},
		"startTime":         start,
		"conditions":        want,
		"containerStatuses": statuses,
	}})
}

func upToDate(pod *corev1.Pod, ip string, containersReady bool, want []corev1.PodCondition) bool {
	s := pod.Status
	if s.Phase != corev1.PodRunning || s.PodIP != ip || s.HostIP != hostIP || s.StartTime == nil ||
		len(s.ContainerStatuses) != len(pod.Spec.Containers) {
		return false
	}
	for _, w := range want {
		c := findCondition(s.Conditions, w.Type)
		if c == nil || c.Status != w.Status || c.Reason != w.Reason {
			return false
		}
	}
	for _, cs := range s.ContainerStatuses {
		if cs.Ready != containersReady {
			return false
		}
	}
	return true
}
