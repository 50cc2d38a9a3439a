#!/usr/bin/env bash
# The binary that goes to machines without Swift (a lent GPU machine, an attention or expert host):
# switchyard-worker, every compute command without the HTTP server, with the Swift runtime linked
# in statically and glibc dynamic (so the CUDA libraries can still be dlopen'ed); stripped. It must
# stay under the 40 MiB a GPU run can carry with its scripts (the run takes 64 MiB of files in all);
# the script fails when it does not, and CI runs it.
#   bash scripts/build_static.sh        # writes dist/switchyard-worker
set -euo pipefail
cd "$(dirname "$0")/.."
limit=$((40 << 20))
swift build -c release --static-swift-stdlib --scratch-path .build-static --product switchyard-worker
mkdir -p dist
cp .build-static/release/switchyard-worker dist/switchyard-worker
strip dist/switchyard-worker
size=$(stat -c %s dist/switchyard-worker)
echo "dist/switchyard-worker: $(awk -v s="$size" 'BEGIN { printf "%.1f MiB", s / 1048576 }') stripped (limit 40 MiB)"
echo "dynamic libraries it needs:"
ldd dist/switchyard-worker | sed 's/^/  /'
dist/switchyard-worker info --model models/switchyard-kjv-moe > /dev/null
if [ "$size" -gt "$limit" ]; then
  echo "FAIL: dist/switchyard-worker is larger than 40 MiB" >&2
  exit 1
fi
