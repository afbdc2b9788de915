package pluginclient

import (
	"bytes"
	"io"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/mixmta/mixmta/internal/wire"
)

// TestBodyRegionIsReadOnlyToThePlugin: the descriptor a plugin gets can
// neither write the region nor map it writable, while a read-only mapping
// sees what the core wrote into a slot.
func TestBodyRegionIsReadOnlyToThePlugin(t *testing.T) {
	r, ro, err := newBodyRegion()
	if err != nil {
		t.Fatal(err)
	}
	defer r.close()
	defer ro.Close()
	if _, err := ro.Write([]byte("x")); err == nil {
		t.Fatal("the plugin's descriptor is writable")
	}
	if m, err := unix.Mmap(int(ro.Fd()), 0, wire.InlineMax, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED); err == nil {
		unix.Munmap(m)
		t.Fatal("the plugin's descriptor maps writable")
	}
	mem, err := unix.Mmap(int(ro.Fd()), 0, wire.RegionSlots*wire.InlineMax, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(mem)
	slot, ok := r.take()
	if !ok {
		t.Fatal("no free slot in a new region")
	}
	body := bytes.Repeat([]byte("body "), 1000)
	open := func() (io.Reader, error) { return bytes.NewReader(body), nil }
	if err := r.write(slot, nil, open, int64(len(body))); err != nil {
		t.Fatal(err)
	}
	off := int(slot) * wire.InlineMax
	if !bytes.Equal(mem[off:off+len(body)], body) {
		t.Fatal("the mapping does not show the body written into the slot")
	}
	// A body shorter than announced is an error, not a short call.
	if err := r.write(slot, nil, open, int64(len(body))+1); err == nil {
		t.Fatal("a truncated body was accepted")
	}
}
