package queue

import (
	"encoding/binary"
	"path/filepath"
	"syscall"
	"testing"
)

// vlogDiskBytes is the disk space the value-log files in dir occupy (what du
// reports: allocated blocks). The apparent size would mislead: badger
// preallocates the active value-log file sparsely to twice
// ValueLogFileSize (128 MiB) whatever it holds.
func vlogDiskBytes(t *testing.T, dir string) int64 {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*.vlog"))
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, f := range files {
		var st syscall.Stat_t
		if err := syscall.Stat(f, &st); err != nil {
			continue // deleted by GC since the Glob
		}
		n += st.Blocks * 512
	}
	return n
}

// numberedBody returns a body of size bytes that differs for every i, so a
// message whose content is lost or swapped for another is detected.
func numberedBody(i, size int) []byte {
	b := make([]byte, size)
	for off := 0; off+8 <= size; off += 8 {
		binary.BigEndian.PutUint64(b[off:], uint64(i)<<32|uint64(off))
	}
	return b
}
