package couchtest

import (
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"hash"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Admin password hashes and cookie sessions, as CouchDB 3.4 keeps them (couch_passwords.erl,
// couch_httpd_auth.erl; ../shared/couchdb-real-sessions.md has the recording):
//   - a plaintext [admins] value (from an ini file or a _config PUT) is replaced at once by
//     "-pbkdf2:sha256-<derived key>,<salt>,<iterations>" with a fresh random salt; a value that is
//     already hashed is kept as it is;
//   - a session cookie (POST /_session) is user:time:HMAC(secret ++ salt, user:time), where secret is
//     [chttpd_auth] secret and salt the user's hash salt: a node accepts it only when it holds the same
//     secret and the same salt, and the cookie handler leaves a request it does not accept
//     unauthenticated (GET /_session answers userCtx.name null), it does not refuse it;
//   - where the last ini file is rewritten at start (the official image), each start hashes the
//     plaintext again, with a new salt: cookies issued before no longer work there.

// DefaultPasswordIterations is CouchDB 3.4's [chttpd_auth] iterations.
const DefaultPasswordIterations = 600000

const sessionTimeout = 600 // [chttpd_auth] timeout, seconds

// adminHash is one [admins] entry.
type adminHash struct {
	prf  string // "sha256", or "sha" for the older "-pbkdf2-" form
	dk   string // hex derived key; derived lazily while plain is known
	salt string
	iter int
	// plain is the password this node hashed itself. Deriving 600,000 iterations costs a fifth of a
	// second, so the key is derived only when the hash string is read; logins compare plain.
	plain string
	raw   string // a malformed pre-hashed value, kept verbatim as CouchDB keeps it
}

// newAdminHash turns an [admins] value into an entry: pre-hashed values are kept, plaintext ones
// hashed with a fresh salt.
func newAdminHash(value string, iterations int) *adminHash {
	if strings.HasPrefix(value, "-pbkdf2") || strings.HasPrefix(value, "-hashed-") {
		return parseAdminHash(value)
	}
	return &adminHash{prf: "sha256", salt: randomHex(16), iter: iterations, plain: value}
}

// parseAdminHash reads "-pbkdf2:sha256-DK,SALT,ITER" (3.4) or "-pbkdf2-DK,SALT,ITER" (sha1).
func parseAdminHash(s string) *adminHash {
	prf, rest := "", ""
	switch {
	case strings.HasPrefix(s, "-pbkdf2:sha256-"):
		prf, rest = "sha256", strings.TrimPrefix(s, "-pbkdf2:sha256-")
	case strings.HasPrefix(s, "-pbkdf2-"):
		prf, rest = "sha", strings.TrimPrefix(s, "-pbkdf2-")
	default:
		return &adminHash{raw: s}
	}
	parts := strings.Split(rest, ",")
	if len(parts) != 3 {
		return &adminHash{raw: s}
	}
	iter, err := strconv.Atoi(parts[2])
	if err != nil || iter < 1 {
		return &adminHash{raw: s}
	}
	return &adminHash{prf: prf, dk: parts[0], salt: parts[1], iter: iter}
}

// String is the value CouchDB shows for the entry in _config.
func (h *adminHash) String(nw *Network) string {
	if h.raw != "" {
		return h.raw
	}
	if h.dk == "" {
		h.dk = nw.derive(h.prf, h.plain, h.salt, h.iter)
	}
	if h.prf == "sha" {
		return "-pbkdf2-" + h.dk + "," + h.salt + "," + strconv.Itoa(h.iter)
	}
	return "-pbkdf2:sha256-" + h.dk + "," + h.salt + "," + strconv.Itoa(h.iter)
}

// verify checks password against the entry.
func (h *adminHash) verify(nw *Network, password string) bool {
	if h.raw != "" {
		return false
	}
	if h.plain != "" {
		return subtle.ConstantTimeCompare([]byte(h.plain), []byte(password)) == 1
	}
	return subtle.ConstantTimeCompare([]byte(nw.derive(h.prf, password, h.salt, h.iter)), []byte(h.dk)) == 1
}

// derive is couch_passwords:pbkdf2/4, memoised: a hash copied from another node is then verified
// without deriving again. Requests derive what they need beforehand, outside the lock (prederive);
// this is the fallback for the rest.
func (nw *Network) derive(prf, password, salt string, iter int) string {
	d := derivation{prf, password, salt, iter}
	if dk, ok := nw.derived[d.key()]; ok {
		return dk
	}
	dk := pbkdf2Hex(d)
	nw.derived[d.key()] = dk
	return dk
}

// setAdmin sets [admins] user to value (plaintext or pre-hashed) and returns the old entry, if any.
func (n *Node) setAdmin(user, value string) *adminHash {
	old := n.admins[user]
	n.admins[user] = newAdminHash(value, n.net.opts.PasswordIterations)
	return old
}

// adminSalt is the salt of user's hash ("" for an unknown user), which keys the lockout and the cookie.
func (n *Node) adminSalt(user string) string {
	if h := n.admins[user]; h != nil {
		return h.salt
	}
	return ""
}

// cookieMAC is couch_httpd_auth's cookie hash: HMAC over user:time keyed by the secret and the
// user's salt.
func (n *Node) cookieMAC(user, timeHex string) []byte {
	m := hmac.New(sha256.New, []byte(n.config["chttpd_auth"]["secret"]+n.adminSalt(user)))
	m.Write([]byte(user + ":" + timeHex))
	return m.Sum(nil)
}

// sessionCookie makes the Set-Cookie value POST /_session answers.
func (n *Node) sessionCookie(user string) string {
	now := n.net.opts.Clock()
	t := strconv.FormatInt(now.Unix(), 16)
	v := base64.RawURLEncoding.EncodeToString(append([]byte(user+":"+t+":"), n.cookieMAC(user, t)...))
	exp := now.Add(sessionTimeout * time.Second).UTC().Format("Mon, 02-Jan-2006 15:04:05 GMT")
	return "AuthSession=" + v + "; Version=1; Expires=" + exp + "; Max-Age=" + strconv.Itoa(sessionTimeout) + "; Path=/; HttpOnly"
}

// cookieUser is cookie_authentication_handler: the admin an AuthSession cookie names, when this node
// accepts it (same secret, same salt, not expired); "" otherwise.
func (n *Node) cookieUser(r *http.Request) string {
	c, err := r.Cookie("AuthSession")
	if err != nil || c.Value == "" {
		return ""
	}
	raw, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(c.Value, "="))
	if err != nil {
		return ""
	}
	user, rest, ok := strings.Cut(string(raw), ":")
	if !ok {
		return ""
	}
	t, mac, ok := strings.Cut(rest, ":")
	if !ok || n.admins[user] == nil || n.config["chttpd_auth"]["secret"] == "" {
		return ""
	}
	ts, err := strconv.ParseInt(t, 16, 64)
	if err != nil || n.net.opts.Clock().Unix() >= ts+sessionTimeout {
		return ""
	}
	if !hmac.Equal([]byte(mac), n.cookieMAC(user, t)) {
		return ""
	}
	return user
}

// withHeaders is an answer that sets response headers besides its JSON body.
type withHeaders struct {
	header map[string]string
	body   any
}

var sessionHandlers = []string{"cookie", "default"}

// session serves /_session: POST logs in and sets the cookie, GET tells who the request is
// authenticated as (by cookie, then basic auth; nobody is not an error), DELETE drops the cookie.
func (n *Node) session(r *http.Request, body []byte) (int, any) {
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		if user := n.cookieUser(r); user != "" {
			return http.StatusOK, obj{"ok": true, "userCtx": obj{"name": user, "roles": []string{"_admin"}},
				"info": obj{"authentication_handlers": sessionHandlers, "authenticated": "cookie"}}
		}
		if _, _, ok := r.BasicAuth(); ok || r.Header.Get("Authorization") != "" {
			if code, resp, ok := n.authenticate(r); !ok {
				return code, resp
			}
			user, _, _ := r.BasicAuth()
			return http.StatusOK, obj{"ok": true, "userCtx": obj{"name": user, "roles": []string{"_admin"}},
				"info": obj{"authentication_handlers": sessionHandlers, "authenticated": "default"}}
		}
		return http.StatusOK, obj{"ok": true, "userCtx": obj{"name": nil, "roles": []string{}},
			"info": obj{"authentication_handlers": sessionHandlers}}
	case http.MethodPost:
		req, ok := sessionCredentials(r, body)
		if !ok {
			return http.StatusBadRequest, errBody("bad_request", "invalid UTF-8 JSON")
		}
		if code, resp := n.login(hostOf(r), req.Name, req.Password, true); code != 0 {
			return code, resp
		}
		if n.config["chttpd_auth"]["secret"] == "" {
			// ensure_cookie_auth_secret: a node without a secret makes one up (runtime config).
			if n.config["chttpd_auth"] == nil {
				n.config["chttpd_auth"] = map[string]string{}
			}
			n.config["chttpd_auth"]["secret"] = randomHex(16)
		}
		return http.StatusOK, withHeaders{header: map[string]string{"Set-Cookie": n.sessionCookie(req.Name)},
			body: obj{"ok": true, "name": req.Name, "roles": []string{"_admin"}}}
	case http.MethodDelete:
		return http.StatusOK, withHeaders{header: map[string]string{"Set-Cookie": "AuthSession=; Version=1; Path=/; HttpOnly"},
			body: obj{"ok": true}}
	}
	return onlyMethods("GET,HEAD,POST,DELETE")
}

