#!/usr/bin/env bash
# Relay throughput, mixmta vs Postfix side by side in one run, and mixmta's
# memory idle and after the load. Prints one line per load.
set -euo pipefail
cd "$(dirname "$0")/.."
go test -count=1 -run '^$' -bench 'BenchmarkRelayVsPostfix' -benchtime 1x -timeout 30m ./core/e2e/ \
  | grep -E '^(relay|memory|Benchmark|ok|FAIL)'
