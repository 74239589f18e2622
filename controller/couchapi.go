package controller

import (
	"context"

	"github.com/couchdb-controller/couchdb-controller/couch"
)

// CouchAPI is the part of couch.Client the controller calls.
type CouchAPI interface {
	Welcome(ctx context.Context) (couch.Welcome, error)
	LocalNodeName(ctx context.Context) (string, error)
	Membership(ctx context.Context) (couch.Membership, error)
	SetupState(ctx context.Context, ensureDBs ...string) (couch.SetupState, error)
	EnableCluster(ctx context.Context, r couch.EnableClusterRequest) error
	AddNodeDoc(ctx context.Context, name string) error
	RemoveNodeDoc(ctx context.Context, name string) (removed bool, err error)
	GetNodeDoc(ctx context.Context, name string) (couch.NodeDoc, error)
	PutNodeDoc(ctx context.Context, doc couch.NodeDoc) (string, error)
	FinishCluster(ctx context.Context, ensureDBs ...string) error
	AllDBs(ctx context.Context) ([]string, error)
	GetShardMap(ctx context.Context, db string) (couch.ShardMap, error)
	ShardMapsSince(ctx context.Context, since string) (couch.ShardMapChanges, error)
	PutShardMap(ctx context.Context, m couch.ShardMap) (string, error)
	SeedShardMap(ctx context.Context, m couch.ShardMap) error
	Shards(ctx context.Context, db string) (map[string][]string, error)
	SyncShards(ctx context.Context, db string) error
	ShardCopyInfo(ctx context.Context, node, shard string) (couch.DBInfo, error)
	ShardCheckpoints(ctx context.Context, node, shard string) ([]couch.SyncCheckpoint, error)
	CreateDB(ctx context.Context, name string, q, n int) error
	MaintenanceMode(ctx context.Context, node string) (string, error)
	SetMaintenanceMode(ctx context.Context, node, value string) (string, error)
	GetConfig(ctx context.Context, node, section, key string) (string, error)
	SetConfig(ctx context.Context, node, section, key, value string) (string, error)
	DeleteConfig(ctx context.Context, node, section, key string) (string, error)
	ConfigSection(ctx context.Context, node, section string) (map[string]string, error)
}

// Endpoint is where one CouchDB node answers.
type Endpoint struct {
	URL string // scheme://podIP:port
	CA  []byte // PEM CA bundle for https; nil for the system pool
}

// Credentials are a CouchDB server admin's name and password.
type Credentials struct {
	Username string
	Password string
}

// String never shows the password.
func (c Credentials) String() string { return c.Username + ":***" }

// GoString never shows the password either.
func (c Credentials) GoString() string { return c.String() }

// CouchFactory makes a client for one node. main builds clients over one shared transport.
type CouchFactory func(endpoint Endpoint, creds Credentials) (CouchAPI, error)
