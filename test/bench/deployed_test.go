package main

import (
	"os"
	"slices"
	"testing"
)

func TestDeployedEnv(t *testing.T) {
	manifest := func(limits, env string) []byte {
		return []byte(`apiVersion: apps/v1
kind: Deployment
metadata: {name: c}
spec:
  template:
    spec:
      containers:
        - name: controller
          env:
            - name: POD_NAME
              valueFrom: {fieldRef: {fieldPath: metadata.name}}
` + env + `
          resources:
            limits: ` + limits + `
`)
	}
	gomax := "            - name: GOMAXPROCS\n              valueFrom: {resourceFieldRef: {resource: limits.cpu}}"
	gomem := "            - name: GOMEMLIMIT\n              valueFrom: {resourceFieldRef: {resource: limits.memory}}"
	tests := []struct {
		name, limits, env string
		want              []string
		wantErr           bool
	}{
		{"whole core", `{cpu: "1", memory: 256Mi}`, gomax + "\n" + gomem, []string{"GOMAXPROCS=1", "GOMEMLIMIT=268435456"}, false},
		{"millicores round up", `{cpu: 1500m, memory: 1Gi}`, gomax, []string{"GOMAXPROCS=2"}, false},
		{"small fraction rounds up to one", `{cpu: 50m, memory: 1Gi}`, gomax, []string{"GOMAXPROCS=1"}, false},
		{"divisor", `{cpu: "1", memory: 256Mi}`, "            - name: MEM_MI\n              valueFrom: {resourceFieldRef: {resource: limits.memory, divisor: 1Mi}}", []string{"MEM_MI=256"}, false},
		{"no field refs", `{cpu: "1"}`, "", nil, false},
		{"limit not set", `{memory: 256Mi}`, gomax, nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := deployedEnv(manifest(tt.limits, tt.env))
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, want error %v", err, tt.wantErr)
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}

// The shipped manifest gives the controller one core and a 256 MiB soft limit; the bench must run
// it so.
func TestShippedManifestEnv(t *testing.T) {
	b, err := os.ReadFile("../../" + deploymentManifest)
	if err != nil {
		t.Fatal(err)
	}
	got, err := deployedEnv(b)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"GOMAXPROCS=1", "GOMEMLIMIT=268435456"} {
		if !slices.Contains(got, want) {
			t.Errorf("deployed env %q lacks %s", got, want)
		}
	}
}
