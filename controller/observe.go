package controller

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/couchdb-controller/couchdb-controller/controller/placement"
	"github.com/couchdb-controller/couchdb-controller/couch"
)

// observeKube fills the Kubernetes half of Observed from the listers. Endpoints handling stays in
// this file so the move to EndpointSlices (Endpoints is deprecated since v1.33) is a local change.
func (c *Controller) observeKube(ctx context.Context, sts *appsv1.StatefulSet, o *Observed) error {
	o.StatefulSet = sts.Name
	o.Replicas = 1
	if sts.Spec.Replicas != nil {
		o.Replicas = int(*sts.Spec.Replicas)
	}
	parseAnnotations(sts, o)

	port := 0
	ep, err := c.epLister.Endpoints(sts.Namespace).Get(sts.Spec.ServiceName)
	switch {
	case err == nil:
		port = endpointsPort(ep)
	case apierrors.IsNotFound(err):
		// No labelled Endpoints: either the Service lacks the label or it does not exist. This rare
		// path is the only live read of a Service.
		svc, gerr := c.kube.CoreV1().Services(sts.Namespace).Get(ctx, sts.Spec.ServiceName, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(gerr):
			o.Problems = append(o.Problems, Problem{ReasonServiceNotLabelled, fmt.Sprintf(
				"StatefulSet %s/%s names headless Service %q in spec.serviceName, which does not exist: create it with label %s=%s",
				sts.Namespace, sts.Name, sts.Spec.ServiceName, LabelCluster, o.Cluster)})
		case gerr != nil:
			return fmt.Errorf("get service %s/%s: %w", sts.Namespace, sts.Spec.ServiceName, gerr)
		case svc.Labels[LabelCluster] != o.Cluster:
			o.Problems = append(o.Problems, Problem{ReasonServiceNotLabelled, fmt.Sprintf(
				"headless Service %s/%s of StatefulSet %s is not labelled %s=%s: run kubectl label service/%s -n %s %s=%s",
				sts.Namespace, svc.Name, sts.Name, LabelCluster, o.Cluster, svc.Name, sts.Namespace, LabelCluster, o.Cluster)})
		}
	default:
		return fmt.Errorf("get endpoints %s/%s: %w", sts.Namespace, sts.Spec.ServiceName, err)
	}

	pods, err := c.podLister.Pods(sts.Namespace).List(labels.Everything())
	if err != nil {
		return fmt.Errorf("list pods: %w", err)
	}
	o.Pods = map[int]*PodObs{}
	for _, pod := range pods {
		ref := metav1.GetControllerOf(pod)
		if ref == nil || ref.Kind != "StatefulSet" || ref.Name != sts.Name || ref.UID != sts.UID {
			continue
		}
		ord, ok := podOrdinal(pod.Name, sts.Name)
		if !ok {
			continue
		}
		o.Pods[ord] = podObs(pod, ord, port)
		o.Pods[ord].StartedAt = containerStarted(pod)
	}
	c.observeZones(sts, o)
	return nil
}

