package controller

import (
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/couchdb-controller/couchdb-controller/controller/placement"
	"github.com/couchdb-controller/couchdb-controller/couch"
)

// fillWorld is one range of db1 on three nodes plus the copy being filled on a fourth.
func fillWorld(at time.Time, docs, newDocs int64) *ShardObs {
	const rng = "00000000-ffffffff"
	m := couch.ShardMap{ID: "db1", ByNode: map[string][]string{}, ByRange: map[string][]string{}}
	stats := map[placement.CopyKey]placement.CopyStat{}
	for i := range 4 {
		m.AddCopy(rng, nodeName(i))
		stats[placement.CopyKey{DB: "db1", Range: rng, Node: nodeName(i)}] = placement.CopyStat{Docs: docs}
	}
	stats[newCopy] = placement.CopyStat{Docs: newDocs}
	return &ShardObs{Maps: map[string]couch.ShardMap{"db1": m}, Stats: stats, StatsAt: at}
}

var newCopy = placement.CopyKey{DB: "db1", Range: "00000000-ffffffff", Node: nodeName(3)}

func TestFillClock(t *testing.T) {
	t0 := time.Date(2026, 12, 5, 12, 0, 0, 0, time.UTC)
	ms := func(n int) time.Time { return t0.Add(time.Duration(n) * time.Millisecond) }
	type look struct {
		at      int   // ms after the add when the counts were read
		filled  int64 // documents the new copy holds then (of 100)
		gone    bool  // the copy is no longer in the map
		wantOK  bool  // next knows when to look
		wantMs  int   // and says to wait this long (ms), when wantOK
		wantRat float64
	}
	for _, tc := range []struct {
		name  string
		rate  float64 // documents per second known before the add
		docs  int64   // the range's documents when the copy was added (0: not read)
		typ   float64
		looks []look
	}{
		{name: "no pace known: the caller's schedule", looks: []look{
			{at: 50, filled: 0, wantOK: false},
			// Done at the second look: 100 documents in at most 200 ms, tried 10% faster next.
			{at: 200, filled: 100, wantOK: false, wantRat: 550},
		}},
		{name: "pace known: the look is at the expected end", rate: 1000, docs: 100, looks: []look{
			{at: 0, filled: 0, wantOK: true, wantMs: 100},
			{at: 60, filled: 40, wantOK: true, wantMs: 40},
		}},
		{name: "short past the expected end: short steps, then the pace is what it showed", rate: 1000, docs: 100, looks: []look{
			{at: 100, filled: 60, wantOK: true, wantMs: 5},
			{at: 125, filled: 100, wantOK: false, wantRat: 800},
		}},
		{name: "done at the first look: tried faster", rate: 1000, docs: 100, looks: []look{
			{at: 100, filled: 100, wantOK: false, wantRat: 1100},
		}},
		{name: "counts unread at the add: the typical fill", rate: 1000, typ: 300, looks: []look{
			{at: 0, filled: -1, wantOK: true, wantMs: 300},
		}},
		{name: "a long fill is looked at every second", rate: 10, docs: 100, looks: []look{
			{at: 0, filled: 0, wantOK: true, wantMs: 1000},
		}},
		{name: "an undone move is forgotten", rate: 1000, docs: 100, looks: []look{
			{at: 50, gone: true, wantOK: false, wantRat: 1000},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fc := &fillClock{rate: tc.rate, typical: tc.typ}
			fc.added(newCopy, t0, tc.docs, false)
			for i, l := range tc.looks {
				if l.filled >= 0 {
					sh := fillWorld(ms(l.at), 100, l.filled)
					if l.gone {
						m := sh.Maps["db1"]
						m.RemoveCopy(newCopy.Range, newCopy.Node)
						sh.Maps["db1"] = m
					}
					fc.look(ms(l.at), sh) // the counts read at the sync's start: no lead
				}
				w, ok := fc.next(ms(l.at))
				if ok != l.wantOK || ok && w != time.Duration(l.wantMs)*time.Millisecond {
					t.Errorf("look %d: next = %v, %v; want %v, %v", i, w, ok, time.Duration(l.wantMs)*time.Millisecond, l.wantOK)
				}
				if l.wantRat > 0 && (fc.rate < l.wantRat*0.999 || fc.rate > l.wantRat*1.001) {
					t.Errorf("look %d: pace %.1f documents/s, want %.1f", i, fc.rate, l.wantRat)
				}
			}
		})
	}
}

// The lead: a sync that reads the counts 15 ms after it starts is started 15 ms before the end.
func TestFillClockStartsTheLookEarlyByTheLead(t *testing.T) {
	t0 := time.Date(2026, 12, 5, 12, 0, 0, 0, time.UTC)
	fc := &fillClock{rate: 1000, lead: 15 * time.Millisecond}
	fc.added(newCopy, t0, 100, false)
	if w, ok := fc.next(t0); !ok || w != 85*time.Millisecond {
		t.Errorf("next = %v, %v; want 85ms", w, ok)
	}
}

