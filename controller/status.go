package controller

import (
	"sort"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/couchdb-controller/couchdb-controller/controller/placement"
)

// ClusterStatus is what the status API shows for one cluster. It never holds credentials.
type ClusterStatus struct {
	Namespace      string       `json:"namespace"`
	Name           string       `json:"name"`
	StatefulSet    string       `json:"statefulSet,omitempty"`
	Phase          string       `json:"phase"`
	Replicas       int          `json:"replicas"`
	TargetReplicas *int         `json:"targetReplicas,omitempty"`
	Members        []string     `json:"members"`
	Nodes          []NodeStatus `json:"nodes"`
	Shards         ShardHealth  `json:"shards"`
	// Shortfalls are the databases with fewer copies per range than their n because the cluster
	// has fewer members than n (the UnderReplicated Warning).
	Shortfalls  []Shortfall   `json:"shortfalls,omitempty"`
	Waiting     string        `json:"waiting,omitempty"`
	Warnings    []string      `json:"warnings,omitempty"`
	LastSync    time.Time     `json:"lastSync"`
	LastError   string        `json:"lastError,omitempty"`
	ConfigDrift []DriftStatus `json:"configDrift,omitempty"`
}

// NodeStatus is one pod's node.
type NodeStatus struct {
	Pod         string     `json:"pod"`
	Node        string     `json:"node,omitempty"`
	State       string     `json:"state"`
	Zone        string     `json:"zone,omitempty"` // the zone label's value on the pod's Node
	MemberSince *time.Time `json:"memberSince,omitempty"`
	LastError   string     `json:"lastError,omitempty"`
	CatchingUp  string     `json:"catchingUp,omitempty"` // why its couchdb.io/member gate waits after a restart
}

// ShardHealth counts shard ranges by health.
type ShardHealth struct {
	Healthy         int `json:"healthy"`
	UnderReplicated int `json:"underReplicated"`
	Unavailable     int `json:"unavailable"`
	ZoneViolation   int `json:"zoneViolation"`
}

// Shortfall is one database under-replicated because members < n.
type Shortfall struct {
	DB      string `json:"db"`
	N       int    `json:"n"`
	Copies  int    `json:"copies"` // the fewest live copies of any of its ranges
	Members int    `json:"members"`
}

// clusterState is the controller's memory of one cluster. None of it drives decisions (CouchDB's
// _nodes and shard maps are the only memory the planner reads); it serves events, metrics, the
// status API, credential backoff and caches that spare requests.
type clusterState struct {
	status        ClusterStatus
	formed        bool                    // the last plan's Formed
	warnings      map[string]bool         // reason+message of Warnings already emitted and still true
	identity      map[string]nodeIdentity // pod identity key -> what the CouchDB process said of itself
	joining       map[string]time.Time    // node -> containers-ready time, for nodes the controller added
	readySeen     map[string]time.Time    // pod UID -> when this controller first saw its containers ready
	memberSince   map[string]time.Time
	failingSince  map[string]time.Time // pod -> first failed request of the current streak
	apartSince    map[string]time.Time // node -> first sync that saw it in _nodes but not connected
	clients       map[string]CouchAPI  // endpoint URL -> client for the current credentials
	credsVersion  string
	creds         Credentials
	credsRead     time.Time
	rejected      string    // credentials version CouchDB rejected
	rejectedAt    time.Time // when
	rejectedCount int
	lockedOut     bool        // the last rejection was CouchDB's lockout
	shardsRead    time.Time   // last time the shard maps were read
	shardHealth   ShardHealth // from the last read
	shortfalls    []Shortfall // from the last read
	fillingSince  time.Time   // since when the plans only wait for new copies to fill
	// shardsUnsettled: the last read found ranges not healthy or a decom mark on a staying node.
	shardsUnsettled bool
	configs         map[string]cachedConfig          // node + "\x00" + [cluster] key -> last value read or written
	copySizes       map[placement.CopyKey]cachedSize // sizes.file of copies read recently
	config          configCheck                      // adminhash.go
	configPending   string                           // the configKey of this sync's read
	catchUp         catchUpMemory                    // catchup.go
	mapCache        shardMapCache                    // mapcache.go
	// fillFenced: the nodes (by name) this controller fenced for fills and has not unfenced. A
	// restart forgets them; their pods are then not ready and not asked, and the day-2 check
	// clears the maintenance mode it finds on them (placement fences them again if still filling).
	fillFenced map[string]bool
	// unfenced: the nodes this controller took out of maintenance mode after their fills, and when.
	// Their pods stay not ready until the readiness probe runs again (periodSeconds, 10 s by
	// default), and a member not asked is not live: placement would see its ranges short and heal
	// them, unfenced, onto the other members. So they are asked until unfenceGrace has passed.
	unfenced map[string]time.Time
	// setupWait is the wait of the last sync before setup finished, and since when it has not
	// changed (setupStalled).
	setupWait      string
	setupWaitSince time.Time

	// finishedSeen is the last process that answered cluster_finished, and when (askSetup).
	finishedSeen setupSeen

	// marks are the drain marks of the copies placement is to drop (marks.go).
	marks map[placement.CopyKey]placement.Mark
	// unsynced are the databases whose added copies wait for a successful _sync_shards (unsynced.go);
	// unsyncedSeeded says the first maps read of this process has guessed them.
	unsynced       map[string]bool
	unsyncedSeeded bool
	// dbsMissing is, per pod, when a member whose gate is closed was first seen lacking databases
	// in its _dbs (joindbs.go).
	dbsMissing map[string]time.Time
	// fills schedules the looks at new copies while they fill (fillclock.go).
	fills fillClock
	// posts are the _sync_shards running beside the syncs (asyncpost.go).
	posts asyncPosts
	// scaled is the controller's last ScaleDown, until the informer shows it (scaledReplicas).
	scaled scaledWrite
}

