package couch

import (
	"context"
	"net/http"
)

func replicatorPath(id string) string { return "/_replicator/" + escape(id) }

// GetReplicatorDoc reads a _replicator document.
func (c *Client) GetReplicatorDoc(ctx context.Context, id string) (ReplicatorDoc, error) {
	var d ReplicatorDoc
	err := c.getJSON(ctx, replicatorPath(id), nil, &d)
	return d, err
}

// PutReplicatorDoc writes a _replicator document. Deterministic ids make a repeat a 409, which is
// returned so the caller can compare and update with the current rev.
func (c *Client) PutReplicatorDoc(ctx context.Context, doc ReplicatorDoc) (string, error) {
	code, data, err := c.do(ctx, request{method: http.MethodPut, path: replicatorPath(doc.ID), body: doc})
	if err != nil {
		return "", err
	}
	var ok okResponse
	if err := decode(http.MethodPut, replicatorPath(doc.ID), code, data, &ok); err != nil {
		return "", err
	}
	return ok.Rev, nil
}

// DeleteReplicatorDoc deletes a _replicator document at rev; 404 means gone already.
func (c *Client) DeleteReplicatorDoc(ctx context.Context, id, rev string) error {
	_, _, err := c.do(ctx, request{method: http.MethodDelete, path: replicatorPath(id), query: map[string][]string{"rev": {rev}}})
	if IsNotFound(err) {
		return nil
	}
	return err
}

// SchedulerDoc reads the scheduler's view of a _replicator document.
func (c *Client) SchedulerDoc(ctx context.Context, id string) (SchedulerDoc, error) {
	var d SchedulerDoc
	err := c.getJSON(ctx, "/_scheduler/docs/_replicator/"+escape(id), nil, &d)
	return d, err
}
