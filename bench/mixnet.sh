#!/usr/bin/env bash
# Mixnet figures: Sphinx packet creation and one-hop unwrap (3 hops, 64 KiB),
# a mix node's sustained throughput with plugin RPC and the durable queue,
# and end-to-end latency over a 5-node loopback mixnet with zero delays.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== Sphinx (targets: unwrap <= 170 us/hop, create <= 600 us)"
go test -count=1 -run '^$' -bench 'BenchmarkNewPacket$|BenchmarkUnwrap$' -benchtime 2s ./plugins/sphinx/internal/sphinx/ | grep -E '^Benchmark'
echo "== mix node throughput (target >= 2000 packets/s)"
go test -count=1 -run '^$' -bench 'BenchmarkMixNodeThroughput' -benchtime 3000x -timeout 20m ./core/internal/mixnet/ | grep -E '^Benchmark|packets'
echo "== end-to-end latency, 5-node mixnet, zero delays"
go test -count=1 -run '^$' -bench 'BenchmarkMixnetLatency' -benchtime 1x -timeout 20m ./core/e2e/ | grep -E '^mixnet latency|^Benchmark'
echo "== a mix node's packet life in the queue, store only: packets in the value log vs in the slot file"
go test -count=1 -run '^$' -bench 'BenchmarkPacketStore' -benchtime 4000x ./core/internal/queue/ | grep -E '^Benchmark'
