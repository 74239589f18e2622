package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"k8s.io/client-go/util/workqueue"
)

type workqueueMetrics struct {
	depth          *prometheus.GaugeVec
	adds           *prometheus.CounterVec
	latency        *prometheus.HistogramVec
	workDuration   *prometheus.HistogramVec
	unfinished     *prometheus.GaugeVec
	longestRunning *prometheus.GaugeVec
	retries        *prometheus.CounterVec
}

func newWorkqueueMetrics(f promauto.Factory) *workqueueMetrics {
	g := func(name, help string) *prometheus.GaugeVec {
		return f.NewGaugeVec(prometheus.GaugeOpts{Namespace: namespace, Subsystem: subsystem, Name: name, Help: help}, []string{"name"})
	}
	h := func(name, help string) *prometheus.HistogramVec {
		return f.NewHistogramVec(prometheus.HistogramOpts{Namespace: namespace, Subsystem: subsystem, Name: name, Help: help,
			Buckets: prometheus.ExponentialBuckets(10e-6, 4, 12)}, []string{"name"})
	}
	c := func(name, help string) *prometheus.CounterVec {
		return f.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Subsystem: subsystem, Name: name, Help: help}, []string{"name"})
	}
	return &workqueueMetrics{
		depth:          g("workqueue_depth", "Current depth of the workqueue."),
		adds:           c("workqueue_adds_total", "Adds handled by the workqueue."),
		latency:        h("workqueue_queue_duration_seconds", "Time an item stays in the workqueue before it is processed."),
		workDuration:   h("workqueue_work_duration_seconds", "Time processing an item from the workqueue takes."),
		unfinished:     g("workqueue_unfinished_work_seconds", "Seconds of work in progress not yet observed by work_duration."),
		longestRunning: g("workqueue_longest_running_processor_seconds", "Seconds the longest running processor has been running."),
		retries:        c("workqueue_retries_total", "Retries handled by the workqueue."),
	}
}

// WorkqueueProvider returns the provider to pass to workqueue.SetProvider before any queue exists.
func (r *Recorder) WorkqueueProvider() workqueue.MetricsProvider { return provider{r.workqueue} }

type provider struct{ m *workqueueMetrics }

func (p provider) NewDepthMetric(name string) workqueue.GaugeMetric {
	return p.m.depth.WithLabelValues(name)
}
func (p provider) NewAddsMetric(name string) workqueue.CounterMetric {
	return p.m.adds.WithLabelValues(name)
}
func (p provider) NewLatencyMetric(name string) workqueue.HistogramMetric {
	return p.m.latency.WithLabelValues(name)
}
func (p provider) NewWorkDurationMetric(name string) workqueue.HistogramMetric {
	return p.m.workDuration.WithLabelValues(name)
}
func (p provider) NewUnfinishedWorkSecondsMetric(name string) workqueue.SettableGaugeMetric {
	return p.m.unfinished.WithLabelValues(name)
}
func (p provider) NewLongestRunningProcessorSecondsMetric(name string) workqueue.SettableGaugeMetric {
	return p.m.longestRunning.WithLabelValues(name)
}
func (p provider) NewRetriesMetric(name string) workqueue.CounterMetric {
	return p.m.retries.WithLabelValues(name)
}
