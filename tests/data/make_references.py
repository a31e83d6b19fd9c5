#!/usr/bin/env python3
"""Regenerates the llama.cpp reference data of tests/data (see tests/data/README.md).

Usage: tests/data/make_references.py STEP [STEP ...]   (STEP: tokenizer, greedy, perplexity, families,
       repacked)
       tests/data/make_references.py families PRESET ...   (only those tiny presets)

Needs llama.cpp's CPU tools (../shared/anchors/build-llama-cpu.sh) in $LLAMA_BIN (default
/work/llama/bin), the real models of scripts/fetch_model.py, and, for `families`, vibrant
built in release mode (target/release/vibrant), and, for `repacked`, cargo. Only the Python
standard library is used.
"""
import hashlib
import json
import math
import os
import re
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
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


# --- greedy completions --------------------------------------------------------------------

# Plain completion prompts (the base model has no chat template). The last one is over 600
# tokens: Gemma 3's local layers see only the last 512 positions, its global layers (every
# sixth) all of them, and the ending asks for a name only the first sentences give.
LONG_PROMPT = (
    "The keeper of the North Point lighthouse in the winter of 1887 was a woman named Margaret "
    "Ellison, who had taken over the post from her father when his eyes began to fail. The "
    "lighthouse stood on a narrow spit of black rock at the mouth of the bay, and the only way "
    "to reach it at high tide was by the small rowing boat that was tied below the landing "
    "steps. Every evening, an hour before sunset, she climbed the one hundred and twelve steps "
    "of the tower with a can of paraffin in one hand and a lantern in the other. She trimmed "
    "the wicks, polished the great glass lens until it shone, and wound the clockwork that "
    "turned the light, so that the beam swept across the water once every twenty seconds. "
    "Ships coming in from the open sea counted the seconds between the flashes, because each "
    "lighthouse on the coast had its own rhythm, and the rhythm told a captain where he was as "
    "surely as a signpost tells a traveller on land.\n\n"
    "The winter of that year was the worst anyone in the village could remember. Storms came "
    "one after another from the north-east, and the waves broke over the rock so high that the "
    "spray froze on the windows of the lamp room. For eleven days in January no boat could "
    "cross to the mainland, and the supplies in the storeroom ran low: a sack of flour, some "
    "salted fish, a few potatoes, and the last two barrels of paraffin. The keeper rationed "
    "the food, but she never rationed the oil, because a lighthouse that goes dark on a night "
    "of storm is worse than no lighthouse at all. Captains who expect a light and do not see "
    "it assume they are somewhere else, and steer accordingly.\n\n"
    "On the ninth night of the storm, a little after two in the morning, she saw the lights "
    "of a ship far too close to the reef that runs south from the point. It was a coal "
    "steamer, low in the water, and it was turning the wrong way, towards the rocks rather "
    "than away from them. There was no telegraph on the rock and no other keeper to send for "
    "help. She lit the emergency flares, one after another, and fired the signal gun that "
    "hung by the door, until at last the steamer's whistle answered and the ship began, very "
    "slowly, to turn. In the morning the sea was calmer, and the steamer lay safely at anchor "
    "in the bay. Its captain rowed across to the rock himself to thank her, and he brought "
    "with him a barrel of oil, a crate of oranges and a letter for the harbour board.\n\n"
    "The harbour board printed the letter in the local newspaper, and for a few weeks the "
    "keeper was famous. People wrote to her from towns she had never heard of, and a painter "
    "came from the city to make her portrait, which still hangs in the town hall. But she "
    "went on with her work as before, climbing the tower every evening, trimming the wicks, "
    "winding the clock, and writing the weather in her log book in small, careful letters. "
    "She kept the light for thirty-one more years, and when she finally retired, the board "
    "gave her a silver watch and a small cottage on the hill above the harbour, from which "
    "she could see the beam sweep across the bay every twenty seconds until the end of her "
    "life.\n\n"
    "Today the lighthouse is automatic. A small electric lamp has replaced the paraffin "
    "wicks, and a computer in the harbour office checks that it is working. Visitors can "
    "climb the tower in summer, and a brass plate at the top of the stairs records the names "
    "of all the keepers who served there. The name at the top of the list, the one the guides "
    "always point to first, is that of the keeper who saved the coal steamer in the great "
    "storm of 1887. Her name was"
)

