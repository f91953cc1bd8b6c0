package e2e

import (
	"path/filepath"
	"strings"
	"testing"
)

// TestOneBatondPerStore starts a second batond on a store another one is
// using: it must refuse, naming the first one's pid, rather than schedule
// the same runs twice.
func TestOneBatondPerStore(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	second := start(t, "batond-second", nil, bins.batond,
		"--data-dir", filepath.Join(c.dir, "batond"), "--grpc-addr", "127.0.0.1:0", "--http-addr", "off")
	<-second.done
	if second.err == nil {
		t.Fatalf("a second batond on the same store started; want it refused")
	}
	log := second.logText()
	if !strings.Contains(log, "another batond (pid ") || !strings.Contains(log, "is using this store") {
		t.Errorf("second batond said %q; want it to name the running one", log)
	}
	// The first one is unaffected.
	if _, err := c.c.ListJobs(t.Context()); err != nil {
		t.Errorf("first batond after the refused start: %v", err)
	}
}
