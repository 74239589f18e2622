package couchtest

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"net/http"
	"sort"
	"time"
)

// repJob is the scheduler's record of one _replicator document: couch_replicator_doc_processor's
// state plus the job couch_replicator_scheduler runs for it.
type repJob struct {
	docID      string
	gen        int    // bumped on every change of the doc; stale timers and workers check it
	state      string // "" (not yet seen: null), initializing, running, crashing, completed
	node       string
	id         string // replication id, "" until computed
	continuous bool
	src, tgt   endpoint
	errorCount int
	info       obj // nil: null
	lastErr    string
	started    time.Time // start_time
	updated    time.Time // last_updated
	history    []obj     // newest first
	pid        string
	stats      repStats
	checkpoint string // checkpointed_source_seq
	pending    any    // changes_pending: null until the first checkpoint
}

// repStats are the counters of a job's info object.
type repStats struct {
	checked, missing, read, written, bulkGet int
	sourceSeq, throughSeq                    string
}

func (nw *Network) now() time.Time { return nw.opts.Clock().UTC() }

func timestamp(t time.Time) string { return t.UTC().Format(time.RFC3339) }

// docWritten tells the replicator that a document changed; only _replicator documents matter.
func (nw *Network) docWritten(db, id string, rec *docRec) {
	if db != "_replicator" || len(id) > 0 && id[0] == '_' {
		return
	}
	j := nw.jobs[id]
	if rec.Deleted {
		if j != nil {
			j.gen++ // stops its timers and worker
			delete(nw.jobs, id)
		}
		return
	}
	if rec.Body["_replication_state"] == "completed" && j != nil {
		return // the scheduler's own rewrite of a finished one-shot job
	}
	src, _ := parseEndpoint(rec.Body["source"])
	tgt, _ := parseEndpoint(rec.Body["target"])
	cont, _ := rec.Body["continuous"].(bool)
	gen := 1
	if j != nil {
		gen = j.gen + 1
		j.gen = gen
	}
	j = &repJob{docID: id, gen: gen, continuous: cont, src: src, tgt: tgt}
	nw.jobs[id] = j
	nw.after(nw.opts.Replicator.DocDelay, j, gen, nw.initializeJob)
}

// after runs f under the network lock after d, unless the job changed meanwhile.
func (nw *Network) after(d time.Duration, j *repJob, gen int, f func(*repJob)) {
	time.AfterFunc(d, func() {
		nw.mu.Lock()
		defer nw.mu.Unlock()
		if nw.jobs[j.docID] == j && j.gen == gen {
			f(j)
		}
	})
}

// initializeJob is the doc processor taking the document: it picks the owner node and starts
// computing the replication id.
func (nw *Network) initializeJob(j *repJob) {
	j.node = nw.replicationOwner(j.docID)
	j.state = "initializing"
	j.started, j.updated = nw.now(), nw.now()
	j.history = []obj{{"timestamp": timestamp(j.started), "type": "added"}}
	nw.after(nw.opts.Replicator.DocDelay, j, j.gen, nw.startJob)
}

// replicationOwner is the node that runs a document's job: mem3:owner, the first of the live nodes
// holding the document's copies after rotating them by crc32 of term_to_binary({<<"_replicator">>,
// DocId}), unless a test decides.
func (nw *Network) replicationOwner(docID string) string {
	var nodes, live []string
	var any *Node
	for _, n := range nw.order {
		if n.running {
			live = append(live, n.name)
			if any == nil {
				any = n
			}
		}
	}
	if any == nil {
		return ""
	}
	if nw.opts.ReplicationOwner != nil {
		return nw.opts.ReplicationOwner(docID, sortStrings(live))
	}
	if m, ok := any.shardMap("_replicator"); ok {
		for _, name := range m.ByRange[rangeOf(m, docID)] {
			if n := nw.nodes[name]; n != nil && n.running {
				nodes = append(nodes, name)
			}
		}
	}
	if len(nodes) == 0 {
		nodes = []string{any.name}
	}
	sort.Strings(nodes)
	key := []byte{131, 104, 2}
	for _, s := range []string{"_replicator", docID} {
		b := []byte{109, 0, 0, 0, 0}
		binary.BigEndian.PutUint32(b[1:], uint32(len(s)))
		key = append(append(key, b...), s...)
	}
	return nodes[crc32.ChecksumIEEE(key)%uint32(len(nodes))]
}

// startJob computes the replication id and starts the job, unless the same replication runs already:
// then this one crashes with CouchDB's duplicate error.
func (nw *Network) startJob(j *repJob) {
	uuid := ""
	if n := nw.nodes[j.node]; n != nil {
		uuid = n.config["couchdb"]["uuid"]
	}
	j.id = replicationID(uuid, j.src, j.tgt, j.continuous)
	j.updated = nw.now()
	for _, o := range nw.jobs {
		if o != j && o.id == j.id && o.state == "running" {
			nw.crash(j, "Duplicate replication running on "+o.node)
			return
		}
	}
	nw.pidSeq++
	j.pid = fmt.Sprintf("<0.%d.0>", 4000+nw.pidSeq)
	j.state = "running"
	j.history = append([]obj{{"timestamp": timestamp(j.updated), "type": "started"}}, j.history...)
	go nw.runJob(j, j.gen)
}

