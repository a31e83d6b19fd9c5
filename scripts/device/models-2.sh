#!/usr/bin/env bash
# On the device machine, second call, within seconds of models-1.sh on the same warm machine
# (carry .devk, .gl and .devm/part-ab): SmolLM2 whole again, its CUDA model tests, an answer
# and a benchmark.
source scripts/device/prep.sh
[ -f /tmp/m/part-aa ] || { echo "part-aa is gone: the machine was not kept"; exit 3; }
cat /tmp/m/part-aa .devm/part-ab > /tmp/m/smollm2-135m.gguf && sha256sum /tmp/m/smollm2-135m.gguf
export VIBRANT_MODELS=/tmp/m
left "cuda_models"; timeout 200 /tmp/b/cuda_models --test-threads 1 --nocapture 2>&1 | grep -E "^test |test result|panicked|error|CUDA|8-bit|tokens" | tail -20
left "ask"; timeout 60 $V ask --backend cuda -m smollm2-135m --temp 0 -n 32 "What is the capital of France?" 2>&1 | tail -4
left "bench smollm2"; timeout 60 $V bench --backend cuda -m smollm2-135m -p 512 -n 128 -r 3 2>&1 | tail -3
left "end"
