package controller

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"
)

// credentialsMaxAge bounds how long credentials read from Secrets are trusted without re-reading.
const credentialsMaxAge = 5 * time.Minute

// sync observes one CouchDB cluster, plans and applies. It keeps no decision state of its own.
func (c *Controller) sync(ctx context.Context, key cache.ObjectName) (err error) {
	start := c.cfg.Now()
	logger := klog.FromContext(ctx).WithValues("cluster", key.String())
	ctx = klog.NewContext(ctx, logger)
	result := "success"
	defer func() {
		if err != nil {
			result = "error"
		}
		c.metrics.ObserveSync(result, c.cfg.Now().Sub(start))
	}()

	all, err := c.stsLister.StatefulSets(key.Namespace).List(labels.SelectorFromSet(labels.Set{LabelCluster: key.Name}))
	if err != nil {
		return fmt.Errorf("list statefulsets: %w", err)
	}
	if len(all) == 0 {
		c.forget(key)
		logger.V(2).Info("Forgot cluster: no labelled StatefulSet is left")
		return nil
	}
	st := c.state(key)
	c.collectPosts(ctx, st)
	o := Observed{Namespace: key.Namespace, Cluster: key.Name, WasFormed: st.formed, MaxMoves: c.cfg.MaxMoves, MaxFillsPerNode: c.cfg.MaxFillsPerNode}
	if len(all) > 1 {
		names := make([]string, 0, len(all))
		for _, s := range all {
			names = append(names, s.Name)
		}
		sortStrings(names)
		p := Problem{ReasonDuplicateCluster, fmt.Sprintf("StatefulSets %s in namespace %s all carry %s=%s; give each CouchDB cluster its own name: nothing is done until then",
			strings.Join(names, ", "), key.Namespace, LabelCluster, key.Name)}
		for _, s := range all {
			c.warn(ctx, st, s, []Problem{p})
		}
		c.setStatus(key, ClusterStatus{Namespace: key.Namespace, Name: key.Name, Phase: PhaseDegraded, Warnings: []string{p.Message}, LastSync: start})
		result = "blocked"
		return nil
	}
	sts := all[0]
	if err := c.observeKube(ctx, sts, &o); err != nil {
		return err
	}
	o.Replicas = st.scaledReplicas(sts, o.Replicas)
	c.noteReady(st, o)
	scheme := "http"
	if sts.Annotations[AnnotationScheme] == "https" {
		scheme = "https"
	}
	if len(o.Problems) == 0 {
		if perr := c.prepareCredentials(ctx, st, sts, &o); perr != nil {
			return perr
		}
	}
	var ca []byte
	if scheme == "https" && len(o.Problems) == 0 {
		ca, err = c.caBundle(ctx, sts)
		var pe *permanentError
		if errors.As(err, &pe) {
			o.Problems = append(o.Problems, pe.Problem)
		} else if err != nil {
			return err
		}
	}
	if len(o.Problems) == 0 && !o.CredentialsRejected {
		o.FillFenced, o.Unfenced = fillFencedOrdinals(st, o.StatefulSet, c.cfg.Now())
		c.observeCouch(ctx, st, scheme, ca, &o)
		c.observeConfig(ctx, st, sts, scheme, ca, &o)
		c.observeCatchUp(ctx, st, scheme, ca, &o)
		c.observeJoinDBs(ctx, st, scheme, ca, &o)
		switch {
		case o.CredentialsRejected:
			c.credentialsRejected(st, o.CredentialsLocked)
			o.Problems = append(o.Problems, rejectedProblem(sts, o.CredentialsLocked, ""))
		default:
			c.credentialsAccepted(st)
		}
	}
	st.fills.look(start, o.Shards)
	plan := PlanCluster(o)
	logger.V(4).Info("Planned", "actions", plan.summary(), "wait", plan.Wait, "phase", plan.Phase, "formed", plan.Formed, "coordinatorSetup", coordinatorSetup(o))

	applyErr := c.applyActions(ctx, key, st, sts, o, plan.Actions)
	warnings := append(append([]Problem{}, o.Problems...), plan.Warnings...)
	warnings = append(warnings, c.unreachable(st, sts, o)...)
	warnings = append(warnings, c.notConnected(st, sts, o)...)
	warnings = append(warnings, c.setupStalled(st, sts, o, plan)...)
	warnings = append(warnings, c.noteDayTwo(st, sts, o, plan, applyErr)...)
	warnings = append(warnings, setupProblems(applyErr)...)
	c.warn(ctx, st, sts, warnings)
	c.noteJoins(ctx, st, sts, o, plan)
	c.record(key, st, sts, o, plan, warnings, start, applyErr)
	if applyErr != nil {
		return applyErr
	}
	next := c.cfg.Resync
	if plan.Requeue > 0 && plan.Requeue < next {
		next = plan.Requeue
	}
	if plan.Filling && len(plan.Actions) == countKind(plan.Actions, ActSyncShards) {
		if st.fillingSince.IsZero() {
			st.fillingSince = start
		}
		next = min(c.cfg.Resync, fillRequeue(start.Sub(st.fillingSince)))
	} else {
		st.fillingSince = time.Time{}
	}
	if w, ok := st.fills.next(c.cfg.Now()); ok && onlyMoves(plan) {
		next = min(c.cfg.Resync, w)
	}
	if o.CredentialsRejected {
		next = min(next, 10*time.Second) // notice a fixed Secret soon; CouchDB is asked only after the backoff
	}
	c.queue.AddAfter(key, next)
	return nil
}

