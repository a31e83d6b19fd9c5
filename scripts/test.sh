#!/usr/bin/env bash
# The whole test suite, on a fresh machine too: installs what the tests need (lavapipe, the
# Vulkan driver that runs the GPU kernels on the CPU when there is no GPU; the real models),
# then runs formatting, lints and every test in release mode.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if ! ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1 || ! ldconfig -p | grep -q libvulkan.so.1; then
    echo "installing lavapipe (mesa-vulkan-drivers) and the Vulkan loader"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mesa-vulkan-drivers libvulkan1 >/dev/null
fi
# Every model a test opens.
python3 scripts/fetch_model.py all
# Mesa's drivers warn on every device open without it; nothing is drawn, so any directory does.
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"
cargo fmt --check
cargo clippy --release --all-targets -- -D warnings
cargo test --release
