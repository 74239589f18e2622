package harness_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"

	corev1 "k8s.io/api/core/v1"

	"github.com/couchdb-controller/couchdb-controller/test/kubelet"
)

// upBackend is the trivial workload for harness tests: one loopback HTTP server per pod whose
// /_up answers 200 while the pod is "healthy" and 503 otherwise, and "<pod> <ip>" on /.
type upBackend struct {
	mu    sync.Mutex
	pods  map[string]*upPod // namespace/name, kept across restarts like a volume
	sick  map[string]bool   // namespace/name whose probe fails
	stops atomic.Int32
}

type upPod struct {
	starts  int
	running *httptest.Server
}

func newUpBackend() *upBackend {
	return &upBackend{pods: map[string]*upPod{}, sick: map[string]bool{}}
}

func (b *upBackend) setSick(ns, name string, sick bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.sick[ns+"/"+name] = sick
}

func (b *upBackend) healthy(key string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return !b.sick[key]
}

// starts is how often a pod name's workload was started; running whether one runs now.
func (b *upBackend) state(ns, name string) (starts int, running bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	p := b.pods[ns+"/"+name]
	if p == nil {
		return 0, false
	}
	return p.starts, p.running != nil
}

func (b *upBackend) StartPod(_ context.Context, pod *corev1.Pod, podIP string) (kubelet.Workload, error) {
	key := pod.Namespace + "/" + pod.Name
	if len(pod.Spec.Containers) == 0 || len(pod.Spec.Containers[0].Ports) == 0 {
		return nil, fmt.Errorf("pod %s declares no container port", key)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/_up" {
			if !b.healthy(key) {
				w.WriteHeader(http.StatusServiceUnavailable)
			}
			return
		}
		fmt.Fprintf(w, "%s %s", pod.Name, podIP)
	}))
	b.mu.Lock()
	defer b.mu.Unlock()
	p := b.pods[key]
	if p == nil {
		p = &upPod{}
		b.pods[key] = p
	}
	if p.running != nil {
		srv.Close()
		return nil, fmt.Errorf("pod %s started twice", key)
	}
	p.starts++
	p.running = srv
	return &upWorkload{b: b, key: key, p: p, srv: srv, port: pod.Spec.Containers[0].Ports[0].ContainerPort}, nil
}

type upWorkload struct {
	b    *upBackend
	key  string
	p    *upPod
	srv  *httptest.Server
	port int32
}

var probeClient = &http.Client{}

func (w *upWorkload) Ready(ctx context.Context) bool {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, w.srv.URL+"/_up", nil)
	if err != nil {
		return false
	}
	resp, err := probeClient.Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

func (w *upWorkload) Ports() map[int32]string {
	return map[int32]string{w.port: w.srv.Listener.Addr().String()}
}

func (w *upWorkload) Stop() {
	w.srv.Close()
	w.b.mu.Lock()
	w.p.running = nil
	w.b.mu.Unlock()
	w.b.stops.Add(1)
}

var _ kubelet.Backend = (*upBackend)(nil)