func parseAnnotations(sts *appsv1.StatefulSet, o *Observed) {
	if v, ok := sts.Annotations[AnnotationTargetReplicas]; ok {
		n, err := strconv.Atoi(strings.TrimSpace(v))
		switch {
		case err != nil || n < 1:
			o.Problems = append(o.Problems, Problem{ReasonInvalidAnnotation, fmt.Sprintf(
				"StatefulSet %s/%s: %s=%q is not a whole number of at least 1: set it to the replica count to scale down to, or remove it",
				sts.Namespace, sts.Name, AnnotationTargetReplicas, v)})
		case n > 1000:
			o.Problems = append(o.Problems, Problem{ReasonInvalidAnnotation, fmt.Sprintf(
				"StatefulSet %s/%s: %s=%d is larger than any CouchDB cluster this controller manages (1000): fix the value",
				sts.Namespace, sts.Name, AnnotationTargetReplicas, n)})
		default:
			o.TargetReplicas = &n
		}
	}
	if v := sts.Annotations[AnnotationReplicate]; v != "" {
		var bad []string
		for _, db := range strings.Split(v, ",") {
			switch db = strings.TrimSpace(db); {
			case db == "" || slices.Contains(o.Replicate, db):
			case !validDBName(db):
				bad = append(bad, strconv.Quote(db))
			default:
				o.Replicate = append(o.Replicate, db)
			}
		}
		if len(bad) > 0 {
			o.Problems = append(o.Problems, Problem{ReasonInvalidAnnotation, fmt.Sprintf(
				"StatefulSet %s/%s: %s names %s, which CouchDB cannot have as database names (lower-case letter first, then a-z 0-9 _$()+-/, at most 238; or _users, _replicator, _global_changes): fix the list",
				sts.Namespace, sts.Name, AnnotationReplicate, strings.Join(bad, ", "))})
		}
	}
	// A typo must not silently mean "not paused": an unreadable couchdb.io/paused pauses.
	o.Paused = boolAnnotation(sts, AnnotationPaused, true, o)
	o.Rebalance = boolAnnotation(sts, AnnotationRebalance, false, o)
	if s := sts.Annotations[AnnotationScheme]; s != "" && s != "http" && s != "https" {
		o.Problems = append(o.Problems, Problem{ReasonInvalidAnnotation, fmt.Sprintf(
			"StatefulSet %s/%s: %s=%q must be http or https", sts.Namespace, sts.Name, AnnotationScheme, s)})
	}
}

// boolAnnotation reads "true" or "false"; anything else is a Problem and reads as ifInvalid.
func boolAnnotation(sts *appsv1.StatefulSet, key string, ifInvalid bool, o *Observed) bool {
	v, ok := sts.Annotations[key]
	switch strings.TrimSpace(v) {
	case "true":
		return true
	case "false":
		return false
	}
	if !ok {
		return false
	}
	o.Problems = append(o.Problems, Problem{ReasonInvalidAnnotation, fmt.Sprintf(
		"StatefulSet %s/%s: %s=%q must be \"true\" or \"false\": fix the value", sts.Namespace, sts.Name, key, v)})
	return ifInvalid
}

// validDBName is CouchDB's database name rule (couch_db:validate_dbname), with the clustered system
// databases a user may reasonably want on every node.
func validDBName(name string) bool {
	switch name {
	case "_users", "_replicator", "_global_changes":
		return true
	}
	if len(name) == 0 || len(name) > 238 || name[0] < 'a' || name[0] > 'z' {
		return false
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || strings.ContainsRune("_$()+-/", r)) {
			return false
		}
	}
	return true
}

func endpointsPort(ep *corev1.Endpoints) int {
	for _, ss := range ep.Subsets {
		for _, p := range ss.Ports {
			if p.Name == couchDBPortName {
				return int(p.Port)
			}
		}
		if len(ss.Ports) == 1 {
			return int(ss.Ports[0].Port)
		}
	}
	return 0
}

func podObs(pod *corev1.Pod, ord, port int) *PodObs {
	p := &PodObs{Name: pod.Name, Ordinal: ord, UID: string(pod.UID), IP: pod.Status.PodIP, Port: port, Terminating: pod.DeletionTimestamp != nil,
		Node: pod.Spec.NodeName, Identity: identityKey(pod)}
	if p.Port == 0 {
		p.Port = containerPort(pod)
	}
	for _, g := range pod.Spec.ReadinessGates {
		if g.ConditionType == ConditionMember {
			p.HasMemberGate = true
		}
	}
	for _, cond := range pod.Status.Conditions {
		switch cond.Type {
		case corev1.ContainersReady:
			p.ContainersReady = cond.Status == corev1.ConditionTrue
			p.ReadySince = cond.LastTransitionTime.Time
		case ConditionMember:
			v := cond.Status == corev1.ConditionTrue
			p.MemberCondition = &v
			p.MemberSince = cond.LastTransitionTime.Time
		}
	}
	return p
}

