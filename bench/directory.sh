#!/bin/sh
# directory.sh: the size of a consensus document and the time a node takes
# to verify it, for 100 and 1,000 simulated nodes signed by 3 authorities
# (go test -bench in core/internal/directory). Prints one line per size;
# then a node's time from its start to its first consensus with 3
# authorities on loopback and 8 s epochs: in a network that starts with it
# (cold) and when it joins a running one (warm).
set -e
cd "$(dirname "$0")/.."
go test -run '^$' -bench BenchmarkConsensusVerify -benchtime 5x ./core/internal/directory/ |
	awk '/^BenchmarkConsensusVerify/ { printf "%s: verify %.1f ms, %d bytes\n", $1, $3/1e6, $5 }'
go test -run '^$' -bench BenchmarkTimeToFirstConsensus -benchtime 5x ./core/internal/directory/ |
	awk '/^BenchmarkTimeToFirstConsensus/ { for (i = 3; i < NF; i += 2) printf "%s %s  ", $(i+1), $i; print "" }'
