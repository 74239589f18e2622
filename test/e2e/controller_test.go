package e2e

import (
	"context"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"
	"k8s.io/klog/v2/ktesting"

	"github.com/couchdb-controller/couchdb-controller/controller"
	"github.com/couchdb-controller/couchdb-controller/couch"
	"github.com/couchdb-controller/couchdb-controller/metrics"
)

// runningController is an in-process controller watching one namespace.
type runningController struct {
	ctrl   *controller.Controller
	reg    *prometheus.Registry
	rec    *metrics.Recorder
	cancel context.CancelFunc
	done   chan struct{}
	logs   func() string
	once   sync.Once
}

// startController runs the controller against the real API server, reaching pods through the
// harness address map (no traffic to the fake pod IPs ever leaves loopback).
func startController(t *testing.T, ns string) *runningController {
	t.Helper()
	return startControllerWith(t, ns, nil)
}

// startControllerWith also installs a BeforeAction hook.
func startControllerWith(t *testing.T, ns string, hook func(context.Context, cache.ObjectName, controller.Action) error) *runningController {
	t.Helper()
	return startControllerOpts(t, ns, controllerOpts{hook: hook})
}

// inProcessResync is the in-process controller's resync period.
const inProcessResync = 2 * time.Second

type controllerOpts struct {
	hook        func(context.Context, cache.ObjectName, controller.Action) error
	timeout     time.Duration // one CouchDB request; default 2s, 5s on real nodes
	credBackoff time.Duration // default 1s
}

func startControllerOpts(t *testing.T, ns string, opts controllerOpts) *runningController {
	t.Helper()
	if opts.timeout == 0 {
		opts.timeout = 2 * time.Second
		if realNodes() {
			// The production default (--couchdb-timeout): a real node answers a wrong password only
			// after a full pbkdf2 of 600,000 iterations (1.3 s idle, 5.2 s seen on this loaded
			// 2-core machine), and a 401 that comes after the timeout looks like a hung node.
			opts.timeout = 5 * time.Second
		}
	}
	if opts.credBackoff == 0 {
		opts.credBackoff = time.Second
	}
	hook := opts.hook
	logger := ktesting.NewLogger(t, ktesting.NewConfig(ktesting.BufferLogs(true)))
	ctx := klog.NewContext(context.Background(), logger)
	ctx, cancel := context.WithCancel(ctx)
	reg := prometheus.NewRegistry()
	rec := metrics.New(reg)
	hc := &http.Client{Transport: rec.InstrumentRoundTripper(env.addrs.Transport())}
	ctrl, err := controller.NewController(ctx, controller.Config{
		KubeClient: kubernetes.NewForConfigOrDie(env.cfg), Namespace: ns, Resync: inProcessResync, Metrics: rec,
		CredentialBackoff: opts.credBackoff, UnreachableAfter: 2 * time.Second, BeforeAction: hook,
		CouchFactory: func(ep controller.Endpoint, creds controller.Credentials) (controller.CouchAPI, error) {
			return couch.New(couch.Options{BaseURL: ep.URL, Username: creds.Username, Password: creds.Password, HTTPClient: hc, Timeout: opts.timeout})
		},
	})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	rc := &runningController{ctrl: ctrl, reg: reg, rec: rec, cancel: cancel, done: make(chan struct{}),
		logs: logger.GetSink().(ktesting.Underlier).GetBuffer().String}
	go func() {
		defer close(rc.done)
		if err := ctrl.Run(ctx, 2); err != nil {
			t.Errorf("controller: %v", err)
		}
	}()
	t.Cleanup(rc.stop)
	return rc
}

func (rc *runningController) stop() {
	rc.cancel()
	<-rc.done
	rc.once.Do(func() {
		shown("logs of an in-process controller", rc.logs())
		shown("metrics of an in-process controller", metricsText(rc.reg))
		shown("status API of an in-process controller", statusJSON(map[string]any{"clusters": rc.ctrl.Clusters()}))
	})
}

func poll(t *testing.T, timeout time.Duration, what string, cond func(ctx context.Context) (bool, error)) {
	t.Helper()
	if err := wait.PollUntilContextTimeout(context.Background(), 20*time.Millisecond, timeout, true, cond); err != nil {
		t.Fatalf("timed out after %s waiting for %s: %v", timeout, what, err)
	}
}

// membership asks a pod's node directly (not through the controller) whom it lists.
func clusterNodesOf(ns, pod string) []string {
	n := nodeOf(ns, pod)
	if n == nil || !n.Running() {
		return nil
	}
	return n.ClusterNodes()
}

func waitMembers(t *testing.T, s clusterSpec, ns string, count int, timeout time.Duration) {
	t.Helper()
	var want []string
	for i := 0; i < count; i++ {
		want = append(want, s.nodeName(ns, i))
	}
	sort.Strings(want)
	poll(t, timeout, "every node to list "+s.name+"'s members", func(context.Context) (bool, error) {
		for i := 0; i < count; i++ {
			got := clusterNodesOf(ns, podName(s, i))
			sort.Strings(got)
			if !slices.Equal(got, want) {
				return false, nil
			}
		}
		return true, nil
	})
}

func podName(s clusterSpec, i int) string { return s.name + "-" + itoa(i) }

func itoa(i int) string { return strconv.Itoa(i) }

func events(t *testing.T, ns, reason string) []corev1.Event {
	t.Helper()
	list, err := env.kube.CoreV1().Events(ns).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var out []corev1.Event
	for _, e := range list.Items {
		if e.Reason == reason {
			out = append(out, e)
		}
	}
	return out
}

func waitEvent(t *testing.T, ns, reason string) {
	t.Helper()
	poll(t, 20*time.Second, "event "+reason, func(context.Context) (bool, error) {
		return len(events(t, ns, reason)) > 0, nil
	})
}

func setupState(t *testing.T, ns, pod string) couch.SetupState {
	n := nodeOf(ns, pod)
	if n == nil {
		return ""
	}
	c, err := couch.New(couch.Options{BaseURL: n.URL(), Username: "admin", Password: passwordOf(ns), RetryMax: -1})
	if err != nil {
		t.Fatal(err)
	}
	st, _ := c.SetupState(context.Background())
	return st
}

var passwords sync.Map

func passwordOf(ns string) string { v, _ := passwords.Load(ns); s, _ := v.(string); return s }