func credentialSource(sts *appsv1.StatefulSet) string {
	if s := sts.Annotations[AnnotationAdminSecret]; s != "" {
		return "Secret " + sts.Namespace + "/" + s
	}
	return "the CouchDB container's env"
}

// prepareCredentials makes st.creds current. While CouchDB is rejecting a version of the credentials,
// that version is retried only after a doubling backoff.
func (c *Controller) prepareCredentials(ctx context.Context, st *clusterState, sts *appsv1.StatefulSet, o *Observed) error {
	now := c.cfg.Now()
	if st.credsVersion != "" && st.rejected == "" && now.Sub(st.credsRead) < credentialsMaxAge {
		return nil
	}
	creds, version, err := c.resolveCredentials(ctx, sts)
	var pe *permanentError
	if errors.As(err, &pe) {
		p := pe.Problem
		if !strings.Contains(p.Message, "StatefulSet "+sts.Namespace+"/"+sts.Name) {
			p.Message = "StatefulSet " + sts.Namespace + "/" + sts.Name + ": " + p.Message
		}
		o.Problems = append(o.Problems, p)
		return nil
	}
	if err != nil {
		return err
	}
	c.mu.Lock()
	if version != st.credsVersion || creds != st.creds {
		st.clients = map[string]CouchAPI{}
	}
	st.creds, st.credsVersion, st.credsRead = creds, version, now
	c.mu.Unlock()
	if st.rejected != "" {
		if st.rejected != version {
			st.rejected, st.rejectedCount = "", 0 // changed: try at once
		} else if now.Sub(st.rejectedAt) < c.credentialBackoff(st.rejectedCount) {
			o.CredentialsRejected, o.CredentialsLocked = true, st.lockedOut
			o.Problems = append(o.Problems, rejectedProblem(sts, st.lockedOut,
				fmt.Sprintf("; next attempt in %s", c.credentialBackoff(st.rejectedCount))))
		}
	}
	return nil
}

func (c *Controller) credentialBackoff(n int) time.Duration {
	d := c.cfg.CredentialBackoff
	for i := 1; i < n && d < 5*time.Minute; i++ {
		d *= 2
	}
	return min(d, 5*time.Minute)
}

func (c *Controller) credentialsRejected(st *clusterState, locked bool) {
	st.rejected = st.credsVersion
	st.rejectedAt = c.cfg.Now()
	st.rejectedCount++
	st.lockedOut = locked
}

