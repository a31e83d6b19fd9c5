#!/usr/bin/env python3
"""Regenerates the llama.cpp reference data of tests/data (see tests/data/README.md).

Usage: tests/data/make_references.py STEP [STEP ...]   (STEP: tokenizer, greedy, families)

Needs llama.cpp's CPU tools (../shared/anchors/build-llama-cpu.sh) in $LLAMA_BIN (default
/work/llama/bin), the real models of scripts/fetch_model.py, and, for `families`, vibrant
built in release mode (target/release/vibrant). Only the Python standard library is used.
"""
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

DATA = Path(__file__).resolve().parent
REPO = DATA.parent.parent
LLAMA_BIN = Path(os.environ.get("LLAMA_BIN", "/work/llama/bin"))
LLAMA_COMMIT = "0c1e570"  # llama-cpp-python==0.3.36's vendored llama.cpp


def models_dir() -> Path:
    env = os.environ.get("VIBRANT_MODELS")
    if env:
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "vibrant" / "models"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_json(path: Path, value) -> None:
    # Indented objects, but each list of numbers on one line: small, readable diffs.
    text = json.dumps(value, ensure_ascii=False, indent=1)
    text = re.sub(r"\[\s*([-+0-9.eE,\s]*?)\s*\]", lambda m: "[" + re.sub(r"\s+", " ", m.group(1)) + "]", text)
    path.write_text(text + "\n", encoding="utf-8")
    print(f"wrote {path.relative_to(REPO)}")


# --- tokenizer ---------------------------------------------------------------------------

# Inputs chosen to cross every path of a SentencePiece tokenizer: merges by score, byte
# fallback, whitespace runs (Gemma's vocabulary has tokens for runs of spaces, tabs and
# newlines), digits (split one per token), scripts outside Latin, emoji with joiners, and the
# text of special tokens, which only `parse_special` turns into their ids.
TOKENIZER_TEXTS = [
    "Hello world",
    " Hello world",
    "Hello World!",
    "  Hello, world!  ",
    "The capital of France is",
    "Äpfel und Birnen, s'il vous plaît: Cửa Việt",
    "нещо на Български и Ελληνικά",
    "北京欢迎你。日本語のテキストです。한국어 문장입니다.",
    "🦙 llama 😶‍🌫️ ✅ 👍🏽 🚀",
    "Hello, y'all! How are you 😁 ?我想在apple工作1314151天～",
    "3",
    "33",
    "333333333",
    "1234567890 3.14159 -42 1e-6 2024-01-01",
    " ",
    "  ",
    "    ",
    "\t",
    "\t\t\tx",
    "\n",
    "\n\n",
    "\n\n\n\n",
    "a  b   c    d     e",
    "end   ",
    "line one\r\nline two\r\n",
    "    Hello\n    Hello",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
    "fn main() {\n\tlet v: Vec<u32> = (0..10).map(|x| x * x).collect();\n\tprintln!(\"{v:?}\");\n}\n",
    "<html><body><h1>Title</h1>\n<p class=\"x\">&amp; text</p></body></html>",
    "SELECT name, COUNT(*) FROM users WHERE age >= 18 GROUP BY name;",
    "<bos>",
    "<eos>",
    "<pad><unk><mask>",
    "<start_of_turn>user\nWhat is the capital of France?<end_of_turn>\n<start_of_turn>model\n",
    "text<end_of_turn>more",
    "<start_of_image>",
    "!!!!!!",
    "' era",
    "\u00a0non-breaking\u2009thin\u200bzero-width",
    "\u0001\u007f control bytes",
    "ﬁ ligature, ½ fraction, Ｆｕｌｌｗｉｄｔｈ",
]


def llama_tokenize(model: Path, text: str, parse_special: bool, bos: bool) -> list:
    with tempfile.NamedTemporaryFile("wb", suffix=".txt", delete=False) as f:
        f.write(text.encode("utf-8"))
        name = f.name
    try:
        cmd = [str(LLAMA_BIN / "llama-tokenize"), "-m", str(model), "-f", name, "--no-escape",
               "--ids", "--log-disable"]
        if not bos:
            cmd.append("--no-bos")
        if not parse_special:
            cmd.append("--no-parse-special")
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    finally:
        os.unlink(name)
    return json.loads(out.strip().splitlines()[-1])


def tokenizer() -> None:
    name = "gemma3-270m"
    model = models_dir() / f"{name}.gguf"
    cases = []
    for text in TOKENIZER_TEXTS:
        cases.append({
            "text": text,
            "ids": llama_tokenize(model, text, parse_special=False, bos=False),
            "ids_parse_special": llama_tokenize(model, text, parse_special=True, bos=False),
        })
    # The BOS behaviour: llama-tokenize without --no-bos adds what the file asks for.
    bos_text = "The capital of France is"
    write_json(DATA / f"{name}-tokenizer.json", {
        "model": name,
        "sha256": sha256_of(model),
        "produced_by": f"llama-tokenize -m {name}.gguf -f TEXT --no-escape --ids --no-bos "
                       f"[--no-parse-special] (llama.cpp {LLAMA_COMMIT}); see README.md",
        "with_bos": {"text": bos_text,
                     "ids": llama_tokenize(model, bos_text, parse_special=True, bos=True)},
        "cases": cases,
    })


STEPS = {"tokenizer": tokenizer}


def main() -> None:
    steps = sys.argv[1:]
    if not steps or any(s not in STEPS for s in steps):
        sys.exit(__doc__)
    for step in steps:
        STEPS[step]()


if __name__ == "__main__":
    main()
