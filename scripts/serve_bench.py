#!/usr/bin/env python3
"""Concurrent-streams load benchmark for an OpenAI-compatible server (vibrant serve, llama-server).

N client threads start at once; each sends `rounds` streamed chat requests back to back
(temperature 0, max_tokens fixed, end-of-turn tokens banned with logit_bias and ignore_eos, so
every answer runs to max_tokens), a distinct short question per stream. Prints one Markdown row:

    | label | N | rounds | tokens | wall s | aggregate tok/s | TTFT mean | p50 | p90 ms | per-stream tok/s |

Token counts come from the final `usage` chunk (stream_options.include_usage); the count of
content events is checked too. Stdlib only.

    python3 scripts/serve_bench.py http://127.0.0.1:8080 -n 16 --rounds 2 --ban 2,0 --label vibrant
"""
import argparse
import http.client
import json
import statistics
import sys
import threading
import time
import urllib.parse

QUESTIONS = [
    "What is the capital of France?", "Why is the sky blue?", "How do bees make honey?",
    "What is a prime number?", "Explain photosynthesis briefly.", "Who wrote Hamlet?",
    "What causes the tides?", "How does a compass work?", "What is gravity?",
    "Why do leaves change color in autumn?", "What is the speed of light?",
    "How do airplanes fly?", "What is DNA?", "Why is the ocean salty?",
    "How does a rainbow form?", "What is an atom?",
]


def question(i):
    base = QUESTIONS[i % len(QUESTIONS)]
    return base if i < len(QUESTIONS) else f"{base} (question {i})"


def one_request(url, model, prompt, max_tokens, ban, timeout):
    u = urllib.parse.urlparse(url)
    body = {
        "model": model, "stream": True, "temperature": 0, "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": prompt}],
        "stream_options": {"include_usage": True},
        "logit_bias": {str(t): -100 for t in ban},
        "ignore_eos": True,
    }
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    t0 = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"HTTP {resp.status}: {resp.read()[:300]!r}")
    ttft = None
    events = 0
    usage = None
    finish = None
    while True:
        line = resp.readline()
        if not line:
            break
        line = line.strip()
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            break
        chunk = json.loads(data)
        if chunk.get("usage"):
            usage = chunk["usage"]
        for c in chunk.get("choices") or []:
            delta = c.get("delta") or {}
            if delta.get("content"):
                events += 1
                if ttft is None:
                    ttft = time.perf_counter() - t0
            if c.get("finish_reason"):
                finish = c["finish_reason"]
    t1 = time.perf_counter()
    conn.close()
    tokens = usage["completion_tokens"] if usage else events
    return {"ttft": ttft, "tokens": tokens, "events": events, "usage": usage is not None,
            "finish": finish, "time": t1 - t0, "prompt_tokens": usage.get("prompt_tokens") if usage else None}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("-n", "--streams", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--ban", default="", help="comma-separated token ids to ban (end of turn)")
    ap.add_argument("--label", default="")
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--warmup", action="store_true", help="send one short request and exit")
    ap.add_argument("--json", help="append the run's raw results as one JSON line to this file")
    a = ap.parse_args()
    ban = [int(x) for x in a.ban.split(",") if x]

    if a.warmup:
        r = one_request(a.url, a.model, "Hello!", 8, ban, a.timeout)
        print(f"warm-up: {r['tokens']} tokens in {r['time']:.2f} s", file=sys.stderr)
        return

    results = [[] for _ in range(a.streams)]
    errors = []
    barrier = threading.Barrier(a.streams + 1)

    def stream(i):
        barrier.wait()
        start = time.perf_counter()
        try:
            for r in range(a.rounds):
                results[i].append(one_request(a.url, a.model, question(i + r * a.streams),
                                              a.max_tokens, ban, a.timeout))
        except Exception as e:  # noqa: BLE001
            errors.append(f"stream {i}: {e}")
        results[i].append(time.perf_counter() - start)

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(a.streams)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        sys.exit("errors: " + "; ".join(errors[:5]))

    reqs = [r for rs in results for r in rs[:-1]]
    total = sum(r["tokens"] for r in reqs)
    short = [r for r in reqs if r["tokens"] != a.max_tokens or not r["usage"]]
    ttfts = sorted(r["ttft"] * 1000 for r in reqs if r["ttft"] is not None)
    per_stream = [sum(r["tokens"] for r in rs[:-1]) / rs[-1] for rs in results]
    q = statistics.quantiles(ttfts, n=10, method="inclusive") if len(ttfts) > 1 else [ttfts[0]] * 9
    ev = sorted({r["events"] for r in reqs})
    print(f"| {a.label} | {a.streams} | {a.rounds} | {total} | {wall:.1f} | {total / wall:.1f} | "
          f"{statistics.mean(ttfts):.0f} | {statistics.median(ttfts):.0f} | {q[8]:.0f} | "
          f"{statistics.mean(per_stream):.2f} |", flush=True)
    print(f"  requests {len(reqs)}, completion tokens per request {sorted({r['tokens'] for r in reqs})}, "
          f"content events per request {ev[0]}..{ev[-1]}, finish {sorted({str(r['finish']) for r in reqs})}, "
          f"prompt tokens {sorted({r['prompt_tokens'] for r in reqs})[:3]}..., short/no-usage {len(short)}",
          file=sys.stderr)
    if a.json:
        with open(a.json, "a") as f:
            f.write(json.dumps({"label": a.label, "streams": a.streams, "rounds": a.rounds, "wall": wall,
                                "total": total, "ttft_ms": ttfts, "per_stream": per_stream,
                                "short": len(short)}) + "\n")
    if short:
        sys.exit(f"{len(short)} requests did not give {a.max_tokens} tokens with usage")


if __name__ == "__main__":
    main()
