package nodes

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
)

// tmpPrefix starts the names of files being written. Under the directory
// lock a file with this prefix is the leftover of a crash and is wiped.
const tmpPrefix = ".tmp-"

// ensureDir creates dir (and its parents) mode 0700 if missing; see
// checkDir for an existing one.
func ensureDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("nodes: key directory: %w", err)
	}
	return checkDir(dir)
}

// checkDir makes sure the key directory is closed to group and others, as
// Tor does with its DataDirectory: a directory of ours with a wider mode is
// set to 0700; one owned by another user is refused
// (ErrInsecurePermissions), as others could add or replace key files.
func checkDir(dir string) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("nodes: key directory: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("nodes: key directory %s is not a directory", dir)
	}
	m := fi.Mode().Perm()
	if m&0o077 == 0 {
		return nil
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); !ok || int(st.Uid) != os.Geteuid() {
		return fmt.Errorf("nodes: key directory %s has mode %04o and another owner: %w", dir, m, ErrInsecurePermissions)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return fmt.Errorf("nodes: key directory %s has mode %04o: %w", dir, m, err)
	}
	return nil
}

// lockDir takes an exclusive flock(2) on DIR/.lock, blocking until it is
// free. The lock serializes creating and deleting key files between
// goroutines and processes (flock locks belong to the open file, so two
// opens in one process exclude each other too).
func lockDir(dir string) (unlock func(), err error) { return lockFile(filepath.Join(dir, ".lock")) }

// readSecret reads a key file, refusing a symbolic link, a non-regular file
// and a mode with any group/other bit (checked on the open file, so the
// file checked is the file read).
func readSecret(path string) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		if errors.Is(err, syscall.ELOOP) {
			return nil, fmt.Errorf("nodes: key file %s is a symbolic link: %w", path, ErrInsecurePermissions)
		}
		return nil, fmt.Errorf("nodes: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("nodes: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("nodes: key file %s is not a regular file: %w", path, ErrInsecurePermissions)
	}
	if m := fi.Mode().Perm(); m&0o077 != 0 {
		return nil, fmt.Errorf("nodes: key file %s has mode %04o, readable or writable by group or others (run: chmod 600 %s): %w",
			path, m, path, ErrInsecurePermissions)
	}
	data, err := io.ReadAll(io.LimitReader(f, 64<<10))
	if err != nil {
		return nil, fmt.Errorf("nodes: %w", err)
	}
	return data, nil
}

// writeTemp writes data to a new file dir/.tmp-<random> with perm and
// syncs it.
func writeTemp(dir string, data []byte, perm os.FileMode) (string, error) {
	var rnd [8]byte
	rand.Read(rnd[:])
	tmp := filepath.Join(dir, tmpPrefix+hex.EncodeToString(rnd[:]))
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, perm)
	if err != nil {
		return "", err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(perm) // against a umask that removed bits of perm
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(tmp)
		return "", err
	}
	return tmp, nil
}

// writeNew creates dir/name holding data, mode 0600, complete or not at
// all; it fails with an error satisfying errors.Is(err, fs.ErrExist) if
// the name exists (link(2) never replaces).
func writeNew(dir, name string, data []byte) error {
	tmp, err := writeTemp(dir, data, 0o600)
	if err != nil {
		return fmt.Errorf("nodes: write %s: %w", name, err)
	}
	if err := os.Link(tmp, filepath.Join(dir, name)); err != nil {
		wipe(tmp)
		return fmt.Errorf("nodes: write %s: %w", name, err)
	}
	// tmp and name are now one inode: unlink tmp, never wipe it.
	if err := os.Remove(tmp); err != nil {
		return fmt.Errorf("nodes: write %s: %w", name, err)
	}
	return syncDir(dir)
}

// writeReplace replaces path with data atomically (temp file in the same
// directory, fsync, rename, fsync of the directory), mode perm.
func writeReplace(path string, data []byte, perm os.FileMode) error {
	dir := filepath.Dir(path)
	tmp, err := writeTemp(dir, data, perm)
	if err != nil {
		return fmt.Errorf("nodes: write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("nodes: write %s: %w", path, err)
	}
	return syncDir(dir)
}

// wipe overwrites a file with zeros, syncs it and unlinks it (a missing
// file is not an error). The directory is not synced: callers do it once.
func wipe(path string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|syscall.O_NOFOLLOW, 0)
	if err == nil {
		if fi, serr := f.Stat(); serr == nil && fi.Mode().IsRegular() {
			f.Write(make([]byte, fi.Size()))
			f.Sync()
		}
		f.Close()
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("nodes: delete %s: %w", path, err)
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("nodes: sync %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("nodes: sync %s: %w", dir, err)
	}
	return nil
}

func zero(b []byte) {
	for i := range b {
		b[i] = 0
	}
}

// lockFile takes an exclusive flock(2) on path (created 0600 if missing).
func lockFile(path string) (unlock func(), err error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, fmt.Errorf("nodes: lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("nodes: lock %s: %w", path, err)
	}
	return func() {
		syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}, nil
}
