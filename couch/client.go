// Package couch is a typed client for exactly the CouchDB 3.x cluster HTTP calls the controller makes.
// It knows nothing of Kubernetes, logs nothing, and takes its transport (connection pool, dialer,
// metrics round-tripper) from the caller.
package couch

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/hashicorp/go-cleanhttp"
	"github.com/hashicorp/go-retryablehttp"
)

// Options configure a Client. One Client talks to one node; clients share HTTPClient.
type Options struct {
	BaseURL      string                      // e.g. "http://10.244.0.5:5984"; must not carry userinfo
	Username     string                      // server admin
	Password     string                      // never appears in URLs or errors
	HTTPClient   *http.Client                // shared transport; nil = a pooled client of its own
	Timeout      time.Duration               // per attempt; default 5s
	RetryMax     int                         // extra attempts for idempotent methods; default 2, <0 = none
	RetryWaitMin time.Duration               // default 50ms
	RetryWaitMax time.Duration               // default 500ms
	Logger       retryablehttp.LeveledLogger // nil = silent
}

// Client talks to one CouchDB node.
type Client struct {
	base     *url.URL
	user     string
	password string
	http     *retryablehttp.Client
}

const maxBody = 16 << 20 // a shard map or membership larger than this is not CouchDB talking

// New validates opts and builds a Client.
func New(opts Options) (*Client, error) {
	u, err := url.Parse(opts.BaseURL)
	if err != nil {
		// url.Parse errors quote the input, which could carry userinfo: say only what is wrong.
		return nil, errors.New("couch: base URL does not parse")
	}
	if u.User != nil {
		return nil, errors.New("couch: base URL must not carry credentials; pass Username and Password")
	}
	if u.Scheme != "http" && u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("couch: base URL needs an http or https scheme and a host, got %q", u.Redacted())
	}
	u.Path = strings.TrimSuffix(u.Path, "/")
	if opts.Timeout <= 0 {
		opts.Timeout = 5 * time.Second
	}
	if opts.RetryMax == 0 {
		opts.RetryMax = 2
	} else if opts.RetryMax < 0 {
		opts.RetryMax = 0
	}
	if opts.RetryWaitMin <= 0 {
		opts.RetryWaitMin = 50 * time.Millisecond
	}
	if opts.RetryWaitMax <= 0 {
		opts.RetryWaitMax = 500 * time.Millisecond
	}
	shared := opts.HTTPClient
	if shared == nil {
		shared = cleanhttp.DefaultPooledClient()
	}
	// A copy of the shared client with its own Timeout bounds every attempt while the Transport (and
	// so the connection pool and any instrumentation) stays shared.
	hc := &http.Client{Transport: shared.Transport, CheckRedirect: shared.CheckRedirect, Jar: shared.Jar, Timeout: opts.Timeout}
	rc := &retryablehttp.Client{
		HTTPClient:   hc,
		RetryWaitMin: opts.RetryWaitMin,
		RetryWaitMax: opts.RetryWaitMax,
		RetryMax:     opts.RetryMax,
		CheckRetry:   checkRetry,
		Backoff:      retryablehttp.DefaultBackoff,
		// Passthrough keeps CouchDB's error body readable after the last attempt.
		ErrorHandler: retryablehttp.PassthroughErrorHandler,
	}
	if opts.Logger != nil {
		rc.Logger = opts.Logger
	}
	return &Client{base: u, user: opts.Username, password: opts.Password, http: rc}, nil
}

// BaseURL is the node's address (never with credentials).
func (c *Client) BaseURL() string { return c.base.String() }

