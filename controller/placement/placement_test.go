package placement

import (
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/couchdb-controller/couchdb-controller/couch"
)

func smap(db string, byRange map[string][]int) couch.ShardMap {
	m := couch.ShardMap{ID: db, ByNode: map[string][]string{}, ByRange: map[string][]string{}}
	for r, ords := range byRange {
		for _, o := range ords {
			m.AddCopy(r, name(o))
		}
	}
	return m
}

func members(live ...int) []Member {
	var out []Member
	for _, o := range live {
		out = append(out, Member{Name: name(o), Ordinal: o, Live: true})
	}
	return out
}

func strs(res Result) []string {
	var out []string
	for _, a := range res.Actions {
		out = append(out, a.String())
	}
	return out
}

const r0, r1 = "00000000-7fffffff", "80000000-ffffffff"

func TestPlanRules(t *testing.T) {
	two := 2
	cases := map[string]struct {
		in      Input
		want    []string
		atRisk  int
		waiting bool
	}{
		"healthy: nothing to do": {
			in: Input{Replicas: 3, Members: members(0, 1, 2), Maps: map[string]couch.ShardMap{"a": smap("a", map[string][]int{r0: {0, 1, 2}, r1: {0, 1, 2}})}},
		},
		"departed copy is re-created on the emptiest live member first": {
			in:   Input{Replicas: 3, Members: members(0, 1, 2), Departed: []string{name(3)}, Maps: map[string]couch.ShardMap{"a": smap("a", map[string][]int{r0: {0, 1, 3}, r1: {0, 1, 2}})}},
			want: []string{"AddCopy(a/" + r0 + " on " + name(2) + ")", "SyncShards(a)"},
		},
		"departed copy is dropped only with counts showing the others caught up": {
			in:      Input{Replicas: 3, Members: members(0, 1, 2), Departed: []string{name(3)}, Maps: map[string]couch.ShardMap{"a": smap("a", map[string][]int{r0: {0, 1, 2, 3}})}},
			want:    []string{"SyncShards(a)"},
			waiting: true,
		},
		"caught up: drop the departed copy, then (next plan) the node": {
			in: Input{Replicas: 3, Members: members(0, 1, 2), Departed: []string{name(3)}, Maps: map[string]couch.ShardMap{"a": smap("a", map[string][]int{r0: {0, 1, 2, 3}})},
				Stats: map[CopyKey]CopyStat{{"a", r0, name(0)}: {5, 1}, {"a", r0, name(1)}: {5, 1}, {"a", r0, name(2)}: {6, 0}}},
			want: []string{"RemoveCopy(a/" + r0 + " on " + name(3) + ")"},
		},
		"a new copy behind the live sources is not enough": {
			in: Input{Replicas: 3, Members: members(0, 1, 2), Departed: []string{name(3)}, Maps: map[string]couch.ShardMap{"a": smap("a", map[string][]int{r0: {0, 1, 2, 3}})},
				Stats: map[CopyKey]CopyStat{{"a", r0, name(0)}: {5, 1}, {"a", r0, name(1)}: {5, 1}, {"a", r0, name(2)}: {2, 0}}},
			want:    []string{"SyncShards(a)"},
			waiting: true,
		},
		"unreferenced departed node leaves _nodes": {
			in:   Input{Replicas: 3, Members: members(0, 1, 2), Departed: []string{name(3)}, Maps: map[string]couch.ShardMap{"a": smap("a", map[string][]int{r0: {0, 1, 2}})}},
			want: []string{"RemoveNode(" + name(3) + ")"},
		},
		"no live copy: database frozen, DataAtRisk, node kept": {
			in:     Input{Replicas: 1, Members: members(0), Departed: []string{name(1), name(2)}, Maps: map[string]couch.ShardMap{"a": smap("a", map[string][]int{r0: {1, 2}, r1: {0, 1}})}},
			atRisk: 1, waiting: true,
		},
		"replicate: missing database is created on every member": {
			in:   Input{Replicas: 3, Members: members(0, 1, 2), Replicate: []string{"b"}, Maps: map[string]couch.ShardMap{}},
			want: []string{"CreateDB(b n=3)"},
		},
		"replicate: a copy on every member": {
			in:   Input{Replicas: 3, Members: members(0, 1, 2), Replicate: []string{"b"}, DBs: []string{"b"}, Maps: map[string]couch.ShardMap{"b": smap("b", map[string][]int{r0: {0, 1}})}},
			want: []string{"AddCopy(b/" + r0 + " on " + name(2) + ")", "SyncShards(b)"},
		},
		"drain: maintenance mode before anything moves": {
			in:   Input{Replicas: 3, TargetReplicas: &two, Members: members(0, 1, 2), Maps: map[string]couch.ShardMap{"a": smap("a", map[string][]int{r0: {0, 2}})}},
			want: []string{"SetMaintenance(" + name(2) + ")"},
		},
		"drain: the drained node's copy moves to a staying member": {
			in: Input{Replicas: 3, TargetReplicas: &two, Members: []Member{{name(0), 0, true, false}, {name(1), 1, true, false}, {name(2), 2, true, true}},
				Maps: map[string]couch.ShardMap{"a": smap("a", map[string][]int{r0: {0, 2}})}},
			want: []string{"AddCopy(a/" + r0 + " on " + name(1) + ")", "SyncShards(a)"},
		},
		"drain: empty node leaves _nodes, then the StatefulSet shrinks": {
			in: Input{Replicas: 3, TargetReplicas: &two, Members: []Member{{name(0), 0, true, false}, {name(1), 1, true, false}, {name(2), 2, true, true}},
				Maps: map[string]couch.ShardMap{"a": smap("a", map[string][]int{r0: {0, 1}})}},
			want: []string{"RemoveNode(" + name(2) + ")"},
		},
		"drain: removed from _nodes, scale down by one": {
			in:   Input{Replicas: 3, TargetReplicas: &two, Members: members(0, 1), Maps: map[string]couch.ShardMap{"a": smap("a", map[string][]int{r0: {0, 1}})}},
			want: []string{"ScaleDown(replicas=2)"},
		},
		"maintenance left on a node no longer drained is cleared": {
			in:   Input{Replicas: 3, Members: []Member{{name(0), 0, true, false}, {name(1), 1, true, false}, {name(2), 2, true, true}}, Maps: map[string]couch.ShardMap{}},
			want: []string{"ClearMaintenance(" + name(2) + ")"},
		},
		"rebalance: one copy to the emptiest member": {
			in: Input{Replicas: 4, Rebalance: true, Members: members(0, 1, 2, 3),
				Maps: map[string]couch.ShardMap{"a": smap("a", map[string][]int{r0: {0, 1, 2}, r1: {0, 1, 2}})}},
			want: []string{"AddCopy(a/" + r0 + " on " + name(3) + ")", "SyncShards(a)"},
		},
		"rebalance: an extra copy is dropped from the fullest holder once caught up": {
			in: Input{Replicas: 4, Rebalance: true, Members: members(0, 1, 2, 3),
				Maps:  map[string]couch.ShardMap{"a": smap("a", map[string][]int{r0: {0, 1, 2, 3}, r1: {0, 1, 2}})},
				Stats: map[CopyKey]CopyStat{{"a", r0, name(0)}: {3, 0}, {"a", r0, name(1)}: {3, 0}, {"a", r0, name(2)}: {3, 0}, {"a", r0, name(3)}: {3, 0}}},
			want: []string{"RemoveCopy(a/" + r0 + " on " + name(2) + ")"},
		},
		"a staying copy down: wait, never drop the departed one": {
			in: Input{Replicas: 3, Members: []Member{{name(0), 0, true, false}, {name(1), 1, true, false}, {name(2), 2, false, false}}, Departed: []string{name(3)},
				Maps:  map[string]couch.ShardMap{"a": smap("a", map[string][]int{r0: {0, 1, 2, 3}})},
				Stats: map[CopyKey]CopyStat{{"a", r0, name(0)}: {3, 0}, {"a", r0, name(1)}: {3, 0}}},
			want: []string{"SyncShards(a)"}, waiting: true,
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			res := Plan(tc.in)
			if diff := cmp.Diff(tc.want, strs(res)); diff != "" {
				t.Errorf("actions (-want +got):\n%s\nwaiting %q", diff, res.Waiting)
			}
			if len(res.AtRisk) != tc.atRisk {
				t.Errorf("at risk %v", res.AtRisk)
			}
			if tc.waiting != (res.Waiting != "") {
				t.Errorf("waiting %q", res.Waiting)
			}
		})
	}
}

func TestStatsNeededOnlyForRangesWithACopyToDrop(t *testing.T) {
	in := Input{Replicas: 3, Members: members(0, 1, 2), Departed: []string{name(3)},
		Maps: map[string]couch.ShardMap{"a": smap("a", map[string][]int{r0: {0, 1, 2, 3}, r1: {0, 1, 2}})}}
	want := []CopyKey{{"a", r0, name(0)}, {"a", r0, name(1)}, {"a", r0, name(2)}}
	if diff := cmp.Diff(want, StatsNeeded(in)); diff != "" {
		t.Error(diff)
	}
}
