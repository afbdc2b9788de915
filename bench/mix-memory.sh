#!/usr/bin/env bash
# Memory of mix nodes, core + plugins (VmRSS): idle on a healthy 5-node
# loopback mixnet, and the peak while 300 x 64 KiB messages cross it.
# Targets: idle <= 100 MiB, under load <= 300 MiB per node.
set -euo pipefail
cd "$(dirname "$0")/.."
go test -count=1 -run '^$' -bench 'BenchmarkMixNodeMemory' -benchtime 1x -timeout 20m ./core/e2e/ | grep -E '^mix node|^Benchmark'
