#!/usr/bin/env bash
# vibrant beside llama.cpp on one GPU machine, on the same synthetic files, engines alternating:
#   scripts/side-by-side.sh VIBRANT LLAMA_BENCH OUT_DIR TESTS PRESET...
# TESTS is a quoted set of llama-bench flags both engines take (e.g. "-p 512,4096 -n 128 -r 3"
# or "-p 0 -n 128 -d 4096,16384 -r 3"). For each preset it writes a Q4_K_M model (once), then
# runs llama-bench (CUDA, all layers on the GPU, flash attention) and `vibrant bench` on the GPU
# with those flags, printing both tables.
set -uo pipefail
bin=$1
llama=$2
out=$3
tests=$4
shift 4
mkdir -p "$out"
for preset in "$@"; do
    model=/tmp/$preset-q4_k_m.gguf
    [ -f "$model" ] || "$bin" synth --preset "$preset" --mix q4_k_m --out "$model" >/dev/null
    tag=$preset-$(echo "$tests" | tr -c 'a-z0-9\n' '_')
    echo "== $preset: llama.cpp $tests"
    # shellcheck disable=SC2086
    "$llama" -m "$model" -ngl 99 -fa 1 $tests 2>&1 | grep -E '^\|' | tee "$out/llama-$tag.md"
    echo "== $preset: vibrant $tests"
    # shellcheck disable=SC2086
    "$bin" bench --device gpu -m "$model" $tests 2>&1 | tee "$out/vibrant-$tag.md"
done
