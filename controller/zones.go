package controller

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/tools/cache"

	"github.com/couchdb-controller/couchdb-controller/controller/placement"
	"github.com/couchdb-controller/couchdb-controller/couch"
)

// podNodeIndex indexes pods by spec.nodeName, so a Node's label change requeues only the clusters
// with pods on that Node.
const podNodeIndex = "nodeName"

func podNodeName(obj any) ([]string, error) {
	if pod, ok := obj.(*corev1.Pod); ok && pod.Spec.NodeName != "" {
		return []string{pod.Spec.NodeName}, nil
	}
	return nil, nil
}

// trimNode keeps a Node's name and labels: a zone is all the controller reads of it.
func trimNode(obj any) (any, error) {
	n, ok := obj.(*corev1.Node)
	if !ok {
		return obj, nil
	}
	return &corev1.Node{TypeMeta: n.TypeMeta, ObjectMeta: metav1.ObjectMeta{
		Name: n.Name, UID: n.UID, ResourceVersion: n.ResourceVersion, Labels: n.Labels}}, nil
}

func (c *Controller) enqueueNodeUpdate(old, cur any) {
	o, ok1 := old.(*corev1.Node)
	n, ok2 := cur.(*corev1.Node)
	// Nodes change status every few seconds; only a label change can move a zone (trimNode keeps
	// only labels, so any other change reads as equal here).
	if ok1 && ok2 && maps.Equal(o.Labels, n.Labels) {
		return
	}
	c.enqueueNode(cur)
}

// enqueueNode requeues the clusters that have a pod on the Node.
func (c *Controller) enqueueNode(obj any) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	n, ok := obj.(*corev1.Node)
	if !ok {
		return
	}
	pods, err := c.podIndexer.ByIndex(podNodeIndex, n.Name)
	if err != nil {
		return
	}
	for _, p := range pods {
		c.enqueuePod(p)
	}
}

// observeZones reads each pod's zone from its Node's label. An invalid label key is a Problem.
func (c *Controller) observeZones(sts *appsv1.StatefulSet, o *Observed) {
	label, set := sts.Annotations[AnnotationZoneLabel]
	label = strings.TrimSpace(label)
	switch {
	case !set:
		label = DefaultZoneLabel
	case label == "":
		return // zones off
	default:
		if errs := validation.IsQualifiedName(label); len(errs) > 0 {
			o.Problems = append(o.Problems, Problem{ReasonInvalidAnnotation, fmt.Sprintf(
				"StatefulSet %s/%s: %s=%q is not a valid label key (%s): name the Node label that holds each Node's zone (e.g. %s), or set it to \"\" to turn zones off",
				sts.Namespace, sts.Name, AnnotationZoneLabel, label, strings.Join(errs, "; "), DefaultZoneLabel)})
			return
		}
	}
	o.ZoneLabel = label
	o.Zones = map[int]string{}
	for ord, p := range o.Pods {
		if p.Node == "" {
			continue
		}
		zone := ""
		if n, err := c.nodeLister.Get(p.Node); err == nil {
			zone = n.Labels[label]
		} else if !apierrors.IsNotFound(err) {
			continue
		}
		o.Zones[ord] = zone
	}
}

// memberZones maps the CouchDB node names of members and departed nodes with a bound pod to their
// zones, for placement.Input.Zones; nil when zones are off.
func memberZones(o Observed, names []string) map[string]string {
	if o.Zones == nil {
		return nil
	}
	out := map[string]string{}
	for _, name := range names {
		if ord, ok := nodeOrdinal(name, o.StatefulSet); ok {
			if z, ok := o.Zones[ord]; ok {
				out[name] = z
			}
		}
	}
	return out
}

// configMaxAge bounds how long a member's [cluster] placement and n are trusted without re-reading
// while the CouchDB process stays the same (a restart re-reads at once: runtime config written to a
// non-persistent ini file is gone after one). Only a human editing it by hand changes it meanwhile.
const configMaxAge = shardsMaxAge

// sizeMaxAge is how long a copy's size is reused: balancing by bytes needs sizes of every range,
// which change slowly, and a rebalancing cluster syncs many times a second.
const sizeMaxAge = 3 * time.Minute

type cachedConfig struct {
	identity string
	value    string
	at       time.Time
}

type cachedSize struct {
	bytes int64
	at    time.Time
}