func containerPort(pod *corev1.Pod) int {
	ctr := couchContainer(&pod.Spec)
	if ctr != nil {
		for _, p := range ctr.Ports {
			if p.Name == couchDBPortName {
				return int(p.ContainerPort)
			}
		}
		if len(ctr.Ports) == 1 {
			return int(ctr.Ports[0].ContainerPort)
		}
	}
	return defaultCouchDBPort
}

// identityKey changes whenever the CouchDB process may have changed its name: a new pod, a new IP
// or a container restart.
func identityKey(pod *corev1.Pod) string {
	restarts := 0
	for _, s := range pod.Status.ContainerStatuses {
		restarts += int(s.RestartCount)
	}
	return fmt.Sprintf("%s/%s/%d", pod.UID, pod.Status.PodIP, restarts)
}

// maxConcurrentNodes bounds the HTTP requests one sync has in flight to its nodes.
const maxConcurrentNodes = 8

// maxShardReads bounds the reads of node-local shard copies (counts, checkpoints) one sync has in
// flight: small GETs, all through the coordinator, that a sync with many moves in flight makes by
// the dozen, and that stand between a fill ending and the next move starting.
const maxShardReads = 16

// inParallel calls fn(i) for every i below n, at most maxConcurrentNodes at a time, and returns the
// first error by index. fn must only write to its own index of whatever it fills.
func inParallel(n int, fn func(i int) error) error { return inParallelN(n, maxConcurrentNodes, fn) }

// inParallelN is inParallel with at most limit calls at a time.
func inParallelN(n, limit int, fn func(i int) error) error {
	if n == 1 {
		return fn(0)
	}
	errs := make([]error, n)
	var wg sync.WaitGroup
	sem := make(chan struct{}, limit)
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			errs[i] = fn(i)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// asked says whether observeCouch asks the pod of ord: a ready one, and also one that is not ready
// because this controller put its node in maintenance mode, which makes its /_up (and so its
// readiness probe) fail on purpose: the draining node, which still serves the moves; a member
// fenced for a fill; and one unfenced a moment ago, whose probe has not run since. A member not
// asked is not live, and its ranges would look short of copies.
func asked(o Observed, ord int) bool {
	p := o.Pods[ord]
	if p == nil || p.IP == "" || p.Terminating {
		return false
	}
	d, draining := drainingOrdinal(o)
	return p.ContainersReady || draining && d == ord || o.FillFenced[ord] || o.Unfenced[ord]
}

// observeCouch asks every ready pod's CouchDB who it is and whom it knows, then the coordinator (and,
// while not formed, every node) for its setup state. The lowest ordinal is asked first and alone: if
// it rejects the credentials, no other node is tried with them (CouchDB locks accounts).
func (c *Controller) observeCouch(ctx context.Context, st *clusterState, scheme string, ca []byte, o *Observed) {
	o.Nodes = map[int]*NodeObs{}
	var ords []int
	for _, ord := range sortedOrdinals(o.Pods) {
		p := o.Pods[ord]
		n := &NodeObs{Ordinal: ord, Pod: p.Name}
		o.Nodes[ord] = n
		if asked(*o, ord) {
			ords = append(ords, ord)
		}
	}
	if len(ords) == 0 {
		return
	}
	ask := func(ord int, verified bool) {
		p, n := o.Pods[ord], o.Nodes[ord]
		api, err := c.client(st, scheme, ca, p)
		if err != nil {
			n.Err = err.Error()
			return
		}
		c.askNode(ctx, st, api, p, n, verified)
	}
	ask(ords[0], false)
	first := o.Nodes[ords[0]]
	if first.authFailed() {
		o.CredentialsRejected, o.CredentialsLocked = true, first.locked
		return
	}
	var wg sync.WaitGroup
	// The first node asked is the coordinator whenever it is a member of its own _nodes (no lower
	// ordinal answered, see coordinator): its setup state is asked alongside the other nodes, one
	// round trip less on every sync's path, a join's included.
	early := ords[0] < o.Replicas && first.Valid() && first.Membership != nil && slices.Contains(first.Membership.ClusterNodes, first.Name)
	if early {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.askSetup(ctx, st, scheme, ca, o, first)
		}()
	}
	sem := make(chan struct{}, maxConcurrentNodes)
	for _, ord := range ords[1:] {
		wg.Add(1)
		sem <- struct{}{}
		go func(ord int) {
			defer wg.Done()
			defer func() { <-sem }()
			ask(ord, true)
		}(ord)
	}
	wg.Wait()
	for _, ord := range ords {
		if o.Nodes[ord].authFailed() {
			o.CredentialsRejected = true
			o.CredentialsLocked = o.CredentialsLocked || o.Nodes[ord].locked
		}
	}
	coord := coordinator(*o)
	if coord == nil {
		return
	}
	if !early || coord != first {
		c.askSetup(ctx, st, scheme, ca, o, coord)
	}
	if coord.Setup == couch.StateClusterFinished {
		c.askShards(ctx, st, scheme, ca, o, coord)
		return
	}
	for _, ord := range ords {
		if n := o.Nodes[ord]; n != coord && n.Valid() {
			c.askSetup(ctx, st, scheme, ca, o, n)
		}
	}
	c.askShards(ctx, st, scheme, ca, o, coord) // only when a departed entry blocks formation
}

