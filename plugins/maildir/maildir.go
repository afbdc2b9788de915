package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/hashicorp/go-hclog"

	"github.com/mixmta/mixmta/sdk"
	"github.com/mixmta/mixmta/sdk/address"
)

// Layouts: where under the root a recipient's Maildir is.
const (
	layoutRecipient = "recipient" // ROOT/<domain>/<local part>/
	layoutDomain    = "domain"    // ROOT/<domain>/
	layoutSingle    = "single"    // ROOT/
)

// maildir is the stage value. It is safe for concurrent use.
type maildir struct {
	cfg   Config
	log   hclog.Logger
	root  *os.Root // every file operation goes through it: no path escapes
	local map[string]bool
	host  string // sanitized host name for file names
	pid   int
	seq   atomic.Uint64
	made  sync.Map // relative maildir path -> true once tmp/new/cur exist
	ops   fsOps
}

// fsOps are the durability steps, replaceable in tests to inject failures
// and observe their order.
type fsOps struct {
	syncFile func(*os.File) error // fsync the message file in tmp/
	syncDir  func(*os.File) error // fsync new/ after the link
}

var realOps = fsOps{
	syncFile: (*os.File).Sync,
	syncDir:  (*os.File).Sync,
}

var _ sdk.Deliverer = (*maildir)(nil)

// newMaildir opens (creating it 0700 if missing) the root directory.
func newMaildir(cfg Config, log hclog.Logger) (*maildir, error) {
	if log == nil {
		log = hclog.NewNullLogger()
	}
	if err := os.MkdirAll(cfg.Path, 0o700); err != nil {
		return nil, fmt.Errorf("maildir: path: %w", err)
	}
	root, err := os.OpenRoot(cfg.Path)
	if err != nil {
		return nil, fmt.Errorf("maildir: path: %w", err)
	}
	m := &maildir{cfg: cfg, log: log, root: root, pid: os.Getpid(), ops: realOps}
	if len(cfg.LocalDomains) > 0 {
		m.local = map[string]bool{}
		for _, d := range cfg.LocalDomains {
			a, err := address.ToASCII(d)
			if err != nil {
				return nil, sdk.FieldErrorf("local_domains", "%q: %v", d, err)
			}
			m.local[a] = true
		}
	}
	h, _ := os.Hostname()
	m.host = sanitizeHost(h)
	return m, nil
}

// Deliver writes m into the Maildir of each recipient (one file per
// distinct Maildir; with add_delivered_to one per recipient, since each
// copy then differs). A file counts as delivered once it is fsync'd in
// tmp/, linked into new/ and new/ is fsync'd (Maildir protocol,
// cr.yp.to/proto/maildir.html). The bytes are header then body exactly as
// given, CRLF line endings included. Errors: a recipient outside
// local_domains is permanent 550 5.1.2; an address that cannot be a safe
// path (see recipientDir) permanent 553 5.1.3; a full disk 452 4.3.1, a
// quota 452 4.2.2, any other I/O error temporary 451 4.3.0. The returned
// error is always nil.
func (m *maildir) Deliver(ctx context.Context, msg *sdk.Message) ([]sdk.RcptResult, error) {
	var results []sdk.RcptResult
	type job struct {
		dir   string
		rcpts []string
	}
	var jobs []*job
	byDir := map[string]*job{}
	seen := map[string]bool{}
	for _, r := range msg.Envelope.RcptTo {
		if seen[r] {
			continue
		}
		seen[r] = true
		dir, err := m.recipientDir(r)
		if err != nil {
			m.log.Debug("recipient refused", "rcpt", r, "error", err)
			results = append(results, sdk.RcptResult{Rcpt: r, Err: err})
			continue
		}
		key := dir
		if m.cfg.AddDeliveredTo {
			key = dir + "\x00" + r
		}
		j := byDir[key]
		if j == nil {
			j = &job{dir: dir}
			byDir[key] = j
			jobs = append(jobs, j)
		}
		j.rcpts = append(j.rcpts, r)
	}
	body := &bodySource{mem: msg.Body}
	if msg.Body == nil && msg.OpenBody != nil {
		// The body streams in once: one Maildir file is written from the
		// stream in bounded memory; several need it kept in memory.
		var err error
		if len(jobs) > 1 {
			body.mem, err = msg.ReadBody()
		} else {
			body.stream, err = msg.OpenBody()
		}
		if err != nil {
			err = sdk.Temporary(451, "4.3.0", "maildir: reading the message: %v", err)
			for _, j := range jobs {
				for _, r := range j.rcpts {
					results = append(results, sdk.RcptResult{Rcpt: r, Err: err})
				}
			}
			return results, nil
		}
	}
	for _, j := range jobs {
		var err error
		if ctx.Err() != nil {
			err = sdk.Temporary(451, "4.3.0", "maildir: delivery canceled")
		} else {
			var prefix []byte
			if m.cfg.AddDeliveredTo {
				prefix = []byte("Delivered-To: " + j.rcpts[0] + "\r\n")
			}
			var name string
			name, err = m.write(j.dir, prefix, msg.Header, body)
			if err == nil {
				m.log.Debug("delivered", "dir", j.dir, "file", name)
			} else {
				m.log.Debug("delivery failed", "dir", j.dir, "error", err)
			}
		}
		for _, r := range j.rcpts {
			results = append(results, sdk.RcptResult{Rcpt: r, Err: err})
		}
	}
	return results, nil
}

