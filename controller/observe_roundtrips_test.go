package controller

import (
	"context"
	"net/http"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/couchdb-controller/couchdb-controller/couch"
)

// TestSyncJoinAsksEachThingOnce: the sync that joins a new node asks each node for its membership
// once and the new CouchDB process who it is once, then writes the one _nodes document. The
// coordinator's setup state is not asked: the same process said cluster_finished a sync ago.
func TestSyncJoinAsksEachThingOnce(t *testing.T) {
	f := newFixture(t)
	f.formed3()
	f.scaleUpToFour()
	f.syncUntilQuiet(1)
	var got []string
	for _, c := range f.couchCalls() {
		got = append(got, c.String())
	}
	sort.Strings(got)
	want := []string{
		"10.0.0.1 GET /_membership",
		"10.0.0.1 PUT /_node/_local/_nodes/couchdb@db-3.db.ns.svc.cluster.local",
		"10.0.0.2 GET /_membership",
		"10.0.0.3 GET /_membership",
		"10.0.0.4 GET /",
		"10.0.0.4 GET /_membership",
		"10.0.0.4 GET /_node/_local",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("requests of the join sync (-want +got):\n%s", diff)
	}
	if members := f.node(0).ClusterNodes(); len(members) != 4 {
		t.Errorf("_nodes %v after the join sync", members)
	}
}

// TestSyncNewProcessWrongCredentialsOneLogin: a new CouchDB process asked first (nothing has
// accepted the credentials in this sync) gets its questions one at a time, so credentials CouchDB
// rejects cost one failed login per sync, not one per question.
func TestSyncNewProcessWrongCredentialsOneLogin(t *testing.T) {
	f := newFixture(t)
	f.objects = []runtime.Object{statefulSet(1, nil), service(true), endpoints(), secret("wrong-password"), pod(0, true)}
	f.addNode(0, testPass)
	f.newController()
	f.syncUntilQuiet(1)
	if got := f.node(0).Requests().Failures; got != 1 {
		t.Errorf("failed logins = %d after one sync, want 1", got)
	}
	var asked []string
	for _, c := range f.couchCalls() {
		if c.Method == http.MethodGet {
			asked = append(asked, c.Path)
		}
	}
	// GET / needs no login; the node name does, and nothing is asked after it fails.
	if diff := cmp.Diff([]string{"/", "/_node/_local"}, asked); diff != "" {
		t.Errorf("requests (-want +got):\n%s", diff)
	}
}

// TestSyncJoinAsksInParallel: the coordinator's setup state, when it is asked (here by a controller
// that has just started), is asked while the other nodes are, and a new process's questions go out
// together: each wrapped call below waits for one that a serial sync would only send after it.
func TestSyncJoinAsksInParallel(t *testing.T) {
	f := newFixture(t)
	f.formed3()
	setupAsked, nameAsked := make(chan struct{}), make(chan struct{})
	var serial []string
	var mu sync.Mutex
	waitFor := func(ch chan struct{}, what string) {
		select {
		case <-ch:
		case <-time.After(2 * time.Second):
			mu.Lock()
			serial = append(serial, what)
			mu.Unlock()
		}
	}
	var setupOnce, nameOnce sync.Once
	var armed atomic.Bool // only the join sync's calls count
	f.wrap = func(ip string, api CouchAPI) CouchAPI {
		return orderedAPI{CouchAPI: api, ip: ip,
			setup: func() {
				if armed.Load() {
					setupOnce.Do(func() { close(setupAsked) })
				}
			},
			name: func() { nameOnce.Do(func() { close(nameAsked) }) },
			beforeMembership: func() {
				waitFor(setupAsked, "the coordinator's setup state was asked only after the new node's membership")
			},
			beforeWelcome: func() { waitFor(nameAsked, "the new node's name was asked only after its welcome") },
		}
	}
	f.newController() // fresh clients (wrapped), and nothing known of the setup state
	armed.Store(true)
	sts := statefulSet(4, nil)
	sts.ResourceVersion = "2"
	f.cache(sts)
	f.addNode(3, testPass)
	f.cache(pod(3, true))
	f.syncUntilQuiet(1)
	mu.Lock()
	defer mu.Unlock()
	for _, s := range serial {
		t.Error(s)
	}
	if members := f.node(0).ClusterNodes(); len(members) != 4 {
		t.Errorf("_nodes %v after the join sync", members)
	}
}