GREEDY_PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "Here is a list of the planets of the solar system, in order from the Sun:\n1. Mercury\n2.",
    "Question: At what temperature does water boil at sea level?\nAnswer:",
    "Once upon a time, in a small village by the sea, there lived",
    LONG_PROMPT,
    # The same story, told on past the name: 32 tokens that still depend on all of it.
    LONG_PROMPT + " Margaret Ellison.\n\nIn the years after her retirement,",
]

SERVER_PORT = 8093
SEED = 42


def post(path: str, body: dict) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{SERVER_PORT}{path}", data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as response:
        return json.loads(response.read())


def with_server(model: Path, n_ctx: int, work):
    cmd = [str(LLAMA_BIN / "llama-server"), "-m", str(model), "-c", str(n_ctx), "-np", "1",
           "-t", "2", "--no-repack", "--seed", str(SEED), "--host", "127.0.0.1",
           "--port", str(SERVER_PORT)]
    print(" ".join(cmd[1:]))
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{SERVER_PORT}/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        else:
            sys.exit("llama-server did not come up")
        return work()
    finally:
        server.terminate()
        server.wait()


def greedy_ids(prompt: str, n_predict: int) -> dict:
    """Greedy ids from llama-server's /completion, with each step's two most likely tokens."""
    prompt_ids = post("/tokenize", {"content": prompt, "add_special": True,
                                    "parse_special": True})["tokens"]
    result = post("/completion", {
        "prompt": prompt, "n_predict": n_predict, "temperature": 0, "top_k": 1, "seed": SEED,
        "cache_prompt": False, "return_tokens": True, "n_probs": 2,
    })
    probs = result["completion_probabilities"]
    ids = result["tokens"]
    assert [p["id"] for p in probs] == ids, f"the probabilities are of other tokens: {result}"
    # log p(first) - log p(second): a small margin is a near-tie that rounding may flip.
    margins = [round(p["top_logprobs"][0]["logprob"] - p["top_logprobs"][1]["logprob"], 4)
               for p in probs]
    assert all(p["top_logprobs"][0]["id"] == i for p, i in zip(probs, ids)), "not greedy"
    return {"prompt": prompt, "prompt_ids": prompt_ids, "ids": ids, "text": result["content"],
            "margins": margins, "stop": result.get("stop_type", "")}


def greedy_ids_stepwise(prompt: str, n_predict: int) -> dict:
    """Greedy ids as greedy_ids gives them, each step's margin from a request of its own:
    the server merges the probabilities of tokens that end inside a UTF-8 character (the
    tiny models' byte tokens) into one entry, so one request cannot give them per token.
    Where the one token is itself an incomplete character, the server gives none: the
    margin is null there."""
    prompt_ids = post("/tokenize", {"content": prompt, "add_special": True,
                                    "parse_special": True})["tokens"]
    whole = post("/completion", {
        "prompt": prompt_ids, "n_predict": n_predict, "temperature": 0, "top_k": 1,
        "seed": SEED, "cache_prompt": False, "return_tokens": True,
    })
    ids, margins = [], []
    for _ in range(n_predict):
        step = post("/completion", {
            "prompt": prompt_ids + ids, "n_predict": 1, "temperature": 0, "top_k": 1,
            "seed": SEED, "cache_prompt": False, "return_tokens": True, "n_probs": 2,
        })
        [token] = step["tokens"]
        ids.append(token)
        if not step.get("completion_probabilities"):
            margins.append(None)
            continue
        [probs] = step["completion_probabilities"]
        top = probs["top_logprobs"]
        assert token == probs["id"] == top[0]["id"], step
        margins.append(round(top[0]["logprob"] - top[1]["logprob"], 4))
    if ids != whole["tokens"]:
        sys.exit(f"{prompt!r}: stepwise greedy {ids} differs from one request's "
                 f"{whole['tokens']} (margins {margins})")
    return {"prompt": prompt, "prompt_ids": prompt_ids, "ids": ids, "margins": margins}


