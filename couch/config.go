package couch

import (
	"context"
	"encoding/json"
	"net/http"
)

// configPath is /_node/{node}/_config/{section}/{key}; node may be "_local".
func configPath(node, section, key string) string {
	return "/_node/" + escape(node) + "/_config/" + escape(section) + "/" + escape(key)
}

// GetConfig reads one runtime config value of node. An unset key is a *StatusError that IsNotFound.
// Values can be secrets (admin hashes, [chttpd_auth] secret): callers must never log them.
func (c *Client) GetConfig(ctx context.Context, node, section, key string) (string, error) {
	var v string
	err := c.getJSON(ctx, configPath(node, section, key), nil, &v)
	return v, err
}

// SetConfig writes one runtime config value of node and returns the old value ("" when unset).
// CouchDB writes it to the node's last ini file: where that file is not on a persistent volume, the
// value is gone after a restart.
func (c *Client) SetConfig(ctx context.Context, node, section, key, value string) (string, error) {
	raw, err := json.Marshal(value)
	if err != nil {
		return "", err
	}
	return c.configCall(ctx, request{method: http.MethodPut, path: configPath(node, section, key), raw: raw})
}

// DeleteConfig removes one runtime config value of node and returns the old value. A key that is not
// set is a *StatusError that IsNotFound.
func (c *Client) DeleteConfig(ctx context.Context, node, section, key string) (string, error) {
	return c.configCall(ctx, request{method: http.MethodDelete, path: configPath(node, section, key)})
}

func (c *Client) configCall(ctx context.Context, r request) (string, error) {
	code, data, err := c.do(ctx, r)
	if err != nil {
		return "", err
	}
	var old string
	if err := decode(r.method, r.path, code, data, &old); err != nil {
		return "", err
	}
	return old, nil
}

// ConfigSection reads every key of one runtime config section of node (an unknown section reads as
// empty). Values can be secrets ([admins] holds password hashes): callers must never log them.
func (c *Client) ConfigSection(ctx context.Context, node, section string) (map[string]string, error) {
	v := map[string]string{}
	err := c.getJSON(ctx, "/_node/"+escape(node)+"/_config/"+escape(section), nil, &v)
	return v, err
}
