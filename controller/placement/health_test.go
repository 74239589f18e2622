package placement

import (
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/couchdb-controller/couchdb-controller/couch"
)

func TestHealth(t *testing.T) {
	down := []Member{{Name: name(0), Ordinal: 0, Live: true}, {Name: name(1), Ordinal: 1, Live: true}, {Name: name(2), Ordinal: 2}}
	cases := map[string]struct {
		in         Input
		want       Health
		shortfalls []Shortfall
	}{
		"n copies live: healthy": {
			in:   Input{Replicas: 3, Members: members(0, 1, 2), Maps: map[string]couch.ShardMap{"a": smap("a", map[string][]int{r0: {0, 1, 2}, r1: {0, 1, 2}})}},
			want: Health{Healthy: 2},
		},
		"fewer members than n: under-replicated, and named as a shortfall": {
			in: Input{Replicas: 2, Members: members(0, 1), Maps: map[string]couch.ShardMap{
				"a": withN(smap("a", map[string][]int{r0: {0, 1}, r1: {0, 1}}), 3),
				"b": smap("b", map[string][]int{all: {0, 1}}), // n=2 as created
			}},
			want:       Health{Healthy: 1, UnderReplicated: 2},
			shortfalls: []Shortfall{{DB: "a", N: 3, Copies: 2, Members: 2}},
		},
		"a member down: under-replicated, no shortfall (members are enough)": {
			in:   Input{Replicas: 3, Members: down, Maps: map[string]couch.ShardMap{"a": smap("a", map[string][]int{r0: {0, 1, 2}})}},
			want: Health{UnderReplicated: 1},
		},
		"fewest live copies reported for the shortfall": {
			in:         Input{Replicas: 2, Members: []Member{{Name: name(0), Ordinal: 0, Live: true}, {Name: name(1), Ordinal: 1}}, Maps: map[string]couch.ShardMap{"a": withN(smap("a", map[string][]int{r0: {0, 1}, r1: {0}}), 3)}},
			want:       Health{UnderReplicated: 2},
			shortfalls: []Shortfall{{DB: "a", N: 3, Copies: 1, Members: 2}},
		},
		"a replicated database wants every member": {
			in:   Input{Replicas: 3, Members: members(0, 1, 2), Replicate: []string{"r"}, DBs: []string{"r"}, Maps: map[string]couch.ShardMap{"r": smap("r", map[string][]int{all: {0, 1}})}},
			want: Health{UnderReplicated: 1},
		},
		"no live copy: unavailable": {
			in:   Input{Replicas: 3, Members: down, Maps: map[string]couch.ShardMap{"a": smap("a", map[string][]int{r0: {2}})}},
			want: Health{Unavailable: 1},
		},
		"zones: a range in fewer zones than it could is a violation": {
			in: Input{Replicas: 3, Members: members(0, 1, 2), Zones: zoned("a", "a", "b"),
				Maps: map[string]couch.ShardMap{"x": smap("x", map[string][]int{r0: {0, 1}, r1: {0, 2}})}},
			want: Health{Healthy: 2, ZoneViolation: 1},
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			res := Plan(tc.in)
			if diff := cmp.Diff(tc.want, res.Health); diff != "" {
				t.Errorf("health (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.shortfalls, res.Shortfalls); diff != "" {
				t.Errorf("shortfalls (-want +got):\n%s", diff)
			}
		})
	}
}
