package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

func metricHasLabel(m prometheus.Metric, name, value string) bool {
	var pb dto.Metric
	if err := m.Write(&pb); err != nil {
		return false
	}
	for _, l := range pb.GetLabel() {
		if l.GetName() == name && l.GetValue() == value {
			return true
		}
	}
	return false
}

// collected returns the per-cluster series of desc.
func collected(r *Recorder, desc *prometheus.Desc) []prometheus.Metric {
	ch := make(chan prometheus.Metric, 1000)
	r.clusters.Collect(ch)
	close(ch)
	var out []prometheus.Metric
	for m := range ch {
		if m.Desc() == desc {
			out = append(out, m)
		}
	}
	return out
}
