#!/usr/bin/env bash
# On the device machine: the CUDA kernel and hang tests, then decode (empty cache, and depths
# 4,096 and 16,384) and prompts beside llama.cpp's CUDA llama-bench on synthetic Q4_K_M files
# of the 3B, 8B and 0.5B shapes; `verify`, the greedy answer's MD5 and where an 8B token's
# time goes. The eleventh session's run. Carry .devk, .gl, .anchors.
source scripts/device/prep.sh
synth qwen2.5-3b; synth llama3.1-8b; synth qwen2.5-0.5b
left "cuda_kernels"
timeout 150 /tmp/b/cuda_kernels 2>&1 | grep -E "^test |test result|panicked|failed" | tail -30
timeout 60 /tmp/b/cuda_hang 2>&1 | grep -E "test result"
for P in qwen2.5-3b llama3.1-8b qwen2.5-0.5b; do
  synth_wait $P; M=/tmp/$P-q4_k_m.gguf
  left "$P llama"; llama -m $M -p 512 -n 128 -r 3 | tail -2
  left "$P vibrant"; vib -m $M -p 512 -n 128 -r 3 | tail -2
  [ $P = qwen2.5-0.5b ] && continue
  left "$P llama depth"; TL=150 llama -m $M -p 0 -n 64 -d 4096,16384 -r 2 | tail -2
  left "$P vibrant depth"; TL=150 vib -m $M -p 0 -n 64 -d 4096,16384 -r 2 | tail -2
done
M=/tmp/qwen2.5-0.5b-q4_k_m.gguf
echo "greedy MD5: $($V ask --backend cuda -m $M --temp 0 -n 300 'Once upon a time' 2>/dev/null | md5sum)"
left "verify 0.5B"; timeout 90 $V verify --backend cuda -m $M --steps 16 2>&1 | tail -1
left "8B profile"; TL=60 vib -m /tmp/llama3.1-8b-q4_k_m.gguf -p 1 -n 1 -r 1 --profile | sed -n '/profile of one generated/,$p' | head -16
left "end"
