package controller

import (
	"fmt"
	"strings"

	"github.com/couchdb-controller/couchdb-controller/controller/placement"
)

func shortfalls(in []placement.Shortfall) []Shortfall {
	out := make([]Shortfall, 0, len(in))
	for _, s := range in {
		out = append(out, Shortfall{DB: s.DB, N: s.N, Copies: s.Copies, Members: s.Members})
	}
	return out
}

// maxNamedShortfalls bounds how many databases the UnderReplicated message names.
const maxNamedShortfalls = 10

// underReplicated is the Warning for databases whose n exceeds the staying members. Its text holds
// only the databases, their n and the member count, so it stays the same (and is emitted once)
// while the condition holds, and changes when any of them does.
func underReplicated(o Observed, sf []Shortfall) Problem {
	var parts []string
	maxN := 0
	for i, s := range sf {
		maxN = max(maxN, s.N)
		if i < maxNamedShortfalls {
			parts = append(parts, fmt.Sprintf("%s (n=%d)", s.DB, s.N))
		}
	}
	if len(sf) > maxNamedShortfalls {
		parts = append(parts, fmt.Sprintf("and %d more", len(sf)-maxNamedShortfalls))
	}
	return Problem{ReasonUnderReplicated, fmt.Sprintf(
		"StatefulSet %s/%s has %d members, fewer than the copies per range these databases want: %s; their ranges are under-replicated until there are enough members: scale the StatefulSet to at least %d replicas, or lower a database's n by setting %q to the new n in its shard map document (GET then PUT /_node/_local/_dbs/<db> with its _rev)",
		o.Namespace, o.StatefulSet, sf[0].Members, strings.Join(parts, ", "), maxN, placement.NKey)}
}
