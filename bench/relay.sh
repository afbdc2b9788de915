#!/usr/bin/env bash
# Relay throughput, mixmta vs Postfix side by side in one run, the CPU time
# each spends per message (what a machine loaded by other work does not
# distort), and mixmta's memory idle and after the load. Prints three lines
# per load, and the load average before and after (a ratio measured on a
# busy machine says less).
set -euo pipefail
cd "$(dirname "$0")/.."
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
go test -count=1 -run '^$' -bench 'BenchmarkRelayVsPostfix' -benchtime 1x -timeout 30m ./core/e2e/ \
  | grep -E '^(relay|cpu|memory|Benchmark|ok|FAIL)'
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
