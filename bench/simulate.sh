#!/usr/bin/env bash
# How long `mixmta simulate` takes: a week of a 20-node network running
# configs/fog.yaml (its own delay plugins sampled) at 10 users per node
# sending 4 messages a day, two adversaries. Prints the wall time and the
# simulated messages per second of wall time.
set -euo pipefail
cd "$(dirname "$0")/.."
make -s build >/dev/null
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
start=$(date +%s.%N)
./bin/mixmta simulate -c configs/fog.yaml --nodes 20 --duration 168h --json > "$tmp/out.json"
end=$(date +%s.%N)
python3 - "$tmp/out.json" "$start" "$end" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); wall = float(sys.argv[3]) - float(sys.argv[2])
n = r["costs"]["submitted"]
print(f"simulate fog.yaml, 20 nodes, 1 week: {wall:.1f} s wall, {n} messages, {n/wall:.0f} simulated messages/s")
for a in r["adversaries"]:
    print(f"  {a['scenario']}: {a['entropy_mean_bits']:.2f} bits mean, {100*a['p_traced']:.1f}% traced")
PY
go test -run '^$' -bench SimulateDay -benchtime 3x ./core/internal/simulate/ | grep -E '^Benchmark'
