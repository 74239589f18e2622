package main

import (
	"fmt"
	"os"
	"strconv"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// deploymentManifest is the Deployment users install; the bench runs the controller with the
// environment it gives the container.
const deploymentManifest = "manifests/deployment.yaml"

// deployedEnv returns the controller container's environment variables that the downward API fills
// from its resource limits (GOMAXPROCS from limits.cpu, GOMEMLIMIT from limits.memory), resolved as
// the kubelet resolves them. A controller measured with every core of the machine and no memory
// limit is not the one users run: Go's scheduler and collector behave differently with one P and a
// soft memory limit.
func deployedEnv(manifest []byte) ([]string, error) {
	var d appsv1.Deployment
	if err := yaml.Unmarshal(manifest, &d); err != nil {
		return nil, fmt.Errorf("%s: %w", deploymentManifest, err)
	}
	var ctr *corev1.Container
	for i := range d.Spec.Template.Spec.Containers {
		if c := &d.Spec.Template.Spec.Containers[i]; c.Name == "controller" {
			ctr = c
		}
	}
	if ctr == nil {
		return nil, fmt.Errorf("%s: no container named controller", deploymentManifest)
	}
	var env []string
	for _, e := range ctr.Env {
		ref := e.ValueFrom
		if ref == nil || ref.ResourceFieldRef == nil {
			continue
		}
		v, err := resourceFieldValue(ctr.Resources, ref.ResourceFieldRef)
		if err != nil {
			return nil, fmt.Errorf("%s: env %s: %w", deploymentManifest, e.Name, err)
		}
		env = append(env, e.Name+"="+v)
	}
	return env, nil
}

// resourceFieldValue is the downward API's value of a resource field: the quantity divided by the
// divisor (1 unless set), rounded up, as the kubelet computes it (limits.cpu "1500m" gives "2").
func resourceFieldValue(res corev1.ResourceRequirements, ref *corev1.ResourceFieldSelector) (string, error) {
	var list corev1.ResourceList
	var name corev1.ResourceName
	switch ref.Resource {
	case "limits.cpu":
		list, name = res.Limits, corev1.ResourceCPU
	case "limits.memory":
		list, name = res.Limits, corev1.ResourceMemory
	case "requests.cpu":
		list, name = res.Requests, corev1.ResourceCPU
	case "requests.memory":
		list, name = res.Requests, corev1.ResourceMemory
	default:
		return "", fmt.Errorf("resource %q is not one the bench resolves", ref.Resource)
	}
	q, ok := list[name]
	if !ok {
		// The kubelet falls back to the node's allocatable; the bench's machine is the node.
		return "", fmt.Errorf("%s is not set", ref.Resource)
	}
	divisor := int64(1)
	if !ref.Divisor.IsZero() {
		divisor = ref.Divisor.MilliValue()
		if name == corev1.ResourceCPU {
			return strconv.FormatInt((q.MilliValue()+divisor-1)/divisor, 10), nil
		}
		return strconv.FormatInt((q.Value()*1000+divisor-1)/divisor, 10), nil
	}
	if name == corev1.ResourceCPU {
		return strconv.FormatInt((q.MilliValue()+999)/1000, 10), nil
	}
	return strconv.FormatInt(q.Value(), 10), nil
}

// readDeployedEnv reads deployedEnv from the repository's manifest (the bench runs from its root).
func readDeployedEnv() ([]string, error) {
	b, err := os.ReadFile(deploymentManifest)
	if err != nil {
		return nil, err
	}
	return deployedEnv(b)
}
