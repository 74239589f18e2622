package metrics

import (
	"context"
	"sync"

	clientmetrics "k8s.io/client-go/tools/metrics"
)

var registerClientGo sync.Once

// RegisterClientGoMetrics bridges client-go's REST client results into kube_api_requests_total.
// client-go keeps one process-wide hook, so only the first Recorder of a process gets it.
func (r *Recorder) RegisterClientGoMetrics() {
	registerClientGo.Do(func() {
		clientmetrics.Register(clientmetrics.RegisterOpts{RequestResult: resultAdapter{r}})
	})
}

type resultAdapter struct{ r *Recorder }

func (a resultAdapter) Increment(_ context.Context, code, method, _ string) {
	a.r.KubeRequest(method, code)
}

// KubeRequest counts one Kubernetes API request (what the client-go bridge calls).
func (r *Recorder) KubeRequest(method, code string) {
	r.kubeRequests.WithLabelValues(method, code).Inc()
}
