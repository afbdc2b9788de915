#!/usr/bin/env bash
# Cost of one stage call through the real plugin host (go-plugin, gRPC over
# a Unix socket) against an in-process call: headers only (1 KiB) and a
# full 64 KiB message; and under load (32 callers at once), the amortized
# wall time and CPU per item of the batched call stream against a framed
# call per item, side by side.
set -euo pipefail
cd "$(dirname "$0")/.."
go test -count=1 -run '^$' -bench 'BenchmarkStageCall|BenchmarkUnaryDelayCall' -benchmem ./internal/pluginclient/ | grep -E '^Benchmark'
