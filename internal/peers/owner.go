package peers

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// ConnOwner returns the name (/proc/PID/comm) and pid of the local process
// that owns the client end of c, a connection a test server accepted from
// a client on this host: e.g. "tor" for a stream that left a Tor exit,
// "mixmta" for a connection that bypassed Tor. Call it while c is open.
// It reads /proc/thread-self/net/tcp (this thread's network namespace,
// not the main thread's, which a test may have moved) and /proc/*/fd
// (Linux; the test runs as root).
func ConnOwner(c net.Conn) (string, int, error) {
	client, ok := c.RemoteAddr().(*net.TCPAddr)
	if !ok || client.IP.To4() == nil {
		return "", 0, fmt.Errorf("peers: ConnOwner: %v is not an IPv4 TCP address", c.RemoteAddr())
	}
	ip := client.IP.To4()
	want := fmt.Sprintf("%02X%02X%02X%02X:%04X", ip[3], ip[2], ip[1], ip[0], client.Port)
	f, err := os.Open("/proc/thread-self/net/tcp")
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	inode := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		// A closed connection that used the same port (TIME_WAIT) may
		// still be listed, with inode 0: skip it.
		if len(fs) > 9 && fs[1] == want && fs[9] != "0" {
			inode = fs[9]
			break
		}
	}
	if inode == "" || inode == "0" {
		return "", 0, fmt.Errorf("peers: ConnOwner: no socket %s in /proc/thread-self/net/tcp", want)
	}
	target := "socket:[" + inode + "]"
	pids, _ := filepath.Glob("/proc/[0-9]*")
	for _, p := range pids {
		fds, _ := os.ReadDir(filepath.Join(p, "fd"))
		for _, fd := range fds {
			if l, err := os.Readlink(filepath.Join(p, "fd", fd.Name())); err == nil && l == target {
				comm, _ := os.ReadFile(filepath.Join(p, "comm"))
				pid, _ := strconv.Atoi(filepath.Base(p))
				return strings.TrimSpace(string(comm)), pid, nil
			}
		}
	}
	return "", 0, fmt.Errorf("peers: ConnOwner: no process holds %s", target)
}
