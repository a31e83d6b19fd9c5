#!/usr/bin/env bash
# Packs the release CUDA build (`cargo build --release --features cuda --bin vibrant --tests`)
# and its CUDA test binaries into .devk/b.tar.xz (an ignored folder) for the device machine;
# any variant binaries put in /tmp/v/ go too.
set -euo pipefail
cd "$(dirname "$0")/../.." && mkdir -p .devk
rm -rf /tmp/bundle && mkdir -p /tmp/bundle
cp target/release/vibrant /tmp/bundle/
for t in cuda_kernels cuda_models cuda_hang; do
    f=$(ls -t target/release/deps/$t-* | grep -v '\.d$' | head -1)
    cp "$f" /tmp/bundle/$t
done
cp /tmp/v/* /tmp/bundle/ 2>/dev/null || true
strip /tmp/bundle/*
tar -cJf .devk/b.tar.xz -C /tmp/bundle .
ls -la .devk/b.tar.xz
