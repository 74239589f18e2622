package couch

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
)

// StatusError is a non-2xx answer from CouchDB, carrying CouchDB's own {"error","reason"} body.
// Path never carries credentials: the client sets basic auth on the request, never in the URL.
type StatusError struct {
	Method string
	Path   string
	Code   int
	Err    string
	Reason string
}

func (e *StatusError) Error() string {
	if e.Err == "" && e.Reason == "" {
		return fmt.Sprintf("%s %s: %d %s", e.Method, e.Path, e.Code, http.StatusText(e.Code))
	}
	return fmt.Sprintf("%s %s: %d %s: %s", e.Method, e.Path, e.Code, e.Err, e.Reason)
}

// DecodeError is a response body that is not the JSON CouchDB documents for that endpoint: a proxy's
// HTML page, a truncated body, or a CouchDB that speaks another API version.
type DecodeError struct {
	Method string
	Path   string
	Code   int
	Err    error
}

func (e *DecodeError) Error() string {
	return fmt.Sprintf("%s %s: %d: decode response: %v", e.Method, e.Path, e.Code, e.Err)
}

func (e *DecodeError) Unwrap() error { return e.Err }

func statusCode(err error) (int, *StatusError) {
	var se *StatusError
	if errors.As(err, &se) {
		return se.Code, se
	}
	return 0, nil
}

// IsNotFound reports a 404 (missing or deleted document, unknown database or node).
func IsNotFound(err error) bool { c, _ := statusCode(err); return c == http.StatusNotFound }

// IsConflict reports a 409 document update conflict.
func IsConflict(err error) bool { c, _ := statusCode(err); return c == http.StatusConflict }

// IsUnauthorized reports a 401: wrong name or password, or no credentials.
func IsUnauthorized(err error) bool { c, _ := statusCode(err); return c == http.StatusUnauthorized }

// IsForbidden reports any 403.
func IsForbidden(err error) bool { c, _ := statusCode(err); return c == http.StatusForbidden }

// LockoutReason is the reason of the 403 CouchDB 3.4+ answers for a locked-out account
// (couch_httpd_auth.erl ?LOCKOUT_MSG).
const LockoutReason = "Account is temporarily locked due to multiple authentication failures"

// IsLocked reports the 403 CouchDB 3.4+ answers once an account is locked out after repeated failed
// logins from one client. Any further attempt, even with the right password, is refused until the
// lockout expires (it neither counts nor extends it), so callers back off. Other 403s (a forbidden
// config section, a validate_doc_update refusal that happens to say "blocked") are not lockouts.
func IsLocked(err error) bool {
	c, se := statusCode(err)
	return c == http.StatusForbidden && se.Err == "forbidden" && strings.HasPrefix(se.Reason, "Account is temporarily locked")
}

// IsNodeDown reports a 412 nodedown from a request proxied through /_node/{node}/ to a node that is
// not connected.
func IsNodeDown(err error) bool {
	c, se := statusCode(err)
	return c == http.StatusPreconditionFailed && se.Err == "nodedown"
}

// IsBadRequest reports a 400.
func IsBadRequest(err error) bool { c, _ := statusCode(err); return c == http.StatusBadRequest }

// IsAuthError reports an answer that means the credentials must change before trying again.
func IsAuthError(err error) bool { return IsUnauthorized(err) || IsLocked(err) }
