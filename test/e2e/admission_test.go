package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	autoscalingv1 "k8s.io/api/autoscaling/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// TestAdmissionPolicyRefusesDirectScaleDown installs manifests/admission on the real API server: a
// user lowering spec.replicas of a labelled StatefulSet (directly or through the scale subresource)
// is refused with a message naming couchdb.io/target-replicas; so is `kubectl scale` (the scale
// subresource); the controller's ServiceAccount may; scaling up is allowed. Run it once per API server
// process: deleting the bindings trips kubernetes/kubernetes#130887 (see manifests/admission).
func TestAdmissionPolicyRefusesDirectScaleDown(t *testing.T) {
	ctx := context.Background()
	ns := newNamespace(t)
	applyAll(t, render(t, "admission"), "")
	// The policy is cluster-wide: remove it so later tests may scale down directly.
	t.Cleanup(func() {
		for _, name := range []string{"couchdb-controller-safe-scale-down", "couchdb-controller-safe-scale-down-subresource"} {
			_ = env.kube.AdmissionregistrationV1().ValidatingAdmissionPolicyBindings().Delete(context.Background(), name, metav1.DeleteOptions{})
			_ = env.kube.AdmissionregistrationV1().ValidatingAdmissionPolicies().Delete(context.Background(), name, metav1.DeleteOptions{})
		}
		// The API server drops the policy shortly after; wait until a labelled scale-down passes again.
		poll(t, 30*time.Second, "the policy to be gone", func(ctx context.Context) (bool, error) {
			if _, err := env.kube.AppsV1().StatefulSets(ns).Patch(ctx, "adm", types.MergePatchType, []byte(`{"metadata":{"labels":{"couchdb.io/cluster":"adm"}},"spec":{"replicas":5}}`), metav1.PatchOptions{}); err != nil {
				return false, nil
			}
			if _, err := env.kube.AppsV1().StatefulSets(ns).Patch(ctx, "adm", types.MergePatchType, []byte(`{"spec":{"replicas":0}}`), metav1.PatchOptions{}); err != nil {
				return false, nil
			}
			_, err := env.kube.AppsV1().StatefulSets(ns).Patch(ctx, "adm", types.MergePatchType, []byte(`{"spec":{"replicas":2}}`), metav1.PatchOptions{})
			if err != nil {
				return false, nil
			}
			_, err = env.kube.AppsV1().StatefulSets(ns).UpdateScale(ctx, "adm", &autoscalingv1.Scale{
				ObjectMeta: metav1.ObjectMeta{Name: "adm", Namespace: ns}, Spec: autoscalingv1.ScaleSpec{Replicas: 0}}, metav1.UpdateOptions{})
			return err == nil, nil
		})
	})
	s := newSpec("adm", 3)
	s.parallel = true
	s.create(t, ns) // no controller needed: admission only looks at the request

	// A plain user with edit-like rights on StatefulSets in ns.
	if _, err := env.kube.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "dev"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	role := &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: "sts-editor", Namespace: ns}, Rules: []rbacv1.PolicyRule{{
		APIGroups: []string{"apps"}, Resources: []string{"statefulsets", "statefulsets/scale"}, Verbs: []string{"get", "patch", "update"}}}}
	if _, err := env.kube.RbacV1().Roles(ns).Create(ctx, role, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	rb := &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "dev", Namespace: ns},
		RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: "sts-editor"},
		Subjects: []rbacv1.Subject{{Kind: "ServiceAccount", Name: "dev", Namespace: ns}}}
	if _, err := env.kube.RbacV1().RoleBindings(ns).Create(ctx, rb, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	dev := clientAs(t, ns, "dev")

	// The policy takes a moment to be loaded by the API server: poll until it refuses.
	var lastErr error
	t.Cleanup(func() {
		if t.Failed() {
			vap, err := env.kube.AdmissionregistrationV1().ValidatingAdmissionPolicies().Get(context.Background(), "couchdb-controller-safe-scale-down", metav1.GetOptions{})
			t.Logf("policy status: %+v err %v", vap.Status, err)
		}
	})
	poll(t, 30*time.Second, "the policy to refuse a direct scale-down", func(ctx context.Context) (bool, error) {
		// Until the API server has loaded the policy the patch goes through; put replicas back.
		if _, err := env.kube.AppsV1().StatefulSets(ns).Patch(ctx, "adm", types.MergePatchType, []byte(`{"spec":{"replicas":3}}`), metav1.PatchOptions{}); err != nil {
			return false, err
		}
		_, lastErr = dev.AppsV1().StatefulSets(ns).Patch(ctx, "adm", types.MergePatchType, []byte(`{"spec":{"replicas":2}}`), metav1.PatchOptions{})
		return lastErr != nil, nil
	})
	if !strings.Contains(lastErr.Error(), "couchdb.io/target-replicas=2") {
		t.Errorf("refusal does not point to the annotation: %v", lastErr)
	}
	// kubectl scale goes through the scale subresource, whose Scale object has no labels. That policy
	// reads the labelled StatefulSets as params through the API server's own informer, which may see
	// this one a moment after the first policy refused: poll the same way.
	var err error
	poll(t, 30*time.Second, "the policy to refuse a scale-down through the scale subresource", func(ctx context.Context) (bool, error) {
		if _, err := env.kube.AppsV1().StatefulSets(ns).Patch(ctx, "adm", types.MergePatchType, []byte(`{"spec":{"replicas":3}}`), metav1.PatchOptions{}); err != nil {
			return false, err
		}
		_, err = dev.AppsV1().StatefulSets(ns).UpdateScale(ctx, "adm", &autoscalingv1.Scale{
			ObjectMeta: metav1.ObjectMeta{Name: "adm", Namespace: ns}, Spec: autoscalingv1.ScaleSpec{Replicas: 1}}, metav1.UpdateOptions{})
		return err != nil, nil
	})
	if err == nil || !strings.Contains(err.Error(), "couchdb.io/target-replicas=1") {
		t.Errorf("kubectl scale down of a labelled StatefulSet: %v, want a refusal naming the annotation", err)
	}
	// An unlabelled StatefulSet beside it is not protected, whichever way it is scaled.
	other := newSpec("plain", 3)
	other.create(t, ns)
	if _, err := env.kube.AppsV1().StatefulSets(ns).Patch(ctx, "plain", types.MergePatchType, []byte(`{"metadata":{"labels":{"couchdb.io/cluster":null}}}`), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	// The API server's params come from its informer, which may still see the label for a moment.
	poll(t, 30*time.Second, "kubectl scale down of an unlabelled StatefulSet to pass", func(ctx context.Context) (bool, error) {
		_, err := dev.AppsV1().StatefulSets(ns).UpdateScale(ctx, "plain", &autoscalingv1.Scale{
			ObjectMeta: metav1.ObjectMeta{Name: "plain", Namespace: ns}, Spec: autoscalingv1.ScaleSpec{Replicas: 1}}, metav1.UpdateOptions{})
		return err == nil, nil
	})
	// Scaling up is fine.
	if _, err := dev.AppsV1().StatefulSets(ns).Patch(ctx, "adm", types.MergePatchType, []byte(`{"spec":{"replicas":4}}`), metav1.PatchOptions{}); err != nil {
		t.Errorf("scale-up refused: %v", err)
	}
	// The controller's own ServiceAccount may scale down (its drains do).
	installMonitoringCRDs(t)
	applyAll(t, renderBase(t), "") // the ServiceAccount; its Deployment at 0 replicas, as nothing here runs it
	ctrlSA := clientAs(t, "couchdb-controller", "couchdb-controller")
	if _, err := ctrlSA.AppsV1().StatefulSets(ns).UpdateScale(ctx, "adm", &autoscalingv1.Scale{
		ObjectMeta: metav1.ObjectMeta{Name: "adm", Namespace: ns}, Spec: autoscalingv1.ScaleSpec{Replicas: 3}}, metav1.UpdateOptions{}); err != nil {
		t.Errorf("the controller's scale-down was refused: %v", err)
	}
	// Unlabelled StatefulSets are not the policy's business.
	if _, err := env.kube.AppsV1().StatefulSets(ns).Patch(ctx, "adm", types.MergePatchType, []byte(`{"metadata":{"labels":{"couchdb.io/cluster":null}}}`), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	// The policy's params (the labelled StatefulSets) come from the API server's informer, so the
	// unlabelling takes a moment to count.
	poll(t, 30*time.Second, "a scale-down of the now unlabelled StatefulSet to pass", func(ctx context.Context) (bool, error) {
		_, err := dev.AppsV1().StatefulSets(ns).Patch(ctx, "adm", types.MergePatchType, []byte(`{"spec":{"replicas":1}}`), metav1.PatchOptions{})
		return err == nil, nil
	})
}

// clientAs returns a client acting as the ServiceAccount ns/name.
func clientAs(t *testing.T, ns, name string) kubernetes.Interface {
	t.Helper()
	exp := int64(3600)
	tr, err := env.kube.CoreV1().ServiceAccounts(ns).CreateToken(context.Background(), name,
		&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &exp}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cfg := rest.AnonymousClientConfig(env.cfg)
	cfg.BearerToken = tr.Status.Token
	return kubernetes.NewForConfigOrDie(cfg)
}

// TestExampleManifestsValidate applies manifests/examples to the real API server and checks the
// StatefulSet it makes forms a cluster under the controller.
func TestExampleManifestsValidate(t *testing.T) {
	ns := newNamespace(t)
	startController(t, ns)
	applyAll(t, render(t, "examples"), ns)
	passwords.Store(ns, "CHANGE-ME-admin-password")
	usePassword("CHANGE-ME-admin-password")
	poll(t, 90*time.Second, "the example cluster to finish setup", func(context.Context) (bool, error) {
		return setupState(t, ns, "couchdb-0") == "cluster_finished" && len(clusterNodesOf(ns, "couchdb-2")) == 3, nil
	})
}
