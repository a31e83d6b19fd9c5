#!/usr/bin/env bash
# On the device machine: decode at depths 0, 4,096 and 16,384 beside llama.cpp's CUDA
# llama-bench, on synthetic Q4_K_M files of the 3B, 8B and 0.5B shapes; any earlier build
# bundled as /tmp/v/vibrant-base (scripts/device/bundle.sh) runs in the same call, for a
# before and after. Then the greedy answer of each build, `verify`, and where a 3B token's time
# goes at depth 4,096. Carry .devk, .gl, .anchors.
source scripts/device/prep.sh
synth qwen2.5-3b; synth llama3.1-8b; synth qwen2.5-0.5b
BUILDS=("$V"); [ -x /tmp/b/vibrant-base ] && BUILDS=(/tmp/b/vibrant-base "$V")
vibx() { local bin=$1; shift; timeout "${TL:-120}" $bin bench --backend cuda "$@" 2>&1 | grep -vE '^\s*$'; }
for P in qwen2.5-3b llama3.1-8b qwen2.5-0.5b; do
  synth_wait $P; M=/tmp/$P-q4_k_m.gguf
  left "$P llama"; TL=200 llama -m $M -p 0 -n 64 -d 0,4096,16384 -r 2 | tail -3
  for B in "${BUILDS[@]}"; do
    left "$P $B"; TL=150 vibx $B -m $M -p 0 -n 64 -d 0,4096,16384 -r 2 | tail -3
  done
done
for B in "${BUILDS[@]}"; do
  echo "$B: $($B ask --backend cuda -m /tmp/qwen2.5-0.5b-q4_k_m.gguf --temp 0 -n 300 'Once upon a time' 2>/dev/null | md5sum)"
done
left "verify 0.5B"; timeout 90 $V verify --backend cuda -m /tmp/qwen2.5-0.5b-q4_k_m.gguf --steps 16 2>&1 | tail -2
left "3B profile at 4096"; TL=90 vib -m /tmp/qwen2.5-3b-q4_k_m.gguf -p 4096 -n 1 -r 1 --profile | sed -n '/profile of one generated/,$p' | head -12
left "end"
