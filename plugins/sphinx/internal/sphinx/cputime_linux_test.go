package sphinx

import (
	"syscall"
	"time"
)

// threadCPUTime returns the CPU time (user + system) consumed so far by the
// calling OS thread (getrusage RUSAGE_THREAD). Benchmarks lock their
// goroutine to one thread and report it per operation as "cpu-ns/op", which,
// unlike ns/op, does not grow when other processes compete for the CPUs.
func threadCPUTime() (time.Duration, bool) {
	const rusageThread = 1 // RUSAGE_THREAD, Linux
	var ru syscall.Rusage
	if err := syscall.Getrusage(rusageThread, &ru); err != nil {
		return 0, false
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), true
}
