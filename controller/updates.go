package controller

import (
	"maps"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
)

// updateMatters says whether an informer update can change what sync observes, so that updates that
// cannot are not worth a sync. A scale-up by one pod rewrites the StatefulSet's status several times
// (replicas, then current, ready and available replicas) and the Endpoints twice (the new address
// not ready, then ready); each of those syncs would ask every CouchDB node again and learn nothing, and
// a burst of joins across many clusters spends most of its CouchDB round trips on them. The periodic
// resync still catches anything an event does not.
func updateMatters(old, cur any) bool {
	switch o := old.(type) {
	case *appsv1.StatefulSet:
		c, ok := cur.(*appsv1.StatefulSet)
		// sync never reads the status: the pods themselves say what runs.
		return !ok || o.UID != c.UID || !maps.Equal(o.Labels, c.Labels) || !maps.Equal(o.Annotations, c.Annotations) ||
			!o.DeletionTimestamp.Equal(c.DeletionTimestamp) || !equality.Semantic.DeepEqual(o.Spec, c.Spec)
	case *corev1.Endpoints:
		c, ok := cur.(*corev1.Endpoints)
		// Only the CouchDB port is read from Endpoints (pod addresses come from the pods).
		return !ok || o.UID != c.UID || !maps.Equal(o.Labels, c.Labels) || endpointsPort(o) != endpointsPort(c)
	case *corev1.Pod:
		c, ok := cur.(*corev1.Pod)
		if !ok {
			return true
		}
		// The cache holds pods as trimPod leaves them, with only the fields sync reads: any
		// difference but the resourceVersion matters, and nothing trimPod drops does. Copies of the
		// structs keep the cached objects untouched.
		oc, cc := *o, *c
		oc.ResourceVersion, cc.ResourceVersion = "", ""
		return !equality.Semantic.DeepEqual(oc, cc)
	}
	return true
}
