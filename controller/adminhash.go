package controller

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/klog/v2"

	"github.com/couchdb-controller/couchdb-controller/couch"
)

// Day-2 configuration: every member holds the same password hash for the controller's admin user
// (CouchDB hashes the plaintext password of the ini with a fresh random salt at every start, and a
// session cookie is valid only where the salt is the same), the same [couchdb] uuid and
// [chttpd_auth] secret (also part of a cookie's validity), and the same [cluster] n and q.
//
// Values are read in observe and written in apply; the planner and everything it prints see only
// digests and ordinals. Hashes and secrets are never logged, evented, exported or put in errors.

const (
	ActCopyAdminHash ActionKind = "CopyAdminHash"
	ActCopyConfig    ActionKind = "CopyConfig"
)

// configItem is one key that must be equal on every member.
type configItem struct {
	Label, Section, Key string
	// Env is the official image's (or a common chart's) variable that sets it: when the CouchDB
	// container declares it, the pods set the value themselves, and a difference is drift to report,
	// not something to overwrite.
	Env string
	// Copy: when the pods do not set it, CouchDB makes up a random value per node at start, which
	// finish_cluster overwrites once; the controller copies it to joined and restarted nodes.
	Copy bool
	Fix  string // what to do about a difference
}

// configItems is an array so that each member's digests and values are fixed-size arrays, not maps:
// the controller keeps them for every member of every cluster (4,000 at 1,000 clusters).
var configItems = [...]configItem{
	{Label: "couchdb.uuid", Section: "couchdb", Key: "uuid", Copy: true,
		Fix: "set one [couchdb] uuid for all pods (an ini file every pod mounts) and restart the pods that differ"},
	{Label: "chttpd_auth.secret", Section: "chttpd_auth", Key: "secret", Env: "COUCHDB_SECRET", Copy: true,
		Fix: "give every pod the same COUCHDB_SECRET (or [chttpd_auth] secret in an ini file every pod mounts) and restart the pods that differ"},
	{Label: "cluster.n", Section: "cluster", Key: "n",
		Fix: "set the same [cluster] n in the ini file every pod mounts and restart the pods that differ"},
	{Label: "cluster.q", Section: "cluster", Key: "q",
		Fix: "set the same [cluster] q in the ini file every pod mounts and restart the pods that differ"},
}

func itemByLabel(label string) (configItem, bool) {
	if i := itemIndex(label); i >= 0 {
		return configItems[i], true
	}
	return configItem{}, false
}

func itemIndex(label string) int {
	for i, it := range configItems {
		if it.Label == label {
			return i
		}
	}
	return -1
}

// hidden holds a value read from CouchDB that must never be shown: every fmt verb prints ***.
type hidden string

func (hidden) String() string                 { return "***" }
func (hidden) GoString() string               { return "***" }
func (hidden) Format(f fmt.State, _ rune)     { _, _ = io.WriteString(f, "***") }
func (s hidden) MarshalText() ([]byte, error) { return []byte("***"), nil }

// digest is how values are compared: a prefix of their SHA-256. It never leaves the controller's
// memory either (for n and q it would be easy to reverse). 0 stands for "unset", so a value whose
// prefix is 0 reads as 1 (one chance in 2^64 that two values then compare equal).
func digest(v string) uint64 {
	sum := sha256.Sum256([]byte(v))
	return max(binary.BigEndian.Uint64(sum[:8]), 1)
}

// ConfigObs is what the members' runtime config said.
type ConfigObs struct {
	User          string          // the admin the controller authenticates as
	SyncAdminHash bool            // couchdb.io/sync-admin-hash is not "false"
	PodSets       map[string]bool // item label -> the CouchDB container declares its Env
	Nodes         map[int]*NodeConfigObs
}

// NodeConfigObs is one member's config, as digests; the values themselves are unexported and read
// only by apply.
type NodeConfigObs struct {
	Pod       string
	Node      string
	Err       string                   // the config could not be read: nothing is decided for this node
	AdminHash uint64                   // digest of [admins] User, 0 when unset
	Admins    []adminDigest            // every [admins] entry
	Digests   [len(configItems)]uint64 // by configItems index; 0 when unset
	values    [len(configItems)]hidden // by configItems index, for the items copied (Copy)
	adminHash hidden                   // [admins] User, as stored
}

