package e2e

import (
	"fmt"
	"sync"
	"testing"
	"time"
)

// writeThroughout writes new documents (db1/load-N) through pod 0 one after another until the
// returned stop is called, which returns the ids CouchDB acknowledged (201, or 202: stored, fewer
// copies than w yet). Every acknowledged write must stay readable: that is what "no acknowledged
// write lost" means to a user. It returns once warmUp writes were acknowledged, so the load is
// steady by then.
// warmUp is how many writes writeThroughout sees acknowledged before it returns.
const warmUp = 50

func writeThroughout(t *testing.T, s clusterSpec, ns string) (stop func() (acked []string, refused int)) {
	var (
		mu      sync.Mutex
		ids     []string
		refused int
	)
	quit, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; ; i++ {
			select {
			case <-quit:
				return
			default:
			}
			id := fmt.Sprintf("load-%05d", i)
			code, _ := rawDo(t, ns, podName(s, 0), s.password, "PUT", "/db1/"+id, `{"load":true}`)
			mu.Lock()
			if code == 201 || code == 202 {
				ids = append(ids, id)
			} else {
				refused++
			}
			mu.Unlock()
			time.Sleep(10 * time.Millisecond) // pacing: a steady load, not a flood
		}
	}()
	// The load is running before the caller starts what it measures: a drain can now finish in less
	// than a second, and one measured from the writer's first request could see no load at all.
	deadline := time.Now().Add(30 * time.Second)
	for {
		mu.Lock()
		n := len(ids)
		mu.Unlock()
		if n >= warmUp || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	return func() ([]string, int) {
		close(quit)
		<-done
		mu.Lock()
		defer mu.Unlock()
		return ids, refused
	}
}
