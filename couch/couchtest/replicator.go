package couchtest

import (
	"crypto/md5"
	"encoding/hex"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// ReplicatorOptions time the emulated _replicator scheduler. Zero fields take CouchDB 3.4's defaults
// (or, where CouchDB has no setting, what the recording measured).
type ReplicatorOptions struct {
	// DocDelay is how long the doc processor takes to notice a new document: until then its
	// scheduler doc has state null. Then it is "initializing" for another DocDelay while the
	// replication id is computed, then the job starts, and connects for a third DocDelay before it
	// reports progress or fails. Default 300ms (the recording saw null at 0.08 s and running at
	// 0.61 s).
	DocDelay time.Duration
	// CheckpointInterval is how often a continuous job checkpoints (checkpoint_interval). Default 30s.
	CheckpointInterval time.Duration
	// PollInterval is how often a continuous job looks for new source changes. Default 100ms
	// (CouchDB follows a continuous changes feed, so it sees changes almost at once).
	PollInterval time.Duration
	// RetryInterval is how long a crashed job waits before it is tried again; it doubles with every
	// further error. Default 60s (the recording saw no retry within 40 s).
	RetryInterval time.Duration
	// Transport carries the replicator's HTTP requests (to /_session, _changes, _bulk_docs, ...).
	// Default: a transport that dials what the URL says (emulated nodes listen on loopback).
	Transport http.RoundTripper
}

func (o ReplicatorOptions) withDefaults() ReplicatorOptions {
	if o.DocDelay <= 0 {
		o.DocDelay = 300 * time.Millisecond
	}
	if o.CheckpointInterval <= 0 {
		o.CheckpointInterval = 30 * time.Second
	}
	if o.PollInterval <= 0 {
		o.PollInterval = 100 * time.Millisecond
	}
	if o.RetryInterval <= 0 {
		o.RetryInterval = 60 * time.Second
	}
	if o.Transport == nil {
		o.Transport = &http.Transport{DialContext: (&net.Dialer{Timeout: 5 * time.Second}).DialContext, MaxIdleConnsPerHost: 4,
			IdleConnTimeout: 30 * time.Second}
	}
	return o
}

// endpoint is a replication source or target: its URL without credentials, and the credentials
// (from the auth.basic object or the URL's userinfo), which never leave the emulator.
type endpoint struct {
	url  string // "http://host:port/db/", as the scheduler shows it
	base string // "http://host:port", where /_session lives
	host string // host:port, for the replication id
	path string // "/db"
	user string
	pass string
}

// parseEndpoint reads a "source" or "target" field: a URL string or {"url":..,"auth":{"basic":{..}}}.
func parseEndpoint(v any) (endpoint, bool) {
	var raw, user, pass string
	switch x := v.(type) {
	case string:
		raw = x
	case map[string]any:
		raw, _ = x["url"].(string)
		if a, ok := x["auth"].(map[string]any); ok {
			if b, ok := a["basic"].(map[string]any); ok {
				user, _ = b["username"].(string)
				pass, _ = b["password"].(string)
			}
		}
	default:
		return endpoint{}, false
	}
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return endpoint{}, false
	}
	if u.User != nil {
		user = u.User.Username()
		pass, _ = u.User.Password()
		u.User = nil
	}
	e := endpoint{base: u.Scheme + "://" + u.Host, host: u.Host, path: strings.TrimSuffix(u.Path, "/"), user: user, pass: pass}
	e.url = e.base + e.path + "/"
	return e, true
}

// validateReplicatorDoc is the _replicator database's validate_doc_update as far as the recording
// shows it: a document without a source or target is refused with CouchDB's (odd) reason.
func validateReplicatorDoc(doc map[string]any) (int, string) {
	for _, k := range []string{"source", "target"} {
		if _, ok := parseEndpoint(doc[k]); !ok {
			return http.StatusForbidden, "Missing replicator database"
		}
	}
	return 0, ""
}

// maskCredentials hides passwords in a _replicator document as it is returned: the emulator never
// hands credentials back, whoever asks.
func maskCredentials(doc obj) obj {
	for _, k := range []string{"source", "target"} {
		switch x := doc[k].(type) {
		case string:
			if u, err := url.Parse(x); err == nil && u.User != nil {
				if _, has := u.User.Password(); has {
					u.User = url.UserPassword(u.User.Username(), "***")
					doc[k] = strings.Replace(u.String(), "%2A%2A%2A", "***", 1)
				}
			}
		case map[string]any:
			c := obj{}
			for kk, vv := range x {
				c[kk] = vv
			}
			if a, ok := c["auth"].(map[string]any); ok {
				if b, ok := a["basic"].(map[string]any); ok {
					c["auth"] = obj{"basic": obj{"username": b["username"], "password": "***"}}
				}
			}
			doc[k] = c
		}
	}
	return doc
}

// replicationID is couch_replicator_ids' v4 id in spirit: a hash of the server uuid and each
// endpoint's user, host and path, never the password. CouchDB hashes an Erlang term, so the hex
// differs; what holds is that the same endpoints give the same id, whatever the credentials.
func replicationID(uuid string, src, tgt endpoint, continuous bool) string {
	sum := md5.Sum([]byte(strings.Join([]string{uuid, src.user, src.host, src.path, tgt.user, tgt.host, tgt.path}, "\x00")))
	id := hex.EncodeToString(sum[:])
	if continuous {
		id += "+continuous"
	}
	return id
}
