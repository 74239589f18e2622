package controller

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	appsv1 "k8s.io/api/apps/v1"

	"github.com/couchdb-controller/couchdb-controller/couch"
)

// ReasonAuthSecretMissing: finish_cluster cannot complete because the coordinator has no
// [chttpd_auth] secret to copy to the other nodes.
const ReasonAuthSecretMissing = "AuthSecretMissing"

// syncFailedReason is what CouchDB 3.4 answers (500 setup_error) when finish_cluster cannot copy the
// coordinator's admins, uuid or [chttpd_auth] secret to another node (setup.erl sync_config; recorded
// in couch/couchtest/testdata/couchdb-real-harness.md). A node started without COUCHDB_SECRET has no
// secret, and copying an undefined one fails on every other node, on every retry.
const syncFailedReason = "Cluster setup unable to sync admin passwords"

// setupError is a finish_cluster failure the user has to fix in the pod spec; sync turns it into a
// Warning (setupProblems) and still returns it, so the controller retries with backoff and finishes
// once the pods carry a secret.
type setupError struct {
	problem Problem
	err     error
}

func (e *setupError) Error() string { return e.err.Error() }
func (e *setupError) Unwrap() error { return e.err }

// finishClusterFailed explains a failed finish_cluster when the cause is the coordinator's missing
// [chttpd_auth] secret, and returns err unchanged otherwise: the same answer also comes when a node
// disconnects in the middle of the copy, which retrying fixes by itself. Only the secret's presence
// is read; its value is dropped unlogged.
func finishClusterFailed(ctx context.Context, api CouchAPI, sts *appsv1.StatefulSet, coordinator string, err error) error {
	var se *couch.StatusError
	if !errors.As(err, &se) || se.Code != http.StatusInternalServerError || se.Err != "setup_error" || se.Reason != syncFailedReason {
		return err
	}
	if _, gerr := api.GetConfig(ctx, "_local", "chttpd_auth", "secret"); !couch.IsNotFound(gerr) {
		return err
	}
	return &setupError{err: err, problem: Problem{ReasonAuthSecretMissing, fmt.Sprintf(
		"StatefulSet %s/%s: CouchDB cannot finish cluster setup: pod %s (the setup coordinator) has no [chttpd_auth] secret, so finish_cluster cannot copy it to the other nodes (500 setup_error %q) and the system databases are not created; set COUCHDB_SECRET (or [chttpd_auth] secret in a mounted ini file) to the same value on every pod, for example from a Secret as the Helm chart does; the controller retries with backoff",
		sts.Namespace, sts.Name, coordinator, syncFailedReason)}}
}

// setupProblems are the Warnings a failed apply carries.
func setupProblems(applyErr error) []Problem {
	var se *setupError
	if errors.As(applyErr, &se) {
		return []Problem{se.problem}
	}
	return nil
}
