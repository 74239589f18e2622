package placement

import (
	"fmt"
	"math/rand"
	"slices"
	"sort"
	"testing"

	"github.com/couchdb-controller/couchdb-controller/couch"
)

// world is a small model of a CouchDB cluster's shard placement: members by ordinal, which are up,
// the shard maps, and the documents each copy holds. Internal replication fills a copy only on
// _sync_shards (or a write to the range), as recorded on real CouchDB.
type world struct {
	t        *testing.T
	rng      *rand.Rand
	replicas int
	target   *int
	members  map[string]bool // in _nodes
	down     map[string]bool
	maint    map[string]bool
	maps     map[string]couch.ShardMap
	docs     map[CopyKey]map[int]bool
	nextDoc  int
	replic   []string
	rebal    bool
	removed  map[string]bool // nodes whose pods are gone (ordinal >= replicas)
}

func name(i int) string { return fmt.Sprintf("couchdb@db-%d.db", i) }

func ordinalOf(n string) int {
	var i int
	fmt.Sscanf(n, "couchdb@db-%d.db", &i)
	return i
}

func newWorld(t *testing.T, rng *rand.Rand) *world {
	w := &world{t: t, rng: rng, replicas: 3, members: map[string]bool{}, down: map[string]bool{}, maint: map[string]bool{},
		maps: map[string]couch.ShardMap{}, docs: map[CopyKey]map[int]bool{}, removed: map[string]bool{}}
	for i := 0; i < 3; i++ {
		w.members[name(i)] = true
	}
	for _, db := range []string{"a", "b"} {
		m := couch.ShardMap{ID: db, ByNode: map[string][]string{}, ByRange: map[string][]string{}}
		for ri, r := range []string{"00000000-7fffffff", "80000000-ffffffff"} {
			for k := 0; k < 3; k++ {
				m.AddCopy(r, name((ri+k)%3))
				w.docs[CopyKey{db, r, name((ri + k) % 3)}] = map[int]bool{}
			}
		}
		w.maps[db] = m
	}
	return w
}

func (w *world) live(n string) bool { return w.members[n] && !w.down[n] && !w.removed[n] }

// write puts one document on every live copy of a random range.
func (w *world) write() {
	dbs := sortedDBs(w.maps)
	db := dbs[w.rng.Intn(len(dbs))]
	m := w.maps[db]
	rs := m.Ranges()
	r := rs[w.rng.Intn(len(rs))]
	w.nextDoc++
	for _, n := range m.ByRange[r] {
		if w.live(n) {
			w.copy(db, r, n)[w.nextDoc] = true
		}
	}
}

func (w *world) copy(db, r, n string) map[int]bool {
	k := CopyKey{db, r, n}
	if w.docs[k] == nil {
		w.docs[k] = map[int]bool{}
	}
	return w.docs[k]
}

// liveDocs is every document some live copy of the range holds.
func (w *world) liveDocs(db, r string) map[int]bool {
	out := map[int]bool{}
	for _, n := range w.maps[db].ByRange[r] {
		if w.live(n) {
			for d := range w.copy(db, r, n) {
				out[d] = true
			}
		}
	}
	return out
}

func (w *world) input() Input {
	in := Input{Replicas: w.replicas, TargetReplicas: w.target, Replicate: w.replic, Rebalance: w.rebal, Maps: map[string]couch.ShardMap{}, Stats: map[CopyKey]CopyStat{}}
	refs := map[string]bool{}
	for db, m := range w.maps {
		in.Maps[db] = m.Clone()
		in.DBs = append(in.DBs, db)
		for _, n := range m.Nodes() {
			refs[n] = true
		}
	}
	for n := range w.members {
		if ordinalOf(n) < w.replicas && !w.removed[n] {
			in.Members = append(in.Members, Member{Name: n, Ordinal: ordinalOf(n), Live: w.live(n), Maintenance: w.maint[n]})
		}
	}
	seen := map[string]bool{}
	for n := range w.members {
		if ordinalOf(n) >= w.replicas {
			in.Departed = append(in.Departed, n)
			seen[n] = true
		}
	}
	for n := range refs {
		if ordinalOf(n) >= w.replicas && !seen[n] {
			in.Departed = append(in.Departed, n)
		}
	}
	sort.Slice(in.Members, func(i, j int) bool { return in.Members[i].Ordinal < in.Members[j].Ordinal })
	sort.Strings(in.Departed)
	for _, k := range StatsNeeded(in) {
		if w.live(k.Node) {
			in.Stats[k] = CopyStat{Docs: int64(len(w.copy(k.DB, k.Range, k.Node)))}
		}
	}
	return in
}

