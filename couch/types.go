package couch

import "encoding/json"

// The plain value types the controller reads and writes. They are shared by the client, the
// emulator (couch/couchtest) and the controller's pure planner, so they carry no behaviour that needs
// the network.

// Welcome is the body of GET /.
type Welcome struct {
	CouchDB  string   `json:"couchdb"`
	Version  string   `json:"version"`
	GitSHA   string   `json:"git_sha,omitempty"`
	UUID     string   `json:"uuid"`
	Features []string `json:"features,omitempty"`
}

// UpStatus is the answer of GET /_up. CouchDB answers 404 while a node is in maintenance mode or still
// seeding; those answers are returned as values (Code 404), not as errors, because they describe the
// node rather than a failed request.
type UpStatus struct {
	Code   int    // HTTP status: 200 ok, 404 maintenance_mode / nolb / seeding
	Status string // "ok", "maintenance_mode", "nolb", "seeding"
}

// OK reports whether the node said it is up and serving.
func (u UpStatus) OK() bool { return u.Code == 200 && u.Status == "ok" }

// SetupState is the state reported by GET /_cluster_setup.
type SetupState string

// The states CouchDB computes in setup:cluster_system_dbs/is_cluster_enabled (see couchdb-real-responses.md).
const (
	StateClusterDisabled    SetupState = "cluster_disabled"
	StateClusterEnabled     SetupState = "cluster_enabled"
	StateClusterFinished    SetupState = "cluster_finished"
	StateSingleNodeDisabled SetupState = "single_node_disabled"
	StateSingleNodeEnabled  SetupState = "single_node_enabled"
)

// Membership is the body of GET /_membership. AllNodes are the Erlang nodes this node is connected
// to (itself included); ClusterNodes are the documents in its _nodes database (the intended members).
type Membership struct {
	AllNodes     []string `json:"all_nodes"`
	ClusterNodes []string `json:"cluster_nodes"`
}

// NodeDoc is a document of the node-local _nodes database. Decom is mem3's "skip this node when
// placing new databases" flag; CouchDB accepts it as true or "true", so both read as true. Fields the
// controller does not interpret are kept in Extra so that a read-modify-write never drops them.
type NodeDoc struct {
	ID    string         `json:"_id"`
	Rev   string         `json:"_rev,omitempty"`
	Zone  string         `json:"zone,omitempty"`
	Decom bool           `json:"decom,omitempty"`
	Extra map[string]any `json:"-"`
}

// UnmarshalJSON reads decom in either spelling and keeps unknown fields in Extra.
func (d *NodeDoc) UnmarshalJSON(data []byte) error {
	var p struct {
		ID    string          `json:"_id"`
		Rev   string          `json:"_rev"`
		Zone  string          `json:"zone"`
		Decom json.RawMessage `json:"decom"`
	}
	if err := json.Unmarshal(data, &p); err != nil {
		return err
	}
	var all map[string]any
	if err := json.Unmarshal(data, &all); err != nil {
		return err
	}
	*d = NodeDoc{ID: p.ID, Rev: p.Rev, Zone: p.Zone}
	if len(p.Decom) > 0 {
		var v any
		if err := json.Unmarshal(p.Decom, &v); err != nil {
			return err
		}
		// mem3 tests `decom` against true and <<"true">>; anything else means not decommissioned.
		d.Decom = v == true || v == "true"
		if v != nil && v != true && v != false && v != "true" && v != "false" {
			d.Extra = map[string]any{"decom": v} // an odd value is kept as it was, not rewritten
		}
	}
	for k, v := range all {
		switch k {
		case "_id", "_rev", "zone", "decom":
			continue
		}
		if d.Extra == nil {
			d.Extra = map[string]any{}
		}
		d.Extra[k] = v
	}
	return nil
}

// MarshalJSON writes Extra and the known fields; decom is written (as true) only when set.
func (d NodeDoc) MarshalJSON() ([]byte, error) {
	out := map[string]any{}
	for k, v := range d.Extra {
		out[k] = v
	}
	out["_id"] = d.ID
	if d.Rev != "" {
		out["_rev"] = d.Rev
	}
	if d.Zone != "" {
		out["zone"] = d.Zone
	}
	if d.Decom {
		out["decom"] = true
	}
	return json.Marshal(out)
}

// EnableClusterRequest is the body of POST /_cluster_setup {"action":"enable_cluster"}.
type EnableClusterRequest struct {
	BindAddress string `json:"bind_address,omitempty"`
	Port        int    `json:"port,omitempty"`
	Username    string `json:"username"`
	Password    string `json:"password"`
	NodeCount   int    `json:"node_count"`
}

