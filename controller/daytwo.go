package controller

import (
	"slices"
	"time"

	appsv1 "k8s.io/api/apps/v1"
)

// catchUpRequeue is how soon a sync looks again while a restarted member catches up: internal
// replication raises no Kubernetes event.
const catchUpRequeue = time.Second

// driftRecheck is how soon members that disagree are read again: a fix made at runtime (a PUT to
// _config) raises no Kubernetes event either.
const driftRecheck = 30 * time.Second

// planDayTwo adds the day-2 steps of a formed cluster whose members agree: copies of the admin hash
// and of CouchDB-made uuid and secret, drift, and clearing a maintenance mode left behind on a
// member that does not answer because of it.
func planDayTwo(o Observed, coord *NodeObs, connected []string, p *Plan) {
	if o.Config != nil {
		cp := planConfig(o)
		p.Config = &cp
		p.Actions = append(p.Actions, cp.Actions...)
	}
	p.Warnings = append(p.Warnings, catchUpTimeouts(o)...)
	if o.Shards == nil {
		return
	}
	d, draining := drainingOrdinal(o)
	for _, ord := range sortedOrdinals(o.Pods) {
		pod, n := o.Pods[ord], o.Nodes[ord]
		if ord >= o.Replicas || pod.Terminating || pod.IP == "" || draining && d == ord || n == nil || n.Reached {
			continue // placement clears it on members that answer (Live)
		}
		// A node in maintenance mode fails /_up, so its pod is never ready and never asked: find it
		// by its name in the coordinator's view.
		name := expectedNodeName(o, coord, ord)
		if name != "" && o.Shards.Maintenance[name] && slices.Contains(connected, name) {
			p.Actions = append(p.Actions, Action{Kind: ActClearMaintenance, Via: coord.Ordinal, Node: name})
		}
	}
}

// expectedNodeName finds the member of the coordinator's _nodes that names pod ord.
func expectedNodeName(o Observed, coord *NodeObs, ord int) string {
	for _, m := range coord.Membership.ClusterNodes {
		if got, ok := nodeOrdinal(m, o.StatefulSet); ok && got == ord {
			return m
		}
	}
	return ""
}

// holdForCatchUp reports whether the member at ord keeps its gate closed, and records why.
func (p *Plan) holdForCatchUp(o Observed, ord int) bool {
	why, hold := catchUpPending(o, ord)
	if !hold {
		return false
	}
	if p.CatchUp == nil {
		p.CatchUp = map[string]string{}
	}
	p.CatchUp[o.Pods[ord].Name] = why
	if p.Requeue == 0 || p.Requeue > catchUpRequeue {
		p.Requeue = catchUpRequeue
	}
	if coord := coordinator(o); coord != nil {
		for _, db := range catchUpSyncs(o, ord) {
			if !slices.ContainsFunc(p.Actions, func(a Action) bool { return a.Kind == ActSyncShards && a.DB == db }) {
				p.Actions = append(p.Actions, Action{Kind: ActSyncShards, Via: coord.Ordinal, DB: db})
			}
		}
	}
	return true
}

// noteDayTwo remembers what this sync learned (a settled config read, members seen caught up),
// updates config_drift, and returns the Warnings that hold while the drift holds: they come from
// memory, so a sync that did not re-read the config keeps them active instead of re-emitting them.
func (c *Controller) noteDayTwo(st *clusterState, sts *appsv1.StatefulSet, o Observed, p Plan, applyErr error) []Problem {
	now := c.cfg.Now()
	for ord, cu := range o.CatchUp {
		if pod := o.Pods[ord]; pod != nil && p.CatchUp[pod.Name] == "" && (cu.TimedOut || cu.Read) && !o.Paused {
			st.catchUp.verified[pod.Name] = pod.Identity
			delete(st.catchUp.since, pod.Name)
		}
	}
	if p.Config != nil && o.Config != nil {
		settled := len(p.Config.Actions) == 0 && applyErr == nil
		for _, n := range o.Config.Nodes {
			settled = settled && n.Err == ""
		}
		drift := map[string]bool{}
		for _, d := range p.Config.Drift {
			drift[d.Key] = true
		}
		st.config.drift, st.config.details, st.config.differ = drift, p.Config.Drift, p.Config.Differ
		st.config.read = true
		if settled {
			st.config.key, st.config.at = st.configPending, now
			if len(p.Config.Drift) > 0 || len(p.Config.Differ) > 0 {
				st.config.at = now.Add(driftRecheck - shardsMaxAge) // read again after driftRecheck
			}
		} else {
			st.config.key = ""
			// What was written is read again; the members nothing was written to are not.
			for _, a := range p.Config.Actions {
				delete(st.config.nodes, a.Pod)
			}
		}
	}
	if !st.config.read {
		return nil
	}
	c.metrics.SetConfigDrift(sts.Namespace, o.Cluster, st.config.drift)
	out := make([]Problem, 0, len(st.config.details)+len(st.config.differ))
	for _, d := range st.config.details {
		out = append(out, driftProblem(sts.Namespace+"/"+sts.Name, d))
	}
	return append(out, st.config.differ...)
}
