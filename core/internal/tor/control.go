// Package tor makes Tor a component of mixmta: a client of tor's control
// protocol, a tor process that mixmta starts and supervises (managed
// mode), the one SOCKS5 dialer every outbound connection goes through when
// Tor is configured, and onion services published with ADD_ONION.
//
// The control-port client is written here on net/textproto rather than
// taken from a library: github.com/cretz/bine, the Go library for it, has
// had no commit since 2022 (go.mod go 1.15), and mixmta needs a handful
// of commands of a line-based protocol (PROTOCOLINFO, AUTHENTICATE,
// GETINFO, SETEVENTS, ADD_ONION, TAKEOWNERSHIP), which fit in this file.
package tor

import (
	"bufio"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/textproto"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Auth says how to authenticate to a ControlPort (control-spec §3.5).
type Auth struct {
	// CookieFile is the authentication cookie (CookieAuthentication 1).
	// Empty with an empty Password: the path tor names in PROTOCOLINFO.
	CookieFile string
	// Password for HashedControlPassword.
	Password string
}

// Control is a connection to tor's ControlPort (control-spec, torspec).
// Commands are serialised; asynchronous events (650) are dropped unless
// a command is waiting for them (WaitEvent).
type Control struct {
	mu     sync.Mutex
	conn   net.Conn
	r      *textproto.Reader
	events []string
}

// ErrControl wraps a reply of tor other than 250: the command was
// understood and refused (bad key, unknown option, ...).
var ErrControl = errors.New("tor control")

// DialControl connects to addr ("host:port" or "unix:/path") and
// authenticates. The timeout bounds connect and authentication.
func DialControl(addr string, auth Auth, timeout time.Duration) (*Control, error) {
	network, a := "tcp", addr
	if p, ok := strings.CutPrefix(addr, "unix:"); ok {
		network, a = "unix", p
	}
	conn, err := net.DialTimeout(network, a, timeout)
	if err != nil {
		return nil, fmt.Errorf("tor control %s: %w", addr, err)
	}
	c := &Control{conn: conn, r: textproto.NewReader(bufio.NewReader(conn))}
	if err := c.authenticate(auth, timeout); err != nil {
		conn.Close()
		return nil, fmt.Errorf("tor control %s: %w", addr, err)
	}
	return c, nil
}

func (c *Control) authenticate(auth Auth, timeout time.Duration) error {
	if auth.Password != "" {
		_, err := c.cmd("AUTHENTICATE "+quote(auth.Password), timeout)
		return err
	}
	cookieFile := auth.CookieFile
	if cookieFile == "" {
		lines, err := c.cmd("PROTOCOLINFO 1", timeout)
		if err != nil {
			return err
		}
		methods := ""
		for _, l := range lines {
			if v, ok := strings.CutPrefix(l, "AUTH METHODS="); ok {
				methods, _, _ = strings.Cut(v, " ")
				if _, f, ok := strings.Cut(v, "COOKIEFILE="); ok {
					cookieFile, _ = unquote(f)
				}
			}
		}
		if hasMethod(methods, "NULL") {
			_, err := c.cmd("AUTHENTICATE", timeout)
			return err
		}
		if cookieFile == "" {
			return fmt.Errorf("tor offers auth methods %q: set a password or a cookie file", methods)
		}
	}
	cookie, err := os.ReadFile(cookieFile)
	if err != nil {
		return fmt.Errorf("cookie: %w", err)
	}
	_, err = c.cmd("AUTHENTICATE "+hex.EncodeToString(cookie), timeout)
	return err
}

func hasMethod(list, x string) bool {
	for _, m := range strings.Split(list, ",") {
		if m == x {
			return true
		}
	}
	return false
}

// Close ends the connection. Onion services added without Detach end
// with it; a tor that took ownership (TakeOwnership) exits.
func (c *Control) Close() error { return c.conn.Close() }

// Cmd sends one command and returns the reply lines without their status
// prefix. A reply other than 250 is an error wrapping ErrControl.
func (c *Control) Cmd(line string) ([]string, error) {
	return c.cmd(line, 30*time.Second)
}

func (c *Control) cmd(line string, timeout time.Duration) ([]string, error) {
	if strings.ContainsAny(line, "\r\n") {
		return nil, errors.New("tor control: line break in command")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	_ = c.conn.SetDeadline(time.Now().Add(timeout))
	if _, err := fmt.Fprintf(c.conn, "%s\r\n", line); err != nil {
		return nil, err
	}
	for {
		code, lines, err := c.reply()
		if err != nil {
			return nil, err
		}
		if code == 650 {
			c.events = append(c.events, strings.Join(lines, "\n"))
			continue
		}
		if code != 250 {
			verb, _, _ := strings.Cut(line, " ")
			return nil, fmt.Errorf("%w: %s: %d %s", ErrControl, verb, code, strings.Join(lines, " "))
		}
		return lines, nil
	}
}

// WaitEvent returns the first asynchronous event (requested with
// SETEVENTS) for which match is true, without its "650 " prefix; others
// are discarded. It fails after timeout.
func (c *Control) WaitEvent(match func(string) bool, timeout time.Duration) (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for len(c.events) > 0 {
		ev := c.events[0]
		c.events = c.events[1:]
		if match(ev) {
			return ev, nil
		}
	}
	_ = c.conn.SetDeadline(time.Now().Add(timeout))
	for {
		code, lines, err := c.reply()
		if err != nil {
			return "", err
		}
		if ev := strings.Join(lines, "\n"); code == 650 && match(ev) {
			return ev, nil
		}
	}
}

// reply reads one reply (control-spec §2.3): "NNN-text" lines, "NNN+text"
// followed by a dot-terminated data block, and a final "NNN text".
func (c *Control) reply() (int, []string, error) {
	var lines []string
	for {
		l, err := c.r.ReadLine()
		if err != nil {
			return 0, nil, err
		}
		if len(l) < 4 {
			return 0, nil, fmt.Errorf("tor control: malformed line %q", l)
		}
		code, err := strconv.Atoi(l[:3])
		if err != nil {
			return 0, nil, fmt.Errorf("tor control: malformed line %q", l)
		}
		switch l[3] {
		case '-':
			lines = append(lines, l[4:])
		case '+':
			data, err := c.r.ReadDotLines()
			if err != nil {
				return 0, nil, err
			}
			lines = append(lines, l[4:]+"\n"+strings.Join(data, "\n"))
		case ' ':
			return code, append(lines, l[4:]), nil
		default:
			return 0, nil, fmt.Errorf("tor control: malformed line %q", l)
		}
	}
}

// GetInfo returns the value of one GETINFO key (control-spec §3.9).
func (c *Control) GetInfo(key string) (string, error) {
	lines, err := c.Cmd("GETINFO " + key)
	if err != nil {
		return "", err
	}
	for _, l := range lines {
		if v, ok := strings.CutPrefix(l, key+"="); ok {
			return strings.TrimPrefix(v, "\n"), nil
		}
	}
	return "", fmt.Errorf("%w: GETINFO %s: no value in %q", ErrControl, key, lines)
}

// Bootstrapped returns tor's bootstrap progress in percent (0-100) from
// GETINFO status/bootstrap-phase.
func (c *Control) Bootstrapped() (int, error) {
	v, err := c.GetInfo("status/bootstrap-phase")
	if err != nil {
		return 0, err
	}
	for _, f := range strings.Fields(v) {
		if p, ok := strings.CutPrefix(f, "PROGRESS="); ok {
			return strconv.Atoi(p)
		}
	}
	return 0, fmt.Errorf("%w: bootstrap phase without PROGRESS: %q", ErrControl, v)
}

// quote makes a control-protocol QuotedString.
func quote(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`)
	return `"` + r.Replace(s) + `"`
}

// unquote reads a QuotedString at the start of s.
func unquote(s string) (string, bool) {
	if !strings.HasPrefix(s, `"`) {
		v, _, _ := strings.Cut(s, " ")
		return v, true
	}
	var b strings.Builder
	for i := 1; i < len(s); i++ {
		switch s[i] {
		case '\\':
			if i+1 < len(s) {
				i++
				b.WriteByte(s[i])
			}
		case '"':
			return b.String(), true
		default:
			b.WriteByte(s[i])
		}
	}
	return "", false
}
