package sdk

import (
	"errors"
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/mixmta/mixmta/internal/wire"
)

// The plugin's side of the body region (its layout is in internal/wire):
// the mapping a batched call's body is read from.

// pluginRegion is the plugin's read-only mapping of its body region, nil
// when the core passed none.
var pluginRegion []byte

// mapBodyRegion maps the region named by wire.BodyRegionEnv, read-only. The
// mapping lives as long as the process.
func mapBodyRegion() error {
	v := os.Getenv(wire.BodyRegionEnv)
	if v == "" {
		return nil
	}
	if v != strconv.Itoa(wire.RegionFD) {
		return fmt.Errorf("sdk: %s=%q: want %d", wire.BodyRegionEnv, v, wire.RegionFD)
	}
	var st unix.Stat_t
	if err := unix.Fstat(wire.RegionFD, &st); err != nil {
		return fmt.Errorf("sdk: body region: %w", err)
	}
	if st.Size != wire.RegionSlots*wire.InlineMax {
		return fmt.Errorf("sdk: body region of %d bytes, want %d", st.Size, wire.RegionSlots*wire.InlineMax)
	}
	mem, err := unix.Mmap(wire.RegionFD, 0, int(st.Size), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return fmt.Errorf("sdk: body region: %w", err)
	}
	unix.Close(wire.RegionFD)
	pluginRegion = mem
	return nil
}

// regionBody returns the n bytes in slot (1-based, as on the wire) of the
// plugin's region, valid until the call's reply. Errors: no region, a slot
// or length out of range.
func regionBody(slot1 int32, n int64) ([]byte, error) {
	slot := int64(slot1) - 1
	if pluginRegion == nil {
		return nil, errors.New("sdk: body in a region, but none is mapped")
	}
	if slot < 0 || slot >= wire.RegionSlots || n < 0 || n > wire.InlineMax {
		return nil, fmt.Errorf("sdk: body slot %d of %d bytes out of range", slot1, n)
	}
	off := slot * wire.InlineMax
	return pluginRegion[off : off+n : off+n], nil
}

// pluginReplies is the plugin's writable mapping of its reply region, nil
// when the core passed none.
var pluginReplies []byte

// mapReplyRegion maps the region named by wire.ReplyRegionEnv, writable.
// The mapping lives as long as the process.
func mapReplyRegion() error {
	v := os.Getenv(wire.ReplyRegionEnv)
	if v == "" {
		return nil
	}
	if v != strconv.Itoa(wire.ReplyRegionFD) {
		return fmt.Errorf("sdk: %s=%q: want %d", wire.ReplyRegionEnv, v, wire.ReplyRegionFD)
	}
	var st unix.Stat_t
	if err := unix.Fstat(wire.ReplyRegionFD, &st); err != nil {
		return fmt.Errorf("sdk: reply region: %w", err)
	}
	if st.Size != wire.RegionSlots*wire.InlineMax {
		return fmt.Errorf("sdk: reply region of %d bytes, want %d", st.Size, wire.RegionSlots*wire.InlineMax)
	}
	mem, err := unix.Mmap(wire.ReplyRegionFD, 0, int(st.Size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return fmt.Errorf("sdk: reply region: %w", err)
	}
	unix.Close(wire.ReplyRegionFD)
	pluginReplies = mem
	return nil
}

// replySlot returns slot (1-based, as on the wire) of the plugin's reply
// region, wire.InlineMax bytes, or nil when there is no such slot (no
// region, slot 0: the call's body was inline).
func replySlot(slot1 int32) []byte {
	slot := int64(slot1) - 1
	if pluginReplies == nil || slot < 0 || slot >= wire.RegionSlots {
		return nil
	}
	off := slot * wire.InlineMax
	return pluginReplies[off : off+wire.InlineMax : off+wire.InlineMax]
}
