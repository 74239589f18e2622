package metrics

import (
	"context"
	"net/url"
	"sync"
	"time"

	clientmetrics "k8s.io/client-go/tools/metrics"
)

var registerClientGo sync.Once

// RegisterClientGoMetrics bridges client-go's REST client results into kube_api_requests_total and
// its rate limiter's waits into kube_api_throttle_seconds. client-go keeps one process-wide hook, so
// only the first Recorder of a process gets it.
func (r *Recorder) RegisterClientGoMetrics() {
	registerClientGo.Do(func() {
		clientmetrics.Register(clientmetrics.RegisterOpts{RequestResult: resultAdapter{r}, RateLimiterLatency: throttleAdapter{r}})
	})
}

type throttleAdapter struct{ r *Recorder }

func (a throttleAdapter) Observe(_ context.Context, _ string, _ url.URL, d time.Duration) {
	a.r.KubeThrottled(d)
}

// KubeThrottled records how long one Kubernetes API request waited for the client's rate limiter.
func (r *Recorder) KubeThrottled(d time.Duration) { r.kubeThrottle.Observe(d.Seconds()) }

type resultAdapter struct{ r *Recorder }

func (a resultAdapter) Increment(_ context.Context, code, method, _ string) {
	a.r.KubeRequest(method, code)
}

// KubeRequest counts one Kubernetes API request (what the client-go bridge calls).
func (r *Recorder) KubeRequest(method, code string) {
	r.kubeRequests.WithLabelValues(method, code).Inc()
}
