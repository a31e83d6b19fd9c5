#!/usr/bin/env bash
# On the device machine: `vibrant serve --backend cuda` beside llama.cpp's CUDA llama-server
# (scripts/build-llama-server-cuda.sh, copied to .anchors/), each under 1, 4, 16 and 64
# concurrent streams with as many slots (scripts/serve_bench.py: streamed chat, 128 tokens an
# answer, 2 rounds), on the 3B shape, one server at a time, each started fresh; then vibrant's
# single-sequence decode. Carry .devk, .gl and .anchors/llama-server-cuda.xz.
source scripts/device/prep.sh
command -v python3 >/dev/null || { echo "no python3 here"; exit 3; }
xz -dc .anchors/llama-server-cuda.xz > /tmp/llama-server && chmod +x /tmp/llama-server
synth qwen2.5-3b; synth_wait qwen2.5-3b; M=/tmp/qwen2.5-3b-q4_k_m.gguf
# Starts a server (the command after the port), waits for /health, runs the streams, stops it.
serve_run() {
  local label=$1 n=$2 port=$3; shift 3
  "$@" > /tmp/serve-$label-$n.log 2>&1 &
  local pid=$!
  for i in $(seq 90); do
    python3 -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$port/health')" 2>/dev/null && break
    sleep 1
  done
  python3 scripts/serve_bench.py http://127.0.0.1:$port --warmup --model q3b >/dev/null 2>&1
  left "$label N=$n"
  timeout 150 python3 scripts/serve_bench.py http://127.0.0.1:$port -n $n --rounds 2 \
    --max-tokens 128 --model q3b --label "$label" 2>&1 | tail -2
  kill $pid; wait $pid 2>/dev/null
}
for N in 1 4 16 64; do
  serve_run vibrant $N $((8200 + N)) $V serve --backend cuda -m $M --port $((8200 + N)) \
    --parallel $N --ctx-size 512
  serve_run llama-server $N $((8300 + N)) /tmp/llama-server -m $M --host 127.0.0.1 \
    --port $((8300 + N)) -np $N -c $((512 * N)) -ngl 99 -fa on --jinja
done
left "bench"; vib -m $M -p 0 -n 128 -r 3 | tail -1
left "end"
