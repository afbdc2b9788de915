package e2e

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// nodeMem is the memory of one node's processes (the core and its
// plugins), in KiB, counted three ways:
//   - rss: the sum of VmRSS. A page several processes map (the text of a
//     binary three delay stages run, libc, the body region) is counted
//     once per process.
//   - pss: the sum of Pss (/proc/PID/smaps_rollup): a shared page is
//     divided among every process mapping it, including the other nodes
//     of a test mixnet on the same machine, so it is the node's fair
//     share here and less than the node would use alone.
//   - alone: what the node's processes hold together, each page counted
//     once: private and anonymous pages summed, and each file-backed
//     mapping (same file, same offset) counted once, at its largest RSS
//     among the node's processes. This is the node's footprint on a
//     machine of its own.
type nodeMem struct {
	coreRSS, pluginsRSS   int
	corePSS, pluginsPSS   int
	alone                 int
	coreAnon, coreVlog    int
	pluginAnon, pluginBin int
	// plugins is the number of plugin processes counted, binaries the
	// number of distinct plugin binaries they run.
	plugins, binaries int
}

func (m nodeMem) rss() int { return m.coreRSS + m.pluginsRSS }
func (m nodeMem) pss() int { return m.corePSS + m.pluginsPSS }

// mapping is one entry of /proc/PID/smaps with its resident size (KiB).
type mapping struct {
	path, key string // key: device, inode and offset
	anon      bool   // no file behind it (heap, stacks, anonymous)
	rss       int
}

func smaps(pid int) []mapping {
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []mapping
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) >= 5 && strings.Contains(fs[0], "-") && !strings.HasSuffix(fs[0], ":") {
			m := mapping{key: fs[3] + " " + fs[4] + " " + fs[2], anon: true}
			if len(fs) >= 6 && strings.HasPrefix(fs[5], "/") {
				m.path, m.anon = fs[5], false
			}
			out = append(out, m)
			continue
		}
		if len(out) > 0 && fs[0] == "Rss:" {
			out[len(out)-1].rss, _ = strconv.Atoi(fs[1])
		}
	}
	return out
}

// rollup is Rss and Pss from /proc/PID/smaps_rollup (KiB).
func rollup(pid int) (rss, pss int) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return 0, 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		fs := strings.Fields(l)
		if len(fs) >= 2 {
			switch fs[0] {
			case "Rss:":
				rss, _ = strconv.Atoi(fs[1])
			case "Pss:":
				pss, _ = strconv.Atoi(fs[1])
			}
		}
	}
	return rss, pss
}

// measureNode reads nodeMem for the core pid and its plugins.
func measureNode(pid int) nodeMem {
	var m nodeMem
	shared := map[string]int{} // file and offset -> largest RSS
	bins := map[string]bool{}
	for i, p := range append([]int{pid}, children(pid)...) {
		rss, pss := rollup(p)
		if i == 0 {
			m.coreRSS, m.corePSS = rss, pss
		} else {
			m.pluginsRSS += rss
			m.pluginsPSS += pss
		}
		exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", p))
		if i > 0 {
			m.plugins++
			bins[exe] = true
		}
		for _, mp := range smaps(p) {
			switch {
			case mp.anon:
				m.alone += mp.rss
				if i == 0 {
					m.coreAnon += mp.rss
				} else {
					m.pluginAnon += mp.rss
				}
			default:
				k := mp.key
				shared[k] = max(shared[k], mp.rss)
				if i == 0 && strings.HasSuffix(mp.path, ".vlog") {
					m.coreVlog += mp.rss
				}
				if i > 0 && mp.path == exe {
					m.pluginBin += mp.rss
				}
			}
		}
	}
	for _, v := range shared {
		m.alone += v
	}
	m.binaries = len(bins)
	return m
}

// nodePeaks samples the VmRSS and Pss sums of the core pid and its plugins
// every 20 ms until stop is closed and returns their peaks (KiB).
func nodePeaks(pid int, stop <-chan struct{}) <-chan nodeMem {
	out := make(chan nodeMem, 1)
	go func() {
		var p nodeMem
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		for {
			var m nodeMem
			m.coreRSS, m.corePSS = rollup(pid)
			for _, k := range children(pid) {
				r, s := rollup(k)
				m.pluginsRSS += r
				m.pluginsPSS += s
			}
			if m.rss() > p.rss() {
				p.coreRSS, p.pluginsRSS = m.coreRSS, m.pluginsRSS
			}
			if m.pss() > p.pss() {
				p.corePSS, p.pluginsPSS = m.corePSS, m.pluginsPSS
			}
			select {
			case <-stop:
				out <- p
				return
			case <-t.C:
			}
		}
	}()
	return out
}
