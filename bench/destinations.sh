#!/usr/bin/env bash
# Per-message cost of the destination stages, in the stage without the
# plugin RPC: DKIM signing (ed25519-sha256, rsa-sha256) and OpenPGP
# encryption of one recipient's PGP/MIME copy (Curve25519, RSA 3072), at
# 1 KiB and 64 KiB.
set -euo pipefail
cd "$(dirname "$0")/.."
go test -count=1 -run '^$' -bench 'BenchmarkSign' -benchmem ./plugins/dkim/ | grep -E '^Benchmark'
go test -count=1 -run '^$' -bench 'BenchmarkEncrypt' -benchmem ./plugins/openpgp/ | grep -E '^Benchmark'
