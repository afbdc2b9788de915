package pluginclient_test

import (
	"context"
	"errors"
	"strings"
	"testing"

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