// adminDigest is one [admins] entry, by digest.
type adminDigest struct {
	User   string
	Digest uint64
}

// adminDigestOf is the digest of user's [admins] entry, 0 when n has none.
func (n *NodeConfigObs) adminDigestOf(user string) uint64 {
	for _, a := range n.Admins {
		if a.User == user {
			return a.Digest
		}
	}
	return 0
}

// syncAdminHashEnabled reads couchdb.io/sync-admin-hash; a value other than "true"/"false" is a Problem
// and reads as "false": writing hashes is what a typo must not turn on.
func syncAdminHashEnabled(sts *appsv1.StatefulSet, o *Observed) bool {
	if _, ok := sts.Annotations[AnnotationSyncAdminHash]; !ok {
		return true
	}
	return boolAnnotation(sts, AnnotationSyncAdminHash, false, o)
}

// podSets lists the copyable items the pods set themselves: the CouchDB container declares the
// item's variable (COUCHDB_SECRET), or an ini file of a ConfigMap the pod template mounts (the Helm
// chart's way, or one file per pod through subPathExpr) sets the key. Such values are the user's: a
// difference is drift. A ConfigMap that cannot be read counts as setting everything, so that nothing
// is overwritten on a guess.
func (c *Controller) podSets(ctx context.Context, sts *appsv1.StatefulSet) map[string]bool {
	out := map[string]bool{}
	spec := &sts.Spec.Template.Spec
	if ctr := couchContainer(spec); ctr != nil {
		for _, it := range configItems {
			for _, e := range ctr.Env {
				if it.Env != "" && e.Name == it.Env {
					out[it.Label] = true
				}
			}
		}
	}
	for _, v := range spec.Volumes {
		if v.ConfigMap == nil {
			continue
		}
		cm, err := c.kube.CoreV1().ConfigMaps(sts.Namespace).Get(ctx, v.ConfigMap.Name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) && v.ConfigMap.Optional != nil && *v.ConfigMap.Optional {
			continue
		}
		if err != nil {
			for _, it := range configItems {
				out[it.Label] = out[it.Label] || it.Copy
			}
			continue
		}
		for name, body := range cm.Data {
			if !strings.HasSuffix(name, ".ini") && !strings.HasSuffix(name, "inifile") {
				continue
			}
			for _, it := range configItems {
				if it.Copy && iniSets(body, it.Section, it.Key) {
					out[it.Label] = true
				}
			}
		}
	}
	return out
}

// iniSets reports whether an ini file sets [section] key (the value is not looked at).
func iniSets(body, section, key string) bool {
	cur := ""
	for _, line := range strings.Split(body, "\n") {
		line = strings.TrimSpace(line)
		switch {
		case line == "" || strings.HasPrefix(line, ";") || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			cur = strings.TrimSpace(line[1 : len(line)-1])
		case cur == section:
			if k, _, ok := strings.Cut(line, "="); ok && strings.TrimSpace(k) == key {
				return true
			}
		}
	}
	return false
}

// configCheck remembers when the members' config was last read and found settled, so that a steady
// cluster is not asked on every sync: it is read again when a member's pod or container changes (a
// restart rewrites the hash), when membership changes, or after shardsMaxAge.
type configCheck struct {
	key     string
	at      time.Time
	read    bool            // read at least once: config_drift has series
	drift   map[string]bool // item label -> drifting, from the last read
	details []DriftStatus
	differ  []Problem // other [admins] entries that differ
	// nodes is each member's config as last read (by pod), for a read the key change concerns only
	// in part: a join changes the member list, not what the other members hold.
	nodes map[string]nodeConfigEntry
}

type nodeConfigEntry struct {
	identity, node string // the pod's process and CouchDB node when read
	user           string // whose [admins] hash AdminHash is
	at             time.Time
	obs            *NodeConfigObs
}

// configKey changes whenever some member may hold a different config than at the last read (or
// the StatefulSet, and so what its pods set, changed). Only the pods whose config is compared
// (configMembers) count: a pod that is only joining changes nothing until it is a member, so the
// sync that adds it reads no config and the join is not slowed.
func configKey(o Observed, sts *appsv1.StatefulSet, coord *NodeObs, syncHash bool) string {
	var b strings.Builder
	for _, ord := range configMembers(o, coord) {
		if p := o.Pods[ord]; p != nil {
			fmt.Fprintf(&b, "%s=%s;", p.Name, p.Identity)
		}
	}
	fmt.Fprintf(&b, "members=%v;hash=%t;generation=%d", sortedCopy(coord.Membership.ClusterNodes), syncHash, sts.Generation)
	return b.String()
}