// memberConfig reads one [cluster] key of node through api, cached per CouchDB process. ok is false
// when it could not be read.
func (c *Controller) memberConfig(ctx context.Context, st *clusterState, api CouchAPI, node, identity, key string) (string, bool) {
	k := node + "\x00" + key
	now := c.cfg.Now()
	c.mu.Lock()
	cc, hit := st.configs[k]
	c.mu.Unlock()
	if hit && cc.identity == identity && now.Sub(cc.at) < configMaxAge {
		return cc.value, true
	}
	v, err := api.GetConfig(ctx, node, "cluster", key)
	switch {
	case couch.IsNotFound(err):
		v = ""
	case err != nil:
		return "", false
	}
	c.mu.Lock()
	st.configs[k] = cachedConfig{identity: identity, value: v, at: now}
	c.mu.Unlock()
	return v, true
}

// noteConfig records a value the controller itself just wrote, so the next sync need not read it.
func (c *Controller) noteConfig(st *clusterState, o Observed, node, key, value string) {
	ord, ok := nodeOrdinal(node, o.StatefulSet)
	if !ok || o.Pods[ord] == nil {
		return
	}
	c.mu.Lock()
	st.configs[node+"\x00"+key] = cachedConfig{identity: o.Pods[ord].Identity, value: value, at: c.cfg.Now()}
	c.mu.Unlock()
}

// askZoneConfig reads what zones need: the coordinator's [cluster] n, and, while zones are on, every
// live member's [cluster] placement.
func (c *Controller) askZoneConfig(ctx context.Context, st *clusterState, api CouchAPI, o *Observed, coord *NodeObs, obs *ShardObs) {
	if p := o.Pods[coord.Ordinal]; p != nil {
		if v, ok := c.memberConfig(ctx, st, api, coord.Name, p.Identity, "n"); ok && v != "" {
			if n, err := strconv.Atoi(strings.TrimSpace(v)); err == nil && n > 0 {
				obs.DefaultN = n
			}
		}
	}
	if o.ZoneLabel == "" {
		return
	}
	obs.PlacementConfig = map[string]string{}
	for _, ord := range sortedOrdinals(o.Nodes) {
		n, p := o.Nodes[ord], o.Pods[ord]
		if ord >= o.Replicas || !n.Valid() || p == nil || !slices.Contains(coord.Membership.AllNodes, n.Name) ||
			!slices.Contains(coord.Membership.ClusterNodes, n.Name) {
			continue
		}
		if v, ok := c.memberConfig(ctx, st, api, n.Name, p.Identity, "placement"); ok {
			obs.PlacementConfig[n.Name] = v
		}
	}
}

// noteCopySize remembers a copy's size from any node-local info the controller read.
func (c *Controller) noteCopySize(st *clusterState, k placement.CopyKey, info couch.DBInfo) {
	if info.Sizes == nil {
		return
	}
	c.mu.Lock()
	st.copySizes[k] = cachedSize{bytes: info.Sizes.File, at: c.cfg.Now()}
	c.mu.Unlock()
}

// askSizes fills RangeBytes for the ranges placement asks about, from one copy of each: a size read
// in the last sizeMaxAge if there is one, else a live copy's node-local info.
func (c *Controller) askSizes(ctx context.Context, st *clusterState, api CouchAPI, in placement.Input, obs *ShardObs) {
	need := placement.SizesNeeded(in)
	if len(need) == 0 {
		return
	}
	live := map[string]bool{}
	for _, m := range in.Members {
		if m.Live {
			live[m.Name] = true
		}
	}
	now := c.cfg.Now()
	obs.RangeBytes = map[placement.RangeRef]int64{}
	c.mu.Lock()
	for k, v := range st.copySizes {
		if now.Sub(v.at) >= sizeMaxAge {
			delete(st.copySizes, k)
		}
	}
	c.mu.Unlock()
	for _, r := range need {
		m, ok := obs.Maps[r.DB]
		if !ok {
			continue
		}
		found := false
		c.mu.Lock()
		for _, node := range m.ByRange[r.Range] {
			if s, ok := st.copySizes[placement.CopyKey{DB: r.DB, Range: r.Range, Node: node}]; ok {
				obs.RangeBytes[r], found = s.bytes, true
				break
			}
		}
		c.mu.Unlock()
		if found {
			continue
		}
		for _, node := range m.ByRange[r.Range] {
			if !live[node] {
				continue
			}
			info, err := api.ShardCopyInfo(ctx, node, m.ShardName(r.Range))
			if err != nil || info.Sizes == nil {
				continue
			}
			c.noteCopySize(st, placement.CopyKey{DB: r.DB, Range: r.Range, Node: node}, info)
			obs.RangeBytes[r] = info.Sizes.File
			break
		}
	}
}