func TestEditBatches(t *testing.T) {
	add := func(db string) Action { return Action{Kind: ActAddCopy, DB: db} }
	rm := func(db string) Action { return Action{Kind: ActRemoveCopy, DB: db} }
	edits := []Action{rm("a"), rm("b"), rm("a"), add("c"), add("c"), rm("d"), add("e"), add("a")}
	var got []string
	for _, b := range editBatches(edits) {
		s := b[0].DB + ":"
		for _, a := range b {
			s += string(a.Kind)[0:1]
		}
		got = append(got, s)
	}
	// One write per database, in the order the databases first appear, its edits in plan order.
	if diff := cmp.Diff([]string{"a:RRA", "b:R", "c:AA", "d:R", "e:A"}, got); diff != "" {
		t.Errorf("batches (-want +got):\n%s", diff)
	}
}

// A database with a copy filling gets one push per map edit, and another only after repushAfter;
// one without (a restarted member catching up) gets one at every look.
// A copy the post did not reach (it reads empty a while after it) gets another post before
// repushAfter; one that is filling, or was read empty too soon after the post to tell, does not.
func TestPushedAgainWhenTheCopyStaysEmpty(t *testing.T) {
	t0 := time.Date(2026, 12, 5, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name     string
		readAt   time.Duration // after the post
		newDocs  int64
		leaveOut bool
	}{
		{name: "empty half a second after the post: pushed again", readAt: emptyRepushAfter, newDocs: 0, leaveOut: false},
		{name: "empty right after the post: too soon to tell", readAt: 100 * time.Millisecond, newDocs: 0, leaveOut: true},
		{name: "filling: its push is running", readAt: 2 * time.Second, newDocs: 10, leaveOut: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fc := &fillClock{rate: 1} // a pace so slow that no look finds the copy late
			fc.added(newCopy, t0, 100, false)
			fc.pushed("db1", t0)
			fc.look(t0.Add(tc.readAt), fillWorld(t0.Add(tc.readAt), 100, tc.newDocs))
			if got := fc.pushedRecently("db1", t0.Add(tc.readAt)); got != tc.leaveOut {
				t.Errorf("left out %v, want %v", got, tc.leaveOut)
			}
		})
	}
}

func TestPushedRecently(t *testing.T) {
	t0 := time.Date(2026, 12, 5, 12, 0, 0, 0, time.UTC)
	fc := &fillClock{}
	fc.pushed("db2", t0)
	if fc.pushedRecently("db2", t0.Add(time.Second)) {
		t.Error("db2 has no copy filling: its pushes are not left out")
	}
	fc.added(newCopy, t0, 100, false)
	fc.pushed("db1", t0)
	for _, tc := range []struct {
		after time.Duration
		edit  bool
		want  bool
	}{
		{after: time.Second, want: true},
		{after: repushAfter, want: false},
		{after: time.Second, edit: true, want: false},
	} {
		if tc.edit {
			fc.edited("db1")
		}
		if got := fc.pushedRecently("db1", t0.Add(tc.after)); got != tc.want {
			t.Errorf("%v after the push (edit %v): left out %v, want %v", tc.after, tc.edit, got, tc.want)
		}
	}
}

// A look reads the counts of a range only once the clock expects its new copy to be (nearly)
// filled: the copies of a range mid-fill are left unread, the other ranges' copies are all read.
func TestFillClockLeavesRangesMidFillUnread(t *testing.T) {
	t0 := time.Date(2026, 12, 5, 12, 0, 0, 0, time.UTC)
	other := placement.CopyKey{DB: "db2", Range: "00000000-7fffffff", Node: nodeName(1)}
	keys := []placement.CopyKey{
		{DB: newCopy.DB, Range: newCopy.Range, Node: nodeName(0)},
		newCopy,
		other,
	}
	for _, tc := range []struct {
		name     string
		rate     float64
		docs     int64
		longest  time.Duration // the longest fill seen
		late     bool
		at       time.Duration // after the add
		wantRead int
	}{
		{name: "no pace known: every copy read", rate: 0, docs: 100, longest: time.Second, at: 10 * time.Millisecond, wantRead: 3},
		{name: "mid-fill: its range left unread", rate: 1000, docs: 100, longest: time.Second, at: 50 * time.Millisecond, wantRead: 1},
		{name: "within a tenth of its end: read", rate: 1000, docs: 100, longest: time.Second, at: 91 * time.Millisecond, wantRead: 3},
		{name: "past its end: read", rate: 1000, docs: 100, longest: time.Second, at: 150 * time.Millisecond, wantRead: 3},
		{name: "seen short past its end before: read at every look", rate: 1000, docs: 100, longest: time.Second, late: true, at: 50 * time.Millisecond, wantRead: 3},
		// A pace far too slow (1 document/s: 100 s for this copy) holds the range back no longer
		// than the longest fill seen, nor than maxFillStep.
		{name: "pace too slow: unread while within the longest fill seen", rate: 1, docs: 100, longest: 200 * time.Millisecond, at: 150 * time.Millisecond, wantRead: 1},
		{name: "pace too slow: read once past the longest fill seen", rate: 1, docs: 100, longest: 200 * time.Millisecond, at: 190 * time.Millisecond, wantRead: 3},
		{name: "pace too slow: read after maxFillStep, however long fills were", rate: 1, docs: 100, longest: time.Minute, at: maxFillStep, wantRead: 3},
		{name: "a long fill: read at every look after maxFillStep", rate: 10, docs: 10000, longest: time.Hour, at: 2 * maxFillStep, wantRead: 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fc := &fillClock{rate: tc.rate, longest: tc.longest}
			fc.added(newCopy, t0, tc.docs, false)
			fc.copies[newCopy].late = tc.late
			got := fc.due(slices.Clone(keys), t0.Add(tc.at))
			if len(got) != tc.wantRead {
				t.Fatalf("read %v, want %d of %v", got, tc.wantRead, keys)
			}
			if !slices.Contains(got, other) {
				t.Errorf("the range with no copy filling was left unread: %v", got)
			}
		})
	}
}

