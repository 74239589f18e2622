package controller

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/couchdb-controller/couchdb-controller/controller/placement"
	"github.com/couchdb-controller/couchdb-controller/couch"
)

// Rollouts that wait for catch-up: a member whose pod was recreated or whose container restarted
// keeps the couchdb.io/member condition False until every copy it holds has caught up with the
// other live copies of its range, so a RollingUpdate never takes the next pod down while two copies
// of a range are behind. A node the controller itself just added (a scale-up) holds no copies and is
// not checked: the join path reads nothing more than before.

// CatchUpObs is what was read about one restarted member's copies.
type CatchUpObs struct {
	Since    time.Time     // when the controller first saw this pod process needing the check
	Timeout  time.Duration // --catch-up-timeout
	TimedOut bool          // Since is longer ago than Timeout: the gate opens with a Warning
	Read     bool          // the shard maps and copy stats were read in this sync
	Copies   []CopyCatchUp
}

// CopyCatchUp is one copy the member holds, and the other live copies of its range.
type CopyCatchUp struct {
	DB, Range string
	Own       *placement.CopyStat           // nil when its info could not be read
	Sources   map[string]placement.CopyStat // other live copies by node, with Pushed
	Unread    []string                      // other live copies whose stats or checkpoints could not be read
	// Baseline is, by source node, the update_seq its copy had when first read during this wait,
	// with the restarted member already back. What the member missed is at or below it (later
	// writes reach the member's copy directly), so mem3 pushing the source up to it proves the
	// catch-up even while writes keep moving the source's update_seq and doc counts.
	Baseline map[string]int64
}

// catchUpMemory is what the controller remembers between syncs; it only spares reads and dates the
// timeout (after a controller restart, a gate already True for the current process is trusted).
type catchUpMemory struct {
	verified map[string]string       // pod -> identity whose copies were seen caught up (or needed no check)
	since    map[string]catchUpSince // pod -> the process being waited for
}

type catchUpSince struct {
	identity string
	at       time.Time
	baseline map[string]int64 // db, range, source node and copy uuid -> its first update_seq read
}

