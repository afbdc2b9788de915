package pluginclient

import "github.com/mixmta/mixmta/internal/wire"

// Batched reports how many calls and batches c sent on its Calls stream
// (0, 0 when it has none).
func Batched(c *Client) (calls, batches int64) { return c.Batched() }

// UsesRegion reports whether c sends bodies through a body region.
func UsesRegion(c *Client) bool { return c.region != nil }

// UsesReplyRegion reports whether c reads large replies from a reply
// region.
func UsesReplyRegion(c *Client) bool { return c.replies != nil }

// FreeSlots is the number of free body region slots of c, and how many
// there are.
func FreeSlots(c *Client) (free, all int) { return len(c.region.free), wire.RegionSlots }