// rejectedProblem tells a wrong password from a locked account: the fixes differ (a locked account
// refuses even the right password until the lockout expires).
func rejectedProblem(sts *appsv1.StatefulSet, locked bool, next string) Problem {
	if locked {
		return Problem{ReasonCredentialsInvalid, fmt.Sprintf(
			"CouchDB has locked the admin account of StatefulSet %s/%s after repeated failed logins and refuses even the right password until the lockout expires ([chttpd_auth_lockout] max_lifetime, 5 minutes by default): make sure %s holds the right password; the controller retries with backoff%s",
			sts.Namespace, sts.Name, credentialSource(sts), next)}
	}
	return Problem{ReasonCredentialsInvalid, fmt.Sprintf(
		"CouchDB rejected the admin credentials of StatefulSet %s/%s: fix %s or COUCHDB_USER/COUCHDB_PASSWORD; the controller retries with backoff to avoid a lockout%s",
		sts.Namespace, sts.Name, credentialSource(sts), next)}
}

func (c *Controller) credentialsAccepted(st *clusterState) {
	st.rejected, st.rejectedCount = "", 0
}

// noteReady remembers when each pod was first seen with ready containers (for join latency).
func (c *Controller) noteReady(st *clusterState, o Observed) {
	now := c.cfg.Now()
	live := map[string]bool{}
	for _, p := range o.Pods {
		live[p.UID] = true
		if _, ok := st.readySeen[p.UID]; p.ContainersReady && !ok {
			st.readySeen[p.UID] = now
		}
	}
	for uid := range st.readySeen {
		if !live[uid] {
			delete(st.readySeen, uid)
		}
	}
}

// unreachable turns node failures that persisted for UnreachableAfter into Warnings.
func (c *Controller) unreachable(st *clusterState, sts *appsv1.StatefulSet, o Observed) []Problem {
	now := c.cfg.Now()
	var out []Problem
	for _, ord := range sortedOrdinals(o.Nodes) {
		n := o.Nodes[ord]
		if n.Err == "" || n.rejected {
			delete(st.failingSince, n.Pod)
			continue
		}
		since, ok := st.failingSince[n.Pod]
		if !ok {
			st.failingSince[n.Pod] = now
			continue
		}
		switch {
		case now.Sub(since) < c.cfg.UnreachableAfter:
		case n.garbled:
			out = append(out, Problem{ReasonCouchDBBadResponse, fmt.Sprintf(
				"pod %s/%s answers on the CouchDB port of Service %s, but not with CouchDB 3.x JSON (%s): check that the port is CouchDB 3.x itself, not a proxy, sidecar or older CouchDB",
				sts.Namespace, n.Pod, sts.Spec.ServiceName, n.Err)})
		default:
			out = append(out, Problem{ReasonCouchDBUnreachable, fmt.Sprintf(
				"CouchDB in pod %s/%s has not answered for %s: %s; check the pod's logs and the couchdb port of Service %s",
				sts.Namespace, n.Pod, now.Sub(since).Round(time.Second), n.Err, sts.Spec.ServiceName)})
		}
	}
	return out
}

// setupStalled warns when setup has waited on the same thing for UnreachableAfter while every pod
// below spec.replicas is ready and answers: the Kubernetes side is done, and formation waits
// (retried every second) raise no event of their own. One real-node bench run waited 3 minutes for
// cluster_finished with nothing in the controller's log at its default verbosity. Waits while pods
// are still starting are left alone: at 1,000 clusters created at once they last that long by design.
func (c *Controller) setupStalled(st *clusterState, sts *appsv1.StatefulSet, o Observed, p Plan) []Problem {
	if p.Formed || p.Wait == "" || len(p.Actions) > 0 || !allPodsAnswer(o) {
		st.setupWait, st.setupWaitSince = "", time.Time{}
		return nil
	}
	now := c.cfg.Now()
	if p.Wait != st.setupWait {
		st.setupWait, st.setupWaitSince = p.Wait, now
		return nil
	}
	d := now.Sub(st.setupWaitSince)
	if d < c.cfg.UnreachableAfter {
		return nil
	}
	return []Problem{{ReasonSetupStalled, fmt.Sprintf(
		"StatefulSet %s/%s: every pod is ready and answers, but cluster setup has waited %s on: %s. The controller retries every second; the pods' CouchDB logs say why a node does not see the others (its _nodes, its Erlang connections)",
		sts.Namespace, sts.Name, d.Round(time.Second), p.Wait)}}
}