// shardsMaxAge is how often an otherwise idle, healthy cluster's shard maps are read for the health
// metric: with every member up, only a database being created or deleted changes them. A member that
// is not answering, or maps that read unhealthy, make every sync read them (needShards).
const shardsMaxAge = 10 * time.Minute

// needShards says whether this sync reads the shard maps: when placement may have work (departed
// members, a drain, replicate or rebalance annotations) and otherwise only every shardsMaxAge, so the
// steady state of an unannotated cluster stays at one GET per node.
func (c *Controller) needShards(st *clusterState, o *Observed, coord *NodeObs) bool {
	if coord.Setup != couch.StateClusterFinished {
		// Before finish_cluster only a departed _nodes entry needs the maps: it blocks finishing, and
		// may leave only when no map references it.
		return len(departedMembers(*o, coord.Membership.ClusterNodes)) > 0
	}
	if _, ok := drainingOrdinal(*o); ok || len(o.Replicate) > 0 || o.Rebalance {
		return true
	}
	for _, m := range coord.Membership.ClusterNodes {
		if ord, ok := nodeOrdinal(m, o.StatefulSet); ok && ord >= o.Replicas {
			return true
		}
	}
	// Until the maps read healthy again (a node came back, a heal finished) and no staying node
	// keeps a decom mark, read them every sync: the health metric, the status and the mark's
	// removal must not wait for shardsMaxAge.
	if st.shardsUnsettled {
		return true
	}
	for _, m := range coord.Membership.ClusterNodes {
		// A member that is down or not ready leaves ranges under-replicated now. A pod that is only
		// joining is no member yet: reading every map on each of its syncs would slow the join.
		if ord, ok := nodeOrdinal(m, o.StatefulSet); ok && ord < o.Replicas && (o.Nodes[ord] == nil || !o.Nodes[ord].Reached) {
			return true
		}
	}
	return c.cfg.Now().Sub(st.shardsRead) >= shardsMaxAge
}

