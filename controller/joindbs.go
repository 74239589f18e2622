package controller

import (
	"context"
	"fmt"
	"slices"
	"time"

	appsv1 "k8s.io/api/apps/v1"

	"github.com/couchdb-controller/couchdb-controller/couch"
)

// A member whose _dbs lacks databases. CouchDB passes the node-local _dbs (every database's shard
// map) around a ring, each node pushing it to the next; on real CouchDB 3.4.3 the push into a node
// that had just joined once hung 60 s (rexi_DOWN ... killed; BENCHMARKS.md, the run of 04:46 on
// 2026-12-07). Until its _dbs holds a database, the node answers 404 for it to every client it
// coordinates for. So a member's couchdb.io/member gate, which routes clients to it, stays closed
// while its _all_dbs (read from its own _dbs) lacks a database the coordinator's lists; once that
// has lasted dbsGrace, the controller copies the missing maps into it (seedMaps: the coordinator's
// document with its revision, which mem3's own push later finds already there). Only members whose
// gate is not open yet are asked, once per sync while it stays closed: a steady cluster reads
// nothing more.

// dbsGrace is how long a member's _dbs may lack databases before the controller copies their maps
// in: mem3 normally brings them within milliseconds of the join.
const dbsGrace = time.Second

// MissingDBs is what a gated member about to open its gate lacks in its _dbs.
type MissingDBs struct {
	DBs   []string  // databases the coordinator lists and the member's _all_dbs does not, sorted
	Since time.Time // when the controller first saw the member lack some
	Due   bool      // dbsGrace has passed since: their maps are copied in
}

// observeJoinDBs reads, for each member whose couchdb.io/member gate is not open, its _all_dbs
// against the coordinator's.
func (c *Controller) observeJoinDBs(ctx context.Context, st *clusterState, scheme string, ca []byte, o *Observed) {
	coord := coordinator(*o)
	if coord == nil || coord.Setup != couch.StateClusterFinished || len(o.Problems) > 0 || o.CredentialsRejected {
		return
	}
	members, connected := coord.Membership.ClusterNodes, coord.Membership.AllNodes
	d, draining := drainingOrdinal(*o)
	var need []int
	for _, ord := range sortedOrdinals(o.Pods) {
		p, n := o.Pods[ord], o.Nodes[ord]
		if !p.HasMemberGate || p.Terminating || ord >= o.Replicas || draining && d == ord || ord == coord.Ordinal ||
			!n.Valid() || !slices.Contains(members, n.Name) || !slices.Contains(connected, n.Name) ||
			p.MemberCondition != nil && *p.MemberCondition {
			continue
		}
		need = append(need, ord)
	}
	for name := range st.dbsMissing {
		if !slices.ContainsFunc(need, func(ord int) bool { return o.Pods[ord].Name == name }) {
			delete(st.dbsMissing, name)
		}
	}
	if len(need) == 0 {
		return
	}
	var all []string
	if o.Shards != nil && o.Shards.DBs != nil {
		all = o.Shards.DBs
	} else {
		api, err := c.client(st, scheme, ca, o.Pods[coord.Ordinal])
		if err != nil {
			return
		}
		if all, err = api.AllDBs(ctx); err != nil {
			return
		}
	}
	now := c.cfg.Now()
	for _, ord := range need {
		p := o.Pods[ord]
		api, err := c.client(st, scheme, ca, p)
		if err != nil {
			continue
		}
		has, err := api.AllDBs(ctx)
		if err != nil {
			continue // it is asked again next sync; the gate waits meanwhile for nothing it knows of
		}
		var missing []string
		for _, db := range all {
			if !slices.Contains(has, db) {
				missing = append(missing, db)
			}
		}
		if len(missing) == 0 {
			delete(st.dbsMissing, p.Name)
			continue
		}
		slices.Sort(missing)
		since, ok := st.dbsMissing[p.Name]
		if !ok {
			if st.dbsMissing == nil {
				st.dbsMissing = map[string]time.Time{}
			}
			since = now
			st.dbsMissing[p.Name] = now
		}
		if o.MissingDBs == nil {
			o.MissingDBs = map[int]*MissingDBs{}
		}
		o.MissingDBs[ord] = &MissingDBs{DBs: missing, Since: since, Due: now.Sub(since) >= dbsGrace}
	}
}

// holdForDBs reports whether the member at ord keeps its gate closed because its _dbs lacks
// databases, records why, and once that has lasted dbsGrace plans the copy of their maps.
func (p *Plan) holdForDBs(o Observed, ord int) bool {
	m := o.MissingDBs[ord]
	if m == nil || len(m.DBs) == 0 {
		return false
	}
	if p.CatchUp == nil {
		p.CatchUp = map[string]string{}
	}
	p.CatchUp[o.Pods[ord].Name] = fmt.Sprintf("its _dbs lacks %d of the cluster's databases (%s first): mem3 has not brought their shard maps there yet, and a client it serves would get 404 for them", len(m.DBs), m.DBs[0])
	requeue := min(catchUpRequeue, dbsGrace/4)
	if p.Requeue == 0 || p.Requeue > requeue {
		p.Requeue = requeue
	}
	if coord := coordinator(o); coord != nil && m.Due {
		p.Actions = append(p.Actions, Action{Kind: ActCopyMaps, Via: coord.Ordinal, From: ord, Node: o.Nodes[ord].Name})
	}
	return true
}

// copyMaps copies into the _dbs of the member at a.From the maps it lacks (Observed.MissingDBs),
// read from the coordinator (a.Via).
func (c *Controller) copyMaps(ctx context.Context, st *clusterState, sts *appsv1.StatefulSet, o Observed, a Action) error {
	m := o.MissingDBs[a.From]
	if m == nil {
		return nil
	}
	via, err := c.via(ctx, st, sts, o, a.Via)
	if err != nil {
		return err
	}
	target, err := c.via(ctx, st, sts, o, a.From)
	if err != nil {
		return err
	}
	for _, db := range m.DBs {
		seedMaps(ctx, via, db, map[string]CouchAPI{a.Node: target})
	}
	return nil
}
