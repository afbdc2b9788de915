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
func mapBodyRegion() (err error) {
	pluginRegion, err = mapRegion("body", wire.BodyRegionEnv, wire.RegionFD, unix.PROT_READ)
	return err
}

// mapRegion maps the region of kind ("body", "reply") whose descriptor
// variable env names (it must be fd) with protection prot; nil when env is
// not set.
func mapRegion(kind, env string, fd, prot int) ([]byte, error) {
	v := os.Getenv(env)
	if v == "" {
		return nil, nil
	}
	if v != strconv.Itoa(fd) {
		return nil, fmt.Errorf("sdk: %s=%q: want %d", env, v, fd)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, fmt.Errorf("sdk: %s region: %w", kind, err)
	}
	if st.Size != wire.RegionSlots*wire.InlineMax {
		return nil, fmt.Errorf("sdk: %s region of %d bytes, want %d", kind, st.Size, wire.RegionSlots*wire.InlineMax)
	}
	mem, err := unix.Mmap(fd, 0, int(st.Size), prot, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("sdk: %s region: %w", kind, err)
	}
	unix.Close(fd)
	return mem, nil
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
func mapReplyRegion() (err error) {
	pluginReplies, err = mapRegion("reply", wire.ReplyRegionEnv, wire.ReplyRegionFD, unix.PROT_READ|unix.PROT_WRITE)
	return err
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
