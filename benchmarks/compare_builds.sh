#!/bin/bash
# Two builds of switchyard side by side on bench-mixtral-800m with random weights (its config.json
# alone, so no 1.6 GB download): BF16, Q8_0 and Q4_0 (int8 activations), pp512, tg128 and batched
# decode of 8, alternating the builds for ROUNDS rounds so both see the same noise.
#   bash benchmarks/compare_builds.sh BINARY_A BINARY_B [ROUNDS] [THREADS]
set -euo pipefail
a=${1:?binary A}; b=${2:?binary B}; rounds=${3:-2}; threads=${4:-2}
config="$(cd "$(dirname "$0")" && pwd)/configs/bench-mixtral-800m"
for round in $(seq 1 "$rounds"); do
  for label in A B; do
    bin=$([ $label = A ] && echo "$a" || echo "$b")
    for q in none q8_0 q4_0; do
      extra=(); [ $q != none ] && extra=(--quantize $q --quantize-all --precision int8)
      echo "== round $round, build $label ($bin), weights $q"
      "$bin" bench --model "$config" --random-weights "${extra[@]}" -t "$threads" -p 512 -n 128 -r 3 --batch 1,8 \
        | grep -E '^\| [a-z]|roofline'
    done
  done
done
