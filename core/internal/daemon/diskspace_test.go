package daemon

import "testing"

// TestSMTPLeavesRoomForTheMixnet: on a mix node SMTP fills at most three
// quarters of queue.max_items, always at least one item below it (from 2
// on), so that mail waiting to enter the mixnet alone never reaches the
// limit at which the node refuses packets from its links.
func TestSMTPLeavesRoomForTheMixnet(t *testing.T) {
	for _, c := range []struct{ max, want int64 }{
		{1, 1}, {2, 1}, {3, 2}, {4, 3}, {7, 6}, {8, 6}, {100, 75}, {1000, 750},
	} {
		if got := smtpLimit(c.max); got != c.want {
			t.Errorf("smtpLimit(%d) = %d, want %d", c.max, got, c.want)
		}
		if c.max >= 2 && smtpLimit(c.max) >= c.max {
			t.Errorf("smtpLimit(%d) leaves no room for the mixnet", c.max)
		}
	}
}