// recipientDir maps a recipient address to its Maildir path relative to
// the root, per the layout. The address must be an RFC 5321 mailbox
// (sdk/address; a trailing dot on the domain is allowed) with a domain
// name, not an address literal; the domain becomes a lower-case IDNA
// A-label, so no "/", "." component or ".." survives in it. The local
// part (unquoted) is lower-cased and must be 1-64 octets of printable
// UTF-8 without "/", "\", '"', a space or NUL and must not start with
// "." (so "..", ".", and hidden names are impossible). Anything else is
// refused, never rewritten: 553 5.1.3.
func (m *maildir) recipientDir(addr string) (string, error) {
	mb, err := address.Parse(strings.TrimSuffix(addr, "."), true)
	if err != nil {
		return "", sdk.Permanent(553, "5.1.3", "maildir: recipient is not a valid address: %v", err)
	}
	if address.IsLiteral(mb.Domain) {
		return "", sdk.Permanent(553, "5.1.3", "maildir: recipient domain is an address literal, not a domain name")
	}
	domain := mb.ASCIIDomain()
	if m.local != nil && !m.local[domain] {
		return "", sdk.Permanent(550, "5.1.2", "maildir: recipient domain is not a local domain")
	}
	switch m.cfg.Layout {
	case layoutSingle:
		return ".", nil
	case layoutDomain:
		return domain, nil
	}
	local, err := localPart(mb.Local)
	if err != nil {
		return "", sdk.Permanent(553, "5.1.3", "maildir: recipient local part %v", err)
	}
	return domain + "/" + local, nil
}

// localPart checks and lower-cases a local part for use as one path
// component.
func localPart(s string) (string, error) {
	switch {
	case s == "":
		return "", errors.New("is empty")
	case len(s) > 64: // RFC 5321 §4.5.3.1.1
		return "", errors.New("is longer than 64 octets")
	case !utf8.ValidString(s):
		return "", errors.New("is not valid UTF-8")
	case s[0] == '.':
		return "", errors.New("starts with a dot")
	}
	for _, r := range s {
		if r == '/' || r == '\\' || r == '"' || !unicode.IsPrint(r) || r == ' ' {
			return "", fmt.Errorf("contains %q", r)
		}
	}
	return strings.ToLower(s), nil
}

// sanitizeHost makes a host name safe inside a Maildir file name: "/" and
// ":" (and "," which Maildir++ uses) become octal escapes, as the spec says.
func sanitizeHost(h string) string {
	if h == "" {
		h = "localhost"
	}
	r := strings.NewReplacer("/", `\057`, ":", `\072`, ",", `\054`)
	return r.Replace(h)
}

// uniqueName returns a new Maildir file name:
// <sec>.M<usec>P<pid>Q<n>R<random>.<host> (the modern form of the spec:
// time, process, per-process counter and 64 random bits).
func (m *maildir) uniqueName() string {
	now := time.Now()
	var rnd [8]byte
	_, _ = rand.Read(rnd[:])
	return fmt.Sprintf("%d.M%dP%dQ%dR%s.%s", now.Unix(), now.Nanosecond()/1000, m.pid, m.seq.Add(1), hex.EncodeToString(rnd[:]), m.host)
}