// observeCatchUp finds the members that need the check and reads their copies' state.
func (c *Controller) observeCatchUp(ctx context.Context, st *clusterState, scheme string, ca []byte, o *Observed) {
	coord := coordinator(*o)
	if coord == nil || coord.Setup != couch.StateClusterFinished || len(o.Problems) > 0 || o.CredentialsRejected {
		return
	}
	if st.catchUp.verified == nil {
		st.catchUp = catchUpMemory{verified: map[string]string{}, since: map[string]catchUpSince{}}
	}
	members, connected := coord.Membership.ClusterNodes, coord.Membership.AllNodes
	now := c.cfg.Now()
	d, draining := drainingOrdinal(*o)
	live := map[string]bool{}
	for _, ord := range sortedOrdinals(o.Nodes) {
		if n, p := o.Nodes[ord], o.Pods[ord]; n.Valid() && p != nil && !p.Terminating && slices.Contains(connected, n.Name) {
			live[n.Name] = true
		}
	}
	var need []int
	for _, ord := range sortedOrdinals(o.Pods) {
		p, n := o.Pods[ord], o.Nodes[ord]
		if !p.HasMemberGate || p.Terminating || ord >= o.Replicas || draining && d == ord ||
			!n.Valid() || !slices.Contains(members, n.Name) || !slices.Contains(connected, n.Name) {
			continue
		}
		v, known := st.catchUp.verified[p.Name]
		_, justAdded := st.joining[n.Name]
		switch {
		case known && v == p.Identity:
			continue
		case justAdded:
			// Added by this controller a moment ago: it was no member before, so it holds nothing
			// that could have fallen behind.
			st.catchUp.verified[p.Name] = p.Identity
			continue
		case !known && p.MemberCondition != nil && *p.MemberCondition && !p.StartedAt.After(p.MemberSince):
			// This controller has no memory of the pod (it restarted) and the gate was opened for
			// the container run that is still going: nothing restarted since.
			st.catchUp.verified[p.Name] = p.Identity
			continue
		}
		w, ok := st.catchUp.since[p.Name]
		if !ok || w.identity != p.Identity {
			w = catchUpSince{identity: p.Identity, at: now, baseline: map[string]int64{}}
			st.catchUp.since[p.Name] = w
		}
		cu := &CatchUpObs{Since: w.at, Timeout: c.cfg.CatchUpTimeout, TimedOut: now.Sub(w.at) >= c.cfg.CatchUpTimeout}
		if o.CatchUp == nil {
			o.CatchUp = map[int]*CatchUpObs{}
		}
		o.CatchUp[ord] = cu
		if !cu.TimedOut {
			need = append(need, ord)
		}
	}
	if len(need) == 0 {
		return
	}
	api, err := c.client(st, scheme, ca, o.Pods[coord.Ordinal])
	if err != nil {
		return
	}
	var maps map[string]couch.ShardMap
	if o.Shards != nil {
		maps = o.Shards.Maps
	} else if _, maps, err = c.readShardMaps(ctx, st, api, coord, o.Pods[coord.Ordinal].Identity); err != nil {
		return
	}
	stats := map[placement.CopyKey]*placement.CopyStat{}
	stat := func(db, rng, node string, pushed bool) *placement.CopyStat {
		k := placement.CopyKey{DB: db, Range: rng, Node: node}
		if s, ok := stats[k]; ok && (!pushed || s.Pushed != nil) {
			return s
		}
		shard := maps[db].ShardName(rng)
		info, err := api.ShardCopyInfo(ctx, node, shard)
		if err != nil {
			return nil
		}
		s := &placement.CopyStat{Docs: info.DocCount, Deleted: info.DocDelCount, Seq: copySeq(info.UpdateSeq), UUID: info.UUID}
		if pushed {
			cps, err := api.ShardCheckpoints(ctx, node, shard)
			if err != nil {
				return nil
			}
			s.Pushed = map[string]int64{}
			for _, cp := range cps {
				if cp.SourceUUID == s.UUID && cp.TargetUUID != "" {
					s.Pushed[cp.TargetUUID] = max(s.Pushed[cp.TargetUUID], cp.Seq)
				}
			}
		}
		stats[k] = s
		return s
	}
	dbs := make([]string, 0, len(maps))
	for db := range maps {
		dbs = append(dbs, db)
	}
	sort.Strings(dbs)
	for _, ord := range need {
		cu, name := o.CatchUp[ord], o.Nodes[ord].Name
		for _, db := range dbs {
			m := maps[db]
			for _, rng := range m.Ranges() {
				if !m.HasCopy(rng, name) {
					continue
				}
				cc := CopyCatchUp{DB: db, Range: rng, Own: stat(db, rng, name, false), Sources: map[string]placement.CopyStat{},
					Baseline: map[string]int64{}}
				base := st.catchUp.since[o.Pods[ord].Name].baseline
				for _, other := range m.ByRange[rng] {
					if other == name || !live[other] {
						continue
					}
					if s := stat(db, rng, other, true); s != nil {
						cc.Sources[other] = *s
						if k := db + "\x00" + rng + "\x00" + other + "\x00" + s.UUID; base != nil && s.Seq >= 0 && s.UUID != "" {
							if _, ok := base[k]; !ok {
								base[k] = s.Seq
							}
							cc.Baseline[other] = base[k]
						}
					} else {
						cc.Unread = append(cc.Unread, other)
					}
				}
				cu.Copies = append(cu.Copies, cc)
			}
		}
		cu.Read = true
	}
}