// allPodsAnswer says whether every ordinal below spec.replicas has a ready pod whose CouchDB answered
// with a valid node name.
func allPodsAnswer(o Observed) bool {
	for ord := range o.Replicas {
		p, n := o.Pods[ord], o.Nodes[ord]
		if p == nil || !p.ContainersReady || p.Terminating || !n.Valid() {
			return false
		}
	}
	return o.Replicas > 0
}

// notConnected turns a node that answers and is listed in the coordinator's _nodes, but has not been
// connected to it (all_nodes) for UnreachableAfter, into a Warning. Formation and joins only wait
// for the connection, which a mismatched Erlang cookie, a blocked distribution port or a node name
// that does not resolve to its pod never bring: without the Warning the cluster would sit in Forming
// or Scaling with only the status API saying why.
func (c *Controller) notConnected(st *clusterState, sts *appsv1.StatefulSet, o Observed) []Problem {
	now := c.cfg.Now()
	coord := coordinator(o)
	apart := map[string]bool{}
	var out []Problem
	for _, ord := range sortedOrdinals(o.Nodes) {
		n, pod := o.Nodes[ord], o.Pods[ord]
		if coord == nil || n == coord || !n.Valid() || !n.Reached || pod == nil || pod.Terminating || ord >= o.Replicas ||
			!slices.Contains(coord.Membership.ClusterNodes, n.Name) || slices.Contains(coord.Membership.AllNodes, n.Name) {
			continue
		}
		apart[n.Name] = true
		if st.apartSince == nil {
			st.apartSince = map[string]time.Time{}
		}
		since, ok := st.apartSince[n.Name]
		if !ok {
			st.apartSince[n.Name] = now
			continue
		}
		if d := now.Sub(since); d >= c.cfg.UnreachableAfter {
			out = append(out, Problem{ReasonNodeNotConnected, fmt.Sprintf(
				"CouchDB node %s (pod %s/%s) is in _nodes and answers HTTP, but has not been connected to %s for %s: Erlang distribution between the pods fails. Give every pod the same Erlang cookie (COUCHDB_ERLANG_COOKIE, or -setcookie in ERL_FLAGS), let the pods reach each other on the distribution port (9100 in the official image), and make the node name resolve to the pod (the headless Service %s)",
				n.Name, sts.Namespace, n.Pod, coord.Name, d.Round(time.Second), sts.Spec.ServiceName)})
		}
	}
	for name := range st.apartSince {
		if !apart[name] {
			delete(st.apartSince, name)
		}
	}
	return out
}

// noteJoins emits NodeJoined and records join latency for nodes the controller added once
// _membership shows them.
func (c *Controller) noteJoins(ctx context.Context, st *clusterState, sts *appsv1.StatefulSet, o Observed, p Plan) {
	now := c.cfg.Now()
	for _, ord := range sortedOrdinals(o.Nodes) {
		n := o.Nodes[ord]
		if !n.Valid() || p.NodeStates[n.Pod] != stateMember {
			continue
		}
		if _, ok := st.memberSince[n.Name]; !ok {
			st.memberSince[n.Name] = now
		}
		ready, ok := st.joining[n.Name]
		if !ok {
			continue
		}
		delete(st.joining, n.Name)
		c.metrics.ObserveJoin(now.Sub(ready))
		c.recorder.Eventf(sts, corev1.EventTypeNormal, ReasonNodeJoined, "Node %s of pod %s joined the cluster", n.Name, n.Pod)
		klog.FromContext(ctx).V(2).Info("Node joined", "node", n.Name, "pod", n.Pod, "latency", now.Sub(ready))
	}
}

// warn emits each Warning once per object while it holds; a Warning that clears and comes back is
// emitted again.
func (c *Controller) warn(ctx context.Context, st *clusterState, sts *appsv1.StatefulSet, problems []Problem) {
	active := map[string]bool{}
	for k, v := range st.warnings {
		if !strings.HasPrefix(k, sts.Name+"\x00") {
			active[k] = v // another object's warnings (DuplicateCluster names several)
		}
	}
	for _, p := range problems {
		k := sts.Name + "\x00" + p.Reason + "\x00" + p.Message
		// Messages with durations or backoffs change every sync; key on the reason alone (and, for
		// credentials, on whether the account is locked: that changes what the user must do).
		switch p.Reason {
		case ReasonCouchDBUnreachable, ReasonCouchDBBadResponse, ReasonSetupStalled:
			k = sts.Name + "\x00" + p.Reason
		case ReasonCredentialsInvalid:
			k = sts.Name + "\x00" + p.Reason + "\x00" + strconv.FormatBool(strings.Contains(p.Message, "locked the admin account"))
		}
		active[k] = true
		if st.warnings[k] {
			continue
		}
		c.recorder.Event(sts, corev1.EventTypeWarning, p.Reason, p.Message)
		klog.FromContext(ctx).Info("Warning", "reason", p.Reason, "statefulSet", klog.KObj(sts), "message", p.Message)
	}
	st.warnings = active
}