// step plans once and applies the plan, checking the invariants on every destructive step. Pods below
// spec.replicas that are up but not in _nodes join first, as the controller's join rule does (except
// the node being drained).
func (w *world) step() int {
	for i := 0; i < w.replicas; i++ {
		n := name(i)
		draining := w.target != nil && *w.target < w.replicas && i == w.replicas-1
		if !w.members[n] && !w.removed[n] && !w.down[n] && !draining {
			w.members[n] = true
		}
	}
	in := w.input()
	res := Plan(in)
	for _, a := range res.Actions {
		actionCounts[a.Kind]++
		switch a.Kind {
		case CreateDB:
			m := couch.ShardMap{ID: a.DB, ByNode: map[string][]string{}, ByRange: map[string][]string{}}
			var staying []string
			for _, mem := range in.Members {
				if ordinalOf(mem.Name) < w.replicas-boolInt(w.target != nil && *w.target < w.replicas) {
					staying = append(staying, mem.Name)
				}
			}
			for _, n := range staying {
				m.AddCopy("00000000-ffffffff", n)
			}
			w.maps[a.DB] = m
		case AddCopy:
			m := w.maps[a.DB]
			if !w.members[a.Node] || w.removed[a.Node] {
				w.t.Fatalf("copy placed on non-member %s", a.Node)
			}
			m.AddCopy(a.Range, a.Node)
			w.maps[a.DB] = m
		case SyncShards:
			m := w.maps[a.DB]
			for _, r := range m.Ranges() {
				all := w.liveDocs(a.DB, r)
				for _, n := range m.ByRange[r] {
					if w.live(n) {
						for d := range all {
							w.copy(a.DB, r, n)[d] = true
						}
					}
				}
			}
		case RemoveCopy:
			m := w.maps[a.DB]
			before := w.liveDocs(a.DB, a.Range)
			if len(m.ByRange[a.Range]) <= 1 {
				w.t.Fatalf("removing the last copy of %s/%s", a.DB, a.Range)
			}
			// The documented safety rule: the remaining live copies hold at least what the removed one did.
			if w.live(a.Node) {
				for d := range w.copy(a.DB, a.Range, a.Node) {
					held := false
					for _, n := range m.ByRange[a.Range] {
						if n != a.Node && w.live(n) && w.copy(a.DB, a.Range, n)[d] {
							held = true
						}
					}
					if !held {
						w.t.Fatalf("removed %s/%s from %s before doc %d reached another live copy", a.DB, a.Range, a.Node, d)
					}
				}
			}
			m.RemoveCopy(a.Range, a.Node)
			w.maps[a.DB] = m
			after := w.liveDocs(a.DB, a.Range)
			for d := range before {
				if !after[d] {
					w.t.Fatalf("doc %d of %s/%s lost its last live copy", d, a.DB, a.Range)
				}
			}
		case SetMaintenance:
			w.maint[a.Node] = true
		case ClearMaintenance:
			delete(w.maint, a.Node)
		case RemoveNode:
			for db, m := range w.maps {
				if slices.Contains(m.Nodes(), a.Node) {
					w.t.Fatalf("removed %s from _nodes while %s still places copies on it", a.Node, db)
				}
			}
			delete(w.members, a.Node)
		case ScaleDown:
			if a.Replicas != w.replicas-1 || w.target == nil || a.Replicas < *w.target {
				w.t.Fatalf("scale down to %d from %d (target %v)", a.Replicas, w.replicas, w.target)
			}
			w.removed[name(a.Replicas)] = true
			w.replicas = a.Replicas
		}
	}
	return len(res.Actions)
}

var actionCounts = map[Kind]int{}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// settle runs steps until nothing is planned.
func (w *world) settle(limit int) bool {
	for i := 0; i < limit; i++ {
		if w.step() == 0 {
			return true
		}
	}
	return false
}

