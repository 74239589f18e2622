package controller

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/couchdb-controller/couchdb-controller/couch"
)

// apply performs one action. Each is idempotent: repeating it after a crash or a lost answer is
// harmless, because CouchDB and the API server are re-observed before the next plan.
func (c *Controller) apply(ctx context.Context, st *clusterState, sts *appsv1.StatefulSet, o Observed, a Action) error {
	via := func() (CouchAPI, error) {
		p := o.Pods[a.Via]
		if p == nil {
			return nil, fmt.Errorf("no pod with ordinal %d", a.Via)
		}
		scheme := "http"
		if sts.Annotations[AnnotationScheme] == "https" {
			scheme = "https"
		}
		var ca []byte
		if scheme == "https" {
			var err error
			if ca, err = c.caBundle(ctx, sts); err != nil {
				return nil, err
			}
		}
		return c.client(st, scheme, ca, p)
	}
	switch a.Kind {
	case ActEnableCluster:
		api, err := via()
		if err != nil {
			return err
		}
		return api.EnableCluster(ctx, couch.EnableClusterRequest{
			BindAddress: "0.0.0.0", Username: st.creds.Username, Password: st.creds.Password, NodeCount: a.NodeCount})
	case ActAddNode:
		api, err := via()
		if err != nil {
			return err
		}
		if err := api.AddNodeDoc(ctx, a.Node); err != nil {
			return err
		}
		// Success is judged only when _membership shows the node; remember when its pod got ready.
		for _, p := range o.Pods {
			if n := o.Nodes[p.Ordinal]; n != nil && n.Name == a.Node {
				st.joining[a.Node] = readyStart(p, st.readySeen[p.UID])
			}
		}
		return nil
	case ActFinishCluster:
		api, err := via()
		if err != nil {
			return err
		}
		if err := api.FinishCluster(ctx); err != nil {
			return err
		}
		c.recorder.Eventf(sts, corev1.EventTypeNormal, ReasonClusterFormed, "Finished CouchDB cluster setup with %d nodes", o.Replicas)
		return nil
	case ActRemoveNode:
		api, err := via()
		if err != nil {
			return err
		}
		if err := api.RemoveNodeDoc(ctx, a.Node); err != nil {
			return err
		}
		c.recorder.Eventf(sts, corev1.EventTypeNormal, ReasonNodeRemoved, "Removed node %s from _nodes", a.Node)
		return nil
	case ActSetMemberCondition:
		return c.setMemberCondition(ctx, sts.Namespace, a.Pod, a.Value)
	}
	return fmt.Errorf("unknown action %s", a.Kind)
}

// readyStart estimates when the pod's containers became ready. The API stores condition times with
// one-second resolution, so when the controller saw the pod ready within that second, its own
// observation (an informer event milliseconds later) is the better clock.
func readyStart(p *PodObs, seen time.Time) time.Time {
	if !seen.IsZero() && !seen.Before(p.ReadySince) && seen.Sub(p.ReadySince) < time.Second {
		return seen
	}
	return p.ReadySince
}

// setMemberCondition patches the pod's couchdb.io/member condition through the status subresource.
// A strategic merge patch merges conditions by type, so other conditions are left alone.
func (c *Controller) setMemberCondition(ctx context.Context, ns, pod string, value bool) error {
	status, reason, msg := corev1.ConditionFalse, "NotMember", "The CouchDB node is not a cluster member"
	if value {
		status, reason, msg = corev1.ConditionTrue, "Member", "The CouchDB node is a cluster member"
	}
	patch := map[string]any{"status": map[string]any{"conditions": []corev1.PodCondition{{
		Type: ConditionMember, Status: status, Reason: reason, Message: msg, LastTransitionTime: metav1.Now(),
	}}}}
	data, err := json.Marshal(patch)
	if err != nil {
		return err
	}
	_, err = c.kube.CoreV1().Pods(ns).Patch(ctx, pod, types.StrategicMergePatchType, data, metav1.PatchOptions{FieldManager: fieldManager}, "status")
	if err != nil {
		return fmt.Errorf("patch %s condition of pod %s/%s: %w", ConditionMember, ns, pod, err)
	}
	return nil
}