def llama_completion_text(model: Path, prompt: str, n_predict: int) -> str:
    """llama-completion's greedy text for the same prompt, as a cross-check of the server's."""
    # -p, not -f: llama.cpp drops the last newline of a prompt file.
    cmd = [str(LLAMA_BIN / "llama-completion"), "-m", str(model), "-p", prompt, "--no-escape",
           "-n", str(n_predict), "--temp", "0", "--top-k", "1", "--seed", str(SEED),
           "-no-cnv", "-t", "2", "--no-repack", "-c", "4096", "--no-display-prompt", "--simple-io"]
    out = subprocess.run(cmd, check=True, capture_output=True).stdout
    # It prints the generated text, then " [end of text]" where generation stopped at EOS.
    return out.decode("utf-8", errors="replace").replace(" [end of text]", "")


# Below this log-probability margin between the first and second token, the two tools'
# different summation orders may pick either (seen: 0.07 on the code prompt).
NEAR_TIE = 0.25


def check_against_llama_completion(model: Path, run: dict, n_predict: int) -> None:
    """The server's greedy tokens, up to the first near-tie, must read as llama-completion's."""
    text = llama_completion_text(model, run["prompt"], n_predict)
    ties = [i for i, m in enumerate(run["margins"]) if m < NEAR_TIE]
    sure = ties[0] if ties else len(run["ids"])
    prefix = post("/detokenize", {"tokens": run["ids"][:sure]})["content"]
    # It ends its output with blank lines.
    same = text.startswith(run["text"]) and not text[len(run["text"]):].strip()
    print(f"{len(run['prompt_ids'])} prompt tokens, {len(run['ids'])} generated ({run['stop']}), "
          f"first near-tie at {sure}; llama-completion's text is the same: {same}")
    run["llama_completion_text"] = text
    if not same and not text.startswith(prefix):
        sys.exit(f"llama-completion said {text!r}, llama-server {run['text']!r} up to a "
                 f"near-tie at token {sure}")


def greedy() -> None:
    name = "gemma3-270m"
    model = models_dir() / f"{name}.gguf"
    n_predict = 32

    def work():
        runs = [greedy_ids(p, n_predict) for p in GREEDY_PROMPTS]
        for run in runs:
            check_against_llama_completion(model, run, n_predict)
        return runs

    runs = with_server(model, 4096, work)
    write_json(DATA / f"{name}-greedy.json", {
        "model": name,
        "sha256": sha256_of(model),
        "produced_by": f"llama-server -c 4096 -np 1 -t 2 --no-repack --seed {SEED}, POST /completion "
                       f"{{temperature 0, top_k 1, n_predict {n_predict}, n_probs 2, "
                       f"return_tokens}} (llama.cpp {LLAMA_COMMIT}); checked against "
                       f"llama-completion --temp 0 --top-k 1 -n {n_predict} --no-repack up to "
                       f"the first margin under {NEAR_TIE}; see README.md",
        "bos_in_prompt_ids": True,
        "runs": runs,
    })


# --- perplexity ----------------------------------------------------------------------------

def run_logged(cmd: list, complete) -> str:
    """stdout + stderr of `cmd`, run again until `complete` accepts them. llama.cpp's tools
    log from a worker thread that the process may exit before it has written everything
    (llama.cpp issue 22142): on the tiny models, runs of a few milliseconds often lose the
    last lines. The figures are deterministic, so a complete rerun gives the same ones."""
    for _ in range(50):
        out = subprocess.run(cmd, check=True, capture_output=True, text=True)
        text = out.stdout + "\n" + out.stderr
        if complete(text):
            return text
    sys.exit(f"{' '.join(cmd)}: its output was cut short 50 times")