// configMembers are the ordinals whose config is compared: connected members below spec.replicas
// that answered, and whose pods are not terminating.
func configMembers(o Observed, coord *NodeObs) []int {
	var out []int
	for _, ord := range sortedOrdinals(o.Nodes) {
		n, p := o.Nodes[ord], o.Pods[ord]
		if ord >= o.Replicas || p == nil || p.Terminating || !n.Valid() {
			continue
		}
		if slices.Contains(coord.Membership.ClusterNodes, n.Name) && slices.Contains(coord.Membership.AllNodes, n.Name) {
			out = append(out, ord)
		}
	}
	return out
}

// observeConfig reads each member's [admins], uuid, secret, n and q once setup is finished, unless
// nothing that could change them changed since the last settled read.
func (c *Controller) observeConfig(ctx context.Context, st *clusterState, sts *appsv1.StatefulSet, scheme string, ca []byte, o *Observed) {
	coord := coordinator(*o)
	if coord == nil || coord.Setup != couch.StateClusterFinished || len(o.Problems) > 0 || o.CredentialsRejected {
		return
	}
	syncHash := syncAdminHashEnabled(sts, o)
	key := configKey(*o, sts, coord, syncHash)
	if st.config.key == key && c.cfg.Now().Sub(st.config.at) < shardsMaxAge {
		return
	}
	now := c.cfg.Now()
	// The periodic re-read (nothing changed) reads every member: that is how a change made behind
	// the controller's back is seen. A changed key reads only the members whose pod or node changed,
	// or whose entry is old or was written to since (noteDayTwo drops those): a join then reads the
	// new member alone, not every member's four sections again.
	reuse := st.config.key != key
	sets := c.podSets(ctx, sts)
	obs := &ConfigObs{User: st.creds.Username, SyncAdminHash: syncHash, PodSets: sets, Nodes: map[int]*NodeConfigObs{}}
	// Every member at once: this read happens on each join's path (the new member's config is
	// copied right after), and one round trip per node and section in turn is 16 for a 4-node cluster.
	ords := configMembers(*o, coord)
	nodes := make([]*NodeConfigObs, len(ords))
	fresh := make([]bool, len(ords))
	_ = inParallel(len(ords), func(i int) error {
		ord := ords[i]
		pod, name := o.Pods[ord], o.Nodes[ord].Name
		if e, ok := st.config.nodes[pod.Name]; reuse && ok && e.identity == pod.Identity && e.node == name && e.user == obs.User && now.Sub(e.at) < shardsMaxAge {
			nodes[i] = e.obs
			return nil
		}
		n := &NodeConfigObs{Pod: o.Nodes[ord].Pod, Node: name}
		nodes[i], fresh[i] = n, true
		api, err := c.client(st, scheme, ca, pod)
		if err == nil {
			err = readNodeConfig(ctx, api, obs.User, n)
		}
		if err != nil {
			n.Err = err.Error()
		}
		return nil
	})
	entries := map[string]nodeConfigEntry{}
	for i, ord := range ords {
		obs.Nodes[ord] = nodes[i]
		pod := o.Pods[ord]
		switch e, ok := st.config.nodes[pod.Name]; {
		case fresh[i] && nodes[i].Err == "":
			entries[pod.Name] = nodeConfigEntry{identity: pod.Identity, node: nodes[i].Node, user: obs.User, at: now, obs: nodes[i]}
		case !fresh[i] && ok:
			entries[pod.Name] = e
		}
	}
	st.config.nodes = entries
	o.Config = obs
	st.configPending = key
}

