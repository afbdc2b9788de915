#!/usr/bin/env bash
# Onion delivery on an offline Tor network (started by the benchmark):
# mixmta's onionmx gateway vs Postfix with onionmx's `torsocks -i` recipe
# (connection cache off), same messages to the same onion service, side by
# side in one run. Prints messages/s per load and the warm-circuit latency.
set -euo pipefail
cd "$(dirname "$0")/.."
go test -count=1 -run '^$' -bench 'BenchmarkOnionDeliveryVsTorsocks' -benchtime 1x -timeout 30m ./core/e2e/ \
  | grep -E '^(onion delivery|latency|Benchmark|ok|FAIL)'