// ensure creates dir/{tmp,new,cur} (mode 0700, parents too) once, and
// fsyncs the directories from dir up to the root if it created any, so the
// new entries survive a crash.
func (m *maildir) ensure(dir string) error {
	if _, ok := m.made.Load(dir); ok {
		return nil
	}
	created := false
	for _, sub := range []string{"tmp", "new", "cur"} {
		p := path.Join(dir, sub)
		if _, err := m.root.Stat(p); err == nil {
			continue
		}
		if err := m.root.MkdirAll(p, 0o700); err != nil {
			return err
		}
		created = true
	}
	if created {
		for d := dir; ; d = path.Dir(d) {
			if err := m.syncDirPath(d); err != nil {
				return err
			}
			if d == "." {
				break
			}
		}
	}
	m.made.Store(dir, true)
	return nil
}

func (m *maildir) syncDirPath(dir string) error {
	f, err := m.root.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return m.ops.syncDir(f)
}

// write stores prefix+header+body as one new message in the Maildir dir
// and returns its file name: create tmp/NAME exclusively (0600), write,
// fsync, close; link it to new/NAME (a link never overwrites), unlink
// tmp/NAME, fsync new/. The message counts as delivered only after all of
// it. On any error nothing is left in new/.
func (m *maildir) write(dir string, prefix, header []byte, body *bodySource) (string, error) {
	if err := m.ensure(dir); err != nil {
		return "", ioError(err)
	}
	for attempt := 0; ; attempt++ {
		name := m.uniqueName()
		tmp, fresh := path.Join(dir, "tmp", name), path.Join(dir, "new", name)
		f, err := m.root.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if errors.Is(err, fs.ErrExist) && attempt < 3 {
			continue
		}
		if errors.Is(err, fs.ErrNotExist) && attempt == 0 {
			// The Maildir was removed behind our back: make it again.
			m.made.Delete(dir)
			if err := m.ensure(dir); err != nil {
				return "", ioError(err)
			}
			continue
		}
		if err != nil {
			return "", ioError(err)
		}
		err = writeAll(f, prefix, header)
		if err == nil {
			err = body.writeTo(f)
		}
		if err == nil {
			err = m.ops.syncFile(f)
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err == nil {
			err = m.root.Link(tmp, fresh)
			if errors.Is(err, fs.ErrExist) && attempt < 3 {
				_ = m.root.Remove(tmp)
				continue
			}
		}
		if err != nil {
			_ = m.root.Remove(tmp)
			return "", ioError(err)
		}
		_ = m.root.Remove(tmp)
		if err := m.syncDirPath(path.Join(dir, "new")); err != nil {
			// Not durable: take it back so a retry cannot duplicate it.
			_ = m.root.Remove(fresh)
			return "", ioError(err)
		}
		return name, nil
	}
}

// bodySource is the body a delivery writes: in memory, or a stream that
// can be written once.
type bodySource struct {
	mem    []byte
	stream io.Reader
	used   bool
}

var errStreamUsed = sdk.Temporary(451, "4.3.0", "maildir: the message stream was already written once; retry")

func (b *bodySource) writeTo(f *os.File) error {
	if b.stream == nil {
		_, err := f.Write(b.mem)
		return err
	}
	if b.used {
		return errStreamUsed
	}
	b.used = true
	_, err := io.Copy(f, b.stream)
	return err
}

func writeAll(f *os.File, parts ...[]byte) error {
	for _, p := range parts {
		if _, err := f.Write(p); err != nil {
			return err
		}
	}
	return nil
}

// ioError classifies a file system error. The message names no path.
func ioError(err error) error {
	switch {
	case errors.Is(err, syscall.ENOSPC):
		return sdk.Temporary(452, "4.3.1", "maildir: no space left on device")
	case errors.Is(err, syscall.EDQUOT):
		return sdk.Temporary(452, "4.2.2", "maildir: disk quota exceeded")
	case errors.Is(err, fs.ErrPermission):
		return sdk.Temporary(451, "4.3.0", "maildir: permission denied")
	}
	var pe *fs.PathError
	var le *os.LinkError
	switch {
	case errors.As(err, &pe):
		return sdk.Temporary(451, "4.3.0", "maildir: %s failed: %v", pe.Op, pe.Err)
	case errors.As(err, &le):
		return sdk.Temporary(451, "4.3.0", "maildir: %s failed: %v", le.Op, le.Err)
	}
	return sdk.Temporary(451, "4.3.0", "maildir: %v", err)
}
