// Command couchdb-controller keeps labelled CouchDB StatefulSets formed, joined and replicated.
package main

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"

	"github.com/couchdb-controller/couchdb-controller/controller"
	"github.com/couchdb-controller/couchdb-controller/couch"
	"github.com/couchdb-controller/couchdb-controller/metrics"
)

var version = "dev"

type options struct {
	kubeconfig, namespace     string
	workers                   int
	resync, couchTimeout      time.Duration
	metricsAddr, probeAddr    string
	leaderElect               bool
	leaseNamespace, leaseName string
	showVersion               bool
	kubeQPS                   float64
	kubeBurst                 int
	profiling                 bool
	maxMoves, maxFillsPerNode int
	catchUpTimeout            time.Duration
}

func main() {
	var o options
	fs := flag.CommandLine
	klog.InitFlags(fs)
	fs.StringVar(&o.kubeconfig, "kubeconfig", "", "path to a kubeconfig; in-cluster config when empty")
	fs.StringVar(&o.namespace, "namespace", "", "watch only this namespace (default: all)")
	fs.IntVar(&o.workers, "workers", 16, "clusters synced in parallel (a sync mostly waits on CouchDB, so more workers than cores pays)")
	fs.DurationVar(&o.resync, "resync", time.Minute, "how often every cluster is re-checked for drift that raises no Kubernetes event (joins and scale events are handled at once)")
	fs.DurationVar(&o.couchTimeout, "couchdb-timeout", 5*time.Second, "timeout of one CouchDB request attempt")
	fs.StringVar(&o.metricsAddr, "metrics-bind-address", ":8080", "address of /metrics and the status API")
	fs.StringVar(&o.probeAddr, "health-probe-bind-address", ":8081", "address of /healthz and /readyz")
	fs.BoolVar(&o.leaderElect, "leader-elect", false, "hold a Lease so only one replica acts")
	fs.StringVar(&o.leaseNamespace, "leader-elect-namespace", os.Getenv("POD_NAMESPACE"), "namespace of the Lease")
	fs.StringVar(&o.leaseName, "leader-elect-id", "couchdb-controller", "name of the Lease")
	fs.Float64Var(&o.kubeQPS, "kube-api-qps", 50, "sustained requests per second to the Kubernetes API (pod conditions, events, scale)")
	fs.IntVar(&o.kubeBurst, "kube-api-burst", 100, "burst of requests to the Kubernetes API")
	fs.IntVar(&o.maxMoves, "max-concurrent-moves", 8, "shard copies being filled at once per CouchDB cluster (rebalance, drain, heal); 1 moves one range at a time")
	fs.IntVar(&o.maxFillsPerNode, "max-fills-per-node", 4, "fills one CouchDB node takes part in at once, as target or as the holder of the copy being dropped, so one node's disk and CPU are not swamped")
	fs.DurationVar(&o.catchUpTimeout, "catch-up-timeout", 10*time.Minute, "how long a restarted member's couchdb.io/member condition waits for its shard copies to catch up before it is set True anyway, with a Warning")
	fs.BoolVar(&o.profiling, "profiling", false, "serve Go's pprof profiles under /debug/pprof/ on the metrics address")
	fs.BoolVar(&o.showVersion, "version", false, "print the version and exit")
	flag.Parse()
	if o.showVersion {
		fmt.Println(version)
		return
	}
	ctx, stop := signalContext()
	defer stop()
	if err := run(ctx, o); err != nil {
		klog.ErrorS(err, "couchdb-controller failed")
		klog.FlushAndExit(klog.ExitFlushTimeout, 1)
	}
	klog.Flush()
}

// signalContext is cancelled on SIGINT/SIGTERM; a second signal exits at once.
func signalContext() (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan os.Signal, 2)
	signal.Notify(ch, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		<-ch
		cancel()
		<-ch
		os.Exit(1)
	}()
	return ctx, cancel
}

func run(ctx context.Context, o options) error {
	logger := klog.FromContext(ctx)
	cfg, err := restConfig(o.kubeconfig, o.kubeQPS, o.kubeBurst)
	if err != nil {
		return err
	}
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("kubernetes client: %w", err)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), collectors.NewBuildInfoCollector())
	rec := metrics.New(reg)
	workqueue.SetProvider(rec.WorkqueueProvider())
	rec.RegisterClientGoMetrics()

	ctrl, err := controller.NewController(ctx, controller.Config{
		KubeClient: kube, Namespace: o.namespace, Resync: o.resync, Metrics: rec,
		MaxMoves: o.maxMoves, MaxFillsPerNode: o.maxFillsPerNode, CatchUpTimeout: o.catchUpTimeout,
		CouchFactory: couchFactory(rec, o.couchTimeout),
	})
	if err != nil {
		return err
	}
	var le *leaderelection.HealthzAdaptor
	var healthz func(*http.Request) error
	if o.leaderElect {
		le = leaderelection.NewLeaderHealthzAdaptor(20 * time.Second)
		healthz = le.Check
	}
	servers := []*http.Server{
		{Addr: o.metricsAddr, Handler: withProfiling(metricsMux(reg, ctrl), o.profiling), ReadHeaderTimeout: 5 * time.Second},
		{Addr: o.probeAddr, Handler: probeMux(ctrl, healthz), ReadHeaderTimeout: 5 * time.Second},
	}
	for _, s := range servers {
		ln, err := net.Listen("tcp", s.Addr)
		if err != nil {
			return fmt.Errorf("listen on %s: %w", s.Addr, err)
		}
		logger.Info("Serving HTTP", "address", ln.Addr().String())
		go func(s *http.Server, ln net.Listener) {
			if err := s.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				logger.Error(err, "HTTP server stopped", "address", s.Addr)
			}
		}(s, ln)
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		for _, s := range servers {
			_ = s.Shutdown(sctx)
		}
	}()

	if !o.leaderElect {
		rec.SetLeader(true)
		return ctrl.Run(ctx, o.workers)
	}
	return runWithLease(ctx, o, kube, ctrl, rec, le)
}

