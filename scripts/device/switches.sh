#!/usr/bin/env bash
# On the device machine: the CUDA backend's switches checked against each other. 300 greedy
# tokens of the synthetic 0.5B shape must be the same (MD5) with programmatic launches on and
# off and with graphs off; then decode speed with programmatic launches on and off,
# alternating, on the 3B and 8B shapes. Carry .devk and .gl.
source scripts/device/prep.sh
synth qwen2.5-0.5b; synth qwen2.5-3b; synth llama3.1-8b
synth_wait qwen2.5-0.5b
for c in "$V" "VIBRANT_PDL=0 $V" "VIBRANT_CUDA_GRAPHS=0 $V"; do
  echo "$c: $(env $c ask --backend cuda -m /tmp/qwen2.5-0.5b-q4_k_m.gguf --temp 0 -n 300 'Once upon a time' 2>/dev/null | md5sum)"
done
for P in qwen2.5-3b llama3.1-8b; do
  synth_wait $P; M=/tmp/$P-q4_k_m.gguf
  for pdl in 1 0 1 0; do left "$P VIBRANT_PDL=$pdl"; VIBRANT_PDL=$pdl vib -m $M -p 0 -n 128 -r 3 | tail -1; done
done
left "end"
