#!/usr/bin/env bash
# Benchmarks vibrant on a GPU machine with synthetic models of real shapes:
#   scripts/gpu-bench.sh VIBRANT_BINARY OUT_DIR [PRESET...]
# For each preset (default: qwen2.5-0.5b qwen2.5-3b llama3.1-8b) it writes a Q4_K_M model,
# checks GPU against the CPU reference (models up to 3B), and runs `vibrant bench`
# (pp512, tg128, 3 repetitions) with a per-kernel profile for qwen2.5-3b.
set -euo pipefail
bin=$1
out=$2
shift 2
presets=("${@:-qwen2.5-0.5b qwen2.5-3b llama3.1-8b}")
mkdir -p "$out"
"$bin" devices | tee "$out/devices.txt"
for preset in ${presets[@]}; do
    model=/tmp/$preset-q4_k_m.gguf
    [ -f "$model" ] || "$bin" synth --preset "$preset" --mix q4_k_m --out "$model"
    case $preset in
        *8b*|*7b*) ;;
        *) "$bin" --device gpu -m "$model" verify --steps 16 | tee "$out/verify-$preset.txt" ;;
    esac
    profile=
    [ "$preset" = qwen2.5-3b ] && profile=--profile
    "$bin" --device gpu -m "$model" bench -p 512 -n 128 -r 3 $profile | tee "$out/bench-$preset.md"
done
