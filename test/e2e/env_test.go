package e2e

import (
	"context"
	"fmt"
	"os"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/couchdb-controller/couchdb-controller/controller"
	"github.com/couchdb-controller/couchdb-controller/couch/couchtest"
	"github.com/couchdb-controller/couchdb-controller/test/couchpods"
	"github.com/couchdb-controller/couchdb-controller/test/harness"
	"github.com/couchdb-controller/couchdb-controller/test/kubelet"
)

// env is the shared world of the e2e suite: one real control plane, one fake kubelet, and one
// emulated CouchDB network or, with COUCHDB_REL set, real CouchDB nodes from that release. Each test
// works in its own namespace.
var env struct {
	cp      *harness.ControlPlane
	cfg     *rest.Config
	kube    kubernetes.Interface
	addrs   *kubelet.AddressMap
	backend *couchpods.Backend // emulated nodes; nil on real nodes
	network *couchtest.Network
	real    *couchpods.RealBackend // real nodes; nil on the emulator
	release string
}

// couchClockSkew moves the emulated CouchDB's clock forward (only its lockout reads it), so a test
// can let a 5-minute account lockout expire without waiting for it.
var couchClockSkew atomic.Int64

func TestMain(m *testing.M) {
	if os.Getenv("COUCHDB_CONTROLLER_E2E") != "1" && !harness.BinariesPresent() {
		fmt.Println("e2e: skipped: no control-plane binaries (run `make test`, which builds them, or set COUCHDB_CONTROLLER_E2E=1)")
		os.Exit(0)
	}
	os.Exit(run(m))
}

func run(m *testing.M) int {
	failed := false
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cp, err := harness.Start(ctx, harness.Options{Logf: func(f string, a ...any) { fmt.Printf("e2e: "+f+"\n", a...) }})
	if err != nil {
		fmt.Println("e2e: control plane:", err)
		return 1
	}
	defer cp.Stop()
	env.cp, env.cfg = cp, cp.AdminConfig()
	env.kube = kubernetes.NewForConfigOrDie(env.cfg)
	env.addrs = kubelet.NewAddressMap()
	var backend kubelet.Backend
	if rel := os.Getenv(couchpods.ReleaseEnv); rel != "" {
		runDir, err := os.MkdirTemp("", "e2e-couchdb-")
		if err != nil {
			fmt.Println("e2e:", err)
			return 1
		}
		env.real, err = couchpods.NewReal(env.kube, couchpods.RealOptions{Release: rel, RunDir: runDir})
		if err != nil {
			fmt.Println("e2e:", err)
			return 1
		}
		env.release = rel
		fmt.Printf("e2e: real CouchDB nodes from %s; their data, config and logs under %s\n", rel, runDir)
		backend = env.real
		defer func() {
			env.real.Close()
			if !failed {
				_ = os.RemoveAll(runDir)
			}
		}()
	} else {
		env.network = couchtest.NewNetwork(couchtest.NetworkOptions{SyncDelay: 200 * time.Millisecond, PasswordIterations: 1000, ShardCacheLag: couchtest.RecordedShardCacheLag,
			ShardCacheDelay: couchtest.RecordedShardCacheDelay,
			Clock:           func() time.Time { return time.Now().Add(time.Duration(couchClockSkew.Load())) }})
		env.backend = couchpods.New(env.kube, env.network)
		backend = env.backend
	}
	// The default Node takes every pod; the zone Nodes only pods of a zones cluster (clusterSpec.zones),
	// which select and tolerate them.
	nodes := []kubelet.NodeSpec{{Name: kubelet.NodeName}}
	for _, z := range testZones {
		nodes = append(nodes, kubelet.NodeSpec{Name: zoneNode(z), Labels: map[string]string{controller.DefaultZoneLabel: z, zonePoolKey: "true"},
			Taints: []corev1.Taint{{Key: zonePoolKey, Value: "true", Effect: corev1.TaintEffectNoSchedule}}})
	}
	kl := kubelet.NewWithOptions(env.kube, backend, env.addrs, kubelet.Options{Nodes: nodes})
	kctx, kcancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := kl.Run(kctx); err != nil {
			fmt.Println("e2e: kubelet:", err)
		}
	}()
	code := m.Run()
	if code == 0 {
		report, ok := scanSuiteForPasswords()
		fmt.Println("e2e:", report)
		if !ok {
			code = 1
		}
	}
	kcancel()
	<-done
	if code != 0 {
		failed = true
		fmt.Println("e2e: control-plane logs are in", cp.RunDir())
		if env.real != nil {
			for key, n := range env.real.Nodes() {
				fmt.Printf("e2e: CouchDB log of %s: %s\n", key, n.LogPath())
			}
		}
	}
	return code
}