def llama_perplexity(model: Path, args: list) -> float:
    cmd = [str(LLAMA_BIN / "llama-perplexity"), "-m", str(model), "--no-repack", "-t", "2", *args]
    text = run_logged(cmd, lambda text: "Final estimate" in text)
    lines = [line for line in text.splitlines() if "Final estimate" in line]
    # "... Final estimate: PPL = 23.4854 +/- 2.54138"
    return float(lines[-1].split("PPL = ")[1].split()[0])


def perplexity() -> None:
    """llama-perplexity's figures, as tests/fidelity.rs compares them (chunks of 128 tokens,
    BOS at the start of each), plus chunks of 1024 over a longer text, whose scored second
    halves (positions 512..1023) all need the 512-token sliding window; and what a model
    with the window or the local layers' RoPE base wrong would score there."""
    name = "gemma3-270m"
    model = models_dir() / f"{name}.gguf"
    short = ["-f", "tests/data/perplexity.txt", "-c", "128"]
    long = ["-f", "tests/data/perplexity-long.txt", "-c", "1024"]
    broken = {
        "no sliding window": ["--override-kv", "gemma3.attention.sliding_window=int:4096"],
        "local RoPE base 1e6 (not 1e4)": ["--override-kv", "gemma3.rope.freq_base_swa=float:1000000"],
    }
    figures = []
    for args, what in [(short, "fidelity settings"), (long, "sliding window in use")]:
        figures.append({"args": " ".join(args), "what": what,
                        "ppl": llama_perplexity(model, args)})
        print(figures[-1])
    for what, extra in broken.items():
        for args in [short, long]:
            figures.append({"args": " ".join(args + extra), "what": f"broken: {what}",
                            "ppl": llama_perplexity(model, args + extra)})
            print(figures[-1])
    write_json(DATA / f"{name}-perplexity.json", {
        "model": name,
        "sha256": sha256_of(model),
        "produced_by": f"llama-perplexity -m {name}.gguf --no-repack -t 2 ARGS (llama.cpp "
                       f"{LLAMA_COMMIT}), run from the repository root; see README.md",
        "figures": figures,
    })


# --- synthetic families --------------------------------------------------------------------

FAMILIES = DATA / "families"
SYNTH_MIX = "q8_0"
SYNTH_SEED = 1
KLD_ARGS = ["-f", "tests/data/perplexity.txt", "-c", "64", "--chunks", "2"]
TINY_PROMPT = "The quick brown fox jumps over the lazy dog. "

GGUF_BLOCK = {0: (1, 4), 1: (1, 2), 8: (32, 34)}  # type id: (elements per block, bytes per block)


def gguf_tensors(path: Path) -> dict:
    """name -> (absolute byte offset, dims, ggml type id) of each tensor of a GGUF v3 file."""
    data = path.read_bytes()
    at = 0

    def take(fmt):
        nonlocal at
        values = struct.unpack_from("<" + fmt, data, at)
        at += struct.calcsize("<" + fmt)
        return values if len(values) > 1 else values[0]

    def string():
        nonlocal at
        n = take("Q")
        s = data[at:at + n].decode()
        at += n
        return s

    scalar = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q",
              12: "d"}

    def value(t):
        if t == 8:
            return string()
        if t == 9:
            inner, n = take("I"), take("Q")
            return [value(inner) for _ in range(n)]
        return take(scalar[t])

    assert data[:4] == b"GGUF" and take("4xI") == 3, f"{path}: not GGUF v3"
    n_tensors, n_kv = take("Q"), take("Q")
    alignment = 32
    for _ in range(n_kv):
        key = string()
        v = value(take("I"))
        if key == "general.alignment":
            alignment = v
    infos = []
    for _ in range(n_tensors):
        name = string()
        dims = [take("Q") for _ in range(take("I"))]
        infos.append((name, dims, take("I"), take("Q")))
    start = (at + alignment - 1) // alignment * alignment
    return {name: (start + offset, dims, ty) for name, dims, ty, offset in infos}


