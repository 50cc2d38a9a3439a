#!/bin/bash
# A/B of two versions of the C bf16 kernels on expert-shaped products read from memory:
#   bash benchmarks/bf16_kernel_ab/run.sh REV_A [REV_B] [THREADS]
# REV_B defaults to the working tree. Both versions of Sources/KernelsC/quant_dot.c are linked
# into one program, which alternates them 20 times per token count (1-6) and keeps each one's
# best, so both see the same noise. Shapes: gate/up (3584 x 1024) and down (1024 x 3584).
set -euo pipefail
root=$(git rev-parse --show-toplevel)
a=$1; b=${2:-}; threads=${3:-2}
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
git -C "$root" show "$a:Sources/KernelsC/quant_dot.c" > "$work/a.c"
if [ -n "$b" ]; then git -C "$root" show "$b:Sources/KernelsC/quant_dot.c" > "$work/b.c"; else cp "$root/Sources/KernelsC/quant_dot.c" "$work/b.c"; fi
flags="-O3 -I$root/Sources/KernelsC -I$root/Sources/KernelsC/include"
for v in a b; do
  clang $flags -c "$work/$v.c" -o "$work/$v.o"
  V=$(echo $v | tr a-z A-Z)
  objcopy --redefine-sym sy_rows_bf16_f32=${V}_rows "$work/$v.o"
  # Every other exported symbol gets the version's prefix, so the two objects link together.
  for s in $(nm -g --defined-only "$work/$v.o" | awk '{print $3}' | grep -v "^${V}_rows$"); do
    objcopy --redefine-sym "$s=${V}_$s" "$work/$v.o"
  done
done
clang -O3 -o "$work/ab" "$root/benchmarks/bf16_kernel_ab/product_bandwidth.c" "$work/a.o" "$work/b.o" -lpthread -lm
echo "A = $a, B = ${b:-working tree}, $threads threads"
echo "gate/up shape (3584 x 1024):"; "$work/ab" "$threads" 3584 1024
echo "down shape (1024 x 3584):"; "$work/ab" "$threads" 1024 3584
