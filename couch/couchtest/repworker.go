package couchtest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"syscall"
	"time"
)

// runJob is a replication job's worker. It talks to the endpoints over HTTP, like CouchDB's
// replicator, without holding the network lock, and records its progress under the lock, giving up
// as soon as the document changed or went away.
func (nw *Network) runJob(j *repJob, gen int) {
	c := &http.Client{Transport: nw.opts.Replicator.Transport, Timeout: 10 * time.Second}
	// A started job is "running" with info null while it connects and opens its changes feed; the
	// recording saw that for 2.5 s, and its errors ~3 s after the start.
	time.Sleep(nw.opts.Replicator.DocDelay)
	for _, e := range []endpoint{j.src, j.tgt} {
		if reason := checkSession(c, e); reason != "" {
			nw.withJob(j, gen, func() { nw.crash(j, reason) })
			return
		}
	}
	since := "0"
	lastCheckpoint := time.Now()
	for {
		var info struct {
			UpdateSeq any `json:"update_seq"`
		}
		if err := call(c, j.src, http.MethodGet, "", nil, &info); err != nil {
			nw.withJob(j, gen, func() { nw.crash(j, err.Error()) })
			return
		}
		_, last, err := copyChanges(c, j.src, j.tgt, since, func(checked, missing, written int) {
			nw.withJob(j, gen, func() {
				j.stats.checked += checked
				j.stats.missing += missing
				j.stats.read += missing
				j.stats.bulkGet += missing
				j.stats.written += written
			})
		})
		if err != nil {
			nw.withJob(j, gen, func() { nw.crash(j, err.Error()) })
			return
		}
		since = last
		done := false
		ok := nw.withJob(j, gen, func() {
			j.stats.sourceSeq, j.stats.throughSeq = fmt.Sprint(info.UpdateSeq), last
			if j.checkpoint == "" {
				j.checkpoint = "0"
			}
			if !j.continuous {
				nw.completeJob(j)
				done = true
				return
			}
			if time.Since(lastCheckpoint) >= nw.opts.Replicator.CheckpointInterval && (j.checkpoint != last || j.pending == nil) {
				j.checkpoint, j.pending = last, 0
				lastCheckpoint = time.Now()
				if o := nw.nodes[j.node]; o != nil {
					o.stats.checkpoints++
				}
			}
			j.info = j.runInfo()
		})
		if !ok || done {
			return
		}
		time.Sleep(nw.opts.Replicator.PollInterval)
	}
}

// withJob runs f under the lock if the job is still current, and reports whether it was.
func (nw *Network) withJob(j *repJob, gen int, f func()) bool {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	if nw.jobs[j.docID] != j || j.gen != gen {
		return false
	}
	f()
	return true
}

// completeJob ends a one-shot job: it checkpoints, and CouchDB records the outcome in the document,
// which gets a new revision (so deleting it needs that one).
func (nw *Network) completeJob(j *repJob) {
	j.checkpoint = j.stats.throughSeq
	j.state = "completed"
	j.updated = nw.now()
	j.pid = ""
	info := j.runInfo()
	delete(info, "source_seq")
	delete(info, "through_seq")
	j.info = info
	owner := nw.nodes[j.node]
	if owner == nil {
		return
	}
	owner.stats.checkpoints++
	m, ok := owner.shardMap("_replicator")
	if !ok {
		return
	}
	cur := nw.readDoc(owner, m, j.docID)
	if cur == nil || cur.Deleted {
		return
	}
	body := map[string]any{}
	for k, v := range cur.Body {
		body[k] = v
	}
	body["_replication_state"] = "completed"
	body["_replication_state_time"] = timestamp(j.updated)
	body["_replication_stats"] = info
	nw.writeDoc(owner, m, j.docID, newDocRec(revision(revGen(cur.Rev)+1, cur.Rev, false, body), false, body))
}

