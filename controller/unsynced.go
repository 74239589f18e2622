package controller

import (
	"slices"
	"sort"

	"github.com/couchdb-controller/couchdb-controller/controller/placement"
	"github.com/couchdb-controller/couchdb-controller/couch"
)

// Copies added and never pushed to. CouchDB fills a copy added to a map only on the next write to
// its range (or when its node comes up): the _sync_shards the plan posts right after the map edit is
// what fills it. A sync that dies between the two (a crash, a restart, a timeout on the POST) left
// the copy empty, counted as one of the range's n copies, with nothing left in any plan to fill it:
// the next plans see the copy in the map and add nothing. So the controller remembers the databases
// whose edit added a copy until a _sync_shards of theirs succeeds, and a process that starts with no
// memory guesses them from the maps (seedUnsynced) and posts once for each.

// noteAdded records that an applied map edit of db added a copy.
func (st *clusterState) noteAdded(db string) {
	if st.unsynced == nil {
		st.unsynced = map[string]bool{}
	}
	st.unsynced[db] = true
}

// noteSynced records a successful _sync_shards of db.
func (st *clusterState) noteSynced(db string) { delete(st.unsynced, db) }

// takeUnsynced seeds the memory on this process's first read of the maps and lists the databases
// still waiting for a push that exist in maps.
func takeUnsynced(st *clusterState, maps map[string]couch.ShardMap) []string {
	if !st.unsyncedSeeded {
		st.unsyncedSeeded = true
		for _, db := range seedUnsynced(maps) {
			st.noteAdded(db)
		}
	}
	var out []string
	for db := range st.unsynced {
		if _, ok := maps[db]; ok {
			out = append(out, db)
		} else {
			delete(st.unsynced, db) // deleted meanwhile
		}
	}
	sort.Strings(out)
	return out
}

// pendingPosts lists the databases waiting for a post: those placement holds for a fill slot
// (placement/held.go), which only placement posts, and the others whose added copies wait for one,
// which every plan posts (planUnsynced).
func pendingPosts(st *clusterState, maps map[string]couch.ShardMap) (unsynced []string, held map[string]bool) {
	held = st.fills.heldDBs(maps)
	return slices.DeleteFunc(takeUnsynced(st, maps), func(db string) bool { return held[db] }), held
}

// seedUnsynced lists the databases whose maps the controller has edited (its first edit records
// placement.NKey in the map, in the same write as the copy it adds) or that show a removal in their
// changelog: a controller that died may never have pushed to a copy it added there. A database as
// CouchDB created it is left alone, so a restart costs one POST per edited database, not one per
// database. Pure.
func seedUnsynced(maps map[string]couch.ShardMap) []string {
	var out []string
	for db, m := range maps {
		if edited(m) {
			out = append(out, db)
		}
	}
	sort.Strings(out)
	return out
}

func edited(m couch.ShardMap) bool {
	if _, ok := m.Extra[placement.NKey]; ok {
		return true
	}
	for _, e := range m.Changelog {
		if len(e) == 3 && (e[0] == "remove" || e[0] == "delete") {
			return true
		}
	}
	return false
}

// planUnsynced posts the _sync_shards of every database whose added copies wait for one
// (ShardObs.Unsynced), last in the plan: a failing post (a node down) stops nothing planned before it.
func planUnsynced(o Observed, coord *NodeObs, p *Plan) {
	if o.Shards == nil {
		return
	}
	for _, db := range o.Shards.Unsynced {
		if !slices.ContainsFunc(p.Actions, func(a Action) bool { return a.Kind == ActSyncShards && a.DB == db }) {
			p.Actions = append(p.Actions, Action{Kind: ActSyncShards, Via: coord.Ordinal, DB: db})
		}
	}
}
