#!/usr/bin/env bash
# Tor figures on an offline Tor network (started by the benchmarks):
# 1. onion delivery, mixmta's onionmx gateway vs Postfix with onionmx's
#    `torsocks -i` recipe (connection cache off), same messages to the same
#    onion service, side by side: messages/s per load, warm-circuit latency;
# 2. mixnet latency per hop, links over direct TCP vs over onion services.
set -euo pipefail
cd "$(dirname "$0")/.."
go test -count=1 -run '^$' -bench 'BenchmarkOnionDeliveryVsTorsocks|BenchmarkMixnetLatencyDirectVsTor' -benchtime 1x -timeout 30m ./core/e2e/ \
  | grep -E '^(onion delivery|latency|mixnet latency|Benchmark|ok|FAIL)|_test\.go:[0-9]+: '