// AddNodeRequest is the body of POST /_cluster_setup {"action":"add_node"}. Name is the part of the
// Erlang node name before "@"; Host the part after it.
type AddNodeRequest struct {
	Host     string `json:"host"`
	Port     int    `json:"port"`
	Name     string `json:"name,omitempty"`
	Username string `json:"username"`
	Password string `json:"password"`
}

// DBInfo is the subset of GET /{db} (clustered) or of a node-local shard copy's info that the
// controller uses. Cluster is absent for node-local shard copies.
type DBInfo struct {
	DBName      string         `json:"db_name"`
	DocCount    int64          `json:"doc_count"`
	DocDelCount int64          `json:"doc_del_count"`
	UpdateSeq   any            `json:"update_seq"`     // a string on the clustered API, an integer on a shard copy
	UUID        string         `json:"uuid,omitempty"` // a shard copy's file uuid (node-local info only)
	Props       map[string]any `json:"props,omitempty"`
	Cluster     *DBCluster     `json:"cluster,omitempty"`
	Sizes       *DBSizes       `json:"sizes,omitempty"`
}

// DBSizes is the "sizes" object of a database's info: File is the bytes on disk (of one shard copy,
// in node-local info), what balancing copies by size compares.
type DBSizes struct {
	File     int64 `json:"file"`
	External int64 `json:"external"`
	Active   int64 `json:"active"`
}

// DBCluster is the "cluster" object of GET /{db}.
type DBCluster struct {
	Q int `json:"q"`
	N int `json:"n"`
	W int `json:"w"`
	R int `json:"r"`
}

// ShardMap is a document of the node-local _dbs database (/_node/_local/_dbs/{db}): the placement of
// every copy of every range of one database. Fields the controller does not interpret are kept in
// Extra so that a read-modify-write round trip never drops them.
type ShardMap struct {
	ID          string              `json:"_id"`
	Rev         string              `json:"_rev,omitempty"`
	ShardSuffix []int               `json:"shard_suffix"`
	Changelog   [][]string          `json:"changelog"`
	ByNode      map[string][]string `json:"by_node"`
	ByRange     map[string][]string `json:"by_range"`
	Props       map[string]any      `json:"props"`
	Extra       map[string]any      `json:"-"`
}

// SyncCheckpoint is one internal-replication checkpoint of a shard copy: a _local/shard-sync-* doc
// mem3_rep writes on both copies after a push. Seq is the source copy's update_seq the push reached;
// the source and target fields come from the newest entry of its history.
type SyncCheckpoint struct {
	ID         string
	Seq        int64
	SourceNode string
	SourceUUID string
	TargetNode string
	TargetUUID string
}

// SystemInfo is the subset of GET /_node/{node}/_system the controller reads.
type SystemInfo struct {
	Uptime                  int64 `json:"uptime"`
	InternalReplicationJobs int64 `json:"internal_replication_jobs"`
}

// ReplicatorDoc is a document of the _replicator database. Source and Target use the
// {"url":..., "auth":{"basic":{...}}} endpoint form so credentials never travel in URLs.
type ReplicatorDoc struct {
	ID           string              `json:"_id"`
	Rev          string              `json:"_rev,omitempty"`
	Source       ReplicationEndpoint `json:"source"`
	Target       ReplicationEndpoint `json:"target"`
	Continuous   bool                `json:"continuous,omitempty"`
	CreateTarget bool                `json:"create_target,omitempty"`
}

// ReplicationEndpoint is one side of a replication.
type ReplicationEndpoint struct {
	URL  string           `json:"url"`
	Auth *ReplicationAuth `json:"auth,omitempty"`
}

// ReplicationAuth carries basic credentials for a replication endpoint.
type ReplicationAuth struct {
	Basic *BasicAuth `json:"basic,omitempty"`
}

// BasicAuth is a username and password pair. Its String method never prints the password.
type BasicAuth struct {
	Username string `json:"username"`
	Password string `json:"password"`
}

// String redacts the password so a BasicAuth can never leak through %v formatting.
func (b BasicAuth) String() string { return b.Username + ":***" }

// SchedulerDoc is the subset of GET /_scheduler/docs/_replicator/{id} the controller reads.
type SchedulerDoc struct {
	DocID      string         `json:"doc_id"`
	ID         *string        `json:"id"`
	State      *string        `json:"state"`
	Node       string         `json:"node,omitempty"`
	ErrorCount int            `json:"error_count"`
	Info       map[string]any `json:"info,omitempty"`
}
