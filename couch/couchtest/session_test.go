package couchtest

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/couchdb-controller/couchdb-controller/couch"
)

var hashShape = regexp.MustCompile(`^-pbkdf2:sha256-([0-9a-f]{64}),([0-9a-f]{32}),(\d+)$`)

// sessionCluster is a formed 3-node cluster of official-image nodes (runtime config lost at restart).
func sessionCluster(t *testing.T, cfg func(i int, c *NodeConfig)) (*Network, []*Node, []*couch.Client) {
	t.Helper()
	nw := NewNetwork(NetworkOptions{SyncDelay: 20 * time.Millisecond, PasswordIterations: 1000})
	var nodes []*Node
	var clients []*couch.Client
	for i := 0; i < 3; i++ {
		c := NodeConfig{Name: fmt.Sprintf("node%d@127.0.0.1", i), AdminUser: "admin", AdminPassword: "s3cret", BindAddress: "any", EphemeralIni: true, Secret: testSecret}
		if cfg != nil {
			cfg(i, &c)
		}
		nd, err := nw.AddNode(c)
		if err != nil {
			t.Fatal(err)
		}
		if err := nd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nd.Stop)
		cl, err := couch.New(couch.Options{BaseURL: nd.URL(), Username: "admin", Password: "s3cret", RetryMax: -1})
		if err != nil {
			t.Fatal(err)
		}
		nodes, clients = append(nodes, nd), append(clients, cl)
	}
	return nw, nodes, clients
}

func login(t *testing.T, n *Node, password string) (int, string) {
	t.Helper()
	resp, err := http.Post(n.URL()+"/_session", "application/json", strings.NewReader(`{"name":"admin","password":"`+password+`"}`))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	for _, c := range resp.Cookies() {
		if c.Name == "AuthSession" {
			return resp.StatusCode, c.Value
		}
	}
	return resp.StatusCode, ""
}

