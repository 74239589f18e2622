package controller

import (
	"context"
	"slices"
	"sync"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	"k8s.io/klog/v2"
)

// Posts beside the sync. A _sync_shards that follows an edit adding copies first waits for the
// node's shard cache to list them (listed.go): 15-20 ms on the emulator, a median 27-58 ms on loaded
// real nodes. Waited inside the sync, that held every sync of a concurrent move that long, and the
// syncs ran back to back (controller busy 70-100%), so each finished fill was seen that much later
// and its slot stayed idle: on the emulated move bench the wait was 16 of a sync's 39 ms (p50). The
// wait and the post now run in their own goroutine; the sync goes on to requeue, and the next sync
// collects the result. There a sync with moves took 20 ms and the rebalance went from 1.59x to
// 1.50x of the fill-time bound; on real nodes the run times stayed within their run-to-run spread.
// The other posts (a database still filling, pushed again) run beside the sync as well, with no
// wait for a listing (they add no copy): inside it, on real nodes, they took a median 143 ms of a
// rebalance sync's 753 ms (215 of 978 ms in the drain).
//
// A database with a post running gets no second one, and an edit of it meanwhile makes the running
// post's success count for nothing: copies that edit added may not be listed when it posts, so the
// database stays unsynced (unsynced.go) and a later sync posts again. (An edit that only drops
// copies needs no new post, but treating it so changed nothing measurable on the move bench: fewer
// posts in the rebalance, more in the drain, wall times within the noise.)
//
// A sync that pushes a database still filling (placement asks for a push while a copy is short)
// posts again even when a post of that database finished beside it since it started. Leaving that
// post out (collecting the finished posts before the sync's pushes) cut the emulated rebalance's
// posts from 288 to 222 and moved no wall time there; on real nodes its one run read 18.6 s for
// the rebalance, against 14.2 s and 17.2 s with the second post: not shown to cost anything, but
// not shown to gain either, and the second post may reach copies a source node's shard cache had
// not listed at the first (the post's own node waits for its listing, the sources do not).

type asyncPosts struct {
	wg      sync.WaitGroup
	mu      sync.Mutex
	running map[string]*asyncPost // db -> its post in flight
	done    []*asyncPost
}

type asyncPost struct {
	db    string
	stale bool // the database's map was edited after the post started
	at    time.Time
	err   error
}

// start registers a post of db; false when one is running already.
func (ap *asyncPosts) start(db string) (*asyncPost, bool) {
	ap.mu.Lock()
	defer ap.mu.Unlock()
	if ap.running[db] != nil {
		return nil, false
	}
	if ap.running == nil {
		ap.running = map[string]*asyncPost{}
	}
	p := &asyncPost{db: db}
	ap.running[db] = p
	ap.wg.Add(1)
	return p, true
}

func (ap *asyncPosts) finish(p *asyncPost, at time.Time, err error) {
	ap.mu.Lock()
	defer ap.mu.Unlock()
	p.at, p.err = at, err
	delete(ap.running, p.db)
	ap.done = append(ap.done, p)
	ap.wg.Done()
}

// wait returns once no post is running.
func (ap *asyncPosts) wait() { ap.wg.Wait() }

// running says whether a post of db is in flight.
func (ap *asyncPosts) isRunning(db string) bool {
	ap.mu.Lock()
	defer ap.mu.Unlock()
	return ap.running[db] != nil
}

// edited marks the posts of db stale, running or finished and not yet collected: an edit added
// copies they may not have pushed to. A finished post is collected by the sync after the one that
// edits, and counting it then would cover copies it never saw.
func (ap *asyncPosts) edited(db string) {
	ap.mu.Lock()
	defer ap.mu.Unlock()
	if p := ap.running[db]; p != nil {
		p.stale = true
	}
	for _, p := range ap.done {
		if p.db == db {
			p.stale = true
		}
	}
}

// take returns the finished posts since the last take.
func (ap *asyncPosts) take() []*asyncPost {
	ap.mu.Lock()
	defer ap.mu.Unlock()
	out := ap.done
	ap.done = nil
	return out
}

// collectPosts records the posts that finished since the last sync: a successful one that is not
// stale as a sync of its database (unsynced.go, the fill clock).
func (c *Controller) collectPosts(ctx context.Context, st *clusterState) {
	for _, p := range st.posts.take() {
		if p.err != nil {
			klog.FromContext(ctx).Info("Posting _sync_shards failed; it is posted again", "db", p.db, "err", p.err)
			continue
		}
		if !p.stale {
			st.noteSynced(p.db)
			st.fills.pushed(p.db, p.at)
		}
	}
}

// postBeside starts post (a _sync_shards after an edit that added the copies adds) in its own
// goroutine: it waits for the shard cache to list them, then posts. The next sync collects it.
func (c *Controller) postBeside(ctx context.Context, st *clusterState, sts *appsv1.StatefulSet, o Observed, post Action, adds []Action, uncreated []string) {
	logger := klog.FromContext(ctx)
	api, err := c.via(ctx, st, sts, o, post.Via)
	if err != nil {
		c.metrics.Action(string(post.Kind), "error")
		logger.Info("Posting _sync_shards failed; it is posted again", "db", post.DB, "err", err)
		return
	}
	p, ok := st.posts.start(post.DB)
	if !ok {
		return
	}
	// A held copy's fill starts with this post, once its node lists it (held early, it usually
	// does): the clock times it from now.
	adds = append(slices.Clone(adds), st.fills.posted(post.DB, c.cfg.Now())...)
	targets := map[string]CouchAPI{}
	for _, node := range uncreated {
		if ord, ok := nodeOrdinal(node, o.StatefulSet); ok {
			if t, err := c.via(ctx, st, sts, o, ord); err == nil {
				targets[node] = t
			}
		}
	}
	go func() {
		seedMaps(ctx, api, post.DB, targets)
		if len(adds) > 0 {
			awaitListed(ctx, api, post, adds)
		}
		err := api.SyncShards(ctx, post.DB)
		if err != nil {
			c.metrics.Action(string(post.Kind), "error")
		} else {
			c.metrics.Action(string(post.Kind), "success")
			logger.V(2).Info("Applied action", "action", post.String())
		}
		st.posts.finish(p, c.cfg.Now(), err)
	}()
}
