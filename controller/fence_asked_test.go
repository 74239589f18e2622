package controller

import (
	"testing"
	"time"
)

// A member whose fill fence just ended is still not ready (its readiness probe fails in maintenance
// mode and has not run since): it must still be asked, or it is not live and placement heals its
// ranges, unfenced, onto the other members. Seen on real CouchDB nodes: the drain's next plan added
// eight copies with no fence 0.5 s after a member's fence ended, and a reader missed a range.
func TestAskedWhileMaintenanceKeepsThePodNotReady(t *testing.T) {
	two := 2
	for _, tc := range []struct {
		name string
		pod  PodObs
		o    Observed
		want bool
	}{
		{name: "ready", pod: PodObs{IP: "10.0.0.1", ContainersReady: true}, want: true},
		{name: "not ready", pod: PodObs{IP: "10.0.0.1"}, want: false},
		{name: "not ready, fenced for a fill", pod: PodObs{IP: "10.0.0.1"}, o: Observed{FillFenced: map[int]bool{1: true}}, want: true},
		{name: "not ready, unfenced a moment ago", pod: PodObs{IP: "10.0.0.1"}, o: Observed{Unfenced: map[int]bool{1: true}}, want: true},
		{name: "not ready, draining", pod: PodObs{IP: "10.0.0.1"}, o: Observed{Replicas: 2, TargetReplicas: &two}, want: false},
		{name: "not ready, the drained node", pod: PodObs{IP: "10.0.0.1"}, o: Observed{Replicas: 2, TargetReplicas: func() *int { one := 1; return &one }()}, want: true},
		{name: "terminating", pod: PodObs{IP: "10.0.0.1", ContainersReady: true, Terminating: true}, o: Observed{Unfenced: map[int]bool{1: true}}, want: false},
		{name: "no address", pod: PodObs{}, o: Observed{FillFenced: map[int]bool{1: true}}, want: false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.pod.Ordinal = 1
			tc.o.Pods = map[int]*PodObs{1: &tc.pod}
			if got := asked(tc.o, 1); got != tc.want {
				t.Errorf("asked %v, want %v", got, tc.want)
			}
		})
	}
}

func TestUnfencedOrdinalsLastTheGrace(t *testing.T) {
	t0 := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	now := t0
	c := &Controller{cfg: Config{Now: func() time.Time { return now }}}
	st := &clusterState{}
	node := nodeName(1)
	c.fillFence(st, node, true)
	fenced, unfenced := fillFencedOrdinals(st, "db", now)
	if !fenced[1] || unfenced[1] {
		t.Fatalf("fenced: fenced %v, unfenced %v", fenced, unfenced)
	}
	c.fillFence(st, node, false)
	now = t0.Add(unfenceGrace - time.Second)
	fenced, unfenced = fillFencedOrdinals(st, "db", now)
	if fenced[1] || !unfenced[1] {
		t.Fatalf("just unfenced: fenced %v, unfenced %v", fenced, unfenced)
	}
	now = t0.Add(unfenceGrace)
	if _, unfenced = fillFencedOrdinals(st, "db", now); unfenced[1] {
		t.Fatalf("still asked after the grace: %v", unfenced)
	}
	if len(st.unfenced) != 0 {
		t.Errorf("the entry is kept: %v", st.unfenced)
	}
	c.fillFence(st, node, false)
	c.fillFence(st, node, true)
	if _, unfenced = fillFencedOrdinals(st, "db", now); unfenced[1] {
		t.Errorf("fenced again, and still listed as unfenced")
	}
}
