#!/bin/sh
# directory.sh: the size of a consensus document and the time a node takes
# to verify it, for 100 and 1,000 simulated nodes signed by 3 authorities
# (go test -bench in core/internal/directory). Prints one line per size.
set -e
cd "$(dirname "$0")/.."
go test -run '^$' -bench BenchmarkConsensusVerify -benchtime 5x ./core/internal/directory/ |
	awk '/^BenchmarkConsensusVerify/ { printf "%s: verify %.1f ms, %d bytes\n", $1, $3/1e6, $5 }'
