package placement

import "sort"

// health counts ranges by live copies against their database's n, never capped by the member count:
// a cluster with fewer members than n is short of copies, and says so (Result.Shortfalls), even
// though no move can fix it. It also marks databases with a range that has no live copy as frozen
// (rule 1) and counts ranges whose live copies cover fewer zones than they could.
func (v *view) health(r *Result) {
	short := map[string]*Shortfall{}
	for _, db := range sortedDBs(v.in.Maps) {
		m := v.in.Maps[db]
		n, want := v.healthN(db), v.want(db)
		for _, rng := range m.Ranges() {
			liveNodes := v.liveCopies(m, rng)
			live := len(liveNodes)
			switch {
			case live == 0:
				r.Health.Unavailable++
				r.AtRisk = append(r.AtRisk, RangeRef{db, rng})
			case live < max(n, 1) || len(v.stayingCopies(m, rng)) < want:
				r.Health.UnderReplicated++
			default:
				r.Health.Healthy++
			}
			if v.zonesOn && live > 0 && v.zoneCount(liveNodes) < min(n, len(v.zones)) {
				r.Health.ZoneViolation++
			}
			if !v.replicated(db) && n > len(v.staying) && live < n {
				s := short[db]
				if s == nil {
					s = &Shortfall{DB: db, N: n, Copies: live, Members: len(v.staying)}
					short[db] = s
				}
				s.Copies = min(s.Copies, live)
			}
		}
	}
	for _, db := range sortedKeys(short) {
		r.Shortfalls = append(r.Shortfalls, *short[db])
	}
	sort.Slice(r.Shortfalls, func(i, j int) bool { return r.Shortfalls[i].DB < r.Shortfalls[j].DB })
}