// checkSession logs in to the endpoint as the replicator's session plugin does, and returns the
// crash reason CouchDB reports when that fails ("" when it worked or there are no credentials).
func checkSession(c *http.Client, e endpoint) string {
	if e.user == "" {
		return ""
	}
	body, _ := json.Marshal(map[string]string{"name": e.user, "password": e.pass})
	resp, err := c.Post(e.base+"/_session", "application/json", bytes.NewReader(body))
	if err != nil {
		return fmt.Sprintf("{replication_auth_error,\n    {session_request_failed,%q,%q,\n        {conn_failed,{error,%s}}}}",
			e.base+"/_session", e.user, connError(err))
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	if resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden {
		return fmt.Sprintf("{replication_auth_error,\n    {session_request_unauthorized,%q,%q}}", e.base+"/_session", e.user)
	}
	return ""
}

func connError(err error) string {
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "econnrefused"
	case errors.Is(err, syscall.EHOSTUNREACH):
		return "ehostunreach"
	case strings.Contains(err.Error(), "no such host"):
		return "nxdomain"
	}
	return "timeout"
}

// call sends one request to path under the endpoint's database URL and decodes the JSON answer.
// Errors never carry credentials: they are set as basic auth, not in the URL.
func call(c *http.Client, e endpoint, method, path string, in, out any) error {
	var rd io.Reader
	if in != nil {
		b, _ := json.Marshal(in)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, e.url+path, rd)
	if err != nil {
		return fmt.Errorf("bad endpoint %s", e.url)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if e.user != "" {
		req.SetBasicAuth(e.user, e.pass)
	}
	resp, err := c.Do(req)
	if err != nil {
		return fmt.Errorf("{conn_failed,{error,%s}}", connError(err))
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode == http.StatusNotFound && path == "" {
		return fmt.Errorf("{db_not_found,<<%q>>}", e.url)
	}
	if resp.StatusCode >= 300 {
		return fmt.Errorf("{http_request_failed,%q,%q,{error,{code,%d}}}", method, e.url+path, resp.StatusCode)
	}
	if out != nil {
		return json.Unmarshal(b, out)
	}
	return nil
}

// copyChanges replicates the source's changes after since to the target: it reads the changes with
// their documents, asks the target which revisions it lacks (_revs_diff) and writes those with
// new_edits false. It returns how many changes it saw and the last sequence.
func copyChanges(c *http.Client, src, tgt endpoint, since string, progress func(checked, missing, written int)) (int, string, error) {
	var feed struct {
		Results []struct {
			ID      string              `json:"id"`
			Changes []map[string]string `json:"changes"`
			Doc     map[string]any      `json:"doc"`
		} `json:"results"`
		LastSeq any `json:"last_seq"`
	}
	if err := call(c, src, http.MethodGet, "_changes?style=all_docs&include_docs=true&since="+since, nil, &feed); err != nil {
		return 0, since, err
	}
	last := fmt.Sprint(feed.LastSeq)
	if len(feed.Results) == 0 {
		return 0, last, nil
	}
	revs := map[string][]string{}
	docs := map[string]map[string]any{}
	for _, r := range feed.Results {
		for _, ch := range r.Changes {
			revs[r.ID] = append(revs[r.ID], ch["rev"])
		}
		docs[r.ID] = r.Doc
	}
	var diff map[string]struct {
		Missing []string `json:"missing"`
	}
	if err := call(c, tgt, http.MethodPost, "_revs_diff", revs, &diff); err != nil {
		return 0, since, err
	}
	var send []map[string]any
	missing := 0
	for id, d := range diff {
		missing += len(d.Missing)
		if docs[id] != nil {
			send = append(send, docs[id])
		}
	}
	if len(send) > 0 {
		if err := call(c, tgt, http.MethodPost, "_bulk_docs", map[string]any{"docs": send, "new_edits": false}, nil); err != nil {
			return 0, since, err
		}
	}
	progress(len(feed.Results), missing, len(send))
	return len(feed.Results), last, nil
}
