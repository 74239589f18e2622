package e2e

import (
	"context"
	"encoding/json"
	"github.com/couchdb-controller/couchdb-controller/test/kapply"
	"path/filepath"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/dynamic"
)

// render builds a kustomization under manifests/ as `kubectl apply -k` would.
func render(t *testing.T, dir string) []*unstructured.Unstructured {
	t.Helper()
	objs, err := kapply.Render(filepath.Join("..", "..", "manifests", dir))
	if err != nil {
		t.Fatal(err)
	}
	return objs
}

// applyAll server-side-applies objects, optionally into ns.
func applyAll(t *testing.T, objs []*unstructured.Unstructured, ns string) {
	t.Helper()
	if err := kapply.Apply(context.Background(), env.cfg, objs, ns); err != nil {
		t.Fatal(err)
	}
}

func ptrTrue() *bool { b := true; return &b }

// installMonitoringCRDs makes ServiceMonitor and PrometheusRule known (as the Prometheus operator
// would), so the whole kustomize output can be applied to the real API server.
func installMonitoringCRDs(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	dyn := dynamic.NewForConfigOrDie(env.cfg)
	gvr := schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
	for _, kind := range []struct{ plural, kind string }{{"servicemonitors", "ServiceMonitor"}, {"prometheusrules", "PrometheusRule"}} {
		crd := map[string]any{
			"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
			"metadata": map[string]any{"name": kind.plural + ".monitoring.coreos.com"},
			"spec": map[string]any{
				"group": "monitoring.coreos.com", "scope": "Namespaced",
				"names": map[string]any{"plural": kind.plural, "kind": kind.kind},
				"versions": []any{map[string]any{"name": "v1", "served": true, "storage": true,
					"schema": map[string]any{"openAPIV3Schema": map[string]any{"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}},
			},
		}
		name := kind.plural + ".monitoring.coreos.com"
		b, _ := json.Marshal(crd)
		if _, err := dyn.Resource(gvr).Patch(ctx, name, types.ApplyPatchType, b, metav1.PatchOptions{FieldManager: "e2e", Force: ptrTrue()}); err != nil {
			t.Fatal(err)
		}
	}
	poll(t, 30*time.Second, "monitoring CRDs established", func(ctx context.Context) (bool, error) {
		dc := discovery.NewDiscoveryClientForConfigOrDie(env.cfg)
		rl, err := dc.ServerResourcesForGroupVersion("monitoring.coreos.com/v1")
		return err == nil && len(rl.APIResources) >= 2, nil
	})
}
