#!/usr/bin/env python3
"""Write reference vectors for vibrant's ggml block formats, computed by gguf-py (an
independent implementation: `pip install gguf numpy`).

Usage: scripts/quant_reference.py OUTDIR [--ggml GGML_DIR]

For every case NAME, OUTDIR gets NAME.bin (raw GGUF bytes) and NAME.f32 (little-endian
float32), and OUTDIR/manifest.tsv one line: kind, name, type, element count, source.
  real      blocks copied from a real model's tensor; NAME.f32 = gguf-py's dequantization
  random    random but valid blocks (f16 scales forced finite and moderate); likewise
  quantize  NAME.f32 = random input, NAME.bin = its quantization by gguf-py (the types whose
            quantizer gguf-py implements, all bit-exact with ggml's reference) or, with
            --ggml, by ggml's own reference quantizers for the k-quants
  acts      likewise for ggml's Q8_K activation blocks (with --ggml)

GGML_DIR is the ggml folder of a llama.cpp source tree, e.g. from the llama-cpp-python
source package (`pip download --no-deps --no-binary llama-cpp-python
llama-cpp-python==0.3.36`, unpacked: llama_cpp_python-0.3.36/vendor/llama.cpp/ggml); its
ggml-quants.c is compiled with the system C compiler into a small program run on the input.

Real models are read from $VIBRANT_MODELS, else ~/.local/share/vibrant/models (see
scripts/fetch_model.py); every one of them must be present.
"""
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from gguf import GGUFReader, GGMLQuantizationType as T
from gguf.constants import GGML_QUANT_SIZES
from gguf.quants import dequantize, quantize

TYPES = [T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0,
         T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K]

# Byte offsets of the f16 scale fields inside each block (ggml-common.h).
F16_FIELDS = {
    T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0],
    T.Q2_K: [80, 82], T.Q3_K: [108], T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208],
}

MODELS = ["smollm2-135m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b-q4"]

# Per (model, type): this many tensors, rows of each, and elements of each row at most.
TENSORS_PER_TYPE = 2
ROWS_PER_TENSOR = 2
MAX_ROW_ELEMENTS = 2048

RANDOM_ELEMENTS = {"block": 64, "k": 16, "float": 1024}  # legacy blocks, k-quant blocks, values
QUANTIZE_ELEMENTS = 1024


def models_dir() -> Path:
    env = os.environ.get("VIBRANT_MODELS")
    if env:
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "vibrant" / "models"


class Writer:
    def __init__(self, out: Path):
        self.out = out
        self.lines = []

    def case(self, kind: str, name: str, qtype: T, raw: np.ndarray, values: np.ndarray, source: str):
        raw = np.ascontiguousarray(raw).view(np.uint8).reshape(-1)
        values = np.ascontiguousarray(values, dtype="<f4").reshape(-1)
        block, size = GGML_QUANT_SIZES[qtype]
        assert raw.size == values.size // block * size, name
        (self.out / f"{name}.bin").write_bytes(raw.tobytes())
        (self.out / f"{name}.f32").write_bytes(values.tobytes())
        self.lines.append(f"{kind}\t{name}\t{qtype.name}\t{values.size}\t{source}\n")

    def finish(self):
        (self.out / "manifest.tsv").write_text("kind\tname\ttype\tn\tsource\n" + "".join(self.lines))


def spread(items, count):
    """`count` items spread evenly over `items`, first and last included."""
    if len(items) <= count:
        return list(items)
    return [items[round(i * (len(items) - 1) / (count - 1))] for i in range(count)]