// A copy of a range with a document or two fills in the push's own latency: it must not teach the
// clock a pace (on real nodes that read as one document per second), but it does bound how long a
// range is left unread.
func TestFillClockLearnsNoPaceFromTinyFills(t *testing.T) {
	t0 := time.Date(2026, 12, 5, 12, 0, 0, 0, time.UTC)
	fc := &fillClock{}
	fc.added(newCopy, t0, 1, false)
	sh := fillWorld(t0.Add(time.Second), 1, 1)
	fc.look(t0.Add(time.Second), sh)
	if fc.rate != 0 {
		t.Errorf("a one-document fill set the pace to %v documents/s", fc.rate)
	}
	if fc.longest != time.Second {
		t.Errorf("longest fill %v, want 1s", fc.longest)
	}
	if len(fc.copies) != 0 {
		t.Errorf("the filled copy is still watched: %v", fc.copies)
	}
}

func TestFillRequeue(t *testing.T) {
	for _, tc := range []struct{ waiting, want time.Duration }{
		{0, 25 * time.Millisecond},
		{80 * time.Millisecond, 25 * time.Millisecond},
		{400 * time.Millisecond, 100 * time.Millisecond},
		{time.Minute, time.Second},
	} {
		if got := fillRequeue(tc.waiting); got != tc.want {
			t.Errorf("fillRequeue(%v) = %v, want %v", tc.waiting, got, tc.want)
		}
	}
}

// A held copy (its post waits for a fill slot, placement/held.go) is not filling: no look is
// scheduled for it and its range is left unread; its database is held while the copy is in its
// map; the post that starts its fill returns it (to wait for its listing) and starts its clock.
func TestFillClockHeldCopy(t *testing.T) {
	t0 := time.Date(2026, 12, 5, 12, 0, 0, 0, time.UTC)
	fc := &fillClock{rate: 1000, longest: time.Second}
	fc.added(newCopy, t0, 100, true)
	world := fillWorld(t0.Add(50*time.Millisecond), 100, 0)
	if got := fc.heldDBs(world.Maps); !got["db1"] {
		t.Errorf("held databases %v, want db1", got)
	}
	if w, ok := fc.next(t0.Add(10 * time.Millisecond)); ok {
		t.Errorf("a look in %v for a held copy", w)
	}
	if len(fc.due([]placement.CopyKey{newCopy}, t0.Add(10*time.Second))) != 0 {
		t.Error("a held copy's range is read")
	}
	fc.look(t0, world)
	if fc.rate != 1000 || fc.copies[newCopy] == nil {
		t.Errorf("a look at a held copy changed the pace (%v) or forgot it", fc.rate)
	}
	post := t0.Add(300 * time.Millisecond)
	want := []Action{{Kind: ActAddCopy, DB: newCopy.DB, Range: newCopy.Range, Node: newCopy.Node}}
	if diff := cmp.Diff(want, fc.posted("db1", post)); diff != "" {
		t.Errorf("posted (-want +got):\n%s", diff)
	}
	if len(fc.heldDBs(world.Maps)) != 0 {
		t.Error("db1 still held after its post")
	}
	if w, ok := fc.next(post); !ok || w != 100*time.Millisecond-fc.lead {
		t.Errorf("next look %v (%v) after the post, want the 100 ms fill timed from the post", w, ok)
	}
	gone := fillWorld(t0, 100, 0)
	m := gone.Maps["db1"]
	m.RemoveCopy(newCopy.Range, newCopy.Node)
	gone.Maps["db1"] = m
	fc.added(newCopy, t0, 100, true)
	if len(fc.heldDBs(gone.Maps)) != 0 {
		t.Error("a held copy no longer in its map still holds its database")
	}
}