// crash records a failed start or run; the job is tried again after the retry interval.
func (nw *Network) crash(j *repJob, reason string) {
	j.state = "crashing"
	j.errorCount++
	j.lastErr = reason
	j.info = obj{"error": reason}
	j.pid = ""
	j.updated = nw.now()
	j.history = append([]obj{{"timestamp": timestamp(j.updated), "type": "crashed", "reason": reason}}, j.history...)
	wait := nw.opts.Replicator.RetryInterval << min(j.errorCount-1, 5)
	nw.after(wait, j, j.gen, nw.startJob)
}

// scheduler serves /_scheduler/docs[/_replicator[/id]] and /_scheduler/jobs.
func (n *Node) scheduler(r *http.Request, seg []string) (int, any) {
	if r.Method != http.MethodGet {
		return onlyMethods("GET")
	}
	nw := n.net
	switch {
	case len(seg) == 1 && seg[0] == "jobs":
		var jobs []*repJob
		for _, j := range nw.jobs {
			if j.state == "running" || j.state == "crashing" {
				jobs = append(jobs, j)
			}
		}
		sort.Slice(jobs, func(a, b int) bool {
			if jobs[a].id != jobs[b].id {
				return jobs[a].id < jobs[b].id
			}
			return jobs[a].docID < jobs[b].docID
		})
		out := []obj{}
		for _, j := range jobs {
			out = append(out, j.jobView())
		}
		return http.StatusOK, obj{"total_rows": len(out), "offset": 0, "jobs": out}
	case len(seg) >= 1 && seg[0] == "docs" && len(seg) <= 2:
		if len(seg) == 2 && seg[1] != "_replicator" {
			return http.StatusOK, obj{"total_rows": 0, "offset": 0, "docs": []obj{}}
		}
		ids := make([]string, 0, len(nw.jobs))
		for id := range nw.jobs {
			ids = append(ids, id)
		}
		sort.Strings(ids)
		out := []obj{}
		for _, id := range ids {
			out = append(out, nw.jobs[id].docView())
		}
		return http.StatusOK, obj{"total_rows": len(out), "offset": 0, "docs": out}
	case len(seg) == 3 && seg[0] == "docs" && seg[1] == "_replicator":
		j := nw.jobs[seg[2]]
		if j == nil {
			return http.StatusNotFound, errBody("not_found", "missing")
		}
		return http.StatusOK, j.docView()
	}
	return http.StatusNotFound, errBody("not_found", "missing")
}

func nullable(s string) any {
	if s == "" {
		return nil
	}
	return s
}

// docView is the job as /_scheduler/docs shows it; the fields differ by state as in CouchDB.
func (j *repJob) docView() obj {
	out := obj{"database": "_replicator", "doc_id": j.docID, "error_count": j.errorCount}
	switch j.state {
	case "":
		out["id"], out["source"], out["target"], out["state"], out["info"] = nil, j.src.url, j.tgt.url, nil, nil
		out["start_time"], out["last_updated"] = nil, nil
	case "initializing":
		out["id"], out["state"], out["info"], out["node"] = nil, j.state, nil, j.node
		out["start_time"], out["last_updated"] = timestamp(j.started), timestamp(j.updated)
	case "completed":
		out["id"], out["source"], out["target"], out["state"], out["info"] = nil, j.src.url, j.tgt.url, j.state, j.info
		out["start_time"], out["last_updated"] = timestamp(j.started), timestamp(j.updated)
	default:
		out["id"], out["node"], out["source"], out["target"], out["state"] = j.id, j.node, j.src.url, j.tgt.url, j.state
		out["info"] = j.info
		out["start_time"], out["last_updated"] = timestamp(j.started), timestamp(j.updated)
		out["source_proxy"], out["target_proxy"] = nil, nil
	}
	if out["info"] == nil {
		out["info"] = nil // a nil obj would encode as null too; keep the key explicit
	}
	return out
}

// jobView is the job as /_scheduler/jobs shows it.
func (j *repJob) jobView() obj {
	var info any
	if j.state == "running" && j.info != nil {
		info = j.info
	}
	return obj{"database": "_replicator", "id": j.id, "pid": nullable(j.pid), "source": j.src.url, "target": j.tgt.url,
		"user": nil, "doc_id": j.docID, "info": info, "history": j.history, "node": j.node, "start_time": timestamp(j.started)}
}

// runInfo is the info object of a running job.
func (j *repJob) runInfo() obj {
	return obj{"revisions_checked": j.stats.checked, "missing_revisions_found": j.stats.missing, "docs_read": j.stats.read,
		"docs_written": j.stats.written, "changes_pending": j.pending, "doc_write_failures": 0, "bulk_get_docs": j.stats.bulkGet,
		"bulk_get_attempts": j.stats.bulkGet, "checkpointed_source_seq": j.checkpoint, "source_seq": j.stats.sourceSeq,
		"through_seq": j.stats.throughSeq}
}
