#!/bin/bash
# A/B of two versions of a C kernel on expert-shaped products read from memory:
#   bash benchmarks/kernel_ab/run.sh bf16|q8_0|q4_0|q4_k|q6_k REV_A [REV_B] [THREADS]
# bf16 runs sy_rows_bf16_f32 (Sources/KernelsC/bf16_rows.c); q8_0 and q4_0 run sy_rows_grouped_q8
# (grouped_dot.c), the int8 path for stored Q8_0 and Q4_0 weights; q4_k and q6_k run
# sy_rows_q4_k_q8k / sy_rows_q6_k_q8k (int8_rows.c). REV_B defaults to the working tree, which "." names too. Both versions are linked into one
# program, which alternates them 20 times per token count (1-6) and keeps each one's best, so both
# see the same noise. A_CFLAGS and B_CFLAGS add compiler flags to one version (-DNAME=VALUE to try
# a tuning constant). A_LEVEL and B_LEVEL cap a version's integer kernels (1 AVX2, 2 AVX-VNNI, 3
# AVX512-VNNI), to set two paths of one tree side by side. A_TILES_FROM and B_TILES_FROM set the
# token count from which a version's grouped kernels take rows in AVX512-VNNI tiles (1 unless set;
# the engine measures it at load, TileChoice), e.g. A_TILES_FROM=5 for one row at a time up to 4
# tokens; for bf16, the count from which passes take 5 tokens (5 unless set). Shapes: gate/up (3584 x 1024) and down
# (1024 x 3584).
set -euo pipefail
root=$(git rev-parse --show-toplevel)
kind=${1:-}; a=${2:-}; b=${3:-}; threads=${4:-2}
case "$kind" in bf16|q8_0|q4_0|q4_k|q6_k) ;; *) a="" ;; esac
[ -n "$a" ] || { echo "usage: run.sh bf16|q8_0|q4_0|q4_k|q6_k REV_A [REV_B] [THREADS]" >&2; exit 1; }
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
flags="-O3 -I$root/Sources/KernelsC -I$root/Sources/KernelsC/include"
for v in a b; do
  rev=$([ $v = a ] && echo "$a" || echo "$b")
  V=$(echo $v | tr a-z A-Z)
  objects=""
  # Every C file of the module at that revision (the files were split and renamed over time).
  if [ -n "$rev" ] && [ "$rev" != . ]; then
    files=$(git -C "$root" ls-tree --name-only "$rev" Sources/KernelsC/ | grep '\.c$' | xargs -n1 basename)
  else
    files=$(cd "$root/Sources/KernelsC" && ls *.c)
  fi
  for f in $files; do
    if [ -n "$rev" ] && [ "$rev" != . ]; then git -C "$root" show "$rev:Sources/KernelsC/$f" > "$work/$v-$f"; else cp "$root/Sources/KernelsC/$f" "$work/$v-$f"; fi
    extra=$([ $v = a ] && echo "${A_CFLAGS:-}" || echo "${B_CFLAGS:-}")
    clang $flags $extra -c "$work/$v-$f" -o "$work/$v-$f.o"
    objects="$objects $work/$v-$f.o"
  done
  ld -r -o "$work/$v.o" $objects
  # Every exported symbol gets the version's prefix, so the two objects link together.
  for s in $(nm -g --defined-only "$work/$v.o" | awk '{print $3}'); do
    objcopy --redefine-sym "$s=${V}_$s" "$work/$v.o"
  done
done
clang -O3 -o "$work/ab" "$root/benchmarks/kernel_ab/product_bandwidth.c" "$work/a.o" "$work/b.o" -lpthread -lm
echo "$kind: A = $a, B = ${b:-working tree}, $threads threads"
echo "gate/up shape (3584 x 1024):"; "$work/ab" "$kind" "$threads" 3584 1024
echo "down shape (1024 x 3584):"; "$work/ab" "$kind" "$threads" 1024 3584