def real_cases(w: Writer):
    for model in MODELS:
        path = models_dir() / f"{model}.gguf"
        if not path.exists():
            sys.exit(f"missing model {path}: run scripts/fetch_model.py {model}")
        reader = GGUFReader(path)
        for qtype in TYPES:
            tensors = [t for t in reader.tensors if t.tensor_type == qtype]
            for t in spread(tensors, TENSORS_PER_TYPE):
                block, size = GGML_QUANT_SIZES[qtype]
                row_len = int(t.shape[0])
                n_rows = int(t.n_elements) // row_len
                data = t.data.view(np.uint8).reshape(n_rows, row_len // block * size)
                take = min(row_len, MAX_ROW_ELEMENTS // block * block)
                for r in spread(range(n_rows), ROWS_PER_TENSOR):
                    raw = data[r, : take // block * size]
                    name = f"real-{model}-{t.name}-row{r}".replace(".", "_")
                    w.case("real", name, qtype, raw, dequantize(raw, qtype), f"{model}:{t.name}:row {r}")


def moderate_f16(rng, n):
    """Finite f16 values of magnitude 2^-14..2^2 with random signs, and a few zeros."""
    v = np.exp2(rng.uniform(-14, 2, n)) * rng.choice([-1.0, 1.0], n)
    v[rng.random(n) < 0.05] = 0.0
    return v.astype("<f2")


def random_blocks(rng, qtype):
    block, size = GGML_QUANT_SIZES[qtype]
    n_blocks = RANDOM_ELEMENTS["k" if block == 256 else "block"]
    raw = rng.integers(0, 256, (n_blocks, size), dtype=np.uint8)
    for off in F16_FIELDS[qtype]:
        raw[:, off:off + 2] = moderate_f16(rng, n_blocks).view(np.uint8).reshape(n_blocks, 2)
    return raw


def random_floats(rng, qtype):
    """Random bit patterns (normals, subnormals, zeros of both signs), with every
    infinity or NaN pattern made finite by clearing its exponent's top bit."""
    n = RANDOM_ELEMENTS["float"]
    if qtype == T.F32:
        bits = rng.integers(0, 1 << 32, n, dtype=np.uint64).astype(np.uint32)
        bits[:4] = [0, 0x80000000, 1, 0x807fffff]
        special = (bits & 0x7F800000) == 0x7F800000
        bits[special] &= ~np.uint32(0x40000000)
        return bits.astype("<u4")
    bits = rng.integers(0, 1 << 16, n, dtype=np.uint32).astype(np.uint16)
    bits[:4] = [0, 0x8000, 1, 0x83ff]
    exp_mask, top = (0x7C00, 0x4000) if qtype == T.F16 else (0x7F80, 0x4000)
    special = (bits & exp_mask) == exp_mask
    bits[special] &= ~np.uint16(top)
    return bits.astype("<u2")


def random_cases(w: Writer):
    rng = np.random.default_rng(20240611)
    for qtype in TYPES:
        if qtype in F16_FIELDS:
            raw = random_blocks(rng, qtype)
        else:
            raw = random_floats(rng, qtype)
        values = dequantize(raw.view(np.uint8).reshape(-1), qtype)
        assert np.isfinite(values).all(), qtype.name
        w.case("random", f"random-{qtype.name}", qtype, raw, values, "numpy default_rng(20240611)")


def quantize_cases(w: Writer):
    rng = np.random.default_rng(7)
    x = rng.standard_normal(QUANTIZE_ELEMENTS).astype(np.float32)
    # Some structure real weights have: outliers, a constant block, a block of one sign.
    x[::97] *= 8.0
    x[32:64] = 0.25
    x[64:96] = np.abs(x[64:96])
    for qtype in [T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0]:
        w.case("quantize", f"quantize-{qtype.name}", qtype, quantize(x, qtype), x, "numpy default_rng(7)")


# Runs ggml's reference quantizers: `harness IN N OUT` reads N floats from IN and writes
# OUT.<type> for each type. ggml-quants.c needs four functions of ggml.c it never calls here.
GGML_HARNESS = r"""
#include <stdio.h>
#include <stdlib.h>
#include "ggml.h"
#include "ggml-quants.h"
#include "ggml-common.h"
void ggml_abort(const char *file, int line, const char *fmt, ...) { abort(); }
size_t ggml_row_size(enum ggml_type type, int64_t ne) { abort(); }
const char *ggml_type_name(enum ggml_type type) { abort(); }
size_t ggml_type_size(enum ggml_type type) { abort(); }
typedef void (*quantize_fn)(const float *, void *, int64_t);
int main(int argc, char **argv) {
    int n = atoi(argv[2]);
    float *x = malloc(n * sizeof(float));
    FILE *f = fopen(argv[1], "rb");
    if (fread(x, sizeof(float), n, f) != (size_t)n) return 1;
    fclose(f);
    struct { const char *name; size_t size; quantize_fn fn; } types[] = {
        {"Q2_K", sizeof(block_q2_K), (quantize_fn)quantize_row_q2_K_ref},
        {"Q3_K", sizeof(block_q3_K), (quantize_fn)quantize_row_q3_K_ref},
        {"Q4_K", sizeof(block_q4_K), (quantize_fn)quantize_row_q4_K_ref},
        {"Q5_K", sizeof(block_q5_K), (quantize_fn)quantize_row_q5_K_ref},
        {"Q6_K", sizeof(block_q6_K), (quantize_fn)quantize_row_q6_K_ref},
        {"Q8_K", sizeof(block_q8_K), (quantize_fn)quantize_row_q8_K_ref},
    };
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
        size_t bytes = n / QK_K * types[i].size;
        void *y = calloc(bytes, 1);
        types[i].fn(x, y, n);
        char path[4096];
        snprintf(path, sizeof path, "%s.%s", argv[3], types[i].name);
        f = fopen(path, "wb");
        fwrite(y, 1, bytes, f);
        fclose(f);
    }
    return 0;
}
"""


def varied_blocks(rng, n_blocks):
    """Blocks of 256 drawn from distributions that stress the scale searches differently."""
    blocks = []
    for i in range(n_blocks):
        kind = i % 7
        if kind == 0:
            v = rng.standard_normal(256) * 10 ** rng.uniform(-4, 2)
        elif kind == 1:
            v = rng.standard_t(2, 256)
        elif kind == 2:
            v = rng.uniform(-1, 1, 256) * (rng.random(256) < 0.3)
        elif kind == 3:
            v = np.round(rng.standard_normal(256) * 4) / 4
        elif kind == 4:
            v = rng.laplace(0, 0.02, 256) + 0.05
        elif kind == 5:
            v = np.full(256, [0.0, 0.3, -2.0][i % 3])
        else:
            v = rng.standard_normal(256)
            v[rng.integers(0, 256, 3)] *= 50
        blocks.append(v)
    return np.concatenate(blocks).astype(np.float32)


def ggml_cases(w: Writer, ggml: Path):
    x = varied_blocks(np.random.default_rng(11), 49)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "harness.c").write_text(GGML_HARNESS)
        subprocess.run(["cc", "-O2", "-I", ggml / "include", "-I", ggml / "src", "-o", tmp / "harness",
                        tmp / "harness.c", ggml / "src" / "ggml-quants.c", "-lm"], check=True)
        x.tofile(tmp / "in.f32")
        subprocess.run([tmp / "harness", tmp / "in.f32", str(x.size), tmp / "out"], check=True)
        for qtype in [T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K]:
            raw = np.fromfile(tmp / f"out.{qtype.name}", dtype=np.uint8)
            w.case("quantize", f"ggml-{qtype.name}", qtype, raw, x, f"ggml quantize_row_{qtype.name.lower()[:-1]}K_ref")
        # Q8_K is no tensor type, so gguf-py knows no size for it: 292-byte blocks of 256.
        raw = np.fromfile(tmp / "out.Q8_K", dtype=np.uint8)
        assert raw.size == x.size // 256 * 292
        (w.out / "ggml-Q8_K.bin").write_bytes(raw.tobytes())
        (w.out / "ggml-Q8_K.f32").write_bytes(x.tobytes())
        w.lines.append(f"acts\tggml-Q8_K\tQ8_K\t{x.size}\tggml quantize_row_q8_K_ref\n")


def main():
    args = sys.argv[1:]
    ggml = None
    if len(args) == 3 and args[1] == "--ggml":
        ggml = Path(args[2])
        args = args[:1]
    if len(args) != 1:
        sys.exit(__doc__)
    out = Path(args[0])
    out.mkdir(parents=True, exist_ok=True)
    w = Writer(out)
    real_cases(w)
    random_cases(w)
    quantize_cases(w)
    if ggml is not None:
        ggml_cases(w, ggml)
    w.finish()


if __name__ == "__main__":
    main()
