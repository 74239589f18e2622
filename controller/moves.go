package controller

import (
	"cmp"
	"context"
	"fmt"
	"sync"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"

	"github.com/couchdb-controller/couchdb-controller/controller/placement"
	"github.com/couchdb-controller/couchdb-controller/couch"
)

// applyActions applies a plan in order and stops at the first error. AddCopy and RemoveCopy actions
// of one database become one read-modify-write of its map document (it is one document: several
// concurrent moves of a database cost one GET and one PUT), and a database's _sync_shards is posted
// once per batch of edits. Consecutive map edits are written as waves (mapWaves), each wave's
// databases at once: the drops that release slots first, then the adds. BeforeAction still sees every
// action, in order: a hook that stops at the k-th edit lets the edits before it be written, as if the
// process had died between two single edits.
func (c *Controller) applyActions(ctx context.Context, key cache.ObjectName, st *clusterState, sts *appsv1.StatefulSet, o Observed, actions []Action) error {
	logger := klog.FromContext(ctx)
	synced := map[string]bool{}   // databases whose _sync_shards was posted since their last edit
	adds := map[string][]Action{} // the copies this apply added, by database, for awaitListed
	maps := newMapRevs(o)         // each map as last read or written, the base of the next edit
	hook := func(a Action) error {
		if c.cfg.BeforeAction == nil {
			return nil
		}
		return c.cfg.BeforeAction(ctx, key, a)
	}
	for i := 0; i < len(actions); {
		a := actions[i]
		if isMapEdit(a) {
			j := i + 1
			for j < len(actions) && isMapEdit(actions[j]) {
				j++
			}
			edits, stop := actions[i:j], error(nil)
			for k, b := range edits {
				if err := hook(b); err != nil {
					edits, stop = edits[:k], err
					break
				}
			}
			batches := editBatches(edits)
			errs := allAtOnce(batches, func(b []Action) error { return c.applyBatch(ctx, st, sts, o, maps, b) })
			var failed error
			for k, batch := range batches {
				if errs[k] != nil {
					failed = cmp.Or(failed, errs[k])
					continue
				}
				delete(synced, batch[0].DB)
				st.fills.edited(batch[0].DB)
				st.posts.edited(batch[0].DB)
				for _, b := range batch {
					if b.Kind == ActAddCopy {
						adds[b.DB] = append(adds[b.DB], b)
					}
				}
				c.noteAddedCopies(st, o, batch)
			}
			if err := cmp.Or(failed, stop); err != nil {
				return err
			}
			i = j
			continue
		}
		if a.Kind == ActSyncShards {
			// Every push runs beside the sync (asyncpost.go): each starts its database's fills, and
			// neither the sync nor another push waits for it. The next sync collects the result.
			var stop error
			for i < len(actions) && actions[i].Kind == ActSyncShards {
				b := actions[i]
				i++
				if synced[b.DB] || stop != nil || st.fills.pushedRecently(b.DB, c.cfg.Now()) || st.posts.isRunning(b.DB) {
					continue
				}
				if err := hook(b); err != nil {
					stop = err
					continue
				}
				synced[b.DB] = true
				c.postBeside(ctx, st, sts, o, b, adds[b.DB], st.fills.uncreated(b.DB))
			}
			if stop != nil {
				return stop
			}
			continue
		}
		i++
		if err := hook(a); err != nil {
			return err
		}
		if err := c.apply(ctx, st, sts, o, a); err != nil {
			c.metrics.Action(string(a.Kind), "error")
			return fmt.Errorf("%s: %w", a, err)
		}
		c.metrics.Action(string(a.Kind), "success")
		logger.V(2).Info("Applied action", "action", a.String())
	}
	return nil
}

// noteAddedCopies remembers the copies a written batch added: their database waits for a
// successful _sync_shards (unsynced.go), and the fill clock watches them fill (fillclock.go).
func (c *Controller) noteAddedCopies(st *clusterState, o Observed, batch []Action) {
	now := c.cfg.Now()
	for _, a := range batch {
		if a.Kind != ActAddCopy {
			continue
		}
		st.noteAdded(a.DB)
		var docs int64
		if o.Shards != nil {
			for _, n := range o.Shards.Maps[a.DB].ByRange[a.Range] {
				if s, ok := o.Shards.Stats[placement.CopyKey{DB: a.DB, Range: a.Range, Node: n}]; ok && n != a.Node {
					docs = max(docs, s.Docs+s.Deleted)
				}
			}
		}
		st.fills.added(placement.CopyKey{DB: a.DB, Range: a.Range, Node: a.Node}, now, docs, a.Held)
	}
}