// forget drops everything known about a cluster: its series, status and caches. CouchDB is not touched.
func (c *Controller) forget(key cache.ObjectName) {
	c.mu.Lock()
	delete(c.clusters, key)
	c.mu.Unlock()
	c.metrics.ForgetCluster(key.Namespace, key.Name)
}

func (c *Controller) record(key cache.ObjectName, st *clusterState, sts *appsv1.StatefulSet, o Observed, p Plan, warnings []Problem, at time.Time, applyErr error) {
	ns, name := key.Namespace, key.Name
	st.formed = p.Formed
	member, reachable := 0, 0
	status := ClusterStatus{Namespace: ns, Name: name, StatefulSet: sts.Name, Phase: p.Phase, Replicas: o.Replicas,
		TargetReplicas: o.TargetReplicas, Members: p.Members, Waiting: p.Wait, LastSync: at}
	for _, ord := range sortedOrdinals(o.Pods) {
		pod := o.Pods[ord]
		ns := NodeStatus{Pod: pod.Name, State: p.NodeStates[pod.Name], Zone: o.Zones[ord]}
		if n := o.Nodes[ord]; n != nil {
			ns.Node, ns.LastError = n.Name, n.Err
			if n.Reached {
				reachable++
			}
			if t, ok := st.memberSince[n.Name]; ok && ns.State == stateMember {
				t := t
				ns.MemberSince = &t
			}
		}
		if ns.State == stateMember {
			member++
		}
		ns.CatchingUp = p.CatchUp[pod.Name]
		status.Nodes = append(status.Nodes, ns)
	}
	for _, w := range warnings {
		status.Warnings = append(status.Warnings, w.Message)
	}
	if applyErr != nil {
		status.LastError = applyErr.Error()
	}
	c.metrics.SetNodeStates(ns, name, p.NodeStates)
	c.metrics.SetClusterNodes(ns, name, o.Replicas, member, reachable)
	c.metrics.SetClusterFormed(ns, name, p.Formed)
	c.metrics.SetClusterPhase(ns, name, p.Phase)
	if p.Shards != nil {
		c.metrics.SetShardRanges(ns, name, p.Shards.Healthy, p.Shards.UnderReplicated, p.Shards.Unavailable, p.Shards.ZoneViolation)
		st.shardHealth = ShardHealth{Healthy: p.Shards.Healthy, UnderReplicated: p.Shards.UnderReplicated, Unavailable: p.Shards.Unavailable, ZoneViolation: p.Shards.ZoneViolation}
		st.shortfalls = p.Shortfalls
		st.shardsUnsettled = p.Shards.UnderReplicated > 0 || p.Shards.Unavailable > 0 || p.Shards.ZoneViolation > 0 || decomOnStayingNode(o)
	}
	status.Shards, status.Shortfalls = st.shardHealth, st.shortfalls
	status.ConfigDrift = st.config.details
	c.setStatus(key, status)
}

// decomOnStayingNode reports a decom mark on a node whose ordinal is below spec.replicas and that is
// not being drained: placement clears it, and until then the maps are read every sync.
func decomOnStayingNode(o Observed) bool {
	if o.Shards == nil {
		return false
	}
	d, draining := drainingOrdinal(o)
	for name, decom := range o.Shards.Decom {
		if ord, ok := nodeOrdinal(name, o.StatefulSet); decom && ok && ord < o.Replicas && !(draining && ord == d) {
			return true
		}
	}
	return false
}

func coordinatorSetup(o Observed) string {
	if c := coordinator(o); c != nil {
		return string(c.Setup) + " via " + c.Pod
	}
	return "no coordinator"
}
