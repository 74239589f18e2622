package placement

import (
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/couchdb-controller/couchdb-controller/couch"
)

// zoned gives members 0.. the zones listed, as Kubernetes reports them.
func zoned(zs ...string) map[string]string {
	out := map[string]string{}
	for i, z := range zs {
		out[name(i)] = z
	}
	return out
}

func TestZoneSteps(t *testing.T) {
	abc := zoned("zone-a", "zone-b", "zone-c")
	rule := "zone-a:1,zone-b:1,zone-c:1"
	one := 2
	healthy := map[string]couch.ShardMap{"a": smap("a", map[string][]int{r0: {0, 1, 2}})}
	cases := map[string]struct {
		in        Input
		want      []string
		placement string
		waiting   bool
	}{
		"zones off: no zone or placement step, whatever the docs say": {
			in: Input{Replicas: 3, Members: members(0, 1, 2), Maps: healthy, NodeZones: map[string]string{name(0): "x"}, PlacementConfig: map[string]string{name(0): "x:1"}},
		},
		"docs get their zones first; the rule waits for them": {
			in: Input{Replicas: 3, Members: members(0, 1, 2), Maps: healthy, Zones: abc,
				NodeZones:       map[string]string{name(0): "", name(1): "zone-b", name(2): ""},
				PlacementConfig: map[string]string{name(0): "", name(1): "", name(2): ""}},
			want:      []string{`SetZone(` + name(0) + `="zone-a")`, `SetZone(` + name(2) + `="zone-c")`},
			placement: rule, waiting: true,
		},
		"with the docs right, every member gets the rule": {
			in: Input{Replicas: 3, Members: members(0, 1, 2), Maps: healthy, Zones: abc, NodeZones: abc,
				PlacementConfig: map[string]string{name(0): "", name(1): rule, name(2): "old:1"}},
			// The rule naming a zone nobody serves is replaced first.
			want:      []string{`SetPlacement(` + name(2) + `="` + rule + `")`, `SetPlacement(` + name(0) + `="` + rule + `")`},
			placement: rule,
		},
		"a member whose config was not read is left alone, and so is a doc not read": {
			in: Input{Replicas: 3, Members: members(0, 1, 2), Maps: healthy, Zones: abc, NodeZones: map[string]string{name(0): "zone-a", name(1): "zone-b", name(2): "zone-c"},
				PlacementConfig: map[string]string{name(1): rule, name(2): rule}},
			placement: rule,
		},
		"a missing zone label never erases the doc's zone": {
			in: Input{Replicas: 3, Members: members(0, 1, 2), Maps: healthy, Zones: zoned("zone-a", "zone-b", ""), NodeZones: abc,
				PlacementConfig: map[string]string{name(0): "", name(1): "", name(2): ""}},
		},
		"fewer zones than n: no rule, an old one is deleted": {
			in: Input{Replicas: 3, Members: members(0, 1, 2), Maps: healthy, Zones: zoned("zone-a", "zone-b", "zone-b"), NodeZones: zoned("zone-a", "zone-b", "zone-b"),
				PlacementConfig: map[string]string{name(0): "zone-a:1,zone-b:1", name(1): "", name(2): ""}},
			want: []string{`SetPlacement(` + name(0) + `="")`},
		},
		"more zones than n: the first n by name": {
			in: Input{Replicas: 4, Members: members(0, 1, 2, 3), Maps: healthy, Zones: zoned("zone-d", "zone-b", "zone-c", "zone-a"), NodeZones: zoned("zone-d", "zone-b", "zone-c", "zone-a"),
				PlacementConfig: map[string]string{name(0): rule, name(1): rule, name(2): rule, name(3): rule}},
			placement: rule,
		},
		"n=2 from [cluster] n": {
			in: Input{Replicas: 3, Members: members(0, 1, 2), Maps: healthy, Zones: abc, NodeZones: abc, DefaultN: 2,
				PlacementConfig: map[string]string{name(0): "zone-a:1,zone-b:1", name(1): "zone-a:1,zone-b:1", name(2): "zone-a:1,zone-b:1"}},
			placement: "zone-a:1,zone-b:1",
		},
		"a zone losing its last member leaves the rule before anything else, decom and maintenance included": {
			in: Input{Replicas: 3, TargetReplicas: &one, Members: members(0, 1, 2), Maps: healthy, Zones: abc, NodeZones: abc,
				Decom:           map[string]bool{name(0): false, name(1): false, name(2): false},
				PlacementConfig: map[string]string{name(0): rule, name(1): rule, name(2): rule}},
			want: []string{`SetPlacement(` + name(0) + `="")`, `SetPlacement(` + name(1) + `="")`, `SetPlacement(` + name(2) + `="")`,
				"SetDecom(" + name(2) + ")", "SetMaintenance(" + name(2) + `="nolb")`},
		},
		"a node moving to another zone: the rule naming its old zone goes first": {
			in: Input{Replicas: 4, Members: members(0, 1, 2, 3), Maps: healthy, Zones: zoned("zone-a", "zone-b", "zone-b", "zone-d"), NodeZones: zoned("zone-a", "zone-b", "zone-c", "zone-d"),
				PlacementConfig: map[string]string{name(0): rule, name(1): rule, name(2): rule, name(3): rule}},
			want: []string{`SetPlacement(` + name(0) + `="zone-a:1,zone-b:1,zone-d:1")`, `SetPlacement(` + name(1) + `="zone-a:1,zone-b:1,zone-d:1")`,
				`SetPlacement(` + name(2) + `="zone-a:1,zone-b:1,zone-d:1")`, `SetPlacement(` + name(3) + `="zone-a:1,zone-b:1,zone-d:1")`,
				`SetZone(` + name(2) + `="zone-b")`,
				// The range, now in zones a, b, b, gets a copy in zone d.
				"AddCopy(a/" + r0 + " on " + name(3) + ")", "SyncShards(a)"},
			placement: "zone-a:1,zone-b:1,zone-d:1",
		},
		"a member still marked decom serves no zone until the mark is off": {
			in: Input{Replicas: 3, Members: members(0, 1, 2), Maps: healthy, Zones: abc, NodeZones: abc,
				Decom:           map[string]bool{name(0): false, name(1): false, name(2): true},
				PlacementConfig: map[string]string{name(0): "", name(1): "", name(2): ""}},
			want:      []string{"ClearDecom(" + name(2) + ")"},
			placement: rule, waiting: true,
		},
		"the rule is fixed before a database is created": {
			in: Input{Replicas: 2, Members: members(0, 1), Departed: []string{name(2)}, Replicate: []string{"r"}, Maps: map[string]couch.ShardMap{},
				Zones: abc, NodeZones: abc, Decom: map[string]bool{name(0): false, name(1): false, name(2): false},
				PlacementConfig: map[string]string{name(0): rule, name(1): rule}},
			want: []string{`SetPlacement(` + name(0) + `="")`, `SetPlacement(` + name(1) + `="")`, "SetDecom(" + name(2) + ")", "CreateDB(r n=2)"},
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			res := Plan(tc.in)
			if diff := cmp.Diff(tc.want, strs(res)); diff != "" {
				t.Errorf("actions (-want +got):\n%s\nwaiting %q", diff, res.Waiting)
			}
			if res.Placement != tc.placement {
				t.Errorf("placement %q, want %q", res.Placement, tc.placement)
			}
			if tc.waiting != (res.Waiting != "") {
				t.Errorf("waiting %q", res.Waiting)
			}
		})
	}
}