func (w *world) op() string {
	switch w.rng.Intn(8) {
	case 0, 1:
		for i := 0; i < 1+w.rng.Intn(5); i++ {
			w.write()
		}
		return "write"
	case 2:
		if w.replicas < 6 {
			n := name(w.replicas)
			w.members[n] = true
			delete(w.removed, n)
			delete(w.down, n)
			delete(w.maint, n)
			w.replicas++
			if w.target != nil && *w.target < w.replicas {
				w.target = nil
			}
		}
		return "scale up"
	case 3:
		if w.replicas > 1 && w.target == nil {
			t := 1 + w.rng.Intn(w.replicas-1)
			w.target = &t
		}
		return "target-replicas"
	case 4:
		if w.replicas > 1 && w.target == nil {
			// kubectl scale down: the highest pod disappears with its node.
			w.replicas--
			w.removed[name(w.replicas)] = true
		}
		return "plain scale down"
	case 5:
		n := name(w.rng.Intn(w.replicas))
		w.down[n] = !w.down[n]
		return "restart"
	case 6:
		w.rebal = !w.rebal
		return "rebalance"
	default:
		if len(w.replic) == 0 {
			w.replic = []string{"b", "c"}
		} else {
			w.replic = nil
		}
		return "replicate"
	}
}

func TestPlacementProperty(t *testing.T) {
	const sequences = 1000
	seed := int64(20261124)
	steps := 0
	for s := 0; s < sequences; s++ {
		rng := rand.New(rand.NewSource(seed + int64(s)))
		w := newWorld(t, rng)
		var ops []string
		for i := 0; i < 12; i++ {
			ops = append(ops, w.op())
			for j := 0; j < rng.Intn(4); j++ {
				w.step()
				steps++
			}
		}
		// Quiet: every pod that still exists comes back up, and the controller keeps going.
		w.down = map[string]bool{}
		if !w.settle(400) {
			t.Fatalf("seed %d: no fixpoint after %v", seed+int64(s), ops)
		}
		w.check(seed+int64(s), ops)
	}
	t.Logf("placement property: %d sequences, %d interleaved steps, seed %d, actions %v", sequences, steps, seed, actionCounts)
	for _, k := range []Kind{AddCopy, RemoveCopy, SyncShards, SetMaintenance, RemoveNode, ScaleDown, CreateDB, ClearMaintenance} {
		if actionCounts[k] == 0 {
			t.Errorf("no sequence exercised %s", k)
		}
	}
}

// check asserts convergence: no leaving node is referenced, every range has its copies on live
// members, the drain reached its target, and planning again changes nothing.
func (w *world) check(seed int64, ops []string) {
	in := w.input()
	res := Plan(in)
	if len(res.Actions) != 0 {
		w.t.Fatalf("seed %d: not a fixpoint: %v after %v", seed, res.Actions, ops)
	}
	if w.target != nil && w.replicas != *w.target && len(res.AtRisk) == 0 {
		w.t.Fatalf("seed %d: replicas %d, target %d after %v", seed, w.replicas, *w.target, ops)
	}
	if len(res.AtRisk) > 0 {
		return // a plain scale-down took every copy of some range: kept as it is, reported
	}
	for db, m := range w.maps {
		want := 0
		for _, nodes := range m.ByRange {
			want = max(want, len(nodes))
		}
		for _, r := range m.Ranges() {
			for _, n := range m.ByRange[r] {
				if !w.live(n) || ordinalOf(n) >= w.replicas {
					w.t.Fatalf("seed %d: %s/%s still on %s after %v", seed, db, r, n, ops)
				}
			}
			if slices.Contains(w.replic, db) && len(m.ByRange[r]) != w.replicas {
				w.t.Fatalf("seed %d: replicated %s/%s has %d copies on %d members", seed, db, r, len(m.ByRange[r]), w.replicas)
			}
		}
	}
	if w.rebal {
		load := map[string]int{}
		for n := range w.members {
			load[n] = 0
		}
		for _, m := range w.maps {
			for n, rs := range m.ByNode {
				load[n] += len(rs)
			}
		}
		lo, hi := 1<<30, 0
		for _, l := range load {
			lo, hi = min(lo, l), max(hi, l)
		}
		if hi-lo > 1 && len(w.replic) == 0 {
			w.t.Fatalf("seed %d: rebalance left loads %v", seed, load)
		}
	}
}
