package couchtest

import (
	"net"
	"net/http"
	"strings"
	"time"
)

// CouchDB 3.4's lockout, as src/couch/src/couch_auth_lockout.erl and couch_httpd_auth.erl
// authenticate/5 implement it:
//   - failures are counted in an ets_lru (couch_lockout_lru) keyed by {Peer, UserName, UserSalt}: the
//     client's address, the name, and the salt of the stored password hash;
//   - the check runs before the password is verified: once a key has `threshold` (5) failures, every
//     attempt gets 403 and is not counted again, whether its password is right or not;
//   - only a wrong password counts; a right one does not reset the count;
//   - an entry lives max_lifetime (300000 ms) from its creation, that is from the key's first failure
//     (update_counter keeps ctime; trim_lifetime drops the whole entry), so the count starts again at
//     zero once it expires: the window is fixed, not sliding;
//   - a password change hashes with a new salt (couch_passwords:hash_admin_password), which is a new
//     key: the account is no longer locked, even when the same password is set again;
//   - basic auth for an unknown user fails in default_authentication_handler before authenticate/5
//     (get_user_creds returns nil), so it is never counted; POST /_session calls authenticate/5 with no
//     user properties, so there an unknown user is counted under an empty salt;
//   - the LRU lives in the VM's memory: a restart forgets every count.
const (
	lockoutThreshold = 5
	lockoutReason    = "Account is temporarily locked due to multiple authentication failures"
)

// lockoutKey is what couch_auth_lockout counts failures by.
type lockoutKey struct{ peer, user, salt string }

// lockoutEntry is one couch_lockout_lru entry.
type lockoutEntry struct {
	failures int
	created  time.Time // the first failure; the entry is dropped max_lifetime after it
}

// login plays couch_httpd_auth:authenticate/5 for an attempt from peer. It returns 0 when the
// password is right, else the status and body CouchDB answers. viaSession is POST /_session, which
// counts unknown users too. Every call is an authentication attempt and is counted as one.
func (n *Node) login(peer, user, password string, viaSession bool) (int, any) {
	n.requests.AuthAttempts++
	want, known := n.admins[user]
	if !known && !viaSession {
		n.requests.Failures++
		return http.StatusUnauthorized, errBody("unauthorized", "Name or password is incorrect.")
	}
	key := lockoutKey{peer: peer, user: user, salt: n.adminSalt(user)}
	now := n.net.opts.Clock()
	e := n.lockouts[key]
	if e != nil && now.Sub(e.created) > n.net.opts.LockoutWindow {
		delete(n.lockouts, key)
		e = nil
	}
	if e != nil && e.failures >= lockoutThreshold {
		n.requests.Locked++
		return http.StatusForbidden, errBody("forbidden", lockoutReason)
	}
	if known && want.verify(n.net, password) {
		return 0, nil
	}
	if e == nil {
		e = &lockoutEntry{created: now}
		n.lockouts[key] = e
	}
	e.failures++
	n.requests.Failures++
	return http.StatusUnauthorized, errBody("unauthorized", "Name or password is incorrect.")
}

// authenticate applies basic auth and the lockout. Every path but / and /_up is admin-only (3.x
// defaults databases to admin_only security).
func (n *Node) authenticate(r *http.Request) (int, any, bool) {
	user, pass, ok := r.BasicAuth()
	if !ok {
		if n.cookieUser(r) != "" {
			return 0, nil, true
		}
		if strings.HasPrefix(r.Header.Get("Authorization"), "Basic ") {
			return http.StatusBadRequest, errBody("bad_request", "Authorization header has invalid base64 value"), false
		}
		return http.StatusUnauthorized, errBody("unauthorized", "You are not a server admin."), false
	}
	if code, body := n.login(hostOf(r), user, pass, false); code != 0 {
		return code, body, false
	}
	return 0, nil, true
}

// peerHost is the address this node's own requests to another node come from.
func (n *Node) peerHost() string {
	host, _, _ := net.SplitHostPort(n.addr)
	return host
}
