package manifests_test

import (
	"encoding/json"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	appsv1 "k8s.io/api/apps/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"

	"github.com/couchdb-controller/couchdb-controller/metrics"
)

// build renders a kustomization directory the way `kubectl apply -k` does.
func build(t *testing.T, dir string) []map[string]any {
	t.Helper()
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	res, err := k.Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize %s: %v", dir, err)
	}
	var out []map[string]any
	for _, r := range res.Resources() {
		m, err := r.Map()
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, m)
	}
	return out
}

func find(objs []map[string]any, kind string) []map[string]any {
	var out []map[string]any
	for _, o := range objs {
		if o["kind"] == kind {
			out = append(out, o)
		}
	}
	return out
}

func convert(t *testing.T, in map[string]any, out any) {
	t.Helper()
	b, _ := json.Marshal(in)
	if err := json.Unmarshal(b, out); err != nil {
		t.Fatal(err)
	}
}

// codeRBAC derives, from the source of controller/ and cmd/couchdb-controller/, the RBAC keys
// ("apiGroup/resource[/subresource]:verb") of every Kubernetes API call the controller makes: typed
// client calls (kube.AppsV1().StatefulSets(ns).UpdateScale(...)), informers
// (factory.Core().V1().Pods(): list and watch) and the two clients handed to client-go helpers (the
// event sink and the Lease lock). It is a static cross-check that fails as soon as a new call lacks
// a grant; the authoritative check is test/e2e's TestBinaryWithShippedRBAC, which runs the binary
// under these roles and compares the grants with the API server's audit log. A call this walker
// cannot classify (a client stored in a variable, a verb it does not know) fails the test, so it
// cannot silently miss one.
func codeRBAC(t *testing.T) (clusterRole, role []string) {
	t.Helper()
	groups := map[string]string{"AppsV1": "apps", "CoreV1": "", "CoordinationV1": "coordination.k8s.io"}
	informerGroups := map[string]string{"Apps": "apps", "Core": ""}
	verbs := map[string]string{"Get": ":get", "List": ":list", "Watch": ":watch", "Create": ":create", "Update": ":update",
		"Delete": ":delete", "DeleteCollection": ":deletecollection", "Patch": ":patch", "Apply": ":patch",
		"UpdateStatus": "/status:update", "ApplyStatus": "/status:patch", "GetScale": "/scale:get", "UpdateScale": "/scale:update"}
	// Clients passed to client-go helpers, with what those helpers call.
	handedOn := map[string][]string{
		"/events":             {"/events:create", "/events:patch"},                                                                          // record.EventSinkImpl: Create, and Patch to aggregate repeats
		"coordination.k8s.io": {"coordination.k8s.io/leases:get", "coordination.k8s.io/leases:create", "coordination.k8s.io/leases:update"}, // resourcelock.LeaseLock
	}
	seen := map[string]bool{}
	add := func(key string) {
		if seen[key] {
			return
		}
		seen[key] = true
		if strings.HasPrefix(key, "coordination.k8s.io/") {
			role = append(role, key)
		} else {
			clusterRole = append(clusterRole, key)
		}
	}
	fset := token.NewFileSet()
	var files []*ast.File
	for _, dir := range []string{"../controller", "../cmd/couchdb-controller"} {
		err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
				return err
			}
			f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
			files = append(files, f)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range files {
		// Only whole chains: skip calls that are the receiver of a further call.
		inner := map[ast.Expr]bool{}
		ast.Inspect(f, func(n ast.Node) bool {
			if c, ok := n.(*ast.CallExpr); ok {
				if sel, ok := c.Fun.(*ast.SelectorExpr); ok {
					inner[sel.X] = true
				}
			}
			return true
		})
		ast.Inspect(f, func(n ast.Node) bool {
			c, ok := n.(*ast.CallExpr)
			if !ok || inner[c] {
				return true
			}
			type link struct {
				name string
				args []ast.Expr
			}
			var chain []link
			for e := ast.Expr(c); ; {
				call, ok := e.(*ast.CallExpr)
				if !ok {
					break
				}
				sel, ok := call.Fun.(*ast.SelectorExpr)
				if !ok {
					break
				}
				chain = append([]link{{sel.Sel.Name, call.Args}}, chain...)
				e = sel.X
			}
			at := fset.Position(c.Pos())
			for i, l := range chain {
				if g, ok := informerGroups[l.name]; ok && i+2 < len(chain) && chain[i+1].name == "V1" {
					res := strings.ToLower(chain[i+2].name)
					add(g + "/" + res + ":list")
					add(g + "/" + res + ":watch")
					break
				}
				g, ok := groups[l.name]
				if !ok {
					continue
				}
				if i+1 == len(chain) { // a group client handed on
					if keys, ok := handedOn[g]; ok {
						for _, k := range keys {
							add(k)
						}
					} else {
						t.Errorf("%s: %s client handed on; teach codeRBAC what is done with it", at, l.name)
					}
					break
				}
				res := g + "/" + strings.ToLower(chain[i+1].name)
				if i+2 == len(chain) { // a resource client handed on
					if keys, ok := handedOn[res]; ok {
						for _, k := range keys {
							add(k)
						}
					} else {
						t.Errorf("%s: %s client handed on; teach codeRBAC what is done with it", at, res)
					}
					break
				}
				v, ok := verbs[chain[i+2].name]
				if !ok {
					t.Errorf("%s: unknown client method %s on %s", at, chain[i+2].name, res)
					break
				}
				// Patch(ctx, name, type, data, opts, subresources...)
				if chain[i+2].name == "Patch" && len(chain[i+2].args) > 5 {
					for _, a := range chain[i+2].args[5:] {
						lit, ok := a.(*ast.BasicLit)
						if !ok || lit.Kind != token.STRING {
							t.Errorf("%s: Patch subresource is not a string literal", at)
							continue
						}
						sub, _ := strconv.Unquote(lit.Value)
						v = "/" + sub + v
					}
				}
				add(res + v)
				break
			}
			return true
		})
	}
	if len(clusterRole) == 0 || len(role) == 0 {
		t.Fatalf("found no API calls in the controller's source (%d files): the walker is broken", len(files))
	}
	return clusterRole, role
}