func readNodeConfig(ctx context.Context, api CouchAPI, user string, n *NodeConfigObs) error {
	names := []string{"admins", "couchdb", "chttpd_auth", "cluster"}
	got := make([]map[string]string, len(names))
	if err := inParallel(len(names), func(i int) error {
		v, err := api.ConfigSection(ctx, "_local", names[i])
		if err != nil {
			return fmt.Errorf("read [%s] of %s: %w", names[i], n.Pod, err)
		}
		got[i] = v
		return nil
	}); err != nil {
		return err
	}
	sections := map[string]map[string]string{}
	for i, s := range names {
		sections[s] = got[i]
	}
	admins := sections["admins"]
	n.Admins = make([]adminDigest, 0, len(admins))
	for u, h := range admins {
		n.Admins = append(n.Admins, adminDigest{User: u, Digest: digest(h)})
		if u == user {
			n.AdminHash = digest(h)
			n.adminHash = hidden(h)
		}
	}
	for i, it := range configItems {
		if v, ok := sections[it.Section][it.Key]; ok {
			n.Digests[i] = digest(v)
			if it.Copy {
				n.values[i] = hidden(v)
			}
		}
	}
	return nil
}

// DriftStatus is one drifting key in the status API: which pods agree with which, never the values.
type DriftStatus struct {
	Key    string     `json:"key"`
	Groups [][]string `json:"groups"` // pods holding one value each; "unset" ones are listed under Unset
	Unset  []string   `json:"unset,omitempty"`
	Fix    string     `json:"fix"`
}

// configPlan is the pure part: the copies to make, and what is drift.
type configPlan struct {
	Actions []Action
	Drift   []DriftStatus
	Differ  []Problem // other [admins] entries that differ
}

// majority is the ordinal whose digest most of the readable nodes share (ties: the lowest ordinal).
// A node that restarted holds a fresh value; taking the majority keeps the value the rest of the
// cluster (and every cookie issued so far) relies on, instead of spreading the restarted node's.
func majority(c *ConfigObs, get func(*NodeConfigObs) uint64) (int, bool) {
	count := map[uint64]int{}
	for _, n := range c.Nodes {
		if n.Err == "" && get(n) != 0 {
			count[get(n)]++
		}
	}
	best, bestN := -1, 0
	for _, ord := range sortedOrdinals(c.Nodes) {
		n := c.Nodes[ord]
		if n.Err != "" || get(n) == 0 {
			continue
		}
		if k := count[get(n)]; k > bestN {
			best, bestN = ord, k
		}
	}
	return best, best >= 0
}

// planConfig decides which member gets which value. It sees digests only.
func planConfig(o Observed) configPlan {
	var cp configPlan
	c := o.Config
	if c == nil {
		return cp
	}
	copyTo := func(kind ActionKind, label string, get func(*NodeConfigObs) uint64) {
		from, ok := majority(c, get)
		if !ok {
			return
		}
		want := get(c.Nodes[from])
		for _, ord := range sortedOrdinals(c.Nodes) {
			if n := c.Nodes[ord]; n.Err == "" && get(n) != want {
				cp.Actions = append(cp.Actions, Action{Kind: kind, Via: ord, From: from, Node: n.Node, Pod: n.Pod, Text: label})
			}
		}
	}
	if c.SyncAdminHash && c.User != "" {
		copyTo(ActCopyAdminHash, "", func(n *NodeConfigObs) uint64 { return n.AdminHash })
	}
	for i, it := range configItems {
		label := it.Label
		get := func(n *NodeConfigObs) uint64 { return n.Digests[i] }
		if it.Copy && !c.PodSets[label] {
			copyTo(ActCopyConfig, label, get)
			continue
		}
		if d, ok := driftOf(c, it, get); ok {
			cp.Drift = append(cp.Drift, d)
		}
	}
	cp.Differ = adminsDiffer(c)
	return cp
}

// driftOf groups the readable nodes by value.
func driftOf(c *ConfigObs, it configItem, get func(*NodeConfigObs) uint64) (DriftStatus, bool) {
	groups := map[uint64][]string{}
	var order []uint64
	d := DriftStatus{Key: it.Label, Fix: it.Fix}
	for _, ord := range sortedOrdinals(c.Nodes) {
		n := c.Nodes[ord]
		if n.Err != "" {
			continue
		}
		v := get(n)
		if v == 0 {
			d.Unset = append(d.Unset, n.Pod)
			continue
		}
		if _, ok := groups[v]; !ok {
			order = append(order, v)
		}
		groups[v] = append(groups[v], n.Pod)
	}
	for _, v := range order {
		d.Groups = append(d.Groups, groups[v])
	}
	return d, len(order)+min(len(d.Unset), 1) > 1
}

