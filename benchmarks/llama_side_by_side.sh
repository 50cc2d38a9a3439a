#!/bin/bash
# The CPU issue's five targets side by side with llama.cpp, alternating single runs so both see the
# same noise: BF16 pp512 and tg128, BF16 batched decode of 8 sequences, Q8_0 and Q4_0 tg128.
#   bash benchmarks/llama_side_by_side.sh LLAMA_BIN_DIR GGUF_PREFIX SWITCHYARD_BF16 SWITCHYARD_Q8_0 SWITCHYARD_Q4_0 [ROUNDS] [THREADS]
# LLAMA_BIN_DIR holds llama-bench and llama-batched-bench built from llama.cpp's source (outside this
# repository); GGUF_PREFIX-{bf16,Q8_0,Q4_0}.gguf are bench-mixtral-800m converted and quantised by
# llama-quantize; the SWITCHYARD_* folders are the same model (`switchyard quantize --type q8_0|q4_0
# --all`). Switchyard runs at its default precision (auto), which `bench` names in its table.
# Prints one line per run: test, program, tokens per second.
set -euo pipefail
llama=${1:?llama.cpp bin dir}; gguf=${2:?GGUF prefix}; bf16=${3:?}; q8=${4:?}; q4=${5:?}; rounds=${6:-3}; threads=${7:-2}
B=${SWITCHYARD:-.build/release/switchyard}
export LD_LIBRARY_PATH="$llama${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
col() { awk -F'|' -v t="$1" '$0 ~ t {gsub(/ /, "", $8); split($8, a, "±"); print a[1]; exit}'; }
for round in $(seq 1 "$rounds"); do
  # BF16: pp512 and tg128 in one llama-bench run; batched decode of 8 as llama-batched-bench's S_TG.
  out=$("$llama/llama-bench" -m "$gguf-bf16.gguf" -p 512 -n 128 -t "$threads" -r 1 2>/dev/null)
  echo "bf16 pp512 llama.cpp $(echo "$out" | col pp512)"
  echo "bf16 tg128 llama.cpp $(echo "$out" | col tg128)"
  out=$("$B" bench --model "$bf16" -p 512 -n 128 -r 1 --batch 1,8 -t "$threads" 2>/dev/null)
  echo "bf16 pp512 switchyard $(echo "$out" | awk -F'|' '/pp512/ {split($8, a, "±"); gsub(/ /, "", a[1]); print a[1], $6}')"
  echo "bf16 tg128 switchyard $(echo "$out" | awk -F'|' '/tg128 / {split($8, a, "±"); gsub(/ /, "", a[1]); print a[1], $6}')"
  echo "bf16 batched8 switchyard $(echo "$out" | awk -F'|' '/tg128@b8/ {split($8, a, "±"); gsub(/ /, "", a[1]); print a[1], $6}')"
  out=$("$llama/llama-batched-bench" -m "$gguf-bf16.gguf" -c 2048 -b 2048 -ub 512 -npp 128 -ntg 128 -npl 8 -t "$threads" 2>/dev/null)
  echo "bf16 batched8 llama.cpp $(echo "$out" | awk -F'|' '$4 ~ / 8 / {gsub(/ /, "", $9); print $9}')"
  for q in Q8_0 Q4_0; do
    dir=$([ $q = Q8_0 ] && echo "$q8" || echo "$q4")
    out=$("$llama/llama-bench" -m "$gguf-$q.gguf" -p 0 -n 128 -t "$threads" -r 1 2>/dev/null)
    echo "$q tg128 llama.cpp $(echo "$out" | col tg128)"
    out=$("$B" bench --model "$dir" -p 0 -n 128 -r 1 --batch 1 -t "$threads" 2>/dev/null)
    echo "$q tg128 switchyard $(echo "$out" | awk -F'|' '/tg128/ {split($8, a, "±"); gsub(/ /, "", a[1]); print a[1], $6}')"
  done
done
