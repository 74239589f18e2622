package couchtest

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"
)

// With pushes that take time (PushTime), a copy on a node in maintenance mode that mem3 keeps
// filling with the other copies' new writes has push checkpoints behind its update_seq whenever it
// is looked at while the writes go on, as on real CouchDB 3.4.3 under a write load, and they catch
// up once the writes stop.
func TestPushCheckpointsTrailUnderWriteLoad(t *testing.T) {
	ctx := context.Background()
	_, nodes, clients := formedThree(t, NetworkOptions{SyncDelay: 30 * time.Millisecond, PushTime: 40 * time.Millisecond, PasswordIterations: 10})
	api := clients[0]
	if err := api.CreateDB(ctx, "w", 1, 3); err != nil {
		t.Fatal(err)
	}
	drained, staying := nodes[2].Name(), nodes[0].Name()
	if _, err := api.SetMaintenanceMode(ctx, drained, "true"); err != nil {
		t.Fatal(err)
	}
	m, err := api.GetShardMap(ctx, "w")
	if err != nil {
		t.Fatal(err)
	}
	shard := m.ShardName(m.Ranges()[0])
	look := func() (seq, pushed int64) {
		t.Helper()
		src, err := api.ShardCopyInfo(ctx, drained, shard)
		if err != nil {
			t.Fatal(err)
		}
		dst, err := api.ShardCopyInfo(ctx, staying, shard)
		if err != nil {
			t.Fatal(err)
		}
		cps, err := api.ShardCheckpoints(ctx, drained, shard)
		if err != nil {
			t.Fatal(err)
		}
		for _, cp := range cps {
			if cp.SourceUUID == src.UUID && cp.TargetUUID == dst.UUID {
				pushed = max(pushed, cp.Seq)
			}
		}
		f, _ := src.UpdateSeq.(float64)
		return int64(f), pushed
	}
	put := func(id string) {
		req, _ := http.NewRequest(http.MethodPut, api.BaseURL()+"/w/"+id, strings.NewReader(`{"v":1}`))
		req.SetBasicAuth("admin", "s3cret")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	seq0, _ := look()
	looks, behind := 0, 0
	for i := 0; i < 300; i++ {
		put(fmt.Sprintf("d%04d", i))
		if i%10 == 0 {
			_ = api.SyncShards(ctx, "w") // as the controller does while a move waits
		}
		time.Sleep(3 * time.Millisecond)
		if seq, pushed := look(); seq > seq0 && i >= 100 {
			looks++
			if pushed < seq {
				behind++
			}
		}
	}
	if looks < 100 || behind*10 < looks*9 {
		t.Fatalf("the drained copy's checkpoint was behind its update_seq at %d of %d looks under writes, want at least 90%%", behind, looks)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		seq, pushed := look()
		if pushed >= seq && seq > seq0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the writes stopped, the checkpoint stayed at %d of update_seq %d", pushed, seq)
		}
		_ = api.SyncShards(ctx, "w")
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("checkpoint behind the update_seq at %d of %d looks under writes; caught up after", behind, looks)
}