// adminsDiffer reports [admins] entries other than the controller's user (or all, when the sync is
// off) that are not the same on every member: names and pods only.
func adminsDiffer(c *ConfigObs) []Problem {
	users := map[string]bool{}
	for _, n := range c.Nodes {
		for _, a := range n.Admins {
			users[a.User] = true
		}
	}
	names := make([]string, 0, len(users))
	for u := range users {
		if u != c.User || !c.SyncAdminHash {
			names = append(names, u)
		}
	}
	sort.Strings(names)
	var out []Problem
	for _, u := range names {
		d, ok := driftOf(c, configItem{Label: u}, func(n *NodeConfigObs) uint64 { return n.adminDigestOf(u) })
		if !ok {
			continue
		}
		out = append(out, Problem{ReasonAdminsDiffer, fmt.Sprintf(
			"[admins] %s is not the same on every member (%s): its session cookies are valid only on pods holding the same hash; give it the same password hash everywhere (PUT /_node/_local/_config/admins/%s with one node's hash) or remove it; the controller changes only the hash of its own admin user",
			u, describeGroups(d), u)})
	}
	return out
}

func describeGroups(d DriftStatus) string {
	var parts []string
	for _, g := range d.Groups {
		parts = append(parts, strings.Join(g, ", "))
	}
	s := strings.Join(parts, " | ")
	if len(d.Unset) > 0 {
		if s != "" {
			s += " | "
		}
		s += "unset on " + strings.Join(d.Unset, ", ")
	}
	return "pods grouped by value: " + s
}

func driftProblem(sts string, d DriftStatus) Problem {
	it, _ := itemByLabel(d.Key)
	return Problem{ReasonConfigDrift, fmt.Sprintf(
		"StatefulSet %s: members disagree about [%s] %s (%s; compared by digest, values are never shown): %s",
		sts, it.Section, it.Key, describeGroups(d), d.Fix)}
}

func copyString(a Action) string {
	if a.Kind == ActCopyConfig {
		return fmt.Sprintf("%s(%s to %s from ordinal %d)", a.Kind, a.Text, a.Pod, a.From)
	}
	return fmt.Sprintf("%s(to %s from ordinal %d)", a.Kind, a.Pod, a.From)
}

// applyConfigCopy writes the value read from ordinal a.From to the node of ordinal a.Via, through
// that node itself. The old value CouchDB answers with is dropped unread.
func (c *Controller) applyConfigCopy(ctx context.Context, api CouchAPI, st *clusterState, sts *appsv1.StatefulSet, o Observed, a Action) error {
	if o.Config == nil || o.Config.Nodes[a.From] == nil {
		return fmt.Errorf("no config read from ordinal %d", a.From)
	}
	src, from := o.Config.Nodes[a.From], o.Pods[a.From]
	if a.Kind == ActCopyAdminHash {
		h := src.adminHash
		if h == "" || !strings.HasPrefix(string(h), "-") {
			// Only a stored hash (-pbkdf2:..., -hashed-...) may be copied: a plaintext value would
			// make CouchDB hash it again with a new salt, which is what this repairs.
			return fmt.Errorf("the admin entry read from %s is not a hash", src.Pod)
		}
		if _, err := api.SetConfig(ctx, "_local", "admins", o.Config.User, string(h)); err != nil {
			return fmt.Errorf("copy the admin password hash to %s: %w", a.Pod, err)
		}
		c.recorder.Eventf(sts, corev1.EventTypeNormal, ReasonAdminHashCopied,
			"Gave pod %s the password hash of admin %s that pod %s holds, so session cookies are valid on every member", a.Pod, o.Config.User, from.Name)
		klog.FromContext(ctx).V(2).Info("Copied admin password hash", "pod", a.Pod, "from", from.Name, "user", o.Config.User)
		return nil
	}
	i := itemIndex(a.Text)
	if i < 0 || src.Digests[i] == 0 || !configItems[i].Copy {
		return fmt.Errorf("no %s read from %s", a.Text, src.Pod)
	}
	it, v := configItems[i], src.values[i]
	if _, err := api.SetConfig(ctx, "_local", it.Section, it.Key, string(v)); err != nil {
		return fmt.Errorf("copy [%s] %s to %s: %w", it.Section, it.Key, a.Pod, err)
	}
	c.recorder.Eventf(sts, corev1.EventTypeNormal, ReasonConfigCopied,
		"Gave pod %s the [%s] %s the other members hold (the pods do not set it, so CouchDB made up its own at start)", a.Pod, it.Section, it.Key)
	return nil
}
