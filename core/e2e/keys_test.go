package e2e

import (
	"bufio"
	"bytes"
	"crypto/ecdh"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mixmta/mixmta/internal/peers"
)

// mixKeySecret is what memory must not hold once a mix key has retired:
// the private scalar (its bytes 1..30, so a clamped copy, which differs in
// the first and last byte, is found too) and the base64 text of the key
// file's body that encodes the scalar's bytes 2..31.
type mixKeySecret struct {
	epoch   uint64
	needles [][]byte
}

// readMixKeySecret reads the private key of epoch e from dir with the
// standard library.
func readMixKeySecret(t *testing.T, dir string, e uint64) mixKeySecret {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, fmt.Sprintf("mix-%d.key", e)))
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(data)
	if block == nil {
		t.Fatalf("mix key of epoch %d is not PEM", e)
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	priv, ok := k.(*ecdh.PrivateKey)
	if !ok {
		t.Fatalf("mix key of epoch %d is a %T", e, k)
	}
	scalar := priv.Bytes()
	body := strings.TrimSpace(strings.SplitN(string(data), "\n\n", 2)[1])
	return mixKeySecret{epoch: e, needles: [][]byte{scalar[1:31], []byte(body[24:64])}}
}

// processTree is pid and all its descendants.
func processTree(pid int) []int {
	out := []int{pid}
	for i := 0; i < len(out); i++ {
		out = append(out, children(out[i])...)
	}
	return out
}

// memFind reads every readable mapping of process pid through
// /proc/PID/mem and returns where a needle occurs ("pid mapping
// +offset"), the number of bytes read, and an error if the memory cannot
// be read at all.
func memFind(pid int, needles [][]byte) (found []string, scanned int64, err error) {
	maps, err := os.Open(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		return nil, 0, err
	}
	defer maps.Close()
	mem, err := os.Open(fmt.Sprintf("/proc/%d/mem", pid))
	if err != nil {
		return nil, 0, err
	}
	defer mem.Close()
	const chunk = 1 << 20
	buf := make([]byte, chunk+64)
	sc := bufio.NewScanner(maps)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 || f[1][0] != 'r' {
			continue
		}
		name := ""
		if len(f) >= 6 {
			name = f[5]
		}
		if name == "[vvar]" || name == "[vsyscall]" || name == "[vvar_vclock]" {
			continue
		}
		lo, hi, _ := strings.Cut(f[0], "-")
		start, err1 := strconv.ParseUint(lo, 16, 64)
		end, err2 := strconv.ParseUint(hi, 16, 64)
		if err1 != nil || err2 != nil {
			continue
		}
		// Read in chunks overlapping by 63 bytes so no needle is cut.
		for off := start; off < end; off += chunk {
			n := min(uint64(len(buf)), end-off)
			got, rerr := mem.ReadAt(buf[:n], int64(off))
			if got <= 0 {
				if rerr != nil && rerr != io.EOF {
					break // an unreadable range (e.g. a guard page): skip the mapping
				}
				continue
			}
			scanned += int64(min(got, chunk))
			for i, nd := range needles {
				if j := bytes.Index(buf[:got], nd); j >= 0 {
					found = append(found, fmt.Sprintf("pid %d %s %s +%#x (needle %d)", pid, f[0], name, off-start+uint64(j), i))
				}
			}
		}
	}
	return found, scanned, sc.Err()
}

// scanMixnet searches the memory of every process of every node (cores and
// all their plugins).
func scanMixnet(t *testing.T, m *mixnet, s mixKeySecret) (found []string, procs int, scanned int64) {
	t.Helper()
	for _, n := range m.nodes {
		for _, pid := range processTree(n.pid()) {
			f, b, err := memFind(pid, s.needles)
			if err != nil {
				t.Fatalf("reading the memory of pid %d: %v", pid, err)
			}
			found = append(found, f...)
			procs++
			scanned += b
		}
	}
	return found, procs, scanned
}

// Keys live once and die completely: a mix key that has retired (its
// epoch and grace over, its file deleted) has no copy left in the memory
// of any mixmta process, core or plugin, of any node, though it unwrapped
// cover packets while it was valid. Negative control: the same scan finds
// a key that is still valid (in the sphinx plugin that holds it).
//
// Epochs of 10 s with 2 s of grace make a key retire within seconds; cover
// traffic from the other nodes makes node1 use each of its keys. The scan
// starts as soon as the key file is gone (the core pushes the mixer a
// state without the key before it deletes the file), before the garbage of
// a careless implementation would have been reused.
func TestRetiredMixKeyLeavesNoCopyInAnyProcess(t *testing.T) {
	sink := peers.SmtpSink(t)
	const epoch, grace = 10 * time.Second, 2 * time.Second
	m := startMixnet(t, 4, sink.Addr, map[string]any{
		"mix.epoch":      "10s",
		"mix.grace":      "2s",
		"mix.keys_ahead": 12, // the nodes file made at init stays valid for the test
		"mix.cover":      map[string]any{"drop_rate": 2, "loop_rate": 0.5},
	})
	m.waitHealthy(t)
	keyDir := filepath.Join(m.nodes[0].dataDir, "keys")
	epochOf := func(at time.Time) uint64 { return uint64(at.Unix()) / uint64(epoch/time.Second) }
	start := func(e uint64) time.Time { return time.Unix(int64(e)*int64(epoch/time.Second), 0) }

	// The key of the next epoch: read now, used during its epoch and grace.
	target := readMixKeySecret(t, keyDir, epochOf(time.Now())+1)
	received0 := statValue(lastStats(m.nodes[0].log()), "mix_received")
	retired := start(target.epoch + 1).Add(grace)
	keyFile := filepath.Join(keyDir, fmt.Sprintf("mix-%d.key", target.epoch))
	deadline := retired.Add(30 * time.Second)
	for {
		if _, err := os.Stat(keyFile); os.IsNotExist(err) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the key file of epoch %d still exists %v after its grace ended", target.epoch, time.Since(retired))
		}
		time.Sleep(20 * time.Millisecond)
	}
	if r := statValue(lastStats(m.nodes[0].log()), "mix_received"); r <= received0 {
		t.Fatalf("node1 received no packet while the key of epoch %d was valid (mix_received %d -> %d)", target.epoch, received0, r)
	}

	live := readMixKeySecret(t, keyDir, epochOf(time.Now())+1)
	found, procs, scanned := scanMixnet(t, m, live)
	if len(found) == 0 {
		t.Fatalf("negative control: the scan of %d processes (%d MiB) did not find the live key of epoch %d", procs, scanned>>20, live.epoch)
	}
	t.Logf("live key of epoch %d found: %s", live.epoch, strings.Join(found, "; "))

	found, procs, scanned = scanMixnet(t, m, target)
	if len(found) != 0 {
		t.Fatalf("the retired key of epoch %d is still in memory (%d copies):\n%s", target.epoch, len(found), strings.Join(found, "\n"))
	}
	t.Logf("retired key of epoch %d: no copy in %d processes (%d MiB read)", target.epoch, procs, scanned>>20)
}
