package couch

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
)

// Up asks GET /_up. The 404 answers (maintenance_mode, nolb, seeding) describe the node, so they are
// returned as values; only transport failures and other codes are errors.
func (c *Client) Up(ctx context.Context) (UpStatus, error) {
	code, data, err := c.do(ctx, request{method: http.MethodGet, path: "/_up"}, http.StatusNotFound)
	if err != nil {
		return UpStatus{}, err
	}
	var body struct {
		Status string `json:"status"`
	}
	if err := decode(http.MethodGet, "/_up", code, data, &body); err != nil {
		return UpStatus{}, err
	}
	if body.Status == "" {
		return UpStatus{}, &DecodeError{Method: http.MethodGet, Path: "/_up", Code: code, Err: errMissing("status")}
	}
	return UpStatus{Code: code, Status: body.Status}, nil
}

// Welcome asks GET /.
func (c *Client) Welcome(ctx context.Context) (Welcome, error) {
	var w Welcome
	if err := c.getJSON(ctx, "/", nil, &w); err != nil {
		return Welcome{}, err
	}
	if w.CouchDB == "" {
		return Welcome{}, &DecodeError{Method: http.MethodGet, Path: "/", Code: http.StatusOK, Err: errMissing("couchdb")}
	}
	return w, nil
}

// LocalNodeName asks GET /_node/_local for this node's Erlang name: the only name to use in _nodes.
func (c *Client) LocalNodeName(ctx context.Context) (string, error) {
	var body struct {
		Name string `json:"name"`
	}
	if err := c.getJSON(ctx, "/_node/_local", nil, &body); err != nil {
		return "", err
	}
	if body.Name == "" {
		return "", &DecodeError{Method: http.MethodGet, Path: "/_node/_local", Code: http.StatusOK, Err: errMissing("name")}
	}
	return body.Name, nil
}

// SetupState asks GET /_cluster_setup. CouchDB computes the state on every call (bind address, admins,
// system databases), so it is always current.
func (c *Client) SetupState(ctx context.Context, ensureDBs ...string) (SetupState, error) {
	var q url.Values
	if len(ensureDBs) > 0 {
		b, _ := json.Marshal(ensureDBs)
		q = url.Values{"ensure_dbs_exist": {string(b)}}
	}
	var body struct {
		State SetupState `json:"state"`
	}
	if err := c.getJSON(ctx, "/_cluster_setup", q, &body); err != nil {
		return "", err
	}
	if body.State == "" {
		return "", &DecodeError{Method: http.MethodGet, Path: "/_cluster_setup", Code: http.StatusOK, Err: errMissing("state")}
	}
	return body.State, nil
}

// EnableCluster posts action enable_cluster. "Cluster is already enabled" (400) is success: the state
// asked for holds.
func (c *Client) EnableCluster(ctx context.Context, r EnableClusterRequest) error {
	body := struct {
		Action string `json:"action"`
		EnableClusterRequest
	}{"enable_cluster", r}
	return c.setupAction(ctx, body, "already enabled")
}

// AddNode posts action add_node. A 409 means the node is already in _nodes. A 201 proves nothing:
// CouchDB answers 201 even when the remote node refused the credentials and nothing was written, so
// callers must check /_membership.
func (c *Client) AddNode(ctx context.Context, r AddNodeRequest) error {
	body := struct {
		Action string `json:"action"`
		AddNodeRequest
	}{"add_node", r}
	err := c.setupAction(ctx, body, "")
	if IsConflict(err) {
		return nil
	}
	return err
}

// FinishCluster posts action finish_cluster, which creates the system databases and copies the admins,
// uuid and cookie secret to every member. "Cluster is already finished" (400) is success.
func (c *Client) FinishCluster(ctx context.Context, ensureDBs ...string) error {
	body := struct {
		Action    string   `json:"action"`
		EnsureDBs []string `json:"ensure_dbs_exist,omitempty"`
	}{"finish_cluster", ensureDBs}
	return c.setupAction(ctx, body, "already finished")
}

func (c *Client) setupAction(ctx context.Context, body any, alreadyReason string) error {
	_, _, err := c.do(ctx, request{method: http.MethodPost, path: "/_cluster_setup", body: body})
	if alreadyReason != "" && IsBadRequest(err) {
		if _, se := statusCode(err); strings.Contains(se.Reason, alreadyReason) {
			return nil
		}
	}
	return err
}

type missingField string

func (m missingField) Error() string { return "missing field " + string(m) }

func errMissing(field string) error { return missingField(field) }