// sessionUser is GET /_session with the cookie: the userCtx name, or "" for null.
func sessionUser(t *testing.T, n *Node, cookie string) string {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, n.URL()+"/_session", nil)
	req.AddCookie(&http.Cookie{Name: "AuthSession", Value: cookie})
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body struct {
		UserCtx struct {
			Name *string `json:"name"`
		} `json:"userCtx"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /_session: %d %v", resp.StatusCode, err)
	}
	if body.UserCtx.Name == nil {
		return ""
	}
	return *body.UserCtx.Name
}

func adminHashOf(t *testing.T, c *couch.Client) string {
	t.Helper()
	h, err := c.GetConfig(context.Background(), "_local", "admins", "admin")
	if err != nil {
		t.Fatal(err)
	}
	if !hashShape.MatchString(h) {
		t.Fatalf("admin hash %q does not have CouchDB's shape", h)
	}
	return h
}

func TestAdminHashesAndSessions(t *testing.T) {
	ctx := context.Background()
	_, nodes, clients := sessionCluster(t, nil)
	h0, h1 := adminHashOf(t, clients[0]), adminHashOf(t, clients[1])
	if h0 == h1 || hashShape.FindStringSubmatch(h0)[2] == hashShape.FindStringSubmatch(h1)[2] {
		t.Fatalf("two nodes hashed the same password with the same salt")
	}
	if again := adminHashOf(t, clients[0]); again != h0 {
		t.Errorf("the hash changed between reads: %s then %s", h0, again)
	}
	formCluster(t, nodes, clients)
	// finish_cluster copies the coordinator's hash, uuid and secret: one cookie for all.
	for i, c := range clients {
		if h := adminHashOf(t, c); h != h0 {
			t.Errorf("node %d holds another hash after finish_cluster", i)
		}
	}
	code, cookie := login(t, nodes[0], "s3cret")
	if code != http.StatusOK || cookie == "" {
		t.Fatalf("POST /_session: %d, cookie %q", code, cookie)
	}
	for i, n := range nodes {
		if u := sessionUser(t, n, cookie); u != "admin" {
			t.Errorf("node %d: cookie from node 0 gave userCtx.name %q after formation", i, u)
		}
	}
	if code, _ := login(t, nodes[0], "wrong"); code != http.StatusUnauthorized {
		t.Errorf("wrong password: %d, want 401", code)
	}
	if u := sessionUser(t, nodes[0], "bm90IGEgY29va2ll"); u != "" {
		t.Errorf("a forged cookie was accepted as %q", u)
	}

	// A restart rehashes with a fresh salt and loses the runtime config finish_cluster wrote.
	if _, err := clients[1].SetConfig(ctx, "_local", "cluster", "placement", "zone-a:1"); err != nil {
		t.Fatal(err)
	}
	uuid1, _ := nodes[1].Config("couchdb", "uuid")
	nodes[1].Stop()
	if err := nodes[1].Start(); err != nil {
		t.Fatal(err)
	}
	h1 = adminHashOf(t, clients[1])
	if h1 == h0 {
		t.Fatalf("the restarted node kept the copied hash")
	}
	if u := sessionUser(t, nodes[1], cookie); u != "" {
		t.Errorf("the restarted node accepted the old cookie as %q", u)
	}
	if _, err := clients[1].GetConfig(ctx, "_local", "cluster", "placement"); !couch.IsNotFound(err) {
		t.Errorf("runtime placement survived the restart: %v", err)
	}
	if u, _ := nodes[1].Config("couchdb", "uuid"); u == uuid1 {
		t.Errorf("an unset uuid was not drawn afresh at the restart")
	}
	if m, err := clients[1].Membership(ctx); err != nil || len(m.ClusterNodes) != 3 {
		t.Errorf("membership after the restart: %+v %v", m, err)
	}

	// Copying the hash back (and the uuid and secret) makes the cookie valid there again, and basic
	// auth with the same password keeps working.
	old, err := clients[0].SetConfig(ctx, nodes[1].Name(), "admins", "admin", h0)
	if err != nil || old != h1 {
		t.Fatalf("PUT the hash: old %q err %v, want the restarted node's hash", old, err)
	}
	for _, k := range [][2]string{{"couchdb", "uuid"}, {"chttpd_auth", "secret"}} {
		v, _ := nodes[0].Config(k[0], k[1])
		if _, err := clients[0].SetConfig(ctx, nodes[1].Name(), k[0], k[1], v); err != nil {
			t.Fatal(err)
		}
	}
	if got := adminHashOf(t, clients[1]); got != h0 {
		t.Errorf("a pre-hashed value was not kept as it was")
	}
	if u := sessionUser(t, nodes[1], cookie); u != "admin" {
		t.Errorf("cookie after the hash copy: %q", u)
	}
	if _, err := clients[1].Up(ctx); err != nil {
		t.Errorf("basic auth after the hash copy: %v", err)
	}

	// A different secret alone invalidates the cookie.
	if _, err := clients[2].SetConfig(ctx, "_local", "chttpd_auth", "secret", "another"); err != nil {
		t.Fatal(err)
	}
	if u := sessionUser(t, nodes[2], cookie); u != "" {
		t.Errorf("a node with another secret accepted the cookie as %q", u)
	}

	// Without a secret the cookie is refused; a login makes a new secret up, as CouchDB does.
	if _, err := clients[0].DeleteConfig(ctx, "_local", "chttpd_auth", "secret"); err != nil {
		t.Fatal(err)
	}
	if u := sessionUser(t, nodes[0], cookie); u != "" {
		t.Errorf("a node without a secret accepted the cookie as %q", u)
	}
	if _, c := login(t, nodes[0], "s3cret"); sessionUser(t, nodes[0], c) != "admin" {
		t.Errorf("a login on a node without a secret gave no working cookie")
	}
	if s, ok := nodes[0].Config("chttpd_auth", "secret"); !ok || s == "" {
		t.Errorf("no secret was made up")
	}

	// A plaintext PUT is hashed with a fresh salt; DELETE answers the old hash.
	old, err = clients[2].SetConfig(ctx, "_local", "admins", "ops", "pw2")
	if err != nil || old != "" {
		t.Fatalf("PUT plaintext: old %q err %v", old, err)
	}
	ops, _ := clients[2].GetConfig(ctx, "_local", "admins", "ops")
	if !hashShape.MatchString(ops) || strings.Contains(ops, "pw2") {
		t.Errorf("plaintext stored as %q", ops)
	}
	if old, err := clients[2].DeleteConfig(ctx, "_local", "admins", "ops"); err != nil || old != ops {
		t.Errorf("DELETE: old %q err %v", old, err)
	}
}

func TestSessionCookieExpires(t *testing.T) {
	now := time.Unix(1796395292, 0)
	clock := func() time.Time { return now }
	nw := NewNetwork(NetworkOptions{PasswordIterations: 10, Clock: clock})
	n, err := nw.AddNode(NodeConfig{Name: "a@127.0.0.1", AdminUser: "admin", AdminPassword: "pw"})
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Start(); err != nil {
		t.Fatal(err)
	}
	defer n.Stop()
	_, cookie := login(t, n, "pw")
	if u := sessionUser(t, n, cookie); u != "admin" {
		t.Fatalf("fresh cookie: %q", u)
	}
	nw.mu.Lock()
	now = now.Add(sessionTimeout * time.Second)
	nw.mu.Unlock()
	if u := sessionUser(t, n, cookie); u != "" {
		t.Errorf("a cookie %d s old was accepted", sessionTimeout)
	}
}

// A node whose runtime config persists (a local.ini on disk) keeps its hash across restarts, and a
// configured uuid and secret are what every start reads.
func TestRestartKeepsPersistedHash(t *testing.T) {
	_, nodes, clients := sessionCluster(t, func(i int, c *NodeConfig) {
		c.EphemeralIni = i != 0
		c.UUID, c.Secret = "same-uuid", "same-secret"
	})
	h := adminHashOf(t, clients[0])
	nodes[0].Stop()
	if err := nodes[0].Start(); err != nil {
		t.Fatal(err)
	}
	if got := adminHashOf(t, clients[0]); got != h {
		t.Errorf("a persisted hash changed at the restart")
	}
	nodes[2].Stop()
	if err := nodes[2].Start(); err != nil {
		t.Fatal(err)
	}
	for _, k := range [][3]string{{"couchdb", "uuid", "same-uuid"}, {"chttpd_auth", "secret", "same-secret"}} {
		if v, _ := nodes[2].Config(k[0], k[1]); v != k[2] {
			t.Errorf("[%s] %s = %q after the restart, configured %q", k[0], k[1], v, k[2])
		}
	}
}

// Unless told otherwise, nodes hash with CouchDB 3.4's 600,000 iterations; the key is derived
// only when asked for, so booting such nodes costs nothing.
func TestDefaultIterationsAndLazyDerivation(t *testing.T) {
	nw := NewNetwork(NetworkOptions{})
	n, err := nw.AddNode(NodeConfig{Name: "a@127.0.0.1", AdminUser: "admin", AdminPassword: "pw"})
	if err != nil {
		t.Fatal(err)
	}
	h := n.admins["admin"]
	if h.iter != DefaultPasswordIterations || DefaultPasswordIterations != 600000 || h.dk != "" || len(nw.derived) != 0 {
		t.Errorf("default node: %d iterations, key %q derived at boot, %d derivations", h.iter, h.dk, len(nw.derived))
	}
	// A pasted hash is parsed, not re-derived.
	p := parseAdminHash("-pbkdf2:sha256-a4ae2fff7d6cc282a816e5811d310df6b30b73e4e07c157a972f1ee6c0342b29,ed266a87f29346e86fe46a0776661ba8,600000")
	if p.prf != "sha256" || p.iter != 600000 || p.salt != "ed266a87f29346e86fe46a0776661ba8" || p.String(nw) != "-pbkdf2:sha256-a4ae2fff7d6cc282a816e5811d310df6b30b73e4e07c157a972f1ee6c0342b29,ed266a87f29346e86fe46a0776661ba8,600000" {
		t.Errorf("parsed %+v", p)
	}
	if bad := parseAdminHash("-pbkdf2:sha256-nope"); bad.String(nw) != "-pbkdf2:sha256-nope" || bad.verify(nw, "") {
		t.Errorf("a malformed hash is not kept verbatim and refused: %+v", bad)
	}
}
