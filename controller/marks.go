package controller

import (
	"github.com/couchdb-controller/couchdb-controller/controller/placement"
)

// Drain marks: placement drops a live copy once mem3's push checkpoints from it reach the
// update_seq it had when it first became a copy to drop, not its current one, which never stands
// still under a write load (placement.Mark says why that is sound). The marks are the only state
// placement keeps between syncs, and they live here, in memory, per cluster. A restarted controller
// takes them again at the copies' update_seq of that moment, which is later and so stricter:
// losing them costs time, never data.

// takeMarks updates the cluster's marks from this sync's reads (in must carry obs's Stats, with the
// checkpoints read) and hands them to placement through obs.
func takeMarks(st *clusterState, in placement.Input, obs *ShardObs) {
	st.marks = placement.Marks(in, st.marks)
	obs.Marks = st.marks
}
