package placement

import (
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/couchdb-controller/couchdb-controller/couch"
)

func TestSizesNeeded(t *testing.T) {
	in := Input{Replicas: 3, Members: members(0, 1), Replicate: []string{"r"},
		Maps: map[string]couch.ShardMap{
			"a":    smap("a", map[string][]int{r0: {0, 1}, r1: {0, 1}}),
			"r":    smap("r", map[string][]int{all: {0, 1}}),
			"lost": smap("lost", map[string][]int{all: {2}}), // no live copy: frozen, never moved
		}}
	if got := SizesNeeded(in); got != nil {
		t.Errorf("rebalance off: %v", got)
	}
	in.Rebalance = true
	if diff := cmp.Diff([]RangeRef{{"a", r0}, {"a", r1}}, SizesNeeded(in)); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	// Healing first: no sizes read while a range is short of copies.
	in.Members = append(in.Members, Member{Name: name(3), Ordinal: 3, Live: true})
	in.Replicas = 4
	in.Maps["b"] = smap("b", map[string][]int{all: {0, 4}})
	in.Departed = []string{name(4)}
	if got := SizesNeeded(in); got != nil {
		t.Errorf("while healing: %v", got)
	}
}

func TestNewestCopy(t *testing.T) {
	m := smap("a", map[string][]int{r0: {0, 1}})
	m.AddCopy(r0, name(2))
	m.AddCopy(r1, name(0))
	if got := newestCopy(m, r0); got != name(2) {
		t.Errorf("newest of %s: %s", r0, got)
	}
	m.RemoveCopy(r0, name(2))
	if got := newestCopy(m, r0); got == name(2) {
		t.Errorf("a removed copy is not the newest")
	}
}
