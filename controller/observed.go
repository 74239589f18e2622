package controller

import (
	"time"

	"github.com/couchdb-controller/couchdb-controller/controller/placement"
	"github.com/couchdb-controller/couchdb-controller/couch"
)

// Observed is everything one sync learned about one CouchDB cluster, from the Kubernetes listers and
// from each node over HTTP. Plan reads nothing else. Errors are recorded per node, inside the value,
// so a partial observation is visible to the planner instead of aborting the sync.
type Observed struct {
	Namespace   string
	Cluster     string
	StatefulSet string
	Replicas    int // spec.replicas
	Paused      bool

	TargetReplicas *int     // couchdb.io/target-replicas, when valid
	Replicate      []string // couchdb.io/replicate
	Rebalance      bool     // couchdb.io/rebalance
	// FillFenced holds the ordinals this controller put in maintenance mode while copies fill on
	// them (placement rule 10): their /_up fails, so their pods are asked although not ready.
	FillFenced map[int]bool
	// Unfenced holds the ordinals whose fill fence ended less than unfenceGrace ago: their pods
	// turn ready only at their readiness probe's next run, and are asked until then.
	Unfenced map[int]bool

	// Problems that no retry can fix (bad labels or annotations, credentials): each becomes a
	// Warning event, and the planner does nothing while any is present.
	Problems []Problem

	// CredentialsRejected is set when CouchDB refused the credentials (401, or the 403 of a locked
	// account) in this sync or recently, and they have not changed since.
	CredentialsRejected bool
	// CredentialsLocked is set when the refusal was CouchDB 3.4's lockout (403 after repeated failed
	// logins from this address), which refuses even the right password until it expires.
	CredentialsLocked bool

	// WasFormed is the last Formed this controller planned for the cluster.
	WasFormed bool

	// Pods by ordinal; only ordinals that have a pod.
	Pods map[int]*PodObs
	// Nodes by ordinal: what each pod's CouchDB said.
	Nodes map[int]*NodeObs

	// ZoneLabel is the Node label a member's zone is read from (couchdb.io/zone-label); "" when zones
	// are off. Zones maps the ordinal of every pod bound to a Node to that Node's value of the label
	// ("" when the Node lacks it or is not known); nil when zones are off.
	ZoneLabel string
	Zones     map[int]string

	// MaxMoves and MaxFillsPerNode are the controller's bounds on concurrent shard moves.
	MaxMoves, MaxFillsPerNode int

	// Shards is what the coordinator said about databases and their shard maps; nil when they were
	// not read in this sync (they are read when placement has work to consider, see needShards).
	Shards *ShardObs

	// Config is each member's admin hash and the keys that must agree on all members (adminhash.go);
	// nil when not read in this sync.
	Config *ConfigObs
	// CatchUp holds, by ordinal, the members whose couchdb.io/member condition waits for their
	// copies to catch up after a restart or recreation (catchup.go).
	CatchUp map[int]*CatchUpObs
	// MissingDBs holds, by ordinal, the members whose couchdb.io/member gate is closed and whose
	// _dbs lacks databases the coordinator lists (joindbs.go).
	MissingDBs map[int]*MissingDBs
}

// ShardObs is the shard half of an observation.
type ShardObs struct {
	DBs         []string
	Maps        map[string]couch.ShardMap
	Stats       map[placement.CopyKey]placement.CopyStat
	Maintenance map[string]bool // node -> maintenance_mode "true"
	Decom       map[string]bool // node of this StatefulSet in _nodes -> its doc carries "decom": true
	// NodeZones is the "zone" field ("" when it has none) of the _nodes doc of every node of this
	// StatefulSet whose doc was read.
	NodeZones map[string]string
	// PlacementConfig is [cluster] placement of each live member whose config was read ("" = unset);
	// read only while zones are on.
	PlacementConfig map[string]string
	DefaultN        int                          // the coordinator's [cluster] n; 0 when unknown
	RangeBytes      map[placement.RangeRef]int64 // sizes.file of one copy of each range placement asked about

	// Fenced is each live member whose maintenance_mode is exactly "true" (not "nolb"): fabric
	// refuses its workers, so its copies take no client write.
	Fenced map[string]bool
	// Marks are the drain marks placement holds copies to drop to (marks.go).
	Marks map[placement.CopyKey]placement.Mark
	// StatsAt is when the copies' counts were read.
	StatsAt time.Time
	// Unsynced are the databases that got a copy whose _sync_shards is not known to have been posted
	// (unsynced.go): each gets one until a post succeeds.
	Unsynced []string
	// Held are the databases whose added copies wait for a fill slot before their _sync_shards
	// (placement/held.go): the fill clock watches a held copy of theirs still in the map. They are
	// not among Unsynced: placement posts them when a slot frees.
	Held map[string]bool
}

// Problem is a condition a human must fix.
type Problem struct {
	Reason  string
	Message string
}

// PodObs is what the pod object says.
type PodObs struct {
	Name            string
	Ordinal         int
	UID             string
	IP              string
	Port            int
	ContainersReady bool
	ReadySince      time.Time // ContainersReady's lastTransitionTime: join latency starts here
	HasMemberGate   bool      // declares readinessGates couchdb.io/member
	MemberCondition *bool     // current couchdb.io/member condition, nil when absent
	Terminating     bool
	Node            string    // spec.nodeName: the Kubernetes Node the pod is bound to
	Identity        string    // identityKey: changes with a new pod, IP or container restart
	StartedAt       time.Time // when the CouchDB container's current run started
	MemberSince     time.Time // lastTransitionTime of the couchdb.io/member condition
}

// NodeObs is what one pod's CouchDB said. Reached is false when nothing was asked (pod not ready,
// credentials withheld) or the node did not answer; Err says which.
type NodeObs struct {
	Ordinal    int
	Pod        string
	Reached    bool
	Err        string
	Name       string // GET /_node/_local
	NameErr    string // why Name cannot be a member; empty when valid
	Version    string // GET / "version"
	VersionErr string // why this CouchDB cannot be managed; empty when supported
	Membership *couch.Membership
	Setup      couch.SetupState // asked of the coordinator, and of every node until formed

	rejected bool // CouchDB refused the credentials
	locked   bool // ... because the account is locked out
	garbled  bool // it answered, but not with CouchDB 3.x JSON (a proxy page, a cut body)
}

// Valid reports whether the node answered with a name that may be a member.
func (n *NodeObs) Valid() bool {
	return n != nil && n.Reached && n.Name != "" && n.NameErr == "" && n.VersionErr == ""
}