// catchUpPending says whether the member at ord must keep its gate closed, and why. Pure.
func catchUpPending(o Observed, ord int) (string, bool) {
	cu := o.CatchUp[ord]
	switch {
	case cu == nil || cu.TimedOut:
		return "", false
	case !cu.Read:
		return "restarted: waiting to read the state of the shard copies it holds", true
	}
	for _, c := range cu.Copies {
		if c.Own == nil {
			return fmt.Sprintf("restarted: no information yet about its copy of %s range %s", c.DB, c.Range), true
		}
		if len(c.Unread) > 0 {
			return fmt.Sprintf("restarted: cannot yet read the copy of %s range %s on %v to compare", c.DB, c.Range, c.Unread), true
		}
		if src, target, behind := c.behind(); behind {
			s := c.Sources[src]
			return fmt.Sprintf("restarted: its copy of %s range %s is catching up with the copy on %s (%d of %d documents; internal replication checkpoint %d of update_seq %d)",
				c.DB, c.Range, src, c.Own.Docs, s.Docs, s.Pushed[c.Own.UUID], target), true
		}
	}
	return "", false
}

// behind names the first other copy the member's copy has not caught up with, and the update_seq
// of that copy it must be pushed up to. Only for a copy whose own and other stats were all read.
func (c CopyCatchUp) behind() (string, int64, bool) {
	for _, src := range sortedKeysOf(c.Sources) {
		s := c.Sources[src]
		base, hasBase := c.Baseline[src]
		caught := s.Seq == 0 && s.Docs+s.Deleted == 0 || // nothing was ever written there
			c.Own.UUID != "" && s.Pushed[c.Own.UUID] >= s.Seq && s.Seq >= 0 || // mem3 pushed all of it
			c.Own.UUID != "" && hasBase && base >= 0 && s.Pushed[c.Own.UUID] >= base || // all it could have missed
			c.Own.Docs == s.Docs && c.Own.Deleted == s.Deleted // same document counts
		if !caught {
			target := s.Seq
			if hasBase && base >= 0 {
				target = base
			}
			return src, target, true
		}
	}
	return "", 0, false
}

// catchUpSyncs lists the databases in which the member at ord holds a copy known to be behind. Pure.
// Nothing in CouchDB pushes to such a copy until the next write to its range (mem3 pushes all
// copies to a node when it comes up, but not to a copy that was only added to a map, as when the
// controller that added it died before its _sync_shards): the gate would stay closed until
// --catch-up-timeout with nothing moving. A _sync_shards per such database starts the pushes; it
// is idempotent and cheap when there is nothing to push.
func catchUpSyncs(o Observed, ord int) []string {
	cu := o.CatchUp[ord]
	if cu == nil || cu.TimedOut || !cu.Read {
		return nil
	}
	var dbs []string
	for _, c := range cu.Copies {
		if c.Own == nil || len(c.Unread) > 0 || slices.Contains(dbs, c.DB) {
			continue
		}
		if _, _, behind := c.behind(); behind {
			dbs = append(dbs, c.DB)
		}
	}
	return dbs
}

// catchUpTimeouts are the Warnings for members whose gate opens because the bound passed.
func catchUpTimeouts(o Observed) []Problem {
	var out []Problem
	for _, ord := range sortedOrdinals(o.CatchUp) {
		if cu := o.CatchUp[ord]; cu.TimedOut && o.Pods[ord] != nil {
			out = append(out, Problem{ReasonCatchUpTimeout, fmt.Sprintf(
				"pod %s restarted and its shard copies were not seen caught up with the other copies within --catch-up-timeout=%s; its %s condition is set True anyway so a rollout is not blocked for ever: check that internal replication runs on its node (its log, _node/<node>/_system) before taking another pod down",
				o.Pods[ord].Name, cu.Timeout, ConditionMember)})
		}
	}
	return out
}

func sortedKeysOf[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// containerStarted is when the CouchDB container's current run started (zero when not running).
func containerStarted(pod *corev1.Pod) time.Time {
	ctr := couchContainer(&pod.Spec)
	for _, s := range pod.Status.ContainerStatuses {
		if ctr != nil && s.Name == ctr.Name && s.State.Running != nil {
			return s.State.Running.StartedAt.Time
		}
	}
	return time.Time{}
}
