package placement

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/couchdb-controller/couchdb-controller/couch"
)

// markInput is a drain of db-3 (fenced: maintenance_mode "true") whose one range already has its
// three staying copies. The drained copy is at update_seq 20 with 12 documents: mem3 keeps pushing
// the staying copies' new writes into it, while its own pushes to them were checkpointed at 15,
// when it held 10 documents. The staying copies hold 10 each, their newest writes still on their
// way to each other.
func markInput(pushed map[string]int64, marks map[CopyKey]Mark) Input {
	three := 3
	in := Input{Replicas: 4, TargetReplicas: &three, Decom: map[string]bool{name(3): true},
		Members: []Member{{Name: name(0), Ordinal: 0, Live: true}, {Name: name(1), Ordinal: 1, Live: true}, {Name: name(2), Ordinal: 2, Live: true},
			{Name: name(3), Ordinal: 3, Live: true, Maintenance: true, Fenced: true}},
		Maps:  map[string]couch.ShardMap{"a": smap("a", map[string][]int{all: {0, 1, 2, 3}})},
		Stats: stats("a", all, 10, 0, 1, 2), Marks: marks}
	in.Stats[CopyKey{"a", all, name(3)}] = CopyStat{Docs: 12, Seq: 20, UUID: "u" + name(3), Pushed: pushed}
	return in
}

// stayingAt gives the staying copies docs documents.
func stayingAt(in Input, docs int64) Input {
	for _, o := range []int{0, 1, 2} {
		s := in.Stats[CopyKey{"a", all, name(o)}]
		s.Docs = docs
		in.Stats[CopyKey{"a", all, name(o)}] = s
	}
	return in
}

func drainedKey() CopyKey { return CopyKey{"a", all, name(3)} }

func markAt(seq, total int64) map[CopyKey]Mark {
	return map[CopyKey]Mark{drainedKey(): {Seq: seq, UUID: "u" + name(3), Total: total, Staying: []string{name(0), name(1), name(2)}}}
}

func servingAt(seq, total int64) map[CopyKey]Mark {
	m := markAt(seq, total)
	mk := m[drainedKey()]
	mk.Serving = true
	m[drainedKey()] = mk
	return m
}

func pushedAt(seqs ...int64) map[string]int64 {
	out := map[string]int64{}
	for i, s := range seqs {
		out["u"+name(i)] = s
	}
	return out
}

func TestDropAtTheMark(t *testing.T) {
	// The drained node's last copy: its removal from _nodes follows in the same plan.
	drop := []string{"RemoveCopy(a/" + all + " on " + name(3) + ")", "RemoveNode(" + name(3) + ")"}
	wait := []string{"SyncShards(a)"}
	cases := map[string]struct {
		in      Input
		want    []string
		waitFor string // part of Waiting
	}{
		"checkpoints at the mark, below the current update_seq: dropped": {
			in: markInput(pushedAt(15, 15, 16), markAt(15, 10)), want: drop,
		},
		"one checkpoint below the mark: waits": {
			in: markInput(pushedAt(15, 14, 15), markAt(15, 10)), want: wait, waitFor: "marked when it became a copy to drop 15",
		},
		"a staying copy below the mark's total: waits": {
			in: markInput(pushedAt(15, 15, 15), markAt(15, 11)), want: wait, waitFor: "(10 of 11 documents)",
		},
		"no mark yet: held to the current update_seq (a mark taken now)": {
			in: markInput(pushedAt(15, 15, 15), nil), want: wait, waitFor: "(10 of 12 documents)",
		},
		"no mark yet, staying copies at its counts and checkpoints at its current update_seq: dropped": {
			in: stayingAt(markInput(pushedAt(20, 20, 20), nil), 12), want: drop,
		},
		"a mark of another file of the copy (re-created): no mark": {
			in: func() Input {
				mk := markAt(15, 10)
				m := mk[drainedKey()]
				m.UUID = "old"
				mk[drainedKey()] = m
				return stayingAt(markInput(pushedAt(15, 15, 15), mk), 12)
			}(),
			want: wait, waitFor: "at its update_seq 20",
		},
		"a mark on a node in nolb, which still takes client writes: no mark": {
			in: func() Input {
				in := stayingAt(markInput(pushedAt(15, 15, 15), markAt(15, 10)), 12)
				in.Members[3].Fenced = false
				return in
			}(),
			want: wait, waitFor: "at its update_seq 20",
		},
		"a mark whose staying copies changed since: no mark": {
			in: func() Input {
				mk := markAt(15, 10)
				m := mk[drainedKey()]
				m.Staying = []string{name(0), name(1), name(4)}
				mk[drainedKey()] = m
				return stayingAt(markInput(pushedAt(15, 15, 15), mk), 12)
			}(),
			want: wait, waitFor: "at its update_seq 20",
		},
	}
	for tn, tc := range cases {
		t.Run(tn, func(t *testing.T) {
			res := Plan(tc.in)
			if diff := cmp.Diff(tc.want, strs(res)); diff != "" {
				t.Errorf("actions (-want +got):\n%s\nwaiting %q", diff, res.Waiting)
			}
			if !strings.Contains(res.Waiting, tc.waitFor) || (tc.waitFor == "") != (res.Waiting == "") {
				t.Errorf("waiting %q, want it to say %q", res.Waiting, tc.waitFor)
			}
			if err := checkSafety(tc.in, res); err != nil {
				t.Error(err)
			}
		})
	}
}