// checkRetry retries only idempotent methods, and only on network errors and 5xx (not 501). A POST to
// _cluster_setup is never repeated by the client: the planner decides whether it is still needed.
func checkRetry(ctx context.Context, resp *http.Response, err error) (bool, error) {
	if ctx.Err() != nil {
		return false, ctx.Err()
	}
	var method string
	if resp != nil && resp.Request != nil {
		method = resp.Request.Method
	}
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			method = ue.Op
		}
		if errors.Is(err, context.Canceled) {
			return false, nil
		}
		// An attempt that ran to the timeout met a hung or swamped node: two more attempts would
		// triple the wait (15 s at the default 5 s) of the sync that asked, and of every sync after
		// it while the node stays so, which held up a join through the other members for 16 s to
		// over a minute in the e2e fault matrix. The next sync asks again anyway.
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return false, nil
		}
		return idempotent(method), nil
	}
	if !idempotent(method) {
		return false, nil
	}
	return resp.StatusCode >= 500 && resp.StatusCode != http.StatusNotImplemented, nil
}

func idempotent(method string) bool {
	switch strings.ToUpper(method) {
	case http.MethodGet, http.MethodHead, http.MethodPut, http.MethodDelete:
		return true
	}
	return false
}

// request describes one call. path is already escaped.
type request struct {
	method string
	path   string
	query  url.Values
	body   any
	raw    []byte // a pre-encoded body (e.g. a JSON string for _config)
}

// do sends r and returns the status code and body. Non-2xx answers become *StatusError unless the
// caller lists the code in accept.
func (c *Client) do(ctx context.Context, r request, accept ...int) (int, []byte, error) {
	var body []byte
	switch {
	case r.raw != nil:
		body = r.raw
	case r.body != nil:
		b, err := json.Marshal(r.body)
		if err != nil {
			return 0, nil, fmt.Errorf("%s %s: encode body: %w", r.method, r.path, err)
		}
		body = b
	}
	u := *c.base
	u.RawPath = c.base.Path + r.path
	p, err := url.PathUnescape(u.RawPath)
	if err != nil {
		return 0, nil, fmt.Errorf("%s %s: bad path", r.method, r.path)
	}
	u.Path = p
	if r.query != nil {
		u.RawQuery = r.query.Encode()
	}
	var reader io.Reader
	if body != nil {
		reader = bytes.NewReader(body)
	}
	req, err := retryablehttp.NewRequestWithContext(ctx, r.method, u.String(), reader)
	if err != nil {
		return 0, nil, fmt.Errorf("%s %s: build request: %w", r.method, r.path, err)
	}
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.user != "" || c.password != "" {
		req.SetBasicAuth(c.user, c.password)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, nil, fmt.Errorf("%s %s: %w", r.method, r.path, scrub(err))
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		return resp.StatusCode, nil, fmt.Errorf("%s %s: read body: %w", r.method, r.path, scrub(err))
	}
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return resp.StatusCode, data, nil
	}
	for _, a := range accept {
		if resp.StatusCode == a {
			return resp.StatusCode, data, nil
		}
	}
	se := &StatusError{Method: r.method, Path: r.path, Code: resp.StatusCode}
	var eb struct {
		Error  string `json:"error"`
		Reason string `json:"reason"`
	}
	if json.Unmarshal(data, &eb) == nil {
		se.Err, se.Reason = eb.Error, eb.Reason
	}
	return resp.StatusCode, data, se
}

// scrub removes the URL (which never carries userinfo here, but may carry a query) from transport
// errors so that errors stay short and never echo anything the caller did not choose to show.
func scrub(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return fmt.Errorf("%w", ue.Err)
	}
	return err
}

// getJSON GETs path and decodes the 2xx body into out.
func (c *Client) getJSON(ctx context.Context, path string, q url.Values, out any) error {
	code, data, err := c.do(ctx, request{method: http.MethodGet, path: path, query: q})
	if err != nil {
		return err
	}
	return decode(http.MethodGet, path, code, data, out)
}

func decode(method, path string, code int, data []byte, out any) error {
	if err := json.Unmarshal(data, out); err != nil {
		return &DecodeError{Method: method, Path: path, Code: code, Err: err}
	}
	return nil
}

// okResponse is {"ok":true,"id":..,"rev":..}.
type okResponse struct {
	OK  bool   `json:"ok"`
	ID  string `json:"id"`
	Rev string `json:"rev"`
}

// escape escapes one path segment, including "/" (db names like "a/b", shard names).
func escape(s string) string { return url.PathEscape(s) }