func TestZoneCoverage(t *testing.T) {
	z := zoned("zone-a", "zone-a", "zone-b", "zone-c")
	cases := map[string]struct {
		in        Input
		want      []string
		violation int
	}{
		"a range in two zones of three gets a copy in the third": {
			in:   Input{Replicas: 4, Members: members(0, 1, 2, 3), Zones: z, Maps: map[string]couch.ShardMap{"a": smap("a", map[string][]int{r0: {0, 1, 2}, r1: {0, 2, 3}})}},
			want: []string{"AddCopy(a/" + r0 + " on " + name(3) + ")", "SyncShards(a)"}, violation: 1,
		},
		"then the copy dropped is one of the zone it had twice": {
			in: Input{Replicas: 4, Members: members(0, 1, 2, 3), Zones: z, Maps: map[string]couch.ShardMap{"a": withN(smap("a", map[string][]int{r0: {0, 1, 2, 3}, r1: {0, 2, 3}}), 3)},
				Stats: stats("a", r0, 5, 0, 1, 2, 3)},
			want: []string{"RemoveCopy(a/" + r0 + " on " + name(0) + ")"},
		},
		"a heal puts the new copy in the zone the range lacks, even on a fuller member": {
			in: Input{Replicas: 4, Members: members(0, 1, 2, 3), Departed: []string{name(4)}, Zones: zoned("zone-a", "zone-a", "zone-b", "zone-c"),
				Maps: map[string]couch.ShardMap{"a": smap("a", map[string][]int{r0: {0, 2, 4}, r1: {3, 2, 0}, "x": {3, 0, 2}})}},
			want: []string{"AddCopy(a/" + r0 + " on " + name(3) + ")", "SyncShards(a)"}, violation: 1,
		},
		"a violation only counts zones that have live staying members": {
			in: Input{Replicas: 4, Members: []Member{{Name: name(0), Ordinal: 0, Live: true}, {Name: name(1), Ordinal: 1, Live: true}, {Name: name(2), Ordinal: 2, Live: true}, {Name: name(3), Ordinal: 3}},
				Zones: z, Maps: map[string]couch.ShardMap{"a": smap("a", map[string][]int{r0: {0, 1, 2}})}},
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			res := Plan(tc.in)
			if diff := cmp.Diff(tc.want, strs(res)); diff != "" {
				t.Errorf("actions (-want +got):\n%s\nwaiting %q", diff, res.Waiting)
			}
			if res.Health.ZoneViolation != tc.violation {
				t.Errorf("zone violations %d, want %d", res.Health.ZoneViolation, tc.violation)
			}
		})
	}
}
