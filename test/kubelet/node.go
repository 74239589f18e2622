package kubelet

import (
	"context"
	"encoding/json"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// registerNode creates a fake Node (or adopts one left by an earlier Kubelet, taking the spec's
// labels and taints) and marks it Ready.
// EndpointSlices skip pods whose Node does not exist, so the Node must be real. Nothing renews its
// heartbeat: the harness runs kube-controller-manager without the node-lifecycle controller, which
// would otherwise mark it Unknown and evict its pods.
func (k *Kubelet) registerNode(ctx context.Context, spec NodeSpec) error {
	name := spec.Name
	nodes := k.kube.CoreV1().Nodes()
	labels := map[string]string{"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"}
	for k, v := range spec.Labels {
		labels[k] = v
	}
	_, err := nodes.Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
		Spec: corev1.NodeSpec{Taints: spec.Taints}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("register node %s: %w", name, err)
	}
	// The spec's labels and taints win over another run's; and the API server's TaintNodesByCondition
	// admission gives a new Node the node.kubernetes.io/not-ready taint, which the node lifecycle
	// controller (not run by the harness) would remove once the Node is Ready, as it is below.
	p, err := json.Marshal(map[string]any{"metadata": map[string]any{"labels": labels}, "spec": map[string]any{"taints": spec.Taints}})
	if err != nil {
		return err
	}
	node, err := nodes.Patch(ctx, name, types.MergePatchType, p, metav1.PatchOptions{})
	if err != nil {
		return fmt.Errorf("label node %s: %w", name, err)
	}
	now := metav1.Now()
	capacity := corev1.ResourceList{
		corev1.ResourcePods:   resource.MustParse("1000"),
		corev1.ResourceCPU:    resource.MustParse("64"),
		corev1.ResourceMemory: resource.MustParse("256Gi"),
	}
	status := corev1.NodeStatus{
		Conditions: []corev1.NodeCondition{{
			Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady",
			Message: "harness kubelet is posting ready status", LastHeartbeatTime: now, LastTransitionTime: now,
		}},
		Addresses:   []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: hostIP}, {Type: corev1.NodeHostName, Address: name}},
		Capacity:    capacity,
		Allocatable: capacity,
		NodeInfo:    corev1.NodeSystemInfo{KubeletVersion: "harness", OperatingSystem: "linux", Architecture: "amd64"},
	}
	// A patch, not an update: controllers (ttl, taint) write to a new Node at once, and an update
	// from the created object would lose that race with a conflict.
	patch, err := json.Marshal(map[string]any{"status": status})
	if err != nil {
		return err
	}
	if _, err := nodes.Patch(ctx, node.Name, types.MergePatchType, patch, metav1.PatchOptions{}, "status"); err != nil {
		return fmt.Errorf("mark node %s ready: %w", name, err)
	}
	return nil
}
