package couchtest

import (
	"io"
	"net/http"
	"strings"
)

// testSecret is the [chttpd_auth] secret of the test clusters' nodes, the same on each as the Helm
// chart sets it: without one, finish_cluster on a multi-node cluster fails as on a real node
// (TestConformanceHarnessSetup).
const testSecret = "4f6c0c1e2d3b4a59aa01"

func doPut(base, path string) (int, string, error) {
	req, _ := http.NewRequest(http.MethodPut, base+path, strings.NewReader(`{"n":1}`))
	req.SetBasicAuth("admin", "pw")
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), nil
}
