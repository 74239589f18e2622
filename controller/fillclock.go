package controller

import (
	"slices"
	"time"

	"github.com/couchdb-controller/couchdb-controller/controller/placement"
	"github.com/couchdb-controller/couchdb-controller/couch"
)

// The fill clock: when to look again at new copies that are filling.
//
// A copy added to a map fills after its database's _sync_shards, at the pace of internal
// replication, which depends on the machine, the documents and the load (88 documents took 0.11 s
// on the recorded 2-core machine). A round of concurrent moves lasts as long as its fills plus the
// wait for the look that sees them done, so a look that comes late leaves every slot idle, and one
// that comes early costs a sync that reads every copy in flight and finds nothing to do. The clock
// learns the pace from the fills it watches:
//   - a fill seen done bounds the pace from below: its documents over the time from its map edit to
//     the look that saw it done;
//   - when that look came after a look that found the copy still short past its expected end, the
//     bound is tight (the end lies between the two looks) and becomes the pace;
//   - when it came at the first look after the expected end, the end may have been earlier, so the
//     clock tries a pace a little faster next time.
//
// The next look is then at the earliest expected end of a copy in flight, or a short step after it
// when that has passed. The clock only schedules; what is safe to do is still decided by placement
// from what the look reads.
type fillClock struct {
	copies map[placement.CopyKey]*fillTrack
	rate   float64 // documents per second; 0 until a fill has been seen to end
	// typical is the documents of the fills seen to end, averaged: what a copy whose range's counts
	// were not read when it was added is expected to hold.
	typical float64
	// lead is how long a sync takes to reach its read of the counts, averaged: a look is started
	// that much before the fill it is for is expected to end.
	lead time.Duration
	// pushes is when each database's last _sync_shards succeeded, since its last map edit.
	pushes map[string]time.Time
	// longest is the longest a fill seen to end took (from its map edit to the look that saw it
	// done): no range is left unread longer than that after its edit (notDue), whatever the pace says.
	longest time.Duration
}

// repushAfter is how long a database whose new copies are filling goes without another
// _sync_shards. Placement asks for one at every look while a copy is short, which keeps a fill going
// if its push died; but the push a successful post started is still running, and each post makes
// every copy of the database push to every other (one request, and the cluster's work, per look).
const repushAfter = 5 * time.Second

// emptyRepushAfter is how long after a post a watched copy may still read empty before the
// database is pushed again, repushAfter or not. A post fills nothing of a copy its node's
// mem3_shards cache does not list yet; the post now waits for the cache to list the copies
// (listed.go), but the wait is bounded, and a push that meets the target's file being created by
// another push ends with file_exists, which mem3_sync retries only after 5 s (one copy of a wave of
// 20 in TestRealSyncShardsRightAfterMapEdit). Before the wait, such copies stayed at 0 documents
// until the next post in 4 of the 71 moves of a 30-database drain, and 16 s of its 32 s went to
// those waits; each filled within 0.1 s of the next post. Posting again is cheap: mem3_sync drops
// a push already queued for the same copy.
const emptyRepushAfter = 500 * time.Millisecond

// pushedRecently says whether a push of db may be left out now: the clock watches a copy of db
// filling, and a post of db succeeded less than repushAfter ago with no map edit of db since, and
// no watched copy of db read empty emptyRepushAfter or more after that post.
func (fc *fillClock) pushedRecently(db string, now time.Time) bool {
	at, ok := fc.pushes[db]
	if !ok || now.Sub(at) >= repushAfter {
		return false
	}
	watched := false
	for k, t := range fc.copies {
		if k.DB != db {
			continue
		}
		if !t.emptyAt.IsZero() && t.emptyAt.Sub(at) >= emptyRepushAfter || !t.missingAt.IsZero() && t.missingAt.Sub(at) >= emptyRepushAfter {
			return false // the post did not reach it
		}
		watched = true
	}
	return watched
}

// pushed records a successful _sync_shards of db.
func (fc *fillClock) pushed(db string, now time.Time) {
	if fc.pushes == nil {
		fc.pushes = map[string]time.Time{}
	}
	fc.pushes[db] = now
}

// edited records a map edit of db: its next push is due at once.
func (fc *fillClock) edited(db string) { delete(fc.pushes, db) }

type fillTrack struct {
	start time.Time // when the map edit that added it was written (its _sync_shards follows)
	docs  int64     // documents it must hold: the range's largest other copy when last read
	late  bool      // a look after its expected end found it short
	// emptyAt is when the last look read it holding nothing while its range holds documents; zero
	// once it holds some.
	emptyAt time.Time
	// missingAt is when the last look found no file for it on its node (404): no push has created
	// it. Zero once a look reads it.
	missingAt time.Time
	// held: its post waits for a fill slot (placement/held.go); start is reset when it is posted.
	held bool
}

