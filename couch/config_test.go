package couch

import (
	"context"
	"net/http"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestConfigSection(t *testing.T) {
	c, _ := newTestClient(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet || r.URL.EscapedPath() != "/_node/couchdb@db-0.db.ns%2Fx/_config/admins" {
			t.Errorf("%s %s", r.Method, r.URL.EscapedPath())
		}
		if u, p, ok := r.BasicAuth(); !ok || u == "" || p == "" {
			t.Error("no basic auth")
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"admin":"-pbkdf2:sha256-aa,bb,600000","ops":"-pbkdf2:sha256-cc,dd,600000"}`))
	}))
	got, err := c.ConfigSection(context.Background(), "couchdb@db-0.db.ns/x", "admins")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"admin": "-pbkdf2:sha256-aa,bb,600000", "ops": "-pbkdf2:sha256-cc,dd,600000"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

func TestConfigSectionNotJSONObject(t *testing.T) {
	c, _ := newTestClient(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte(`"-pbkdf2:sha256-secretkey0123456789,salt0123456789,600000"`))
	}))
	_, err := c.ConfigSection(context.Background(), "_local", "admins")
	if err == nil {
		t.Fatal("a JSON string read as a section")
	}
	if strings.Contains(err.Error(), "secretkey0123456789") || strings.Contains(err.Error(), "salt0123456789") {
		t.Error("the error shows the value")
	}
}
