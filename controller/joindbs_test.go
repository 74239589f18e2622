package controller

import (
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestJoinedMemberGateWaitsForItsDBs: a node joins while mem3's _dbs pushes into it hang (as the
// push into a just-joined CouchDB 3.4.3 node once did for 60 s). It is a member, but its _dbs lacks
// every database, so a client it served would get 404: its couchdb.io/member gate stays closed,
// the status says why, and once dbsGrace has passed the controller copies the maps in; the gate
// then opens. A member whose gate is open is not asked again.
func TestJoinedMemberGateWaitsForItsDBs(t *testing.T) {
	f := newFixture(t)
	f.formedN(3, true)
	f.createDB(0, "appdb", 2, 3, 5)
	now := time.Now()
	f.c.cfg.Now = func() time.Time { return now }
	sts := statefulSet(4, nil)
	sts.ResourceVersion = "2"
	f.cache(sts)
	f.addNode(3, testPass).HoldDBs(true)
	f.cache(gatedPod(3))
	name := f.names[3]
	if name == "" {
		name = "couchdb@db-3.db." + testNS + ".svc.cluster.local"
	}
	for i := 0; i < 8 && !slices.Contains(f.node(0).ClusterNodes(), name); i++ {
		if err := f.c.sync(f.ctx, key); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.c.sync(f.ctx, key); err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(f.node(0).ClusterNodes(), name) {
		t.Fatalf("db-3 never joined: %v", f.node(0).ClusterNodes())
	}
	if c := f.memberCondition("db-3"); c == nil || *c {
		t.Fatalf("db-3 gate %s while its _dbs lacks every database, want False", gate(c))
	}
	if st, _ := f.c.Cluster(testNS, "main"); !strings.Contains(st.Nodes[3].CatchingUp, "_dbs lacks") {
		t.Errorf("status of db-3: %+v", st.Nodes[3])
	}
	dbs, err := f.admin(3).AllDBs(f.ctx)
	if err != nil || slices.Contains(dbs, "appdb") {
		t.Fatalf("db-3 lists %v (%v) before any copy: the test's hung _dbs did not hold", dbs, err)
	}

	now = now.Add(dbsGrace)
	for range 3 {
		if err := f.c.sync(f.ctx, key); err != nil {
			t.Fatal(err)
		}
	}
	if dbs, err := f.admin(3).AllDBs(f.ctx); err != nil || !slices.Contains(dbs, "appdb") {
		t.Errorf("db-3 lists %v (%v) after the grace: appdb's map was not copied in", dbs, err)
	}
	if c := f.memberCondition("db-3"); c == nil || !*c {
		t.Errorf("db-3 gate %s once its _dbs holds every database, want True", gate(c))
	}
	f.resetCalls()
	if err := f.c.sync(f.ctx, key); err != nil {
		t.Fatal(err)
	}
	for _, c := range f.couchCalls() {
		if c.Path == "/_all_dbs" {
			t.Errorf("a steady sync asked %s %s: only members whose gate is closed are", c.Method, c.Path)
		}
	}
}

func gate(c *bool) string {
	if c == nil {
		return "unset"
	}
	return strconv.FormatBool(*c)
}
