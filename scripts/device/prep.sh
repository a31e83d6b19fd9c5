# Sourced at the start of every script of scripts/device/ on the device machine (the `device`
# tool runs them in the checkout's root, with $OUT for files to bring back): logs to
# $OUT/log.txt, unpacks the loaders (.gl, Debian's libvulkan1 and libEGL debs) and the bundle
# that scripts/device/bundle.sh made (.devk/b.tar.xz), and defines the helpers below.
#
# The ignored folders it reads are made here, once per checkout (list them in
# .git/info/exclude):
#   .gl:       o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
#              mkdir -p .gl /tmp/amd64/partial && apt-get $o update && (cd .gl && apt-get $o
#              download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
#   .anchors:  cp ../shared/anchors/llama-bench-cuda.xz .anchors/ (only for llama's calls:
#              it is 42 of the 64 MiB a call may carry)
#   .devm:     python3 scripts/fetch_model.py smollm2-135m, then split -b 50M of its file
#              into .devm/part- (models-1.sh and models-2.sh carry one piece each)
#   .devk:     scripts/device/bundle.sh, after cargo build --release --features cuda --bin
#              vibrant --tests
exec > >(tee -a "$OUT/log.txt") 2>&1
T0=$(date +%s)
left() { echo "[t=$(( $(date +%s) - T0 ))s] $*"; }
for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/lib64:${LD_LIBRARY_PATH:-}
mkdir -p /work && ln -sfn "$PWD" /work/main
if [ ! -x /tmp/b/vibrant ]; then mkdir -p /tmp/b && tar -xJf .devk/b.tar.xz -C /tmp/b; fi
V=/tmp/b/vibrant
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader
left "prep done"
# synth PRESET: writes /tmp/PRESET-q4_k_m.gguf in the background (pid in SYNTH_PID_PRESET)
declare -A SYNTH_PIDS
synth() {
    local m=/tmp/$1-q4_k_m.gguf
    if [ ! -f "$m" ]; then
        ( $V synth --preset "$1" --mix q4_k_m --out "$m.part" >/dev/null && mv "$m.part" "$m" ) &
        SYNTH_PIDS[$1]=$!
    fi
}
synth_wait() { local p=${SYNTH_PIDS[$1]:-}; [ -n "$p" ] && wait "$p"; left "synth $1 ready"; }
llama() {
    [ -x /tmp/llama-bench ] || { xz -dc .anchors/llama-bench-cuda.xz > /tmp/llama-bench && chmod +x /tmp/llama-bench; }
    timeout "${TL:-120}" /tmp/llama-bench -ngl 99 -fa 1 "$@" 2>&1 | grep -E '^\|'
}
vib() { timeout "${TL:-120}" $V bench --backend cuda "$@" 2>&1 | grep -vE '^\s*$'; }
