package pluginclient

import (
	"fmt"
	"io"
	"os"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/mixmta/mixmta/internal/wire"
)

// bodyRegion is the core's side of a region: it writes with pwrite (no
// mapping in the core, so stopping a plugin while a caller writes a body
// fails that write instead of faulting).
type bodyRegion struct {
	f    *os.File
	free chan int32
}

// newBodyRegion creates a region and the read-only descriptor to pass to
// the plugin (the caller closes it after the plugin started).
func newBodyRegion() (*bodyRegion, *os.File, error) {
	fd, err := unix.MemfdCreate("mixmta-bodies", unix.MFD_CLOEXEC)
	if err != nil {
		return nil, nil, fmt.Errorf("pluginclient: body region: %w", err)
	}
	f := os.NewFile(uintptr(fd), "mixmta-bodies")
	if err := f.Truncate(wire.RegionSlots * wire.InlineMax); err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("pluginclient: body region: %w", err)
	}
	// A new open file description, read-only: the plugin can neither
	// write the region nor map it writable.
	ro, err := os.OpenFile("/proc/self/fd/"+strconv.Itoa(fd), os.O_RDONLY, 0)
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("pluginclient: body region: %w", err)
	}
	r := &bodyRegion{f: f, free: make(chan int32, wire.RegionSlots)}
	for i := range int32(wire.RegionSlots) {
		r.free <- i
	}
	return r, ro, nil
}

// take returns a free slot; false when none is free (the caller sends the
// body inline).
func (r *bodyRegion) take() (int32, bool) {
	select {
	case slot := <-r.free:
		return slot, true
	default:
		return 0, false
	}
}

// write puts a body of n bytes in slot: b, or else what open returns.
// Errors: opening or reading the body (as is), writing the region.
func (r *bodyRegion) write(slot int32, b []byte, open func() (io.Reader, error), n int64) error {
	off := int64(slot) * wire.InlineMax
	if b != nil {
		_, err := r.f.WriteAt(b, off)
		return err
	}
	rd, err := open()
	if err != nil {
		return err
	}
	// A pooled copy buffer: io.CopyN would allocate 32 KiB per call.
	buf := wire.BufPool.Get(64 << 10)
	defer wire.BufPool.Put(buf)
	k, err := io.CopyBuffer(io.NewOffsetWriter(r.f, off), io.LimitReader(rd, n), *buf)
	if err == nil && k != n {
		err = io.ErrUnexpectedEOF
	}
	return err
}

func (r *bodyRegion) release(slot int32) { r.free <- slot }

func (r *bodyRegion) close() { r.f.Close() }

// replyRegion is the core's side of a reply region: the plugin writes a
// large reply to the slot of the call's body, the core reads it with
// pread (no mapping, as for bodyRegion).
type replyRegion struct{ f *os.File }

// newReplyRegion creates a reply region; the caller passes the returned
// file (the same descriptor: the plugin writes, the core reads) to the
// plugin and keeps the region.
func newReplyRegion() (*replyRegion, error) {
	fd, err := unix.MemfdCreate("mixmta-replies", unix.MFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("pluginclient: reply region: %w", err)
	}
	f := os.NewFile(uintptr(fd), "mixmta-replies")
	if err := f.Truncate(wire.RegionSlots * wire.InlineMax); err != nil {
		f.Close()
		return nil, fmt.Errorf("pluginclient: reply region: %w", err)
	}
	return &replyRegion{f: f}, nil
}

// read returns a copy of the n bytes the plugin wrote to slot. Errors: n
// out of range, reading the region.
func (r *replyRegion) read(slot int32, n int64) ([]byte, error) {
	if n < 0 || n > wire.InlineMax {
		return nil, fmt.Errorf("pluginclient: reply of %d bytes in the reply region", n)
	}
	b := make([]byte, n)
	if _, err := r.f.ReadAt(b, int64(slot)*wire.InlineMax); err != nil {
		return nil, fmt.Errorf("pluginclient: reply region: %w", err)
	}
	return b, nil
}

func (r *replyRegion) close() { r.f.Close() }
