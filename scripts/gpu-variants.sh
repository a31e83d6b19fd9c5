#!/usr/bin/env bash
# Decode variants on one synthetic model, in one run on one machine:
#   scripts/gpu-variants.sh VIBRANT_BINARY OUT_DIR PRESET "VAR=value ..."...
# Each quoted group of environment settings gets a `bench -p 512 -n 128 -r 3`; GPU clocks
# and power are sampled meanwhile (nvidia-smi dmon, where present).
set -euo pipefail
bin=$1
out=$2
preset=$3
shift 3
model=/tmp/$preset-q4_k_m.gguf
[ -f "$model" ] || "$bin" synth --preset "$preset" --mix q4_k_m --out "$model"
command -v nvidia-smi >/dev/null && { nvidia-smi dmon -s pc -d 1 > "$out/dmon-$preset.txt" & }
for settings in "$@"; do
    echo "== $settings"
    env $settings "$bin" --device gpu -m "$model" bench -p 512 -n 128 -r 3 | tail -2
done
kill %1 2>/dev/null || true
