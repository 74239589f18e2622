package couchtest

import (
	"io"
	"net/http"
	"strings"
)

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
