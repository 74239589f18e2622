package placement

import (
	"encoding/json"
	"testing"

	"github.com/couchdb-controller/couchdb-controller/couch"
)

func TestDBN(t *testing.T) {
	three := smap("a", map[string][]int{r0: {0, 1, 2}, r1: {0, 1, 2}})
	cases := map[string]struct {
		m    couch.ShardMap
		want int
	}{
		"inferred: copies per range":                          {three, 3},
		"inferred: a range with an extra copy is the odd one": {smap("a", map[string][]int{r0: {0, 1, 2, 3}, r1: {0, 1, 2}, "x": {0, 1, 2}}), 3},
		"inferred: copies on departed nodes count":            {smap("a", map[string][]int{all: {0, 7, 8}}), 3},
		"recorded wins over the copies listed":                {withN(smap("a", map[string][]int{all: {0, 1, 2, 3}}), 3), 3},
		"recorded as CouchDB returns it (a JSON number)":      {func() couch.ShardMap { m := three; m.Extra = map[string]any{NKey: float64(2)}; return m }(), 2},
		"recorded but not a count: inferred":                  {func() couch.ShardMap { m := three; m.Extra = map[string]any{NKey: "two"}; return m }(), 3},
		"recorded but fractional: inferred":                   {func() couch.ShardMap { m := three; m.Extra = map[string]any{NKey: 2.5}; return m }(), 3},
		"recorded zero: inferred":                             {func() couch.ShardMap { m := three; m.Extra = map[string]any{NKey: float64(0)}; return m }(), 3},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			if got := DBN(tc.m); got != tc.want {
				t.Errorf("DBN = %d, want %d", got, tc.want)
			}
		})
	}
}

func TestEdit(t *testing.T) {
	m := smap("a", map[string][]int{all: {0, 1}})
	changed, err := Edit(&m, Action{Kind: AddCopy, DB: "a", Range: all, Node: name(2), N: 2})
	if err != nil || !changed || !m.HasCopy(all, name(2)) || DBN(m) != 2 {
		t.Fatalf("add: changed %t err %v map %v n %d", changed, err, m.ByRange, DBN(m))
	}
	// A repeat (after a crash) changes nothing, and a later edit never rewrites the recorded n.
	if changed, err := Edit(&m, Action{Kind: AddCopy, DB: "a", Range: all, Node: name(2), N: 3}); err != nil || changed || DBN(m) != 2 {
		t.Fatalf("repeat: changed %t err %v n %d", changed, err, DBN(m))
	}
	if changed, err := Edit(&m, Action{Kind: RemoveCopy, DB: "a", Range: all, Node: name(0), N: 3}); err != nil || !changed || m.HasCopy(all, name(0)) || DBN(m) != 2 {
		t.Fatalf("remove: changed %t err %v n %d", changed, err, DBN(m))
	}
	one := smap("b", map[string][]int{all: {0}})
	if _, err := Edit(&one, Action{Kind: RemoveCopy, DB: "b", Range: all, Node: name(0)}); err == nil {
		t.Fatal("removed a range's last copy")
	}
	// n is recorded even when the copy is already there (added by hand).
	hand := smap("c", map[string][]int{all: {0, 1}})
	if changed, _ := Edit(&hand, Action{Kind: AddCopy, DB: "c", Range: all, Node: name(1), N: 2}); !changed || DBN(hand) != 2 {
		t.Fatalf("n not recorded on a map that had the copy: %v", hand.Extra)
	}
	// The record survives CouchDB's round trip and sits beside the fields mem3 reads.
	raw, _ := json.Marshal(m)
	var back couch.ShardMap
	if err := json.Unmarshal(raw, &back); err != nil || DBN(back) != 2 || back.Validate() != nil {
		t.Fatalf("round trip: %s err %v", raw, err)
	}
}