// editBatches groups a run of map edits by database, in the order each database first appears and
// in plan order within one: one read-modify-write per database, all written at once (different
// databases are different documents). The drops that end moves and the adds that take their slots
// go out together: a drop is planned only once its move's new copy is full, so were it to fail, the
// add that took its slot would not add a second fill at once on any node; the next sync counts the
// move as in flight again and starts nothing in its place.
func editBatches(edits []Action) [][]Action {
	var out [][]Action
	at := map[string]int{}
	for _, a := range edits {
		k, ok := at[a.DB]
		if !ok {
			k = len(out)
			at[a.DB] = k
			out = append(out, nil)
		}
		out[k] = append(out[k], a)
	}
	return out
}

// allAtOnce calls fn for every item at once (within inParallel's bound) and returns each one's error.
func allAtOnce[T any](items []T, fn func(T) error) []error {
	errs := make([]error, len(items))
	_ = inParallel(len(items), func(k int) error {
		errs[k] = fn(items[k])
		return nil
	})
	return errs
}

func isMapEdit(a Action) bool { return a.Kind == ActAddCopy || a.Kind == ActRemoveCopy }

// applyBatch writes edits of one database's map in one request, through the node the first names.
func (c *Controller) applyBatch(ctx context.Context, st *clusterState, sts *appsv1.StatefulSet, o Observed, maps *mapRevs, batch []Action) error {
	api, err := c.via(ctx, st, sts, o, batch[0].Via)
	if err == nil {
		err = c.editShardMap(ctx, api, sts, maps, batch)
	}
	result := "success"
	if err != nil {
		result = "error"
	}
	for _, a := range batch {
		c.metrics.Action(string(a.Kind), result)
	}
	if err != nil {
		if len(batch) == 1 {
			return fmt.Errorf("%s: %w", batch[0], err)
		}
		return fmt.Errorf("%d edits of %s's shard map (%s first): %w", len(batch), batch[0].DB, batch[0], err)
	}
	klog.FromContext(ctx).V(2).Info("Applied shard map edits", "db", batch[0].DB, "actions", Plan{Actions: batch}.summary())
	return nil
}

// mapRevs holds, for one apply, each database's map as this sync read it (through the node that
// takes the edits: placement edits through the coordinator, whose _dbs askShards reads) or as the
// apply last wrote it. An edit starts from it and writes with its revision, so a move's edit costs
// one round trip instead of a GET and a PUT; a map that changed since answers 409, and the edit is
// then made again on a fresh read, as before.
type mapRevs struct {
	observed map[string]couch.ShardMap // the sync's read, shared with Observed: never written
	mu       sync.Mutex
	written  map[string]couch.ShardMap // nil value: written, revision unknown
}

func newMapRevs(o Observed) *mapRevs {
	r := &mapRevs{written: map[string]couch.ShardMap{}}
	if o.Shards != nil {
		r.observed = o.Shards.Maps
	}
	return r
}

// base is a copy of db's map to edit, if the apply knows one with its revision.
func (r *mapRevs) base(db string) (couch.ShardMap, bool) {
	if r == nil {
		return couch.ShardMap{}, false
	}
	r.mu.Lock()
	m, ok := r.written[db]
	r.mu.Unlock()
	if !ok {
		m = r.observed[db]
	}
	if m.Rev == "" {
		return couch.ShardMap{}, false
	}
	return m.Clone(), true
}

// wrote records db's map as written; one whose revision is not known is read again before its next
// edit.
func (r *mapRevs) wrote(db string, m couch.ShardMap) {
	if r == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.written[db] = m
}

// editShardMap applies every edit of batch (all of one database) with the documented procedure,
// recording the database's n in a map that has none yet, and writes the map once: first on the map
// maps holds, with its revision, and when that answers 409 (or maps holds none) on a fresh read.
// A repeat after a crash is a no-op; a concurrent edit between the read and the write answers 409
// and the next sync re-plans. If any edit is refused (the last copy of a range), nothing is written.
func (c *Controller) editShardMap(ctx context.Context, api CouchAPI, sts *appsv1.StatefulSet, maps *mapRevs, batch []Action) error {
	db := batch[0].DB
	if m, ok := maps.base(db); ok {
		err := c.writeEdits(ctx, api, sts, maps, m, batch)
		if !couch.IsConflict(err) {
			return err
		}
		// Changed since it was read (by CouchDB, a person, or this apply's own write through a
		// node whose _dbs had not caught up): edit the current map.
	}
	m, err := api.GetShardMap(ctx, db)
	if err != nil {
		return err
	}
	return c.writeEdits(ctx, api, sts, maps, m, batch)
}

