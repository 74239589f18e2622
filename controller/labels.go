package controller

// Keys under couchdb.io/ that users set on their objects. Each is declared once, here.
const (
	// LabelCluster opts a StatefulSet and its headless Service in; the value names the cluster.
	LabelCluster = "couchdb.io/cluster"

	AnnotationPaused         = "couchdb.io/paused"
	AnnotationAdminSecret    = "couchdb.io/admin-secret"
	AnnotationScheme         = "couchdb.io/scheme"
	AnnotationCASecret       = "couchdb.io/ca-secret"
	AnnotationReplicate      = "couchdb.io/replicate"
	AnnotationRebalance      = "couchdb.io/rebalance"
	AnnotationTargetReplicas = "couchdb.io/target-replicas"
	// AnnotationZoneLabel names the Kubernetes Node label whose value is a member's zone; "" turns
	// zones off. Absent, DefaultZoneLabel is used.
	AnnotationZoneLabel = "couchdb.io/zone-label"

	// DefaultZoneLabel is the well-known topology label cloud providers set on every Node.
	DefaultZoneLabel        = "topology.kubernetes.io/zone"
	AnnotationSyncAdminHash = "couchdb.io/sync-admin-hash"

	// ConditionMember is the pod readiness gate and condition the controller owns.
	ConditionMember = "couchdb.io/member"

	// podNameLabel is set by the StatefulSet controller on every pod it makes; the pod informer
	// selects on it so that it sees StatefulSet pods only.
	podNameLabel = "statefulset.kubernetes.io/pod-name"

	defaultCouchDBPort = 5984
	couchDBPortName    = "couchdb"
	fieldManager       = "couchdb-controller"
)

// Event reasons.
const (
	ReasonClusterFormed      = "ClusterFormed"
	ReasonNodeJoined         = "NodeJoined"
	ReasonNodeRemoved        = "NodeRemoved"
	ReasonShardCopyAdded     = "ShardCopyAdded"
	ReasonShardCopyRemoved   = "ShardCopyRemoved"
	ReasonDraining           = "Draining"
	ReasonScaledDown         = "ScaledDown"
	ReasonCredentialsInvalid = "CredentialsInvalid"
	ReasonNodeNameInvalid    = "NodeNameInvalid"
	ReasonDuplicateCluster   = "DuplicateCluster"
	ReasonServiceNotLabelled = "ServiceNotLabelled"
	ReasonDataAtRisk         = "DataAtRisk"
	ReasonCouchDBUnreachable = "CouchDBUnreachable"
	// ReasonNodeNotConnected: a node in _nodes whose Erlang distribution never connected.
	ReasonNodeNotConnected = "NodeNotConnected"
	// ReasonSetupStalled: every pod is ready and answers, and setup has waited on the same thing
	// for a minute.
	ReasonSetupStalled      = "SetupStalled"
	ReasonInvalidAnnotation = "InvalidAnnotation"
	ReasonUnderReplicated   = "UnderReplicated"
	ReasonConfigDrift       = "ConfigDrift"
	ReasonAdminsDiffer      = "AdminsDiffer"
	ReasonAdminHashCopied   = "AdminHashCopied"
	ReasonConfigCopied      = "ConfigCopied"
	ReasonCatchUpTimeout    = "CatchUpTimeout"

	ReasonCouchDBVersionUnsupported = "CouchDBVersionUnsupported"
	ReasonCouchDBBadResponse        = "CouchDBBadResponse"
)
