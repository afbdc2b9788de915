#!/usr/bin/env bash
# mail2news figures: 1 KiB articles per second into a real temp-dir INN
# through the mail2news plugin binary under the real plugin host, one NNTP
# connection per article, with POST (reader: MODE READER, nnrpd) and IHAVE
# (peering feed, innd), sequential and from 8 concurrent callers.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== articles per second into INN"
go test -count=1 -run '^$' -bench 'BenchmarkPostToINN' -benchtime 3s ./plugins/mail2news/ | grep -E '^Benchmark'
