#!/usr/bin/env bash
# A self-contained release binary for machines without Swift (the GPU machine): the Swift runtime
# linked in statically, glibc dynamic so that the CUDA libraries can still be dlopen'ed; stripped.
#   bash scripts/build_static.sh        # writes dist/switchyard
set -euo pipefail
cd "$(dirname "$0")/.."
swift build -c release --static-swift-stdlib --scratch-path .build-static
mkdir -p dist
cp .build-static/release/switchyard dist/switchyard
strip dist/switchyard
ls -l dist/switchyard | awk '{printf "dist/switchyard: %.1f MB\n", $5 / 1e6}'
echo "dynamic libraries it needs:"
ldd dist/switchyard | sed 's/^/  /'
