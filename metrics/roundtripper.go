package metrics

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// InstrumentRoundTripper counts and times requests to CouchDB by method and code.
func (r *Recorder) InstrumentRoundTripper(next http.RoundTripper) http.RoundTripper {
	return promhttp.InstrumentRoundTripperCounter(r.couchRequests,
		promhttp.InstrumentRoundTripperDuration(r.couchDuration, next))
}
