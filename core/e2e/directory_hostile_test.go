package e2e

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mixmta/mixmta/core/internal/config"
	"github.com/mixmta/mixmta/core/internal/mixnet/nodes"
)

// TestHostileAuthorityDocumentsDoNotCrashANode: a real mix node whose
// authority's address is answered by a hostile server (a malicious
// authority, or anyone on the path of the unauthenticated HTTP channel)
// that serves consensus documents with a null node, or with an epoch
// length that overflows: both were processed before any signature check
// and crashed the node. It refuses them, says why, and keeps running.
func TestHostileAuthorityDocumentsDoNotCrashANode(t *testing.T) {
	d := newDirNet(t, 2, 1, "127.0.0.1:9")
	var served atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost {
			w.WriteHeader(http.StatusNoContent)
			return
		}
		e, err := strconv.ParseUint(r.URL.Path[strings.LastIndexByte(r.URL.Path, '/')+1:], 10, 64)
		if err != nil || !strings.HasPrefix(r.URL.Path, "/v1/consensus/") {
			http.NotFound(w, r)
			return
		}
		va, vu := nodes.EpochStart(e, dirEpoch), nodes.EpochStart(e+2, dirEpoch)
		epochSeconds, list := int64(dirEpoch/time.Second), "[null]"
		if served.Add(1)%2 == 0 {
			epochSeconds, list = 9223372037, "[]"
		}
		fmt.Fprintf(w, `{"version":1,"epoch":%d,"valid_after":%q,"valid_until":%q,"params":{"epoch_seconds":%d,"packet_size":2048,"send_rate":1,"drop_rate":0,"loop_rate":0},"nodes":%s}`,
			e, va.Format(time.RFC3339), vu.Format(time.RFC3339), epochSeconds, list)
	}))
	defer srv.Close()
	b, _ := os.ReadFile(d.cfgs[1])
	b, err := config.Patch(b, map[string]any{"mix.directory.authorities.0.address": strings.TrimPrefix(srv.URL, "http://")})
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(d.cfgs[1], b, 0o600)
	d.start(t, 1)
	deadline := time.Now().Add(60 * time.Second)
	for served.Load() < 4 {
		if time.Now().After(deadline) {
			t.Fatalf("the node fetched %d documents within 60 s, want 4", served.Load())
		}
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(time.Second)
	log := d.nodes[1].log()
	if !greet(d.smtp[1]) || strings.Contains(log, "panic") {
		t.Fatalf("the node died on a hostile consensus:\n%s", tailLines(log, 30))
	}
	for _, want := range []string{"consensus refused", "a null node", "epoch_seconds 9223372037"} {
		if !strings.Contains(log, want) {
			t.Errorf("the node's log does not say %q:\n%s", want, tailLines(log, 30))
		}
	}
}
