// Package placement decides where shard copies go when CouchDB membership changes. CouchDB never moves
// shards by itself: new nodes get no copies of existing databases, and nodes that leave stay in the
// shard maps. Plan is pure: it reads the shard maps, which nodes are live, leaving or draining, their
// zones, the document counts and sizes of the copies it asked about, and returns the next idempotent
// steps. The maps and _nodes are the only memory the steps need, so a controller restart between any
// two steps is harmless: a move in flight is a range with a copy more than its database's n (recorded
// in its map under NKey) or a copy on a leaving node, and both read the same after a restart. The
// drain marks (Mark, rule 7) live in the controller's memory; a restart loses them and takes them
// again at a later update_seq, which is stricter: it costs time, never data.
//
// Rules, in order:
//  1. A database with a range that has no live copy is frozen: nothing of it changes, and the ranges are
//     reported as at risk (scale back up to bring the copies back).
//  2. With zones on, [cluster] placement of every live member is kept equal to one copy per zone that
//     has live staying members, up to the cluster's n (zone-a:1,zone-b:1,zone-c:1, zones sorted by
//     name), or no rule when there are fewer such zones than n. A rule naming a zone with no allowed
//     node makes every database creation through that node fail (500 no_nodes_in_zone), so a rule
//     that names a zone without a live staying member whose _nodes doc carries it is replaced (or
//     deleted) before any other step, and a new rule is set only once the _nodes docs of its zones
//     carry them. The "zone" of each member's _nodes doc is kept equal to its Kubernetes Node's zone
//     label; a member whose Node has no label keeps whatever zone its doc has (an empty label never
//     erases a zone).
//  3. A leaving node (departed, or the node being drained) that is still in _nodes is marked
//     "decom": true there, so CouchDB places no copy of a database created from now on on it; a member
//     that is no longer leaving loses the mark. This comes before any database is created.
//  4. The node being drained is put in maintenance mode before anything of it moves, when it is up:
//     "nolb", then "true" once its copies take writes (drainmode.go). A
//     drained node that is down serves nothing anyway, so its copies are re-created from the other live
//     copies without waiting for it (rule 6), but they are dropped only once it is back (rule 7).
//  5. Databases named in couchdb.io/replicate are created when absent, while every staying member is
//     up (a member that is down may hold the only copy of a newer _dbs).
//  6. Every range keeps n copies on staying members (n is the database's n, see DBN, capped by the
//     staying members; every staying member for replicated databases). A missing copy is added on a
//     live staying member, preferring one in a zone the range lacks, then the member with the fewest
//     copies of that database, then the fewest bytes; then _sync_shards fills it. Ranges with the
//     fewest live copies are healed first. With zones on, a range whose copies cover fewer distinct
//     zones than min(n, zones with live staying members) gets a copy in a zone it lacks, and the copy
//     dropped afterwards (rule 7) is one from a zone it has twice.
//  7. A copy is dropped from the map only when the range has n copies on staying members, each of
//     them holds at least as many documents (doc_count + doc_del_count) as every live copy of the
//     range, and, when the dropped copy is live, mem3's checkpoint of a push from it to each of them
//     has reached its update_seq (equal counts alone can hide different documents). A copy on a
//     fenced node (maintenance_mode "true": it takes no client write) is held to its Mark instead:
//     its update_seq and the largest live document count when it first became a copy to drop, which
//     the controller records (Input.Marks). Under a write load mem3 keeps pushing the staying copies'
//     writes into it, and a push checkpoints only when it ends, so its current update_seq is never
//     reached; all it received after the mark came from staying copies. Copies on leaving
//     nodes are dropped first; of a range with a copy more than n on staying members, the copy dropped
//     is the one whose loss keeps the most zones, then the one on the member holding the most copies
//     of that database, never the copy added last when another ties with it, then one fixed for the
//     copy by a hash of database, range and member (so moves that start together drop from
//     different members, and a rebalance plans each move from the member it will drop from). A
//     copy on a drained node that is down is kept until the node is back: it may hold writes no other
//     copy has, and unlike a departed node it is expected to return.
//  8. With couchdb.io/rebalance, once no range is short of copies, nothing is left on leaving nodes and
//     every staying member is up, copies move (add on the target, fill, verify, drop as in rule 7) to
//     reach, in order:
//     a. for every database, each staying member holds floor(c/m) or ceil(c/m) of its c copies
//     (m staying members): a copy moves from the member with the most copies of the database to the
//     one with the fewest while they differ by two or more; databases whose members differ most,
//     then the largest databases, move first;
//     b. then the bytes each member holds (the sum of the sizes of its copies) are within 10% of the
//     mean, or within the size of the largest copy, whichever is larger: while a member is outside
//     that band, a copy moves from a heavier member to a lighter one (one of them outside the band),
//     the copy that best halves the gap between them and is smaller than it, and only when the
//     member it leaves holds more copies of its database than the member it goes to, so (a) stays
//     true.
//     A move never lowers the number of distinct zones a range covers. Each move strictly lowers, in
//     order, the ranges short of zones, the sum over databases and members of the squared copy
//     counts, and the sum of the squared bytes per member, so rebalancing stops.
//  9. A leaving node that no map references leaves _nodes (in the same plan as the drops that free its
//     last copies, after them, when the plan has nothing else in flight); a drained node's StatefulSet
//     then shrinks by one, once _membership no longer lists it.
//  10. A staying member filling the new copy of a range with a copy to drop is fenced (maintenance mode
//     "true", FenceTarget) before its copy enters the map, and unfenced (ClearMaintenance) before the
//     plan whose drop ends its last such fill: CouchDB serves each range of a clustered read from the
//     first copy that answers, and an unfilled copy answers first. A member is fenced only while every
//     range it holds keeps a serving copy elsewhere (live, unfenced, staying or the drained node in
//     "nolb", not filling, not being dropped), and a verified drop waits while it would leave a range
//     served only by members still filling (dropExposes); a move whose target other fences keep unsafe waits for their fills to end, one whose
//     target can never be fenced goes ahead unfenced. A drain's move waits so for the member it would
//     go to rather than take another that could be fenced alongside, and moves onto a member fenced
//     already go first: a fence kept busy with moves that could go elsewhere keeps the other members
//     from being fenced together once the ranges that keep them apart have moved. And a fenced member
//     rests (takes no new copy until its fence lifts) while a member that can be fenced only in its
//     place has as many copies waiting as the fenced ones together, so that all end together rather
//     than the last one filling alone (restFence). See fence.go.
//
// Concurrency: up to Input.MaxMoves copies are filled at once in the cluster (a range with a copy to
// drop counts as one move in flight per copy to drop; a new copy planned now counts too), and a
// member is the target of a fill or the holder of the copy to drop in at most Input.MaxFillsPerNode
// moves at once (a leaving node's copies to drop take no slot: it serves no client any more, and in a
// drain it holds every copy that moves). A plan that completes a move (drops the last copy its range
// had to drop) starts the next one in its slot: the drop is applied before the add. A range never has two moves, a move adds before it drops so no range ever has
// fewer live copies than before, and a plan holds at most one SyncShards per database, after its
// edits. Once the slots are taken, a plan may add up to MaxMoves/2 more copies (MaxFillsPerNode/2
// per member, one per database with nothing else in flight) with their database's post held
// (Action.Held, Input.Held): their nodes list them while the other fills run, and the first plan
// with a free slot posts them before anything else, so the fill starts at once (held.go).
//
// Health counts ranges against the database's n as created (never capped by the member count): a
// range with fewer live copies is under-replicated even when the cluster has fewer members than n,
// and Result.Shortfalls names those databases so the operator can scale up or lower n.
package placement
