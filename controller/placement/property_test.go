package placement

import (
	"flag"
	"fmt"
	"net/http"
	"net/http/httptest"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

// The property test drives Plan against the couchtest emulator's shard model: real shard map
// documents, real shard copies that a new copy's node creates empty and that internal replication
// fills only from live copies (on _sync_shards, or on a later write after the sync delay), pods that
// stop and start again with their data, and a simulated controller whose only memory is what it
// observes each step (the shard maps and _nodes), which restarts at random between the steps of a
// plan.
//
// The controller's actions go through couch.Client, and its reads through the emulator's HTTP
// handler or its in-process accessors, all in process (no sockets). Each sequence runs in a
// testing/synctest bubble, so the emulator's replication timers run on a fake clock: a sequence is a
// pure function of its seed, and waiting for replication costs nothing.

var (
	propSeed = flag.Int64("placement.seed", 20261124, "first seed of TestPlacementProperty")
	propSeqs = flag.Int("placement.sequences", 0, "sequences TestPlacementProperty runs (0: 1000, or 150 with -short)")
)

// op is one thing a human, Kubernetes or a client does.
func (c *propCluster) op() {
	switch c.rng.Intn(11) {
	case 0, 1:
		k := 1 + c.rng.Intn(4)
		for i := 0; i < k; i++ {
			c.write()
		}
		c.log = append(c.log, fmt.Sprintf("write %d", k))
	case 2:
		if c.replicas < propMaxReplicas {
			c.replicas++
			c.target = nil // scaling up by hand ends a drain
			c.startPod(c.replicas - 1)
			c.log = append(c.log, fmt.Sprintf("scale up to %d", c.replicas))
		}
	case 3:
		if c.replicas > 1 && c.target == nil {
			t := 1 + c.rng.Intn(c.replicas-1)
			c.target = &t
			c.log = append(c.log, fmt.Sprintf("target-replicas %d", t))
		}
	case 4:
		if c.replicas > 1 && c.target == nil {
			c.replicas-- // kubectl scale: the highest pod goes, with its node
			c.stopPod(c.replicas)
			c.plainDown = true
			c.log = append(c.log, fmt.Sprintf("kubectl scale to %d", c.replicas))
		}
	case 5, 6:
		ord := c.rng.Intn(c.replicas)
		if c.up[ord] {
			c.stopPod(ord)
			c.log = append(c.log, fmt.Sprintf("pod %d down", ord))
		} else {
			c.restart(ord)
		}
	case 7:
		c.rebalance = !c.rebalance
		c.log = append(c.log, fmt.Sprintf("rebalance %t", c.rebalance))
	case 8:
		if len(c.replicate) == 0 {
			c.replicate = []string{"b", "c"}
		} else {
			c.replicate = nil
		}
		c.log = append(c.log, fmt.Sprintf("replicate %v", c.replicate))
	case 9:
		if c.target != nil {
			c.target = nil
			c.log = append(c.log, "target-replicas removed")
		}
	default:
		time.Sleep(propSyncDelay + time.Millisecond) // mem3's delayed pushes after writes run
		c.log = append(c.log, "sync delay")
	}
}

// restart brings a pod back with its data. Clients write to every database while it comes up, as
// they would; the internal replication those writes schedule also catches its copies up after the
// sync delay, as a restarted node is in CouchDB.
func (c *propCluster) restart(ord int) {
	for _, db := range c.userDBs() {
		for via := 0; via < c.replicas; via++ {
			if c.up[via] {
				c.writeTo(via, db)
				break
			}
		}
	}
	if c.zoneCount > 0 && c.rng.Intn(3) == 0 {
		c.zoneOf[ord] = c.zoneName(c.rng.Intn(c.zoneCount)) // rescheduled onto a Node of another zone
	}
	c.startPod(ord)
	// Runtime config lives in an ini file that is not on the volume: a restarted CouchDB has lost its
	// placement rule, and the controller must set it again.
	req := httptest.NewRequest(http.MethodDelete, fmt.Sprintf("http://db-%d.test/_node/_local/_config/cluster/placement", ord), nil)
	req.SetBasicAuth("admin", propPassword)
	c.handlers[ord].ServeHTTP(httptest.NewRecorder(), req)
	c.log = append(c.log, fmt.Sprintf("pod %d up in %q", ord, c.zoneOf[ord]))
}

// settle brings every pod below spec.replicas up and runs quiet steps, with the replication timers
// running between them, until a plan is empty.
func (c *propCluster) settle(limit int) bool {
	for ord := 0; ord < c.replicas; ord++ {
		if !c.up[ord] {
			c.restart(ord)
		}
	}
	for i := 0; i < limit; i++ {
		if !c.step(false) {
			return true
		}
		time.Sleep(10 * time.Millisecond)
		if i%10 == 9 {
			time.Sleep(propSyncDelay)
		}
	}
	return false
}

// check asserts convergence after settle: every database not reported at risk has exactly its n
// copies per range (capped by the staying members; one per staying member when replicated), all on
// live staying members; leaving nodes are out of the maps and of _nodes and drains are finished
// unless a range at risk holds them; decom marks and maintenance mode are where they belong; with
// rebalance (zones off) every database's copies are spread evenly over the members and the bytes
// they hold are within the band; with zones on every range covers as many zones as it can, the _nodes
// docs carry the zones and every member has the placement rule; and without a kubectl scale down, no
// acknowledged document was lost.
func (c *propCluster) check() {
	o, ok := c.observe()
	if !ok {
		c.fatalf("no coordinator after settling")
	}
	res := Plan(o.in)
	if len(res.Actions) != 0 {
		c.fatalf("not a fixpoint: %v", res.Actions)
	}
	frozen := map[string]bool{}
	for _, r := range res.AtRisk {
		frozen[r.DB] = true
		for _, n := range o.in.Maps[r.DB].ByRange[r.Range] {
			if ordinalOf(n) < c.replicas {
				c.fatalf("%s/%s reported at risk with a copy on member %s", r.DB, r.Range, n)
			}
		}
	}
	d, draining := c.draining()
	var staying []string
	for ord := 0; ord < c.replicas; ord++ {
		if !(draining && d == ord) {
			staying = append(staying, name(ord))
		}
	}
	if draining && len(res.AtRisk) == 0 {
		c.fatalf("drain to %d stopped at %d replicas (waiting: %s)", *c.target, c.replicas, res.Waiting)
	}
	for _, db := range c.dbs() {
		m, ok := o.in.Maps[db]
		if !ok {
			if c.plainDown {
				continue // its map reached only nodes that kubectl scale removed: gone with them
			}
			c.fatalf("database %s is gone", db)
		}
		if frozen[db] {
			continue
		}
		want := min(c.nTrue[db], len(staying))
		if slices.Contains(c.replicate, db) {
			want = len(staying)
		}
		for _, rng := range m.Ranges() {
			nodes := m.ByRange[rng]
			if len(nodes) != want && !c.recreated[db] {
				c.fatalf("%s/%s has %d copies %v, want %d (n=%d, staying %v, replicated %t)", db, rng, len(nodes), nodes, want, c.nTrue[db], staying, slices.Contains(c.replicate, db))
			}
			for _, n := range nodes {
				if !slices.Contains(staying, n) || !c.up[ordinalOf(n)] {
					c.fatalf("%s/%s has a copy on %s, which is not a live staying member", db, rng, n)
				}
			}
		}
	}
	referenced := map[string]bool{}
	for _, m := range o.in.Maps {
		for _, n := range m.Nodes() {
			referenced[n] = true
		}
	}
	for _, n := range o.members {
		leaving := !slices.Contains(staying, n)
		if leaving && !referenced[n] {
			c.fatalf("leaving node %s is still in _nodes", n)
		}
		if o.in.Decom[n] != leaving {
			c.fatalf("%s: decom %t, leaving %t", n, o.in.Decom[n], leaving)
		}
	}
	for _, mem := range o.in.Members {
		if mem.Maintenance && !(draining && mem.Ordinal == d) {
			c.fatalf("%s left in maintenance mode", mem.Name)
		}
	}
	c.checkZones(o, res, staying, frozen)
	if c.rebalance && len(res.AtRisk) == 0 && c.zoneCount == 0 {
		c.checkBalance(o, staying)
		c.seen["balance checked"]++
	}
	if c.zoneCount > 0 {
		c.seen["zones checked"]++
	}
	if !c.plainDown {
		for _, db := range c.dbs() {
			m := o.in.Maps[db]
			have := map[string]bool{}
			for _, rng := range m.Ranges() {
				for _, n := range m.ByRange[rng] {
					docs, _ := c.copyDocs(m, rng, n)
					for id := range docs {
						have[id] = true
					}
				}
			}
			for id := range c.acked[db] {
				if !have[id] {
					c.fatalf("acknowledged %s/%s is on no copy in the map", db, id)
				}
			}
		}
	}
}

func TestPlacementProperty(t *testing.T) {
	sequences := *propSeqs
	if sequences == 0 {
		sequences = 1000
		if testing.Short() {
			sequences = 150
		}
	}
	workers := min(max(runtime.GOMAXPROCS(0), 2), 8)
	var (
		mu     sync.Mutex
		kinds  = map[Kind]int{}
		seen   = map[string]int{}
		steps  atomic.Int64
		next   atomic.Int64
		failed atomic.Bool
	)
	start := time.Now()
	t.Run("sequences", func(t *testing.T) {
		for w := 0; w < workers; w++ {
			t.Run(fmt.Sprint(w), func(t *testing.T) {
				t.Parallel()
				out := newOutsider()
				defer out.close()
				for !failed.Load() {
					s := next.Add(1) - 1
					if s >= int64(sequences) {
						return
					}
					seed := *propSeed + s
					var c *propCluster
					synctest.Test(t, func(t *testing.T) {
						c = newPropCluster(t, seed, out)
						defer c.stopAll()
						defer func() {
							if t.Failed() {
								t.Logf("seed %d failed: rerun with go test ./controller/placement -run TestPlacementProperty -placement.seed=%d -placement.sequences=1", seed, seed)
							}
						}()
						n := 0
						for i := 0; i < 8; i++ {
							c.op()
							for j := c.rng.Intn(4); j > 0; j-- {
								c.step(c.rng.Intn(5) == 0)
								n++
								if c.rng.Intn(4) != 0 {
									time.Sleep(10 * time.Millisecond) // _sync_shards' pushes run
								}
							}
						}
						if !c.settle(400) {
							c.fatalf("seed %d: no fixpoint", seed)
						}
						c.check()
						steps.Add(int64(n))
					})
					if t.Failed() {
						failed.Store(true)
						return
					}
					mu.Lock()
					for k, v := range c.kinds {
						kinds[k] += v
					}
					for k, v := range c.seen {
						seen[k] += v
					}
					mu.Unlock()
				}
			})
		}
	})
	if t.Failed() {
		return
	}
	t.Logf("placement property: %d sequences from seed %d, %d interleaved steps, %s, actions %v, exercised %v", sequences, *propSeed, steps.Load(), time.Since(start).Round(time.Millisecond), kinds, seen)
	for _, k := range []string{"plans filling several copies", "plans editing several databases", "balance checked", "zones checked", "lagging checkpoints", "drops at a mark", "fill fences checked"} {
		if seen[k] == 0 && sequences >= 100 {
			t.Errorf("no sequence exercised %s", k)
		}
	}
	for _, k := range []Kind{AddCopy, RemoveCopy, SyncShards, SetMaintenance, ClearMaintenance, FenceTarget, RemoveNode, ScaleDown, CreateDB, SetDecom, ClearDecom, SetZone, SetPlacement} {
		if kinds[k] == 0 && sequences >= 100 {
			t.Errorf("no sequence exercised %s", k)
		}
	}
}

// checkZones asserts, with zones on, that the _nodes docs carry each member's zone, that every running
// member has the placement rule of the zones with staying members (one copy each, when there are at
// least n=3 of them), and that every range covers min(its copies, zones) distinct zones.
func (c *propCluster) checkZones(o observation, res Result, staying []string, frozen map[string]bool) {
	if c.zoneCount == 0 {
		if res.Placement != "" || res.Health.ZoneViolation != 0 {
			c.fatalf("zones off, yet placement %q and %d zone violations", res.Placement, res.Health.ZoneViolation)
		}
		return
	}
	zones := map[string]bool{}
	for _, n := range staying {
		zones[c.zoneOf[ordinalOf(n)]] = true
		if got := c.nodeDocs[n].Zone; got != c.zoneOf[ordinalOf(n)] {
			c.fatalf("_nodes doc of %s has zone %q, its Node is in %q", n, got, c.zoneOf[ordinalOf(n)])
		}
	}
	rule := ""
	if len(zones) >= 3 {
		rule = strings.Join([]string{c.zoneName(0) + ":1", c.zoneName(1) + ":1", c.zoneName(2) + ":1"}, ",")
	}
	for _, mem := range o.in.Members {
		if got := c.placementOf(mem.Ordinal); got != rule {
			c.fatalf("%s has placement %q, want %q (zones %v)", mem.Name, got, rule, zones)
		}
	}
	if res.Health.ZoneViolation != 0 {
		c.fatalf("%d ranges short of zones at the fixpoint", res.Health.ZoneViolation)
	}
	for db, m := range o.in.Maps {
		if frozen[db] {
			continue
		}
		for _, rng := range m.Ranges() {
			have := map[string]bool{}
			for _, n := range m.ByRange[rng] {
				have[c.zoneOf[ordinalOf(n)]] = true
			}
			if want := min(len(m.ByRange[rng]), len(zones)); len(have) < want {
				c.fatalf("%s/%s copies %v cover zones %v, want %d distinct", db, rng, m.ByRange[rng], have, want)
			}
		}
	}
}

// checkBalance asserts rule 8: every database's copies are spread floor/ceil over the staying members,
// then the bytes each member holds are within 10% of the mean or the largest copy.
func (c *propCluster) checkBalance(o observation, staying []string) {
	bytes := map[string]int64{}
	var total, largest int64
	for db, m := range o.in.Maps {
		count := map[string]int{}
		for _, n := range staying {
			count[n] = 0
		}
		for n, rs := range m.ByNode {
			count[n] += len(rs)
			bytes[n] += int64(len(rs)) * c.size[db]
			total += int64(len(rs)) * c.size[db]
			largest = max(largest, c.size[db])
		}
		lo, hi := 1<<30, 0
		for _, k := range count {
			lo, hi = min(lo, k), max(hi, k)
		}
		if hi-lo > 1 {
			c.fatalf("rebalance left %s spread as %v", db, count)
		}
	}
	mean := float64(total) / float64(len(staying))
	band := max(mean/10, float64(largest))
	for _, n := range staying {
		if d := float64(bytes[n]) - mean; d > band || -d > band {
			c.fatalf("rebalance left %s with %d bytes, mean %.0f, band %.0f (%v)", n, bytes[n], mean, band, bytes)
		}
	}
}