func TestMarks(t *testing.T) {
	k := drainedKey()
	first := Mark{Seq: 20, UUID: "u" + name(3), Total: 12, Staying: []string{name(0), name(1), name(2)}}
	cases := map[string]struct {
		in   func() Input
		prev map[CopyKey]Mark
		want map[CopyKey]Mark
	}{
		"first seen: marked at its current update_seq and the most documents of any live copy": {
			in: func() Input { return markInput(nil, nil) }, want: map[CopyKey]Mark{k: first},
		},
		"seen again, further on: the first mark stays": {
			in: func() Input { return markInput(nil, nil) }, prev: markAt(15, 10), want: markAt(15, 10),
		},
		"counts not read this time: the mark stays": {
			in: func() Input {
				in := markInput(nil, nil)
				delete(in.Stats, k)
				return in
			},
			prev: markAt(15, 10), want: markAt(15, 10),
		},
		"its file was re-created: marked again": {
			in: func() Input { return markInput(nil, nil) }, prev: map[CopyKey]Mark{k: {Seq: 15, UUID: "old", Total: 10, Staying: first.Staying}},
			want: map[CopyKey]Mark{k: first},
		},
		"in nolb (the drained node still takes writes): a serving mark at its current update_seq": {
			in: func() Input {
				in := markInput(nil, nil)
				in.Members[3].Fenced = false
				return in
			},
			prev: markAt(15, 10), want: servingAt(20, 12),
		},
		"in nolb: the serving mark keeps its update_seq as the copy takes writes": {
			in: func() Input {
				in := markInput(nil, nil)
				in.Members[3].Fenced = false
				return in
			},
			prev: servingAt(15, 10), want: servingAt(15, 10),
		},
		"switched to true: the serving mark gives way to a mark at the current update_seq": {
			in:   func() Input { return markInput(nil, nil) },
			prev: servingAt(15, 10), want: markAt(20, 12),
		},
		"maintenance mode off (the node restarted): no mark": {
			in: func() Input {
				in := markInput(nil, nil)
				in.Members[3].Fenced, in.Members[3].Maintenance = false, false
				return in
			},
			prev: servingAt(15, 10), want: map[CopyKey]Mark{},
		},
		"its node is down: forgotten": {
			in: func() Input {
				in := markInput(nil, nil)
				in.Members[3].Live = false
				return in
			},
			prev: markAt(15, 10), want: map[CopyKey]Mark{},
		},
		"the drain was called off: forgotten": {
			in: func() Input {
				in := markInput(nil, nil)
				in.TargetReplicas = nil
				in.Members[3].Fenced, in.Members[3].Maintenance = false, false
				return in
			},
			prev: markAt(15, 10), want: map[CopyKey]Mark{},
		},
		"the move completed: forgotten": {
			in: func() Input {
				in := markInput(nil, nil)
				in.Maps["a"] = smap("a", map[string][]int{all: {0, 1, 2}})
				return in
			},
			prev: markAt(15, 10), want: map[CopyKey]Mark{},
		},
		"a staying copy not read yet: no mark until it is": {
			in: func() Input {
				in := markInput(nil, nil)
				delete(in.Stats, CopyKey{"a", all, name(1)})
				return in
			},
			want: map[CopyKey]Mark{},
		},
		"a database whose map was not read: its marks are kept": {
			in: func() Input {
				in := markInput(nil, nil)
				delete(in.Maps, "a")
				return in
			},
			prev: markAt(15, 10), want: markAt(15, 10),
		},
	}
	for tn, tc := range cases {
		t.Run(tn, func(t *testing.T) {
			if diff := cmp.Diff(tc.want, Marks(tc.in(), tc.prev)); diff != "" {
				t.Errorf("marks (-want +got):\n%s", diff)
			}
		})
	}
}