type credentials struct{ Name, Password string }

// sessionCredentials reads POST /_session's name and password, JSON or form-encoded.
func sessionCredentials(r *http.Request, body []byte) (credentials, bool) {
	var req credentials
	if err := json.Unmarshal(body, &req); err == nil {
		return req, true
	}
	v, err := url.ParseQuery(string(body))
	if err != nil {
		return req, false
	}
	return credentials{Name: v.Get("name"), Password: v.Get("password")}, true
}

// derivation is one pbkdf2 key a request will need.
type derivation struct {
	prf, password, salt string
	iter                int
}

func (d derivation) key() string {
	return d.prf + "\x00" + d.salt + "\x00" + strconv.Itoa(d.iter) + "\x00" + d.password
}

// prederive derives the pbkdf2 keys request r will need without the network's lock, so that a
// derivation (a fifth of a second at CouchDB's 600,000 iterations) stalls only this request, not
// every node: the hashes _config shows (of the node addressed, which may be another one) and the check of a
// password against a hash the node did not make itself.
func (n *Node) prederive(r *http.Request, body []byte) {
	nw := n.net
	var todo []derivation
	nw.mu.Lock()
	need := func(d derivation) {
		if _, ok := nw.derived[d.key()]; !ok {
			todo = append(todo, d)
		}
	}
	if seg := segments(r); len(seg) >= 3 && seg[0] == "_node" && seg[2] == "_config" && (len(seg) == 3 || seg[3] == "admins") {
		target := n
		if seg[1] != "_local" {
			target = nw.nodes[seg[1]]
		}
		if target != nil {
			for _, h := range target.admins {
				if h.raw == "" && h.dk == "" {
					need(derivation{h.prf, h.plain, h.salt, h.iter})
				}
			}
		}
	}
	user, password, ok := r.BasicAuth()
	if !ok && r.Method == http.MethodPost && r.URL.Path == "/_session" {
		if c, parsed := sessionCredentials(r, body); parsed {
			user, password, ok = c.Name, c.Password, true
		}
	}
	if h := n.admins[user]; ok && h != nil && h.raw == "" && h.plain == "" {
		need(derivation{h.prf, password, h.salt, h.iter})
	}
	nw.mu.Unlock()
	for _, d := range todo {
		dk := pbkdf2Hex(d)
		nw.mu.Lock()
		nw.derived[d.key()] = dk
		nw.mu.Unlock()
	}
}

// pbkdf2Hex is couch_passwords:pbkdf2/4 (the salt is used as the hex text it is stored as).
func pbkdf2Hex(d derivation) string {
	fn, size := sha256.New, sha256.Size
	if d.prf == "sha" {
		fn, size = sha1.New, sha1.Size
	}
	b, err := pbkdf2.Key(func() hash.Hash { return fn() }, d.password, []byte(d.salt), d.iter, size)
	if err != nil {
		return ""
	}
	return hex.EncodeToString(b)
}