// askShards reads every database's shard map, the members' maintenance mode and the document counts
// of the copies placement needs, all through the coordinator. Any failure leaves o.Shards nil, so
// nothing that depends on the maps is done in this sync.
func (c *Controller) askShards(ctx context.Context, st *clusterState, scheme string, ca []byte, o *Observed, coord *NodeObs) {
	if !c.needShards(st, o, coord) {
		return
	}
	api, err := c.client(st, scheme, ca, o.Pods[coord.Ordinal])
	if err != nil {
		return
	}
	// The maps, the _nodes docs and the maintenance modes do not depend on each other: one round trip.
	var (
		wg      sync.WaitGroup
		dbs     []string
		maps    map[string]couch.ShardMap
		mapsErr error
	)
	wg.Go(func() { dbs, maps, mapsErr = c.readShardMaps(ctx, st, api, coord, o.Pods[coord.Ordinal].Identity) })
	obs := &ShardObs{Stats: map[placement.CopyKey]placement.CopyStat{},
		Maintenance: map[string]bool{}, Fenced: map[string]bool{}, Decom: map[string]bool{}, NodeZones: map[string]string{}}
	// The decom mark and zone of every node of this StatefulSet, leaving or not: placement sets the
	// mark on leaving nodes and clears it from nodes that stay after all. Foreign entries are never
	// touched.
	var named, maint []string
	for _, name := range coord.Membership.ClusterNodes {
		ord, ok := nodeOrdinal(name, o.StatefulSet)
		if !ok {
			continue
		}
		named = append(named, name)
		if ord < o.Replicas && slices.Contains(coord.Membership.AllNodes, name) {
			maint = append(maint, name)
		}
	}
	docs, found := make([]couch.NodeDoc, len(named)), make([]bool, len(named))
	modes := make([]string, len(maint))
	var docsErr, modesErr error
	wg.Go(func() {
		docsErr = inParallel(len(named), func(i int) error {
			d, err := api.GetNodeDoc(ctx, named[i])
			if couch.IsNotFound(err) {
				return nil
			}
			docs[i], found[i] = d, err == nil
			return err
		})
	})
	modesErr = inParallel(len(maint), func(i int) (err error) {
		modes[i], err = api.MaintenanceMode(ctx, maint[i])
		return err
	})
	wg.Wait()
	if mapsErr != nil || docsErr != nil || modesErr != nil {
		return
	}
	obs.DBs, obs.Maps = dbs, maps
	for i, name := range named {
		if found[i] {
			obs.Decom[name], obs.NodeZones[name] = docs[i].Decom, docs[i].Zone
		}
	}
	for i, name := range maint {
		// "nolb" is what the example preStop hook sets: a leftover one is cleared like "true".
		obs.Maintenance[name] = modes[i] == "true" || modes[i] == "nolb"
		obs.Fenced[name] = modes[i] == "true"
	}
	c.askZoneConfig(ctx, st, api, o, coord, obs)
	obs.Unsynced, obs.Held = pendingPosts(st, obs.Maps)
	o.Shards = obs
	in := placementInput(*o, coord.Membership.ClusterNodes, coord.Membership.AllNodes)
	c.askSizes(ctx, st, api, in, obs)
	in.RangeBytes = obs.RangeBytes
	// Ranges whose new copies the fill clock expects to be filling still are left unread (notDue):
	// placement waits for them as for any copy catching up.
	now := c.cfg.Now()
	stats, sources := placement.Needed(in)
	need := st.fills.due(stats, now)
	// The checkpoints of the copies placement may drop are read alongside the counts: which copies
	// those are does not depend on the counts. Those of copies whose counts were not due are read
	// once the counts are in (late).
	early := st.fills.due(sources, now)
	infos, read, absent := make([]couch.DBInfo, len(need)), make([]bool, len(need)), make([]bool, len(need))
	cps := map[placement.CopyKey][]couch.SyncCheckpoint{}
	var cpsMu sync.Mutex
	readCheckpoints := func(keys []placement.CopyKey) {
		_ = inParallel(len(keys), func(i int) error {
			k := keys[i]
			got, err := api.ShardCheckpoints(ctx, k.Node, obs.Maps[k.DB].ShardName(k.Range))
			if err == nil { // unknown otherwise: placement keeps the copy and syncs again
				cpsMu.Lock()
				cps[k] = got
				cpsMu.Unlock()
			}
			return nil
		})
	}
	wg.Go(func() { readCheckpoints(early) })
	obs.StatsAt = now
	_ = inParallelN(len(need), maxShardReads, func(i int) error {
		info, err := api.ShardCopyInfo(ctx, need[i].Node, obs.Maps[need[i].DB].ShardName(need[i].Range))
		infos[i], read[i] = info, err == nil // unknown counts: placement waits for this copy
		absent[i] = couch.IsNotFound(err)
		return nil
	})
	wg.Wait()
	for i, k := range need {
		if absent[i] {
			st.fills.missing(k, now)
		}
		if read[i] {
			c.noteCopySize(st, k, infos[i])
			obs.Stats[k] = placement.CopyStat{Docs: infos[i].DocCount, Deleted: infos[i].DocDelCount, Seq: copySeq(infos[i].UpdateSeq), UUID: infos[i].UUID}
		}
	}
	var counted, late []placement.CopyKey
	for _, k := range sources {
		if _, ok := obs.Stats[k]; !ok {
			continue
		}
		counted = append(counted, k)
		if !slices.Contains(early, k) {
			late = append(late, k)
		}
	}
	readCheckpoints(late)
	for _, k := range counted {
		got, ok := cps[k]
		if !ok {
			continue
		}
		s := obs.Stats[k]
		s.Pushed = map[string]int64{}
		for _, cp := range got {
			if cp.SourceUUID == s.UUID && cp.TargetUUID != "" {
				s.Pushed[cp.TargetUUID] = max(s.Pushed[cp.TargetUUID], cp.Seq)
			}
		}
		obs.Stats[k] = s
	}
	takeMarks(st, in, obs)
	st.shardsRead = c.cfg.Now()
}

