#!/usr/bin/env bash
# The anonymity table of docs/anonymity.md, computed by `mixmta simulate`:
# fog.yaml and local-mixnet.yaml at a few traffic levels, without cover,
# with additive cover only (no sending schedule) and as shipped (the Loopix
# sending schedule λ_P plus loops); and the
# traceability of messages of 1, 8 and 33 packets with 20% of the nodes
# compromised. Prints Markdown rows. Takes a few minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
make -s build >/dev/null
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
sim() { ./bin/mixmta simulate --json --compromised 0,0.2 "$@"; }
row() { # label, then simulate args
  local label=$1; shift
  sim "$@" > "$tmp/r.json"
  python3 - "$label" "$tmp/r.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[2])); a, c = r["adversaries"], r["costs"]
print(f"| {sys.argv[1]} | {a[0]['entropy_mean_bits']:.2f} / {a[0]['max_entropy_bits']:.2f} | {100*a[0]['p_traced']:.1f}% | {a[1]['entropy_mean_bits']:.2f} | {100*a[1]['p_traced']:.1f}% | {c['latency_p50_s']:.0f} s | {c['cover_overhead']:.1f} |")
PY
}
echo "| profile and traffic | passive: bits (mean / max) | traced | + 20% compromised: bits | traced | latency p50 | cover per real packet |"
echo "|---|---|---|---|---|---|---|"
for rate in 1 4 20; do
  row "fog.yaml, $rate msg/user/day, no cover, no schedule" -c configs/fog.yaml --duration 72h --rate $rate --send-rate 0 --drop-rate 0 --loop-rate 0
  row "fog.yaml, $rate msg/user/day, additive cover, no schedule" -c configs/fog.yaml --duration 72h --rate $rate --send-rate 0
  row "fog.yaml, $rate msg/user/day, as shipped (λ_P 0.2/s)" -c configs/fog.yaml --duration 72h --rate $rate
done
for rate in 100 1000; do
  row "local-mixnet.yaml (5 nodes), $rate msg/user/day, no cover, no schedule" -c configs/local-mixnet.yaml --nodes 5 --duration 2h --rate $rate --send-rate 0 --drop-rate 0 --loop-rate 0
  row "local-mixnet.yaml (5 nodes), $rate msg/user/day, as shipped" -c configs/local-mixnet.yaml --nodes 5 --duration 2h --rate $rate
done
echo
echo "| message size | fragment paths | traced with 20% of nodes compromised | mean bits |"
echo "|---|---|---|---|"
for n in 1 8 33; do
  size=$(( n * 65200 - 2000 ))  # n fragments with room for the inner encoding
  echo $size > "$tmp/sizes"
  for own in true false; do
    sim -c configs/fog.yaml --duration 72h --sizes "$tmp/sizes" --path-per-fragment=$own --compromised 0.2 > "$tmp/f.json"
    python3 - "$n" "$own" "$tmp/f.json" <<'PY'
import json, sys
a = json.load(open(sys.argv[3]))["adversaries"][0]
paths = "a path per fragment" if sys.argv[2] == "true" else "one path per message"
print(f"| {sys.argv[1]} packet(s) | {paths} | {100*a['p_traced']:.1f}% | {a['entropy_mean_bits']:.2f} |")
PY
  done
done
