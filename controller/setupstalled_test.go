package controller

import (
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// A formation wait is retried every second and raises no event; once every pod is ready and
// answers, the same wait for UnreachableAfter is a Warning naming it. Waits while pods start, a
// wait that changes, and a formed cluster are not.
func TestSetupStalled(t *testing.T) {
	t0 := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	sts := &appsv1.StatefulSet{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "db"}}
	observed := func(ready bool) Observed {
		o := Observed{Replicas: 3, Pods: map[int]*PodObs{}, Nodes: map[int]*NodeObs{}}
		for ord := range 3 {
			o.Pods[ord] = &PodObs{Ordinal: ord, IP: "10.0.0.1", ContainersReady: ready || ord < 2}
			o.Nodes[ord] = &NodeObs{Ordinal: ord, Reached: true, Name: nodeName(ord)}
		}
		return o
	}
	const disagree = "nodes disagree about membership: db-2 lists [db-2], the coordinator [db-0 db-1 db-2]"
	type step struct {
		at    time.Duration
		wait  string
		ready bool
		want  bool
	}
	for _, tc := range []struct {
		name  string
		steps []step
	}{
		{name: "the same wait for a minute with every pod answering", steps: []step{
			{at: 0, wait: disagree, ready: true},
			{at: 59 * time.Second, wait: disagree, ready: true},
			{at: time.Minute, wait: disagree, ready: true, want: true},
		}},
		{name: "a pod not ready yet: Kubernetes is still at work", steps: []step{
			{at: 0, wait: "waiting for pod db-2 to answer"},
			{at: 2 * time.Minute, wait: "waiting for pod db-2 to answer"},
		}},
		{name: "a wait that changes starts over", steps: []step{
			{at: 0, wait: disagree, ready: true},
			{at: 50 * time.Second, wait: "other", ready: true},
			{at: 70 * time.Second, wait: "other", ready: true},
			{at: 110 * time.Second, wait: "other", ready: true, want: true},
		}},
		{name: "formed", steps: []step{
			{at: 0, ready: true},
			{at: 2 * time.Minute, ready: true},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			now := t0
			c := &Controller{cfg: Config{Now: func() time.Time { return now }, UnreachableAfter: time.Minute}}
			st := &clusterState{}
			for _, s := range tc.steps {
				now = t0.Add(s.at)
				p := Plan{Wait: s.wait, Formed: s.wait == ""}
				got := c.setupStalled(st, sts, observed(s.ready), p)
				if (len(got) > 0) != s.want {
					t.Fatalf("at %v: warnings %v, want one: %v", s.at, got, s.want)
				}
				if s.want && (got[0].Reason != ReasonSetupStalled || !strings.Contains(got[0].Message, s.wait) || !strings.Contains(got[0].Message, "ns/db")) {
					t.Errorf("at %v: %+v does not name the StatefulSet and the wait", s.at, got[0])
				}
			}
		})
	}
}
