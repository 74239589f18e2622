package controller

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv1 "k8s.io/api/autoscaling/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/couchdb-controller/couchdb-controller/controller/placement"
	"github.com/couchdb-controller/couchdb-controller/couch"
)

// via returns a client for the pod with ordinal ord.
func (c *Controller) via(ctx context.Context, st *clusterState, sts *appsv1.StatefulSet, o Observed, ord int) (CouchAPI, error) {
	p := o.Pods[ord]
	if p == nil {
		return nil, fmt.Errorf("no pod with ordinal %d", ord)
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

// apply performs one action. Each is idempotent: repeating it after a crash or a lost answer is
// harmless, because CouchDB and the API server are re-observed before the next plan.
func (c *Controller) apply(ctx context.Context, st *clusterState, sts *appsv1.StatefulSet, o Observed, a Action) error {
	via := func() (CouchAPI, error) { return c.via(ctx, st, sts, o, a.Via) }
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
		// With zones on, the zone goes on right away, as a second revision of the empty doc (which
		// the node writes itself at boot with the same revision: a first revision with the zone in
		// it would be a conflicting branch that outlives the doc's deletion). A node that comes back
		// with a [cluster] placement naming its zone would otherwise fail every database creation
		// through it (500 no_nodes_in_zone) until the next sync's SetZone.
		if a.Text != "" {
			if err := setZone(ctx, api, a.Node, a.Text); err != nil {
				return fmt.Errorf("zone of %s: %w", a.Node, err)
			}
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
			return finishClusterFailed(ctx, api, sts, o.Pods[a.Via].Name, err)
		}
		c.recorder.Eventf(sts, corev1.EventTypeNormal, ReasonClusterFormed, "Finished CouchDB cluster setup with %d nodes", o.Replicas)
		// Formation is timed from the last pod below spec.replicas becoming ready: before that the
		// controller could not have finished, whatever it did.
		var last time.Time
		for ord, p := range o.Pods {
			if ord < o.Replicas {
				if t := readyStart(p, st.readySeen[p.UID]); t.After(last) {
					last = t
				}
			}
		}
		if !last.IsZero() {
			c.metrics.ObserveFormation(c.cfg.Now().Sub(last))
		}
		return nil
	case ActRemoveNode:
		api, err := via()
		if err != nil {
			return err
		}
		removed, err := api.RemoveNodeDoc(ctx, a.Node)
		if err != nil {
			return err
		}
		// Members learn of the delete from _nodes' changes: a look right after it may still see the
		// node in _membership and remove it again. One event per removal.
		if removed {
			c.recorder.Eventf(sts, corev1.EventTypeNormal, ReasonNodeRemoved, "Removed node %s from _nodes", a.Node)
		}
		return nil
	case ActSetMemberCondition:
		return c.setMemberCondition(ctx, sts.Namespace, a.Pod, a.Value)
	case ActScaleDown:
		return c.scaleDown(ctx, st, sts, a.Replicas)
	case ActCopyMaps:
		return c.copyMaps(ctx, st, sts, o, a)
	}
	api, err := via()
	if err != nil {
		return err
	}
	switch a.Kind {
	case ActCreateDB:
		if err := api.CreateDB(ctx, a.DB, 0, a.NodeCount); err != nil {
			return err
		}
		c.recorder.Eventf(sts, corev1.EventTypeNormal, ReasonShardCopyAdded, "Created database %s with a copy on each of %d members (%s)", a.DB, a.NodeCount, AnnotationReplicate)
		return nil
	case ActAddCopy, ActRemoveCopy:
		return c.editShardMap(ctx, api, sts, nil, []Action{a})
	case ActSyncShards:
		return api.SyncShards(ctx, a.DB)
	case ActSetMaintenance:
		mode := cmp.Or(a.Text, placement.DrainModeFenced)
		if _, err := api.SetMaintenanceMode(ctx, a.Node, mode); err != nil {
			return err
		}
		if mode == placement.DrainModeServing {
			c.recorder.Eventf(sts, corev1.EventTypeNormal, ReasonDraining, "Draining %s for %s=%d: maintenance mode %q (out of the Service, still serving the cluster), moving its shard copies", a.Node, AnnotationTargetReplicas, derefInt(o.TargetReplicas), mode)
			return nil
		}
		c.recorder.Eventf(sts, corev1.EventTypeNormal, ReasonDraining, "Draining %s for %s=%d: its copies take writes, so maintenance mode %q: it serves no client while its copies are verified and dropped", a.Node, AnnotationTargetReplicas, derefInt(o.TargetReplicas), mode)
		return nil
	case ActFenceTarget:
		if _, err := api.SetMaintenanceMode(ctx, a.Node, "true"); err != nil {
			return err
		}
		c.fillFence(st, a.Node, true)
		return nil
	case ActClearMaintenance:
		if _, err := api.SetMaintenanceMode(ctx, a.Node, "false"); err != nil {
			return err
		}
		c.fillFence(st, a.Node, false)
		return nil
	case ActSetDecom, ActClearDecom:
		return setDecom(ctx, api, a.Node, a.Kind == ActSetDecom)
	case ActSetZone:
		return setZone(ctx, api, a.Node, a.Text)
	case ActSetPlacement:
		return c.setPlacement(ctx, st, o, api, a.Node, a.Text)
	case ActCopyAdminHash, ActCopyConfig:
		return c.applyConfigCopy(ctx, api, st, sts, o, a)
	}
	return fmt.Errorf("unknown action %s", a.Kind)
}

func derefInt(p *int) int {
	if p == nil {
		return 0
	}
	return *p
}

// setDecom sets or clears "decom" on a _nodes doc (see editNodeDoc).
func setDecom(ctx context.Context, api CouchAPI, node string, decom bool) error {
	return editNodeDoc(ctx, api, node, func(d *couch.NodeDoc) bool {
		changed := d.Decom != decom
		d.Decom = decom
		return changed
	})
}

// setZone writes a member's zone on its _nodes doc (see editNodeDoc).
func setZone(ctx context.Context, api CouchAPI, node, zone string) error {
	return editNodeDoc(ctx, api, node, func(d *couch.NodeDoc) bool {
		changed := d.Zone != zone
		d.Zone = zone
		return changed
	})
}

// editNodeDoc changes a _nodes doc by read-modify-write with its _rev, keeping the doc's other
// fields. It is a no-op when edit reports nothing to change or the doc is gone; a concurrent update
// (409) is retried once with a fresh revision.
func editNodeDoc(ctx context.Context, api CouchAPI, node string, edit func(*couch.NodeDoc) bool) error {
	var err error
	for range 2 {
		var d couch.NodeDoc
		d, err = api.GetNodeDoc(ctx, node)
		if couch.IsNotFound(err) {
			return nil
		}
		if err != nil {
			return err
		}
		if !edit(&d) {
			return nil
		}
		if _, err = api.PutNodeDoc(ctx, d); !couch.IsConflict(err) {
			return err
		}
	}
	return err
}

// setPlacement sets a member's [cluster] placement, or deletes it when rule is "" (an unset key is
// already what was asked).
func (c *Controller) setPlacement(ctx context.Context, st *clusterState, o Observed, api CouchAPI, node, rule string) error {
	var err error
	if rule == "" {
		if _, err = api.DeleteConfig(ctx, node, "cluster", "placement"); couch.IsNotFound(err) {
			err = nil
		}
	} else {
		_, err = api.SetConfig(ctx, node, "cluster", "placement", rule)
	}
	if err != nil {
		return err
	}
	c.noteConfig(st, o, node, "placement", rule)
	return nil
}

// scaleDown lowers spec.replicas by one through the scale subresource, guarded by the
// StatefulSet's resourceVersion so a concurrent change is not overwritten.
func (c *Controller) scaleDown(ctx context.Context, st *clusterState, sts *appsv1.StatefulSet, replicas int) error {
	scale := &autoscalingv1.Scale{
		ObjectMeta: metav1.ObjectMeta{Name: sts.Name, Namespace: sts.Namespace, ResourceVersion: sts.ResourceVersion},
		Spec:       autoscalingv1.ScaleSpec{Replicas: int32(replicas)},
	}
	if _, err := c.kube.AppsV1().StatefulSets(sts.Namespace).UpdateScale(ctx, sts.Name, scale, metav1.UpdateOptions{FieldManager: fieldManager}); err != nil {
		return fmt.Errorf("scale %s/%s to %d: %w", sts.Namespace, sts.Name, replicas, err)
	}
	st.scaled = scaledWrite{from: sts.ResourceVersion, replicas: replicas}
	c.recorder.Eventf(sts, corev1.EventTypeNormal, ReasonScaledDown, "Drained node removed; scaled to %d replicas", replicas)
	return nil
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
