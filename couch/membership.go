package couch

import (
	"context"
	"net/http"
)

// Membership asks GET /_membership: cluster_nodes are the intended members (the _nodes docs this node
// holds), all_nodes the Erlang nodes it is connected to.
func (c *Client) Membership(ctx context.Context) (Membership, error) {
	var m struct {
		AllNodes     *[]string `json:"all_nodes"`
		ClusterNodes *[]string `json:"cluster_nodes"`
	}
	if err := c.getJSON(ctx, "/_membership", nil, &m); err != nil {
		return Membership{}, err
	}
	if m.AllNodes == nil || m.ClusterNodes == nil {
		return Membership{}, &DecodeError{Method: http.MethodGet, Path: "/_membership", Code: http.StatusOK, Err: errMissing("all_nodes/cluster_nodes")}
	}
	return Membership{AllNodes: *m.AllNodes, ClusterNodes: *m.ClusterNodes}, nil
}

func nodesPath(name string) string { return "/_node/_local/_nodes/" + escape(name) }

// GetNodeDoc reads one _nodes document.
func (c *Client) GetNodeDoc(ctx context.Context, name string) (NodeDoc, error) {
	var d NodeDoc
	if err := c.getJSON(ctx, nodesPath(name), nil, &d); err != nil {
		return NodeDoc{}, err
	}
	return d, nil
}

// AddNodeDoc creates the _nodes document of name with an empty body, which is what CouchDB itself
// writes at boot (same body, same deterministic revision). A 409 means it is there already.
func (c *Client) AddNodeDoc(ctx context.Context, name string) error {
	_, _, err := c.do(ctx, request{method: http.MethodPut, path: nodesPath(name), body: struct{}{}})
	if IsConflict(err) {
		return nil
	}
	return err
}

// PutNodeDoc writes doc (with its _rev when it exists) and returns the new revision.
func (c *Client) PutNodeDoc(ctx context.Context, doc NodeDoc) (string, error) {
	code, data, err := c.do(ctx, request{method: http.MethodPut, path: nodesPath(doc.ID), body: doc})
	if err != nil {
		return "", err
	}
	var ok okResponse
	if err := decode(http.MethodPut, nodesPath(doc.ID), code, data, &ok); err != nil {
		return "", err
	}
	return ok.Rev, nil
}

// DeleteNodeDoc deletes a _nodes document at rev. A 404 means it is gone already.
func (c *Client) DeleteNodeDoc(ctx context.Context, name, rev string) error {
	_, _, err := c.do(ctx, request{method: http.MethodDelete, path: nodesPath(name), query: map[string][]string{"rev": {rev}}})
	if IsNotFound(err) {
		return nil
	}
	return err
}

// RemoveNodeDoc reads the current revision and deletes the document; a concurrent update (409) is
// retried once with a fresh revision. removed says whether this call deleted it: false when it was
// gone already (another controller's or an earlier call's delete, which _membership may not show yet).
func (c *Client) RemoveNodeDoc(ctx context.Context, name string) (removed bool, err error) {
	for range 2 {
		var d NodeDoc
		d, err = c.GetNodeDoc(ctx, name)
		if IsNotFound(err) {
			return false, nil
		}
		if err != nil {
			return false, err
		}
		_, _, err = c.do(ctx, request{method: http.MethodDelete, path: nodesPath(name), query: map[string][]string{"rev": {d.Rev}}})
		switch {
		case err == nil:
			return true, nil
		case IsNotFound(err):
			return false, nil
		case !IsConflict(err):
			return false, err
		}
	}
	return false, err
}