// heldDBs lists the databases with a held copy the clock watches that is still in its map.
func (fc *fillClock) heldDBs(maps map[string]couch.ShardMap) map[string]bool {
	var out map[string]bool
	for k, t := range fc.copies {
		if m, ok := maps[k.DB]; t.held && ok && m.HasCopy(k.Range, k.Node) {
			if out == nil {
				out = map[string]bool{}
			}
			out[k.DB] = true
		}
	}
	return out
}

// posted records that a post of db starts: its held copies start filling now. It returns them, as
// the adds that wrote them.
func (fc *fillClock) posted(db string, now time.Time) []Action {
	var out []Action
	for k, t := range fc.copies {
		if k.DB == db && t.held {
			t.held, t.start = false, now
			out = append(out, Action{Kind: ActAddCopy, DB: k.DB, Range: k.Range, Node: k.Node})
		}
	}
	return out
}

// missing records that a look at now found no file for the watched copy k.
func (fc *fillClock) missing(k placement.CopyKey, now time.Time) {
	if t, ok := fc.copies[k]; ok {
		t.missingAt = now
	}
}

// uncreated lists the nodes of db's watched copies that looks have found without a file for
// emptyRepushAfter or more since their map edit. A post creates a copy's file within that on a
// healthy cluster; one still missing points at the node's own _dbs lacking the database (see
// seedMaps).
func (fc *fillClock) uncreated(db string) []string {
	var out []string
	for k, t := range fc.copies {
		if k.DB == db && !t.missingAt.IsZero() && t.missingAt.Sub(t.start) >= emptyRepushAfter && !slices.Contains(out, k.Node) {
			out = append(out, k.Node)
		}
	}
	slices.Sort(out)
	return out
}

const (
	// fillProbe is how much faster than the pace shown the clock tries after a look that may have
	// come late.
	fillProbe = 1.1
	// minFillStep is the shortest wait between looks at filling copies: a look reads every copy in
	// flight, which takes a few milliseconds itself.
	minFillStep = 2 * time.Millisecond
	// maxFillStep is the longest: a long fill is still looked at every second, for its progress.
	maxFillStep = time.Second
	// minPaceDocs is the fewest documents a fill must move to teach the clock the pace. A copy of a
	// range with a document or two (_users, _replicator) takes as long as the push takes to start:
	// on real CouchDB 3.4 nodes that read as about one document per second, and a pace that slow made
	// every larger copy look minutes from done.
	minPaceDocs = 10
)

// added starts watching a copy a map edit just added, with the documents its range held then;
// held when its post waits for a slot.
func (fc *fillClock) added(k placement.CopyKey, at time.Time, docs int64, held bool) {
	if fc.copies == nil {
		fc.copies = map[placement.CopyKey]*fillTrack{}
	}
	fc.copies[k] = &fillTrack{start: at, docs: docs, held: held}
}

// look updates the clock from a read of the shard maps and copy counts by the sync that started at
// syncStart. A copy no longer in its map (the move was undone) is forgotten; one whose counts were
// not read is kept.
func (fc *fillClock) look(syncStart time.Time, sh *ShardObs) {
	for db, at := range fc.pushes {
		if syncStart.Sub(at) >= repushAfter {
			delete(fc.pushes, db)
		}
	}
	if sh == nil || len(fc.copies) == 0 || sh.StatsAt.IsZero() {
		return
	}
	now := sh.StatsAt
	if d := now.Sub(syncStart); d >= 0 {
		fc.lead = (4*fc.lead + d) / 5
	}
	var lower, tight float64 // the largest lower bound shown, and the tight one, this look
	probe := false
	for k, t := range fc.copies {
		m, ok := sh.Maps[k.DB]
		if !ok || !m.HasCopy(k.Range, k.Node) {
			delete(fc.copies, k)
			continue
		}
		s, read := sh.Stats[k]
		if !read {
			continue
		}
		var want int64
		for _, n := range m.ByRange[k.Range] {
			if o, ok := sh.Stats[placement.CopyKey{DB: k.DB, Range: k.Range, Node: n}]; ok && n != k.Node {
				want = max(want, o.Docs+o.Deleted)
			}
		}
		if want > 0 {
			t.docs = want
		}
		if t.held {
			// Not filling: it says nothing of the pace. One a write filled (mem3 pushes a range's
			// writes to every copy) is done, and no longer held.
			if s.Docs+s.Deleted >= t.docs && t.docs > 0 {
				delete(fc.copies, k)
			}
			continue
		}
		elapsed := now.Sub(t.start).Seconds()
		t.emptyAt, t.missingAt = time.Time{}, time.Time{}
		if s.Docs+s.Deleted == 0 && t.docs > 0 {
			t.emptyAt = now
		}
		if s.Docs+s.Deleted < t.docs {
			if fc.rate > 0 && elapsed >= float64(t.docs)/fc.rate {
				t.late = true
			}
			continue
		}
		delete(fc.copies, k)
		if t.docs == 0 || elapsed <= 0 {
			continue // nothing to fill: it says nothing of the pace
		}
		if fc.typical == 0 {
			fc.typical = float64(t.docs)
		}
		fc.typical = 0.8*fc.typical + 0.2*float64(t.docs)
		fc.longest = max(fc.longest, now.Sub(t.start))
		if t.docs < minPaceDocs {
			continue // its time is the push's own latency, not a pace
		}
		r := float64(t.docs) / elapsed
		lower = max(lower, r)
		if t.late {
			tight = max(tight, r)
		} else {
			probe = true
		}
	}
	switch {
	case tight > 0:
		fc.rate = tight
	case lower > 0:
		fc.rate = max(fc.rate, lower)
		if probe {
			fc.rate *= fillProbe
		}
	}
}