// writeEdits applies batch to m and writes it with m's revision.
func (c *Controller) writeEdits(ctx context.Context, api CouchAPI, sts *appsv1.StatefulSet, maps *mapRevs, m couch.ShardMap, batch []Action) error {
	db := batch[0].DB
	type done struct {
		a     Action
		moved bool // the copy itself changed, not only the recorded n
	}
	var changes []done
	for _, a := range batch {
		if a.DB != db {
			return fmt.Errorf("%s in a batch of %s edits", a, db)
		}
		kind := placement.AddCopy
		if a.Kind == ActRemoveCopy {
			kind = placement.RemoveCopy
		}
		had := m.HasCopy(a.Range, a.Node)
		changed, err := placement.Edit(&m, placement.Action{Kind: kind, DB: a.DB, Range: a.Range, Node: a.Node, N: a.NodeCount})
		if err != nil {
			return err
		}
		if changed {
			changes = append(changes, done{a, had != (a.Kind == ActAddCopy)})
		}
	}
	if len(changes) == 0 {
		return nil
	}
	rev, err := api.PutShardMap(ctx, m)
	if err != nil {
		if !couch.IsConflict(err) {
			maps.wrote(db, couch.ShardMap{}) // the write may have landed: read the map again
		}
		c.metrics.ShardMove("error")
		return err
	}
	m.Rev = rev
	maps.wrote(db, m)
	for _, d := range changes {
		switch {
		case !d.moved:
		case d.a.Kind == ActAddCopy:
			c.metrics.ShardMove("added")
			c.recorder.Eventf(sts, corev1.EventTypeNormal, ReasonShardCopyAdded, "Added a copy of %s range %s on %s", d.a.DB, d.a.Range, d.a.Node)
		default:
			c.metrics.ShardMove("removed")
			c.recorder.Eventf(sts, corev1.EventTypeNormal, ReasonShardCopyRemoved, "Removed the copy of %s range %s on %s from the shard map (its file stays on disk)", d.a.DB, d.a.Range, d.a.Node)
		}
	}
	return nil
}

// fillRequeue schedules the next look at moves in flight while the fill clock does not know their
// pace (before the first fill was seen to end), from how long they have been filling: a quarter of
// that, so the look that sees the first fill end comes at most about a quarter late and the pace
// the clock learns from it is at most that slow; never sooner than firstFillStep (a small copy fills
// in about 0.1 s), never later than a second. With a 200 ms floor the bench's first fills (about 0.15 s)
// were seen after 0.37 s: the clock started at less than half the pace, and its probes (fillProbe)
// took six rounds of every slot to find it.
func fillRequeue(waiting time.Duration) time.Duration {
	return min(max(waiting/4, firstFillStep), time.Second)
}

// firstFillStep is the shortest wait between looks while no pace is known.
const firstFillStep = 25 * time.Millisecond

func countKind(actions []Action, kind ActionKind) int {
	n := 0
	for _, a := range actions {
		if a.Kind == kind {
			n++
		}
	}
	return n
}

// fillFence records that node was put in (on) or taken out of maintenance mode for a fill, so that
// observe keeps asking its pod, which fails its readiness probe meanwhile and until the probe's
// next run after the fence ends.
func (c *Controller) fillFence(st *clusterState, node string, on bool) {
	if !on {
		delete(st.fillFenced, node)
		if st.unfenced == nil {
			st.unfenced = map[string]time.Time{}
		}
		st.unfenced[node] = c.cfg.Now()
		return
	}
	if st.fillFenced == nil {
		st.fillFenced = map[string]bool{}
	}
	st.fillFenced[node] = true
	delete(st.unfenced, node)
}

// unfenceGrace is how long a node taken out of maintenance mode is asked although its pod is not
// ready: longer than a readiness probe's period (10 s by default) and its timeout.
const unfenceGrace = time.Minute

// fillFencedOrdinals is the ordinals of the pods whose nodes are fenced for fills (fenced), and of
// those unfenced less than unfenceGrace ago (unfenced), whose pods may not be ready again yet.
func fillFencedOrdinals(st *clusterState, statefulSet string, now time.Time) (fenced, unfenced map[int]bool) {
	fenced, unfenced = map[int]bool{}, map[int]bool{}
	for n := range st.fillFenced {
		if ord, ok := nodeOrdinal(n, statefulSet); ok {
			fenced[ord] = true
		}
	}
	for n, at := range st.unfenced {
		if now.Sub(at) >= unfenceGrace {
			delete(st.unfenced, n)
			continue
		}
		if ord, ok := nodeOrdinal(n, statefulSet); ok {
			unfenced[ord] = true
		}
	}
	return fenced, unfenced
}
