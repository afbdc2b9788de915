package sdk

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// The body region: shared memory (a memfd) the core creates for each
// plugin process and passes it at start, read-only. A batched call whose
// body fits a slot carries only the slot's number: the core writes the
// body there once, and the plugin reads it from its mapping instead of
// receiving it through gRPC (encoded, written to the socket in 16 KiB
// HTTP/2 frames, read, reassembled and decoded: four copies and most of
// a 64 KiB call's CPU on each side). The bytes in the region are what the
// plugin is sent anyway (only to a stage that declared a body need), in
// memory as they would be in gRPC's buffers; the queue's key and the
// sealed values at rest never leave the core.

// bodyRegionEnv names the variable that tells a plugin the descriptor of
// its body region.
const bodyRegionEnv = "MIXMTA_BODY_FD"

// regionSlots is the number of bodies in flight through the region per
// plugin (32, the core's workers at most); a call that finds no free slot
// sends its body inline.
const regionSlots = 32

// regionFD is the descriptor the region has in the plugin: the first of
// exec.Cmd.ExtraFiles.
const regionFD = 3

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
		return nil, nil, fmt.Errorf("sdk: body region: %w", err)
	}
	f := os.NewFile(uintptr(fd), "mixmta-bodies")
	if err := f.Truncate(regionSlots * inlineMax); err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("sdk: body region: %w", err)
	}
	// A new open file description, read-only: the plugin can neither
	// write the region nor map it writable.
	ro, err := os.OpenFile("/proc/self/fd/"+strconv.Itoa(fd), os.O_RDONLY, 0)
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("sdk: body region: %w", err)
	}
	r := &bodyRegion{f: f, free: make(chan int32, regionSlots)}
	for i := range int32(regionSlots) {
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
	off := int64(slot) * inlineMax
	if b != nil {
		_, err := r.f.WriteAt(b, off)
		return err
	}
	rd, err := open()
	if err != nil {
		return err
	}
	// A pooled copy buffer: io.CopyN would allocate 32 KiB per call.
	buf := bufPool.Get(64 << 10)
	defer bufPool.Put(buf)
	k, err := io.CopyBuffer(io.NewOffsetWriter(r.f, off), io.LimitReader(rd, n), *buf)
	if err == nil && k != n {
		err = io.ErrUnexpectedEOF
	}
	return err
}

func (r *bodyRegion) release(slot int32) { r.free <- slot }

func (r *bodyRegion) close() { r.f.Close() }

// pluginRegion is the plugin's read-only mapping of its body region, nil
// when the core passed none.
var pluginRegion []byte

// mapBodyRegion maps the region named by bodyRegionEnv, read-only. The
// mapping lives as long as the process.
func mapBodyRegion() error {
	v := os.Getenv(bodyRegionEnv)
	if v == "" {
		return nil
	}
	if v != strconv.Itoa(regionFD) {
		return fmt.Errorf("sdk: %s=%q: want %d", bodyRegionEnv, v, regionFD)
	}
	var st unix.Stat_t
	if err := unix.Fstat(regionFD, &st); err != nil {
		return fmt.Errorf("sdk: body region: %w", err)
	}
	if st.Size != regionSlots*inlineMax {
		return fmt.Errorf("sdk: body region of %d bytes, want %d", st.Size, regionSlots*inlineMax)
	}
	mem, err := unix.Mmap(regionFD, 0, int(st.Size), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return fmt.Errorf("sdk: body region: %w", err)
	}
	unix.Close(regionFD)
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
	if slot < 0 || slot >= regionSlots || n < 0 || n > inlineMax {
		return nil, fmt.Errorf("sdk: body slot %d of %d bytes out of range", slot1, n)
	}
	off := slot * inlineMax
	return pluginRegion[off : off+n : off+n], nil
}