// granted lists what one ClusterRole or Role grants as RBAC keys.
func granted(rules []rbacv1.PolicyRule) []string {
	var out []string
	for _, r := range rules {
		for _, g := range r.APIGroups {
			for _, res := range r.Resources {
				for _, v := range r.Verbs {
					out = append(out, g+"/"+res+":"+v)
				}
			}
		}
	}
	sort.Strings(out)
	return out
}

func TestBaseRendersHardenedDeploymentAndExactRBAC(t *testing.T) {
	objs := build(t, ".")
	for _, kind := range []string{"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "Deployment", "Service", "ServiceMonitor", "PrometheusRule", "ConfigMap"} {
		if len(find(objs, kind)) == 0 {
			t.Errorf("no %s rendered", kind)
		}
	}
	var dep appsv1.Deployment
	convert(t, find(objs, "Deployment")[0], &dep)
	if *dep.Spec.Replicas != 2 {
		t.Errorf("replicas %d", *dep.Spec.Replicas)
	}
	ps := dep.Spec.Template.Spec
	if ps.SecurityContext == nil || ps.SecurityContext.RunAsNonRoot == nil || !*ps.SecurityContext.RunAsNonRoot ||
		ps.SecurityContext.SeccompProfile == nil || ps.SecurityContext.SeccompProfile.Type != "RuntimeDefault" {
		t.Errorf("pod security context %+v", ps.SecurityContext)
	}
	for _, c := range ps.Containers {
		sc := c.SecurityContext
		if sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem || sc.AllowPrivilegeEscalation == nil ||
			*sc.AllowPrivilegeEscalation || sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") {
			t.Errorf("container %s not hardened: %+v", c.Name, sc)
		}
		if c.LivenessProbe == nil || c.LivenessProbe.HTTPGet.Path != "/healthz" || c.ReadinessProbe == nil || c.ReadinessProbe.HTTPGet.Path != "/readyz" {
			t.Errorf("probes %+v %+v", c.LivenessProbe, c.ReadinessProbe)
		}
		if !slices.Contains(c.Args, "--leader-elect") {
			t.Errorf("args %v", c.Args)
		}
		env := map[string]bool{}
		for _, e := range c.Env {
			env[e.Name] = true
		}
		for _, want := range []string{"POD_NAME", "POD_NAMESPACE", "GOMEMLIMIT", "GOMAXPROCS"} {
			if !env[want] {
				t.Errorf("env %s missing", want)
			}
		}
		if c.Resources.Limits.Memory().IsZero() {
			t.Error("no memory limit")
		}
	}
	wantCluster, wantRole := codeRBAC(t)
	sort.Strings(wantCluster)
	sort.Strings(wantRole)
	var cr rbacv1.ClusterRole
	convert(t, find(objs, "ClusterRole")[0], &cr)
	if got := granted(cr.Rules); !slices.Equal(got, wantCluster) {
		t.Errorf("ClusterRole grants %v\nthe code calls %v", got, wantCluster)
	}
	var r rbacv1.Role
	convert(t, find(objs, "Role")[0], &r)
	if got := granted(r.Rules); !slices.Equal(got, wantRole) {
		t.Errorf("Role grants %v\nthe code calls %v", got, wantRole)
	}
	if cm := find(objs, "ConfigMap")[0]; cm["metadata"].(map[string]any)["labels"].(map[string]any)["grafana_dashboard"] != "1" {
		t.Error("dashboard ConfigMap lacks the grafana_dashboard label")
	}
}

