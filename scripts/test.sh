#!/usr/bin/env bash
# The whole test suite, on a fresh machine too: installs what the tests need (lavapipe, the
# Vulkan driver that runs the GPU kernels on the CPU when there is no GPU; Mesa's OpenGL
# through EGL; the real models), then runs formatting, lints and every test in release mode,
# and the GPU tests a second time on OpenGL.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
if ! ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1 || ! ldconfig -p | grep -q libvulkan.so.1; then
    missing+=(mesa-vulkan-drivers libvulkan1)
fi
# wgpu's GL backend needs only EGL (libglvnd's libEGL, Mesa's EGL vendor library) and Mesa's
# llvmpipe driver; with no display it uses EGL's surfaceless platform, so no X server, no GLES
# library and no settings.
if ! ldconfig -p | grep -q libEGL.so.1 || ! ldconfig -p | grep -q libEGL_mesa.so.0 \
    || ! ls /usr/lib/*/dri/swrast_dri.so >/dev/null 2>&1; then
    missing+=(libegl1 libegl-mesa0 libgl1-mesa-dri)
fi
# tests/cuda_decode_host.rs compiles the CUDA kernels' weight decoders for the host.
command -v c++ >/dev/null 2>&1 || missing+=(g++)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
fi
# Every model a test opens.
python3 scripts/fetch_model.py all
# tests/serve.rs drives `vibrant serve` with the official OpenAI client too.
python3 -c "import openai" 2>/dev/null || python3 -m pip install --quiet openai \
    || python3 -m pip install --quiet --break-system-packages openai
# Mesa's drivers warn on every device open without it; nothing is drawn, so any directory does.
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"
cargo fmt --check
cargo clippy --release --all-targets -- -D warnings
# The CUDA backend builds and lints here too, and its kernels compile with NVRTC (from the
# package index; NVRTC needs no GPU or driver). Its other tests need an NVIDIA GPU: they ran
# where BENCHMARKS.md says.
cargo clippy --release --all-targets --features cuda -- -D warnings
nvrtc=.whl/nvrtc
[ -f $nvrtc/nvidia/cu13/lib/libnvrtc.so.13 ] \
    || python3 -m pip install --quiet --target $nvrtc nvidia-cuda-nvrtc==13.0.88
LD_LIBRARY_PATH=$PWD/$nvrtc/nvidia/cu13/lib cargo test --release --features cuda --test cuda_nvrtc
cargo test --release
# GL is the one API here without subgroups, f16 or cooperative matrices: the kernels' fallbacks
# run there (62 s for the kernels and 181 s for the model's on a busy 2-core machine).
export VIBRANT_TEST_BACKEND=gl
cargo test --release --test gpu_kernels
cargo test --release --test pipelined_greedy on_the_gpu
