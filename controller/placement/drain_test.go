package placement

import (
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/couchdb-controller/couchdb-controller/couch"
)

func TestConcurrentDrain(t *testing.T) {
	two := 2
	drained := []Member{{Name: name(0), Ordinal: 0, Live: true}, {Name: name(1), Ordinal: 1, Live: true}, {Name: name(2), Ordinal: 2, Live: true, Maintenance: true}}
	four := map[string]couch.ShardMap{"a": smap("a", map[string][]int{r0: {0, 2}, r1: {1, 2}}), "b": smap("b", map[string][]int{r0: {0, 2}, r1: {1, 2}})}
	cases := map[string]struct {
		in      Input
		want    []string
		waiting bool
	}{
		"the drained node's copies to drop take no fill slot: the staying targets' slots bound the drain": {
			in:   Input{Replicas: 3, TargetReplicas: &two, Members: drained, Maps: four, MaxMoves: 8, MaxFillsPerNode: 1, Decom: map[string]bool{name(2): true}},
			want: []string{"AddCopy(a/" + r0 + " on " + name(1) + ")", "AddCopy(a/" + r1 + " on " + name(0) + ")", "SyncShards(a)"},
		},
		"with room, every range of the drained node moves at once": {
			in: Input{Replicas: 3, TargetReplicas: &two, Members: drained, Maps: four, MaxMoves: 8, MaxFillsPerNode: 4, Decom: map[string]bool{name(2): true}},
			want: []string{"AddCopy(a/" + r0 + " on " + name(1) + ")", "AddCopy(a/" + r1 + " on " + name(0) + ")", "AddCopy(b/" + r0 + " on " + name(1) + ")", "AddCopy(b/" + r1 + " on " + name(0) + ")",
				"SyncShards(a)", "SyncShards(b)"},
		},
		"a drained node that is down: held copies take no budget, and it stays": {
			in: Input{Replicas: 3, TargetReplicas: &two, MaxMoves: 1, Decom: map[string]bool{name(2): true},
				Members: []Member{{Name: name(0), Ordinal: 0, Live: true}, {Name: name(1), Ordinal: 1, Live: true}, {Name: name(2), Ordinal: 2}},
				Maps:    map[string]couch.ShardMap{"a": smap("a", map[string][]int{r0: {0, 1, 2}, r1: {1, 2}})}},
			want:    []string{"AddCopy(a/" + r1 + " on " + name(0) + ")", "SyncShards(a)"},
			waiting: true,
		},
		"empty drained node: out of _nodes, then the StatefulSet shrinks": {
			in:   Input{Replicas: 3, TargetReplicas: &two, Members: drained, Maps: map[string]couch.ShardMap{"a": smap("a", map[string][]int{r0: {0, 1}})}},
			want: []string{"RemoveNode(" + name(2) + ")"},
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
			if err := checkSafety(tc.in, res); err != nil {
				t.Error(err)
			}
		})
	}
}
