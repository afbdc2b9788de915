#!/usr/bin/env bash
# Both Sphinx packet formats side by side (X25519; KEM = X-Wing, i.e.
# ML-KEM-768 + X25519), each against the sum of the primitives it is made
# of, in CPU time of the benchmark thread (cpu-ns/op, steady on a loaded
# machine), medians of 3 runs:
#   create 3 hops  X25519: 3 x (X25519 key generation + X25519 + GCM seal)
#                  KEM:    3 x (ML-KEM-768 encapsulation + X25519 key generation + X25519 + GCM seal)
#   unwrap a hop   X25519: 2 x X25519 + GCM open
#                  KEM:    ML-KEM-768 decapsulation + X25519 + GCM open
# and the anchor: Katzenpost's KEM Sphinx (core/sphinx) with its X-Wing KEM
# at the same geometry (3 hops, 60777-byte payload), measured here the same
# way (bench/katzenpost/). It is built in a temporary module from
# Katzenpost's sources: KATZENPOST_SRC and HPQC_SRC name checkouts of
# github.com/katzenpost/katzenpost and github.com/katzenpost/hpqc (cloned
# from GitHub when unset). hpqc's scheme lists also register the CTIDH
# NIKEs, a cgo build of highctidh that takes most of an hour on a small
# machine and that KEM Sphinx with X-Wing never calls: the script builds a
# copy of hpqc with them cut from those lists, without cgo.
# SKIP_KATZENPOST=1 leaves the anchor out.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(go test -run '^$' -count 3 -benchtime 1s \
  -bench '^Benchmark(NewPacket|Unwrap|KEMNewPacket|KEMUnwrap|PayloadLayer|PayloadSeal|Primitive.*)$' \
  ./plugins/sphinx/internal/sphinx/)
if [ "${SKIP_KATZENPOST:-}" != 1 ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  src() { # src NAME VAR: a checkout of github.com/katzenpost/NAME
    if [ -n "${!2:-}" ]; then echo "${!2}"; else
      git clone -q --depth 1 "https://github.com/katzenpost/$1" "$tmp/$1" && echo "$tmp/$1"; fi
  }
  kp=$(src katzenpost KATZENPOST_SRC)
  cp -r "$(src hpqc HPQC_SRC)" "$tmp/hpqc-nocgo"
  hpqc=$tmp/hpqc-nocgo
  rm -f "$hpqc/nike/hybrid/ctidh.go"
  python3 - "$hpqc" <<'PY'
import re, sys
for f in ("nike/schemes/schemes.go", "kem/schemes/schemes.go"):
    p = sys.argv[1] + "/" + f
    s = re.sub(r"(?m)^.*(ctidh|CTIDH).*\n", "", open(p).read())
    s = re.sub(r"var potentialSchemes = \[\.\.\.\]kem\.Scheme\{.*?\n\}\n", "var potentialSchemes = [...]kem.Scheme{}\n", s, flags=re.S)
    open(p, "w").write(s)
PY
  mkdir "$tmp/mod"
  cp bench/katzenpost/kemsphinx_bench_test.go.txt "$tmp/mod/kemsphinx_bench_test.go"
  printf '%s\n' 'module kpbench' '' 'go 1.26' '' 'require github.com/katzenpost/katzenpost v0.0.0' '' \
    "replace github.com/katzenpost/katzenpost => $kp" '' "replace github.com/katzenpost/hpqc => $hpqc" > "$tmp/mod/go.mod"
  (cd "$tmp/mod" && CGO_ENABLED=0 GOFLAGS=-mod=mod go test -c -o "$tmp/kp.test" . >&2)
  out+=$'\n'$("$tmp/kp.test" -test.run '^$' -test.count 3 -test.benchtime 1s -test.bench '^BenchmarkKatzenpost')
fi
python3 - "$out" <<'PY'
import re, statistics, sys
runs = {}
for line in sys.argv[1].splitlines():
    m = re.match(r'Benchmark(\S+?)-\d+\s+\d+\s+.*?([\d.]+) cpu-ns/op', line)
    if m:
        runs.setdefault(m.group(1), []).append(float(m.group(2)) / 1000)
us = {k: statistics.median(v) for k, v in runs.items()}
kg, dh, seal, opn = us["PrimitiveX25519KeyGen"], us["PrimitiveX25519ECDH"], us["PayloadSeal"], us["PayloadLayer"]
enc, dec = us["PrimitiveMLKEM768Encapsulate"], us["PrimitiveMLKEM768Decapsulate"]
rows = [
    ("X25519 create, 3 hops", us["NewPacket"], 3 * (kg + dh + seal)),
    ("KEM    create, 3 hops", us["KEMNewPacket"], 3 * (enc + kg + dh + seal)),
    ("X25519 unwrap, 1 hop ", us["Unwrap"], 2 * dh + opn),
    ("KEM    unwrap, 1 hop ", us["KEMUnwrap"], dec + dh + opn),
]
print("primitives (us CPU): X25519 keygen %.1f, X25519 %.1f, ML-KEM-768 encaps %.1f, decaps %.1f, GCM seal %.1f, open %.1f" % (kg, dh, enc, dec, seal, opn))
for name, got, s in rows:
    print(f"{name}: {got:7.1f} us CPU, sum of primitives {s:7.1f} us, ratio {got/s:.2f}")
if "KatzenpostKEMNewPacket" in us:
    kc, ku = us["KatzenpostKEMNewPacket"], us["KatzenpostKEMUnwrap"]
    print(f"Katzenpost KEM Sphinx, X-Wing, same geometry: create {kc:7.1f} us CPU, unwrap {ku:7.1f} us CPU;"
          f" mixmta KEM / Katzenpost: create {us['KEMNewPacket']/kc:.2f}, unwrap {us['KEMUnwrap']/ku:.2f}")
PY