// copySeq reads a shard copy's update_seq, an integer in node-local info; anything else reads as
// unknown (-1), which no checkpoint matches.
func copySeq(v any) int64 {
	if f, ok := v.(float64); ok && f >= 0 && f == float64(int64(f)) {
		return int64(f)
	}
	return -1
}

// setupMaxAge bounds how long a CouchDB process's cluster_finished answer stands for it. Once a
// cluster is finished, its coordinator's answer only changes when a system database is deleted
// (finish_cluster then creates it again) or the process is replaced (a new identity asks again), so a
// steady-state sync asks only the nodes' _membership: one request per node per resync, not one more.
// A deleted _users or _replicator is noticed within setupMaxAge.
const setupMaxAge = shardsMaxAge

// askSetup asks a node for its setup state, unless the same process said cluster_finished less than
// setupMaxAge ago.
func (c *Controller) askSetup(ctx context.Context, st *clusterState, scheme string, ca []byte, o *Observed, n *NodeObs) {
	identity, now := o.Pods[n.Ordinal].Identity, c.cfg.Now()
	c.mu.Lock()
	seen := st.finishedSeen
	c.mu.Unlock()
	if seen.identity == identity && now.Sub(seen.at) < setupMaxAge {
		n.Setup = couch.StateClusterFinished
		return
	}
	api, err := c.client(st, scheme, ca, o.Pods[n.Ordinal])
	if err == nil {
		n.Setup, err = api.SetupState(ctx)
	}
	if err != nil {
		n.Setup = ""
		n.Reached = false
		n.fail(err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case n.Setup == couch.StateClusterFinished:
		st.finishedSeen = setupSeen{identity: identity, at: now}
	case st.finishedSeen.identity == identity:
		st.finishedSeen = setupSeen{}
	}
}

// askNode asks one node who it is (once per CouchDB process) and whom it knows. With verified (another
// node accepted the credentials in this sync) a new process's three questions go out at once, one
// round trip instead of three on a join's path; otherwise one at a time, so that credentials CouchDB
// rejects cost one failed login, not three (CouchDB locks an account after five).
func (c *Controller) askNode(ctx context.Context, st *clusterState, api CouchAPI, p *PodObs, n *NodeObs, verified bool) {
	key := p.Identity
	c.mu.Lock()
	id, cached := st.identity[key]
	c.mu.Unlock()
	var m couch.Membership
	var merr error
	if !cached {
		// Asked once per CouchDB process: its version decides whether this controller may manage it.
		var w couch.Welcome
		var werr, nerr error
		if verified {
			var wg sync.WaitGroup
			wg.Add(2)
			go func() {
				defer wg.Done()
				w, werr = api.Welcome(ctx)
			}()
			go func() {
				defer wg.Done()
				id.name, nerr = api.LocalNodeName(ctx)
			}()
			m, merr = api.Membership(ctx)
			wg.Wait()
		} else if w, werr = api.Welcome(ctx); werr == nil {
			if id.name, nerr = api.LocalNodeName(ctx); nerr == nil {
				m, merr = api.Membership(ctx)
			}
		}
		if err := cmp.Or(werr, nerr); err != nil {
			n.fail(err)
			return
		}
		id.version = w.Version
		c.mu.Lock()
		st.identity[key] = id
		c.mu.Unlock()
	} else {
		m, merr = api.Membership(ctx)
	}
	if merr != nil {
		n.fail(merr)
		return
	}
	n.Reached = true
	n.Name, n.Version = id.name, id.version
	n.NameErr = validateNodeName(id.name, p.Name)
	if n.NameErr == "" {
		n.VersionErr = validateVersion(id.version)
	}
	n.Membership = &m
}

func (n *NodeObs) fail(err error) {
	n.Err = err.Error()
	n.rejected, n.locked = couch.IsAuthError(err), couch.IsLocked(err)
	var de *couch.DecodeError
	n.garbled = errors.As(err, &de)
}

func (n *NodeObs) authFailed() bool { return n.rejected }

// client returns the cached client for the pod's endpoint and the current credentials.
func (c *Controller) client(st *clusterState, scheme string, ca []byte, p *PodObs) (CouchAPI, error) {
	url := scheme + "://" + net.JoinHostPort(p.IP, strconv.Itoa(p.Port))
	c.mu.Lock()
	api, ok := st.clients[url]
	creds := st.creds
	c.mu.Unlock()
	if ok {
		return api, nil
	}
	api, err := c.cfg.CouchFactory(Endpoint{URL: url, CA: ca}, creds)
	if err != nil {
		return nil, fmt.Errorf("client for %s: %w", p.Name, err)
	}
	c.mu.Lock()
	st.clients[url] = api
	c.mu.Unlock()
	return api, nil
}

var errNoCA = errors.New("no ca.crt")

// caBundle reads the CA Secret named by couchdb.io/ca-secret.
func (c *Controller) caBundle(ctx context.Context, sts *appsv1.StatefulSet) ([]byte, error) {
	name := sts.Annotations[AnnotationCASecret]
	if name == "" {
		return nil, nil
	}
	s, err := c.kube.CoreV1().Secrets(sts.Namespace).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, permanent(ReasonInvalidAnnotation, "Secret %s/%s named by %s does not exist: create it with key ca.crt", sts.Namespace, name, AnnotationCASecret)
	}
	if err != nil {
		return nil, fmt.Errorf("get secret %s/%s: %w", sts.Namespace, name, err)
	}
	ca, ok := s.Data["ca.crt"]
	if !ok {
		return nil, permanent(ReasonInvalidAnnotation, "Secret %s/%s named by %s has no key ca.crt: %v", sts.Namespace, name, AnnotationCASecret, errNoCA)
	}
	return ca, nil
}

var _ = time.Second
