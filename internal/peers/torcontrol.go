package peers

import (
	"bufio"
	"encoding/hex"
	"fmt"
	"net"
	"net/textproto"
	"os"
	"strings"
	"time"
)

// TorControl is a minimal client of tor's control protocol (control-spec
// §2-§4) for tests: authenticate with the cookie, send commands, read
// asynchronous events.
type TorControl struct {
	conn   net.Conn
	r      *textproto.Reader
	events []string
}

// DialTorControl connects to a ControlPort and authenticates with the
// cookie file (CookieAuthentication 1).
func DialTorControl(addr, cookieFile string) (*TorControl, error) {
	cookie, err := os.ReadFile(cookieFile)
	if err != nil {
		return nil, err
	}
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	c := &TorControl{conn: conn, r: textproto.NewReader(bufio.NewReader(conn))}
	if _, err := c.Cmd("AUTHENTICATE " + hex.EncodeToString(cookie)); err != nil {
		conn.Close()
		return nil, err
	}
	return c, nil
}

// Close ends the control connection.
func (c *TorControl) Close() error { return c.conn.Close() }

// Cmd sends one command line and returns the reply's lines without their
// "250-"/"250 " prefixes; a reply other than 250 is an error. Events that
// arrive meanwhile are kept for Event.
func (c *TorControl) Cmd(line string) ([]string, error) {
	_ = c.conn.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := fmt.Fprintf(c.conn, "%s\r\n", line); err != nil {
		return nil, err
	}
	for {
		code, lines, err := c.reply()
		if err != nil {
			return nil, err
		}
		if code == "650" {
			c.events = append(c.events, strings.Join(lines, "\n"))
			continue
		}
		if code != "250" {
			return nil, fmt.Errorf("tor control: %s: %s %s", strings.Fields(line)[0], code, strings.Join(lines, " "))
		}
		return lines, nil
	}
}

// Event returns the next asynchronous event (after SETEVENTS), without its
// "650 " prefix, waiting at most timeout.
func (c *TorControl) Event(timeout time.Duration) (string, error) {
	if len(c.events) > 0 {
		ev := c.events[0]
		c.events = c.events[1:]
		return ev, nil
	}
	_ = c.conn.SetDeadline(time.Now().Add(timeout))
	for {
		code, lines, err := c.reply()
		if err != nil {
			return "", err
		}
		if code == "650" {
			return strings.Join(lines, "\n"), nil
		}
	}
}

// reply reads one reply: "CODE-text" lines, "CODE+text" data blocks ending
// in ".", and a final "CODE text" line (control-spec §2.3).
func (c *TorControl) reply() (string, []string, error) {
	var lines []string
	for {
		l, err := c.r.ReadLine()
		if err != nil {
			return "", nil, err
		}
		if len(l) < 4 {
			return "", nil, fmt.Errorf("tor control: short line %q", l)
		}
		code, sep, text := l[:3], l[3], l[4:]
		switch sep {
		case '-':
			lines = append(lines, text)
		case '+':
			data, err := c.r.ReadDotLines()
			if err != nil {
				return "", nil, err
			}
			lines = append(lines, text+"\n"+strings.Join(data, "\n"))
		case ' ':
			lines = append(lines, text)
			return code, lines, nil
		default:
			return "", nil, fmt.Errorf("tor control: bad line %q", l)
		}
	}
}
