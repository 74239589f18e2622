package placement

import (
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/couchdb-controller/couchdb-controller/couch"
)

func TestHeal(t *testing.T) {
	cases := map[string]struct {
		in      Input
		want    []string
		waiting bool
	}{
		"the range with the fewest live copies first": {
			in: Input{Replicas: 3, Members: members(0, 1, 2), Departed: []string{name(3), name(4)},
				Maps: map[string]couch.ShardMap{"a": smap("a", map[string][]int{r0: {0, 1, 3}}), "b": smap("b", map[string][]int{r0: {0, 3, 4}})}},
			// 1 and 2 hold no copy of b; 2 holds fewer copies in all.
			want: []string{"AddCopy(b/" + r0 + " on " + name(2) + ")", "SyncShards(b)"},
		},
		"both missing copies of a range at once when the budget allows": {
			in: Input{Replicas: 3, Members: members(0, 1, 2), Departed: []string{name(3), name(4)}, MaxMoves: 4,
				Maps: map[string]couch.ShardMap{"b": smap("b", map[string][]int{r0: {0, 3, 4}})}},
			want: []string{"AddCopy(b/" + r0 + " on " + name(1) + ")", "AddCopy(b/" + r0 + " on " + name(2) + ")", "SyncShards(b)"},
		},
		"the larger range first among equals": {
			in: Input{Replicas: 3, Members: members(0, 1, 2), Departed: []string{name(3)},
				Maps:       map[string]couch.ShardMap{"a": smap("a", map[string][]int{r0: {0, 1, 3}}), "b": smap("b", map[string][]int{r0: {0, 1, 3}})},
				RangeBytes: map[RangeRef]int64{{"a", r0}: 10, {"b", r0}: 1000}},
			want: []string{"AddCopy(b/" + r0 + " on " + name(2) + ")", "SyncShards(b)"},
		},
		"the target is the member with the fewest copies of that database": {
			in: Input{Replicas: 4, Members: members(0, 1, 2, 5), Departed: []string{name(3)},
				Maps: map[string]couch.ShardMap{
					"a": smap("a", map[string][]int{r0: {0, 1, 3}, r1: {0, 1, 2}}),
					"z": smap("z", map[string][]int{r0: {5}, r1: {5}, "x": {5}, "y": {5}}),
				}},
			want: []string{"AddCopy(a/" + r0 + " on " + name(5) + ")", "SyncShards(a)"},
		},
		"no live member can take it: waiting": {
			in: Input{Replicas: 2, Members: []Member{{Name: name(0), Ordinal: 0, Live: true}, {Name: name(1), Ordinal: 1}}, Departed: []string{name(3)},
				Maps: map[string]couch.ShardMap{"a": smap("a", map[string][]int{r0: {0, 3}})}},
			waiting: true,
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			res := Plan(tc.in)
			if diff := cmp.Diff(tc.want, strs(res)); diff != "" {
				t.Errorf("actions (-want +got):\n%s\nwaiting %q", diff, res.Waiting)
			}
			if tc.waiting != (res.Waiting != "") {
				t.Errorf("waiting %q", res.Waiting)
			}
		})
	}
}