// orderedAPI lets a test see the order of one node's calls: it reports SetupState and LocalNodeName
// calls, and holds the new node's (10.0.0.4) Membership and Welcome calls at the given hooks.
type orderedAPI struct {
	CouchAPI
	ip                              string
	setup, name                     func()
	beforeMembership, beforeWelcome func()
}

func (a orderedAPI) SetupState(ctx context.Context, ensureDBs ...string) (couch.SetupState, error) {
	a.setup()
	return a.CouchAPI.SetupState(ctx, ensureDBs...)
}

func (a orderedAPI) LocalNodeName(ctx context.Context) (string, error) {
	if a.ip == "10.0.0.4" {
		a.name()
	}
	return a.CouchAPI.LocalNodeName(ctx)
}

func (a orderedAPI) Membership(ctx context.Context) (couch.Membership, error) {
	if a.ip == "10.0.0.4" {
		a.beforeMembership()
	}
	return a.CouchAPI.Membership(ctx)
}

func (a orderedAPI) Welcome(ctx context.Context) (couch.Welcome, error) {
	if a.ip == "10.0.0.4" {
		a.beforeWelcome()
	}
	return a.CouchAPI.Welcome(ctx)
}

// scaleUpToFour scales a formed 3-node cluster to 4 with the new pod ready, and forgets the calls
// made so far.
func (f *fixture) scaleUpToFour() {
	sts := statefulSet(4, nil)
	sts.ResourceVersion = "2"
	f.cache(sts)
	f.addNode(3, testPass)
	f.cache(pod(3, true))
	f.resetCalls()
}

// TestSteadySyncAsksSetupOnlyWhenItMayHaveChanged: once the coordinator said cluster_finished, a
// steady-state sync asks each node its _membership and nothing else, until the answer is
// setupMaxAge old or another CouchDB process coordinates (here: pod 0's container restarted).
func TestSteadySyncAsksSetupOnlyWhenItMayHaveChanged(t *testing.T) {
	f := newFixture(t)
	f.formed3()
	now := time.Now()
	f.c.cfg.Now = func() time.Time { return now }
	setupAsks := func() (setup, other int) {
		for _, c := range f.couchCalls() {
			switch {
			case c.Path == "/_cluster_setup":
				setup++
			case c.Method != http.MethodGet || c.Path != "/_membership":
				other++
			}
		}
		f.resetCalls()
		return setup, other
	}
	for _, step := range []struct {
		name       string
		change     func()
		setupAsked int
	}{
		{"steady", func() {}, 0},
		{"a minute on", func() { now = now.Add(time.Minute) }, 0},
		{"setupMaxAge on", func() { now = now.Add(setupMaxAge) }, 1},
		{"steady again", func() {}, 0},
		{"pod 0 restarted", func() {
			f.updatePod("db-0", func(p *corev1.Pod) {
				p.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "couchdb", RestartCount: 1, Ready: true}}
			})
		}, 1},
	} {
		f.resetCalls()
		step.change()
		f.syncUntilQuiet(1)
		setup, other := setupAsks()
		if setup != step.setupAsked {
			t.Errorf("%s: GET /_cluster_setup asked %d times, want %d", step.name, setup, step.setupAsked)
		}
		if step.name == "steady" && other != 0 {
			t.Errorf("%s: %d requests other than GET /_membership", step.name, other)
		}
	}
}
