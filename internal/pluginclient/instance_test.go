package pluginclient_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/mixmta/mixmta/internal/pluginclient"
	"github.com/mixmta/mixmta/sdk"
)

// TestInstancesInOneProcessKeepTheirOwnConfig: two stage instances in one
// plugin process, configured differently, each reject what their own
// config says, on framed and batched calls alike, and a call naming no
// instance goes to the process's own (the one Launch configured).
func TestInstancesInOneProcessKeepTheirOwnConfig(t *testing.T) {
	for _, noBatch := range []bool{false, true} {
		c, err := pluginclient.Launch(pluginclient.LaunchOptions{Path: echoBin, NoBatch: noBatch})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(c.Kill)
		if !c.Instances() {
			t.Fatal("the SDK's plugin does not report stage instances")
		}
		ctx := context.Background()
		a, err := c.Instance("a")
		if err != nil {
			t.Fatal(err)
		}
		b, err := c.Instance("b")
		if err != nil {
			t.Fatal(err)
		}
		for _, x := range []struct {
			c   *pluginclient.Client
			cfg string
		}{{c, `{"reject":"zero"}`}, {a, `{"reject":"alpha"}`}, {b, `{"reject":"beta"}`}} {
			if err := x.c.Configure(ctx, "s", []byte(x.cfg)); err != nil {
				t.Fatal(err)
			}
		}
		// The instances use the process's body and reply regions (a Mix
		// instance without the reply region would copy every packet back
		// through the call).
		for _, p := range []*pluginclient.Client{a, b} {
			if pluginclient.UsesRegion(p) != !noBatch || pluginclient.UsesReplyRegion(p) != !noBatch {
				t.Fatalf("noBatch=%v: instance body region %v, reply region %v", noBatch, pluginclient.UsesRegion(p), pluginclient.UsesReplyRegion(p))
			}
		}
		if a.Pid() != c.Pid() || b.Pid() != c.Pid() {
			t.Fatalf("instances in pids %d and %d, process %d", a.Pid(), b.Pid(), c.Pid())
		}
		check := func(p *pluginclient.Client, rcpt string) bool {
			err := p.Check(ctx, &sdk.Message{Envelope: sdk.Envelope{RcptTo: []string{rcpt}}})
			if err != nil && !sdk.IsPermanent(err) {
				t.Fatalf("check %s: %v", rcpt, err)
			}
			return err == nil
		}
		for i, p := range []*pluginclient.Client{c, a, b} {
			for j, rcpt := range []string{"zero@x", "alpha@x", "beta@x"} {
				if got, want := check(p, rcpt), i != j; got != want {
					t.Errorf("noBatch=%v: instance %d accepts %s: %v, want %v", noBatch, i, rcpt, got, want)
				}
			}
		}
		// An instance never configured is not served by another's stage.
		n, err := c.Instance("never")
		if err != nil {
			t.Fatal(err)
		}
		err = n.Check(ctx, &sdk.Message{Envelope: sdk.Envelope{RcptTo: []string{"x@x"}}})
		var se *sdk.Error
		if !errors.As(err, &se) || !strings.Contains(se.Message, "not configured") {
			t.Errorf("noBatch=%v: unconfigured instance: %v, want stage not configured", noBatch, err)
		}
	}
}

// TestClosedInstanceKeepsItsSlotsLentWhileTheProcessLives: a stage
// instance closed while the plugin still delivers a body from a body
// region slot does not free that slot: the process lives on for its other
// instances, and one of them taking the slot would overwrite the body
// being delivered with another message's.
func TestClosedInstanceKeepsItsSlotsLentWhileTheProcessLives(t *testing.T) {
	c, err := pluginclient.Launch(pluginclient.LaunchOptions{Path: echoBin})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Kill)
	ctx := context.Background()
	a, err := c.Instance("a")
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Configure(ctx, "a", []byte(`{"slow":"slow"}`)); err != nil {
		t.Fatal(err)
	}
	free, all := pluginclient.FreeSlots(c)
	if free != all {
		t.Fatalf("%d of %d slots free before the call", free, all)
	}
	done := make(chan error, 1)
	go func() {
		_, err := a.Deliver(ctx, &sdk.Message{Envelope: sdk.Envelope{RcptTo: []string{"slow@x"}}, Body: bytes.Repeat([]byte("b"), 4096)})
		done <- err
	}()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if f, _ := pluginclient.FreeSlots(c); f == all-1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the slow delivery never took a body region slot")
		}
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond) // the call reaches the plugin
	a.Close()
	if err := <-done; err == nil {
		t.Fatal("the call of a closed instance did not fail")
	}
	// The plugin is still in the 3 s Deliver reading that slot.
	if f, _ := pluginclient.FreeSlots(c); f != all-1 {
		t.Fatalf("after the instance closed, %d of %d slots free: the slot the plugin still reads was freed", f, all)
	}
}