// scaledWrite is a ScaleDown the API server took: the StatefulSet's resourceVersion it was made
// against (the update carried it, so no other change came between) and the replicas it set.
type scaledWrite struct {
	from     string
	replicas int
}

// scaledReplicas gives the spec.replicas of the controller's own ScaleDown while the informer cache
// still holds the StatefulSet it was made against. The next drain step follows a ScaleDown at once
// (stepRequeue), sooner than the watch delivers the update: planned from the cached replicas, that
// look would scale down again with the old resourceVersion and fail with a conflict, and the sync's
// error backoff then held the next node's drain for 100 ms or more.
func (st *clusterState) scaledReplicas(sts *appsv1.StatefulSet, cached int) int {
	switch {
	case st.scaled.from == "":
		return cached
	case sts.ResourceVersion == st.scaled.from:
		return st.scaled.replicas
	default:
		st.scaled = scaledWrite{}
		return cached
	}
}

// setupSeen is a CouchDB process (its pod's identityKey) and when it said cluster_finished.
type setupSeen struct {
	identity string
	at       time.Time
}

func newClusterState() *clusterState {
	return &clusterState{
		warnings: map[string]bool{}, identity: map[string]nodeIdentity{}, joining: map[string]time.Time{}, readySeen: map[string]time.Time{},
		memberSince: map[string]time.Time{}, failingSince: map[string]time.Time{}, clients: map[string]CouchAPI{},
		configs: map[string]cachedConfig{}, copySizes: map[placement.CopyKey]cachedSize{},
	}
}

func (c *Controller) state(key cache.ObjectName) *clusterState {
	c.mu.Lock()
	defer c.mu.Unlock()
	st, ok := c.clusters[key]
	if !ok {
		st = newClusterState()
		c.clusters[key] = st
	}
	return st
}

func (c *Controller) setStatus(key cache.ObjectName, s ClusterStatus) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if st, ok := c.clusters[key]; ok {
		st.status = s
	}
}

// Clusters lists the status of every known cluster, sorted by namespace and name.
func (c *Controller) Clusters() []ClusterStatus {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]ClusterStatus, 0, len(c.clusters))
	for _, st := range c.clusters {
		if st.status.Name != "" {
			out = append(out, st.status)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Namespace != out[j].Namespace {
			return out[i].Namespace < out[j].Namespace
		}
		return out[i].Name < out[j].Name
	})
	return out
}

// Cluster returns one cluster's status.
func (c *Controller) Cluster(namespace, name string) (ClusterStatus, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	st, ok := c.clusters[cache.ObjectName{Namespace: namespace, Name: name}]
	if !ok || st.status.Name == "" {
		return ClusterStatus{}, false
	}
	return st.status, true
}

func sortStrings(s []string) { sort.Strings(s) }
