#!/usr/bin/env bash
# On the device machine, first of two calls (carry .devk, .gl and .devm/part-aa, the first 50 MB
# of SmolLM2's file from `split -b 50M`): keeps the piece in /tmp/m and runs the hang test.
source scripts/device/prep.sh
mkdir -p /tmp/m && cp .devm/part-aa /tmp/m/ && left "part-aa kept"
left "cuda_hang"; timeout 60 /tmp/b/cuda_hang 2>&1 | grep -E "^test |test result|panicked" | tail -5
left "end"
