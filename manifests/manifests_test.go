package manifests_test

import (
	"encoding/json"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
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
	checkPreStop(t, sts)
	svc := find(ex, "Service")[0]
	if svc["metadata"].(map[string]any)["labels"].(map[string]any)["couchdb.io/cluster"] != sts.Labels["couchdb.io/cluster"] {
		t.Error("example Service not labelled like the StatefulSet")
	}
}

// exemptUsers lists the usernames the admission policies' matchConditions let through.
func exemptUsers(t *testing.T, objs []map[string]any) map[string][]string {
	t.Helper()
	re := regexp.MustCompile(`^request\.userInfo\.username != "([^"]+)"$`)
	out := map[string][]string{}
	for _, p := range find(objs, "ValidatingAdmissionPolicy") {
		var vap struct {
			Metadata struct {
				Name string `json:"name"`
			} `json:"metadata"`
			Spec struct {
				MatchConditions []struct {
					Expression string `json:"expression"`
				} `json:"matchConditions"`
			} `json:"spec"`
		}
		convert(t, p, &vap)
		for _, mc := range vap.Spec.MatchConditions {
			if m := re.FindStringSubmatch(strings.TrimSpace(mc.Expression)); m != nil {
				out[vap.Metadata.Name] = append(out[vap.Metadata.Name], m[1])
			}
		}
	}
	return out
}

// TestAdmissionExemptsTheShippedServiceAccount: the policies hard-code the controller's username
// (CEL cannot look the ServiceAccount up), so it must be the base's ServiceAccount; and the overlay
// patch README shows for a renamed namespace must reach both policies.
func TestAdmissionExemptsTheShippedServiceAccount(t *testing.T) {
	sa := find(build(t, "."), "ServiceAccount")[0]["metadata"].(map[string]any)
	want := "system:serviceaccount:" + sa["namespace"].(string) + ":" + sa["name"].(string)
	users := exemptUsers(t, build(t, "admission"))
	if len(users) != 2 {
		t.Fatalf("policies with an exempt user: %v, want both", users)
	}
	for name, u := range users {
		if !slices.Equal(u, []string{want}) {
			t.Errorf("policy %s exempts %v, want [%s] (the base's ServiceAccount)", name, u, want)
		}
	}

	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile("(?s)in an overlay of `manifests/admission/`:\n\n```yaml\n(.*?)```").FindSubmatch(readme)
	if m == nil {
		t.Fatal("README no longer shows the admission overlay patch")
	}
	admission, err := filepath.Abs("admission")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	rel, err := filepath.Rel(dir, admission) // kustomize takes bases by relative path only
	if err != nil {
		t.Fatal(err)
	}
	kust := "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - " + rel + "\n" + string(m[1])
	if err := os.WriteFile(filepath.Join(dir, "kustomization.yaml"), []byte(kust), 0o600); err != nil {
		t.Fatal(err)
	}
	for name, u := range exemptUsers(t, build(t, dir)) {
		if !slices.Equal(u, []string{"system:serviceaccount:my-namespace:couchdb-controller"}) {
			t.Errorf("README's overlay leaves policy %s exempting %v", name, u)
		}
	}
}

// checkPreStop: the example's preStop hook takes the node out of load balancing (maintenance_mode
// nolb, not persisted) with the container's own credentials passed on stdin, and the grace period
// covers its wait.
func checkPreStop(t *testing.T, sts appsv1.StatefulSet) {
	t.Helper()
	c := sts.Spec.Template.Spec.Containers[0]
	if c.Lifecycle == nil || c.Lifecycle.PreStop == nil || c.Lifecycle.PreStop.Exec == nil {
		t.Fatal("example has no preStop exec hook")
	}
	script := strings.Join(c.Lifecycle.PreStop.Exec.Command, " ")
	for _, want := range []string{"maintenance_mode", `'"nolb"'`, "X-Couch-Persist: false", "$COUCHDB_USER", "$COUCHDB_PASSWORD", "-K -"} {
		if !strings.Contains(script, want) {
			t.Errorf("preStop hook lacks %q: %s", want, script)
		}
	}
	if strings.Contains(script, " -u ") || strings.Contains(script, "--user") {
		t.Error("preStop hook passes credentials on curl's command line")
	}
	m := regexp.MustCompile(`sleep (\d+)`).FindStringSubmatch(script)
	if m == nil {
		t.Fatal("preStop hook does not wait")
	}
	wait, _ := strconv.Atoi(m[1])
	if g := sts.Spec.Template.Spec.TerminationGracePeriodSeconds; g == nil || int(*g) < wait+20 {
		t.Errorf("terminationGracePeriodSeconds %v does not leave CouchDB 20 s after the hook's %d s", g, wait)
	}
}