def tensor_bytes(dims: list, ty: int) -> int:
    per_block, block_bytes = GGUF_BLOCK[ty]
    n = 1
    for d in dims:
        n *= d
    return n // per_block * block_bytes


def patched(src: Path, dst: Path, name: str, edit) -> Path:
    """A copy of src whose tensor `name` is edit(bytes, dims, type id)."""
    offset, dims, ty = gguf_tensors(src)[name]
    data = bytearray(src.read_bytes())
    size = tensor_bytes(dims, ty)
    new = edit(bytes(data[offset:offset + size]), dims, ty)
    assert len(new) == size, name
    data[offset:offset + size] = new
    dst.write_bytes(bytes(data))
    return dst


def ones(old: bytes, dims, ty) -> bytes:
    assert ty == 0, "norm weights are F32"
    return struct.pack(f"<{len(old) // 4}f", *([1.0] * (len(old) // 4)))


def swap_outer(a: int, b: int):
    """Swaps slices a and b of the outermost dimension (experts, or row blocks)."""
    def edit(old: bytes, dims, ty) -> bytes:
        n = dims[-1]
        step = len(old) // n
        parts = [old[i * step:(i + 1) * step] for i in range(n)]
        parts[a], parts[b] = parts[b], parts[a]
        return b"".join(parts)
    return edit


def swap_halves(old: bytes, dims, ty) -> bytes:
    """Phi-3's fused ffn_up read as up-then-gate instead of gate-then-up."""
    half = len(old) // 2
    return old[half:] + old[:half]


# What each tiny model's oracle must tell apart: one feature of the family broken, either in
# the weights (a patched copy of the file) or in the metadata (llama.cpp's --override-kv).
BREAKS = {
    "llama-tiny": [
        ("attn_norm of layer 0 all ones", "blk.0.attn_norm.weight", ones),
        ("RoPE base 1e6, not 1e4", "llama.rope.freq_base=float:1000000", None),
    ],
    "gemma2-tiny": [
        ("post_attention_norm of layer 1 all ones", "blk.1.post_attention_norm.weight", ones),
        ("attention scores capped at 1e4, not 5", "gemma2.attn_logit_softcapping=float:10000",
         None),
        ("logits capped at 1e4, not 25", "gemma2.final_logit_softcapping=float:10000", None),
        ("no sliding window", "gemma2.attention.sliding_window=int:4096", None),
    ],
    "gemma3-tiny": [
        ("attn_q_norm of layer 0 all ones", "blk.0.attn_q_norm.weight", ones),
        ("post_ffw_norm of layer 2 all ones", "blk.2.post_ffw_norm.weight", ones),
        ("global RoPE base 1e4, not 1e6", "gemma3.rope.freq_base=float:10000", None),
        ("local RoPE base 1e6, not 1e4", "gemma3.rope.freq_base_swa=float:1000000", None),
        ("no sliding window", "gemma3.attention.sliding_window=int:4096", None),
    ],
    "qwen3-tiny": [
        ("attn_q_norm of layer 0 all ones", "blk.0.attn_q_norm.weight", ones),
        ("attn_k_norm of layer 3 all ones", "blk.3.attn_k_norm.weight", ones),
        ("RoPE base 1e4, not 1e6", "qwen3.rope.freq_base=float:10000", None),
    ],
    "qwen3moe-tiny": [
        ("experts 0 and 1 of blk.0.ffn_down_exps swapped", "blk.0.ffn_down_exps.weight",
         swap_outer(0, 1)),
        ("experts 2 and 5 of blk.3.ffn_up_exps swapped", "blk.3.ffn_up_exps.weight",
         swap_outer(2, 5)),
        ("2 experts a token, not 4", "qwen3moe.expert_used_count=int:2", None),
        ("attn_k_norm of layer 1 all ones", "blk.1.attn_k_norm.weight", ones),
    ],
    "phi3-tiny": [
        ("gate and up halves of blk.0.ffn_up swapped", "blk.0.ffn_up.weight", swap_halves),
        ("RoPE base 1e6, not 1e4", "phi3.rope.freq_base=float:1000000", None),
    ],
    "phi3-longrope-tiny": [
        ("short factors (original context 4096, not 32)",
         "phi3.rope.scaling.original_context_length=int:4096", None),
        ("attention factor 1, not 1.2", "phi3.rope.scaling.attn_factor=float:1.0", None),
    ],
    "mixtral-tiny": [
        ("experts 0 and 1 of blk.0.ffn_down_exps swapped", "blk.0.ffn_down_exps.weight",
         swap_outer(0, 1)),
        ("1 expert a token, not 2", "llama.expert_used_count=int:1", None),
        ("RoPE base 1e4, not 1e6", "llama.rope.freq_base=float:10000", None),
    ],
}


def kld_rows(path: Path):
    """The log-probability rows of a --kl-divergence-base file (see src/perplexity/logprobs.rs)."""
    data = path.read_bytes()
    assert data[:8] == b"_logits_"
    n_ctx, n_vocab, n_chunk = struct.unpack_from("<Iii", data, 8)
    at = 20 + 4 * n_ctx * n_chunk
    row_values = 2 * ((n_vocab + 1) // 2)
    rows = []
    for _ in range(n_chunk * (n_ctx - 1 - n_ctx // 2)):
        scale, min_lp = struct.unpack_from("<ff", data, at)
        values = struct.unpack_from(f"<{n_vocab}H", data, at + 8)
        rows.append([scale * v + min_lp for v in values])
        at += 8 + 2 * row_values
    assert at == len(data), f"{path}: {len(data) - at} bytes left over"
    return rows


def mean_entropy(path: Path) -> float:
    total = 0.0
    rows = kld_rows(path)
    for row in rows:
        ps = [math.exp(lp) for lp in row]
        z = sum(ps)
        total -= sum(p / z * math.log(p / z) for p in ps if p > 0)
    return total / len(rows)


def kl_from_base(model: Path, base: Path, extra: list) -> dict:
    cmd = [str(LLAMA_BIN / "llama-perplexity"), "-m", str(model), "--no-repack", "-t", "2",
           "--kl-divergence-base", str(base), "--kl-divergence", *extra]
    # Under 100 positions llama-perplexity prints no summary, only its table of running
    # figures: chunk, PPL ± e, ln(PPL(Q)/PPL(base)) ± e, KL divergence ± e, Δp RMS ± e %,
    # same top p ± e %. The row of the last chunk covers them all.
    def rows(text):
        split = [line.split() for line in text.splitlines()]
        return [r for r in split if len(r) == 18 and r[0].isdigit()]

    n_chunk = int(KLD_ARGS[KLD_ARGS.index("--chunks") + 1])
    last = rows(run_logged(cmd, lambda text: any(r[0] == str(n_chunk) for r in rows(text))))[-1]
    return {"mean_kld": float(last[7]), "same_top": round(float(last[14]) / 100.0, 5)}


def families(only=()) -> None:
    vibrant = REPO / "target" / "release" / "vibrant"
    FAMILIES.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for preset, breaks in BREAKS.items():
            if only and preset not in only:
                continue
            model = tmp / f"{preset}.gguf"
            subprocess.run([str(vibrant), "synth", "--preset", preset, "--mix", SYNTH_MIX,
                            "--seed", str(SYNTH_SEED), "-o", str(model)], check=True,
                           capture_output=True)
            base = FAMILIES / f"{preset}.kld"
            ppl = llama_perplexity(model, KLD_ARGS + ["--kl-divergence-base", str(base)])
            entropy = mean_entropy(base)
            checks = [
                {"what": "llama.cpp again, same settings",
                 **kl_from_base(model, base, [])},
                {"what": "llama.cpp with flash attention off (base: auto, which is on)",
                 **kl_from_base(model, base, ["-fa", "off"])},
                {"what": "llama.cpp with 16-token batches (base: the whole chunk)",
                 **kl_from_base(model, base, ["-b", "16", "-ub", "16"])},
            ]
            for what, target, edit in breaks:
                if edit is None:
                    result = kl_from_base(model, base, ["--override-kv", target])
                else:
                    broken = patched(model, tmp / "broken.gguf", target, edit)
                    result = kl_from_base(broken, base, [])
                checks.append({"what": f"broken: {what}", **result})
            greedy = with_server(model, 2048, lambda: greedy_ids_stepwise(TINY_PROMPT, 16))
            record = {
                "preset": preset,
                "mix": SYNTH_MIX,
                "seed": SYNTH_SEED,
                "made_by": f"vibrant synth --preset {preset} --mix {SYNTH_MIX} --seed {SYNTH_SEED}",
                "sha256": sha256_of(model),
                "kld": base.name,
                "kld_made_by": f"llama-perplexity -m {preset}.gguf --no-repack -t 2 "
                               f"{' '.join(KLD_ARGS)} --kl-divergence-base {base.name} "
                               f"(llama.cpp {LLAMA_COMMIT}), from the repository root",
                "ppl": ppl,
                "mean_entropy": round(entropy, 4),
                "kl_checks": checks,
                "greedy": greedy,
            }
            write_json(FAMILIES / f"{preset}.json", record)
            print(f"{preset}: PPL {ppl}, mean entropy {entropy:.3f} nats")
            for c in checks:
                print(f"  {c['mean_kld']:10.6f} {100 * c['same_top']:6.2f}%  {c['what']}")


# --- re-packed real weights ----------------------------------------------------------------

REPACKED = DATA / "repacked"
REPACKED_ARGS = ["-f", "tests/data/perplexity.txt", "-c", "128"]


def repacked() -> None:
    """llama-perplexity on the files tests/repacked.rs re-packs from SmolLM2-135M, written by
    its ignored test `write_repacked_files` (the re-packer is tests/common/repack.rs), and
    on the source, for scale: llama.cpp's own difference between two files of the same math."""
    source = models_dir() / "smollm2-135m.gguf"
    made_by = "cargo test --release --test repacked -- --ignored --exact write_repacked_files"
    subprocess.run(made_by.split(), cwd=REPO, check=True, capture_output=True)
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    source_ppl = llama_perplexity(source, REPACKED_ARGS)
    REPACKED.mkdir(exist_ok=True)
    for name in ["phi3-smollm2", "mixtral-smollm2"]:
        model = target / "tmp" / "repacked" / f"{name}.gguf"
        ppl = llama_perplexity(model, REPACKED_ARGS)
        write_json(REPACKED / f"{name}.json", {
            "name": name,
            "source": source.name,
            "source_sha256": sha256_of(source),
            "made_by": f"{made_by} (writes target/tmp/repacked/{name}.gguf)",
            "sha256": sha256_of(model),
            "produced_by": f"llama-perplexity -m {name}.gguf --no-repack -t 2 ARGS (llama.cpp "
                           f"{LLAMA_COMMIT}), run from the repository root; see README.md",
            "args": " ".join(REPACKED_ARGS),
            "ppl": ppl,
            "source_ppl": source_ppl,
        })
        print(f"{name}: PPL {ppl} (source {source_ppl})")


STEPS = {"tokenizer": tokenizer, "greedy": greedy, "perplexity": perplexity,
         "families": families, "repacked": repacked}


def main() -> None:
    steps = sys.argv[1:]
    if steps[:1] == ["families"] and len(steps) > 1:
        unknown = [p for p in steps[1:] if p not in BREAKS]
        if unknown:
            sys.exit(f"no tiny preset {unknown}: {sorted(BREAKS)}")
        families(steps[1:])
        return
    if not steps or any(s not in STEPS for s in steps):
        sys.exit(__doc__)
    for step in steps:
        STEPS[step]()


if __name__ == "__main__":
    main()