func runWithLease(ctx context.Context, o options, kube kubernetes.Interface, ctrl *controller.Controller, rec *metrics.Recorder, le *leaderelection.HealthzAdaptor) error {
	logger := klog.FromContext(ctx)
	id := os.Getenv("POD_NAME")
	if id == "" {
		host, _ := os.Hostname()
		id = fmt.Sprintf("%s-%d", host, time.Now().UnixNano()%100000)
	}
	if o.leaseNamespace == "" {
		o.leaseNamespace = "couchdb-controller"
	}
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Namespace: o.leaseNamespace, Name: o.leaseName},
		Client:     kube.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: id},
	}
	var runErr error
	var wg sync.WaitGroup
	lost := false
	leaderelection.RunOrDie(ctx, leaderelection.LeaderElectionConfig{
		Lock:            lock,
		LeaseDuration:   15 * time.Second,
		RenewDeadline:   10 * time.Second,
		RetryPeriod:     2 * time.Second,
		ReleaseOnCancel: true, // safe: Run returns only after its workers stopped
		WatchDog:        le,
		Name:            o.leaseName,
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: func(lctx context.Context) {
				wg.Add(1)
				defer wg.Done()
				rec.SetLeader(true)
				logger.Info("Started leading", "identity", id)
				runErr = ctrl.Run(lctx, o.workers)
			},
			OnStoppedLeading: func() {
				rec.SetLeader(false)
				wg.Wait()
				if ctx.Err() == nil {
					lost = true
					logger.Info("Lost the leader lease; exiting so a fresh process can compete again", "identity", id)
				}
			},
			OnNewLeader: func(identity string) {
				if identity != id {
					logger.Info("Leader is elsewhere", "leader", identity)
				}
			},
		},
	})
	if lost {
		klog.FlushAndExit(klog.ExitFlushTimeout, 1)
	}
	return runErr
}

func restConfig(kubeconfig string, qps float64, burst int) (*rest.Config, error) {
	var cfg *rest.Config
	var err error
	if kubeconfig != "" {
		cfg, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
	} else {
		cfg, err = rest.InClusterConfig()
	}
	if err != nil {
		return nil, fmt.Errorf("kubernetes config: %w", err)
	}
	cfg.QPS, cfg.Burst = float32(qps), burst
	cfg.UserAgent = "couchdb-controller/" + version
	// v1 Endpoints answers every request with a deprecation warning since 1.33; say it once.
	cfg.WarningHandler = &onceWarnings{}
	return cfg, nil
}

type onceWarnings struct{ seen sync.Map }

func (w *onceWarnings) HandleWarningHeader(code int, agent, text string) {
	if code != 299 || text == "" {
		return
	}
	key := text
	if strings.Contains(text, "Endpoints is deprecated") {
		key = "endpoints"
	}
	if _, loaded := w.seen.LoadOrStore(key, true); !loaded {
		klog.InfoS("Kubernetes API warning (shown once)", "warning", text)
	}
}

// couchFactory builds couch clients over one shared, instrumented transport (one more per CA bundle).
func couchFactory(rec *metrics.Recorder, timeout time.Duration) controller.CouchFactory {
	var mu sync.Mutex
	clients := map[[32]byte]*http.Client{}
	httpClient := func(ca []byte) (*http.Client, error) {
		key := sha256.Sum256(ca)
		mu.Lock()
		defer mu.Unlock()
		if c, ok := clients[key]; ok {
			return c, nil
		}
		t := &http.Transport{
			Proxy:       http.ProxyFromEnvironment,
			DialContext: (&net.Dialer{Timeout: timeout, KeepAlive: 30 * time.Second}).DialContext,
			// One idle connection per CouchDB node survives a resync (IdleConnTimeout > --resync), so
			// a steady-state sync costs a request, not a TCP handshake and a TIME_WAIT socket. No
			// total cap: a fleet of 3,000 nodes keeps 3,000 idle connections rather than redialling
			// two thirds of them every resync. The per-host cap covers every request in flight when
			// all of them go to one host (an HTTP proxy); towards a node directly a sync never has
			// more than a few in flight, so no node ever holds that many.
			MaxIdleConns:        0,
			MaxIdleConnsPerHost: 64,
			IdleConnTimeout:     90 * time.Second,
			TLSHandshakeTimeout: timeout,
		}
		if len(ca) > 0 {
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(ca) {
				return nil, errors.New("ca.crt holds no PEM certificate")
			}
			t.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
		}
		c := &http.Client{Transport: rec.InstrumentRoundTripper(t)}
		clients[key] = c
		return c, nil
	}
	return func(ep controller.Endpoint, creds controller.Credentials) (controller.CouchAPI, error) {
		hc, err := httpClient(ep.CA)
		if err != nil {
			return nil, err
		}
		return couch.New(couch.Options{BaseURL: ep.URL, Username: creds.Username, Password: creds.Password, HTTPClient: hc, Timeout: timeout})
	}
}
