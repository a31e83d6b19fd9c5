#!/usr/bin/env bash
# On the device machine: the CUDA kernel tests, then vibrant's CUDA backend beside llama.cpp's
# CUDA llama-bench (.anchors/llama-bench-cuda.xz, from ../shared/anchors/) on synthetic
# Q4_K_M files of the 0.5B, 3B and 8B shapes, and a 3B profile. Carry .devk, .gl, .anchors.
source scripts/device/prep.sh
synth qwen2.5-3b; synth qwen2.5-0.5b; synth llama3.1-8b
left "cuda_kernels"
timeout 150 /tmp/b/cuda_kernels --test-threads 1 2>&1 | grep -E "^test |test result|panicked|error|failed" | tail -40
for P in qwen2.5-3b qwen2.5-0.5b llama3.1-8b; do
  synth_wait $P; M=/tmp/$P-q4_k_m.gguf
  left "$P llama"; llama -m $M -p 512 -n 128 -r 3 | tail -2
  left "$P vibrant"; vib -m $M -p 512 -n 128 -r 3 | tail -2
done
M3=/tmp/qwen2.5-3b-q4_k_m.gguf
left "3B depth 4096 llama"; llama -m $M3 -p 512 -n 128 -d 4096 -r 2 | tail -2
left "3B depth 4096 vibrant"; vib -m $M3 -p 512 -n 128 -d 4096 -r 2 | tail -2
left "3B profile"; TL=60 vib -m $M3 -p 0 -n 32 -r 1 --profile | sed -n '/host time/,$p' | head -16
left "end"