func TestAdmissionAndExamplesRender(t *testing.T) {
	adm := build(t, "admission")
	// One policy for updates of the StatefulSet, one for its scale subresource.
	if len(find(adm, "ValidatingAdmissionPolicy")) != 2 || len(find(adm, "ValidatingAdmissionPolicyBinding")) != 2 {
		t.Errorf("admission: %d objects", len(adm))
	}
	ex := build(t, "examples")
	var sts appsv1.StatefulSet
	convert(t, find(ex, "StatefulSet")[0], &sts)
	if sts.Labels["couchdb.io/cluster"] == "" || sts.Annotations["couchdb.io/admin-secret"] == "" {
		t.Errorf("example StatefulSet not opted in: %v %v", sts.Labels, sts.Annotations)
	}
	if len(sts.Spec.Template.Spec.ReadinessGates) != 1 || sts.Spec.Template.Spec.ReadinessGates[0].ConditionType != "couchdb.io/member" {
		t.Error("example lacks the member readiness gate")
	}
	svc := find(ex, "Service")[0]
	if svc["metadata"].(map[string]any)["labels"].(map[string]any)["couchdb.io/cluster"] != sts.Labels["couchdb.io/cluster"] {
		t.Error("example Service not labelled like the StatefulSet")
	}
}

// metricNames lists every metric family the controller registers, after exercising each method once.
func metricNames(t *testing.T) map[string]bool {
	reg := prometheus.NewRegistry()
	r := metrics.New(reg)
	r.ObserveJoin(0)
	r.SetNodeStates("n", "c", map[string]string{"p": "member"})
	r.SetClusterNodes("n", "c", 1, 1, 1)
	r.SetClusterFormed("n", "c", true)
	r.SetClusterPhase("n", "c", "Ready")
	r.SetShardRanges("n", "c", 1, 0, 0)
	r.ShardMove("added")
	r.ObserveSync("success", 0)
	r.Action("AddNode", "success")
	r.SetLeader(true)
	r.InstrumentRoundTripper(nil)
	p := r.WorkqueueProvider()
	p.NewDepthMetric("q").Inc()
	r.KubeRequest("GET", "200")
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, mf := range mfs {
		names[mf.GetName()] = true
		if mf.GetType().String() == "HISTOGRAM" {
			for _, s := range []string{"_bucket", "_sum", "_count"} {
				names[mf.GetName()+s] = true
			}
		}
	}
	// Families with labels appear only once used; these are registered but not exercised above.
	for _, n := range []string{"couchdb_controller_couchdb_requests_total", "couchdb_controller_couchdb_request_duration_seconds_bucket"} {
		names[n] = true
	}
	return names
}

var metricRE = regexp.MustCompile(`couchdb_controller_[a-z_]+`)

func TestDashboardAndAlertsQueryRealMetrics(t *testing.T) {
	names := metricNames(t)
	raw, err := os.ReadFile("dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatalf("dashboard.json is not valid JSON: %v", err)
	}
	var exprs []string
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			exprs = append(exprs, tg.Expr)
		}
	}
	rules := build(t, ".")
	var pr struct {
		Spec struct {
			Groups []struct {
				Rules []struct {
					Alert string `json:"alert"`
					Expr  string `json:"expr"`
				} `json:"rules"`
			} `json:"groups"`
		} `json:"spec"`
	}
	convert(t, find(rules, "PrometheusRule")[0], &pr)
	for _, g := range pr.Spec.Groups {
		for _, r := range g.Rules {
			exprs = append(exprs, r.Expr)
		}
	}
	if len(exprs) < 10 {
		t.Fatalf("only %d expressions", len(exprs))
	}
	for _, e := range exprs {
		for _, m := range metricRE.FindAllString(e, -1) {
			if !names[m] {
				t.Errorf("query %q uses %s, which the controller does not export", e, m)
			}
		}
	}
	checkWithPromtool(t, pr.Spec.Groups, exprs)
}

// checkWithPromtool parses every expression with Prometheus' own parser (promtool). CI installs it
// (Debian's prometheus package); without it the test fails in CI and is skipped on a laptop.
func checkWithPromtool(t *testing.T, groups any, exprs []string) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("promtool is required in CI (apt-get install prometheus)")
		}
		t.Skip("promtool not installed: PromQL syntax not checked")
	}
	dir := t.TempDir()
	var rules []map[string]any
	for i, e := range exprs {
		rules = append(rules, map[string]any{"record": "check:expr_" + string(rune('a'+i%26)) + ":" + strings.Repeat("x", i/26+1), "expr": e})
	}
	file := map[string]any{"groups": []any{map[string]any{"name": "dashboard-and-alerts", "rules": rules}}}
	b, _ := yaml.Marshal(file)
	path := filepath.Join(dir, "rules.yaml")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(promtool, "check", "rules", path).CombinedOutput()
	if err != nil {
		t.Fatalf("promtool check rules: %v\n%s", err, out)
	}
	_ = groups
}