// expected is how long the clock expects a watched copy's fill to take, from its map edit; false
// before a fill has been seen to end, or when neither its documents nor a typical fill are known.
func (fc *fillClock) expected(t *fillTrack) (time.Duration, bool) {
	docs := float64(t.docs)
	if docs <= 0 {
		docs = fc.typical
	}
	if fc.rate <= 0 || docs <= 0 {
		return 0, false
	}
	return time.Duration(docs / fc.rate * float64(time.Second)), true
}

// dueShare is how close to its expected end a copy's fill must be for a look to read its range: the
// counts of a range read before that would only show the copy short.
const dueShare = 10

// notDue lists the ranges whose counts a look at now may leave unread: a copy of the range the clock
// watches is expected to fill for longer than a tenth of its fill (and has not been seen short past
// its end). Placement waits for a range whose counts it lacks, as for one still catching up, so this
// only saves reads: during concurrent moves most of a look's ranges are mid-fill, and reading every
// copy of each (n+1 of them) made most of a look's requests and of its time.
//
// A pace that is wrong must not hold a move back: the expected fill counts for at most the longest
// fill seen and at most maxFillStep, after which the range is read at every look, as a copy the
// clock does not watch is. (A pace learned from a one-document fill on real nodes once left a range
// unread for minutes, and the move waited that long for counts it never asked for.)
func (fc *fillClock) notDue(now time.Time) map[placement.RangeRef]bool {
	var out map[placement.RangeRef]bool
	for k, t := range fc.copies {
		if t.held {
			// Nothing to see before its post: its range is left unread.
			if out == nil {
				out = map[placement.RangeRef]bool{}
			}
			out[placement.RangeRef{DB: k.DB, Range: k.Range}] = true
			continue
		}
		expect, ok := fc.expected(t)
		if !ok || t.late || now.Before(t.start) {
			continue
		}
		hold := min(expect, fc.longest, maxFillStep)
		if t.start.Add(hold - hold/dueShare).After(now) {
			if out == nil {
				out = map[placement.RangeRef]bool{}
			}
			out[placement.RangeRef{DB: k.DB, Range: k.Range}] = true
		}
	}
	return out
}

// due keeps the copies of keys whose ranges a look at now must read (notDue).
func (fc *fillClock) due(keys []placement.CopyKey, now time.Time) []placement.CopyKey {
	skip := fc.notDue(now)
	if len(skip) == 0 {
		return keys
	}
	out := keys[:0:0]
	for _, k := range keys {
		if !skip[placement.RangeRef{DB: k.DB, Range: k.Range}] {
			out = append(out, k)
		}
	}
	return out
}

// next is how long to wait before looking at the copies in flight again, and whether the clock
// knows: it does not before a fill has been seen to end, nor when no copy it watches is short.
func (fc *fillClock) next(now time.Time) (time.Duration, bool) {
	if fc.rate <= 0 || len(fc.copies) == 0 {
		return 0, false
	}
	var wait time.Duration
	known := false
	for _, t := range fc.copies {
		expect, ok := fc.expected(t)
		if !ok || t.held {
			continue // a held copy is posted by the look that frees a slot, which a fill's end brings
		}
		w := t.start.Add(expect).Sub(now) - fc.lead
		switch {
		case t.late:
			w = max(minFillStep, expect/20)
		case w < minFillStep:
			w = minFillStep
		}
		if !known || w < wait {
			wait, known = w, true
		}
	}
	return min(wait, maxFillStep), known
}

// onlyMoves says whether all a plan has in flight is shard moves: its actions edit maps or push
// copies, and what it waits for, if anything, is copies filling. Then the fill clock, not the quick
// requeue after acting, says when to look again.
func onlyMoves(p Plan) bool {
	if len(p.Actions) == 0 {
		return p.Filling
	}
	for _, a := range p.Actions {
		if !isMapEdit(a) && a.Kind != ActSyncShards {
			return false
		}
	}
	return true
}
