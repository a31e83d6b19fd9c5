#!/usr/bin/env bash
# Builds llama.cpp's llama-server for CUDA (sm_90: the H100/H200 device machines) on a machine
# with no GPU, from the same source as ../shared/anchors (llama-cpp-python==0.3.36, commit
# 0c1e570) and the CUDA 13.0 toolkit's wheels on the package index; about 22 minutes on 2 cores.
# Leaves DIR/llama-server-cuda.xz, to copy to .anchors/ and carry to the device machine for
# scripts/device/serve.sh. Usage: build-llama-server-cuda.sh DIR
set -euo pipefail
out=$(realpath -m "${1:?usage: build-llama-server-cuda.sh DIR}"); mkdir -p "$out"; cd "$out"
command -v cmake >/dev/null && command -v ninja >/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cmake ninja-build >/dev/null; }
[ -f llama_cpp_python-0.3.36.tar.gz ] || python3 -m pip download -q --no-deps --no-binary llama-cpp-python llama-cpp-python==0.3.36 -d .
[ -d src ] || { tar xzf llama_cpp_python-0.3.36.tar.gz; mv llama_cpp_python-0.3.36/vendor/llama.cpp src; rm -rf llama_cpp_python-0.3.36; }
# Every wheel pinned to 13.0: nvcc's own dependencies (nvvm, crt) otherwise come newer, and
# their PTX is a version the 13.0 ptxas rejects.
tk=$out/tk/nvidia/cu13
[ -x "$tk/bin/nvcc" ] || python3 -m pip install -q --target "$out/tk" \
  nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 \
  nvidia-cuda-runtime==13.0.96 nvidia-cublas==13.0.2.14 nvidia-cuda-cccl==13.0.85
for l in cudart cublas cublasLt; do [ -e "$tk/lib/lib$l.so" ] || ln -s "lib$l.so.13" "$tk/lib/lib$l.so"; done
# nvcc links from lib64; the wheels install lib.
[ -e "$tk/lib64" ] || ln -s lib "$tk/lib64"
# No libcuda in the wheels: without VMM, ggml-cuda does not link it. libstdc++ static, as the
# device machine's may be older than this one's.
cmake -S src -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
  -DGGML_NATIVE=OFF -DBUILD_SHARED_LIBS=OFF -DGGML_CUDA_NO_VMM=ON -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_UI=OFF \
  -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF \
  -DCUDAToolkit_ROOT="$tk" -DCMAKE_CUDA_COMPILER="$tk/bin/nvcc" \
  -DCMAKE_EXE_LINKER_FLAGS="-static-libstdc++ -static-libgcc" >/dev/null
cmake --build build -j"$(nproc)" --target llama-server
strip -o llama-server-cuda build/bin/llama-server && xz -6 -T0 -c llama-server-cuda > llama-server-cuda.xz
echo "built: $out/llama-server-cuda.xz"
