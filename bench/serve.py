"""Serving speed: `tfclm serve` under 1, 8 and 32 concurrent clients against `tfclm.generate` in a loop.

The distilgpt2 architecture (random weights, no download) saved to a temporary
dir and served on 127.0.0.1 by `python -m tfclm serve`; each client sends
`--requests` streamed completions (16-token prompts, `--new-tokens` new
tokens, top-k 50 sampling) one after another. The baseline sends the same
prompts, one at a time, through `tfclm.generate` in this process (loaded once,
XLA). They take turns round by round (`--rounds`), so a slow minute of this
shared machine falls on all; a server for each `--max-batches` value (1: one
batch at a time; 4: up to four batches taking turns a token each) runs beside
the other. A warm-up first compiles every batch size (a request of b prompts is
a batch of b rows).

Each row: requests/s, new tokens/s, p50 and p99 latency and p50 time to first
token, medians over rounds with their spread (max - min over the median); then
the goals: new tokens/s at 32 clients over 1 client (goal 4x or more), and
time to first token at 32 clients over an idle server's (goal 2x or less).

    .venv/bin/python bench/serve.py [--rounds 2] [--requests 2] [--new-tokens 32] [--levels 1 8 32] [--max-batches 1 4]
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from common import distilgpt2, id_tokenizer


def save_model(folder: str) -> str:
    model_dir = os.path.join(folder, "distilgpt2-random")
    distilgpt2(dropout=0.0).save_pretrained(model_dir)
    id_tokenizer().save_pretrained(model_dir)
    return model_dir


def start_server(model_dir: str, log, max_batches: int):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "tfclm", "serve", "--model", model_dir, "--port", str(port)]
    command += ["--max-batch", "32", "--max-batches", str(max_batches)]
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    import httpx

    for _ in range(600):
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.5)
    raise SystemExit("the server did not start")


def warm_up(url: str, new_tokens: int, largest: int) -> None:
    """Compile every batch-size bucket up to `largest` for this shape: a request of b prompts is a batch of b."""
    import httpx

    size = 1
    while size <= largest:
        body = {"prompt": prompts_for(size, 3), "max_tokens": new_tokens}
        httpx.post(url + "/v1/completions", json=body, timeout=600).raise_for_status()
        size *= 2


def prompts_for(count: int, offset: int) -> list:
    return [" ".join(f"w{(offset + i * 37 + k) % 50000}" for k in range(16)) for i in range(count)]


def one_request(client, url: str, prompt: str, new_tokens: int) -> dict:
    """One streamed completion: (seconds to its first text, seconds in all, new tokens)."""
    body = {"prompt": prompt, "max_tokens": new_tokens, "stream": True, "stream_options": {"include_usage": True}}
    started, first, tokens = time.perf_counter(), None, 0
    with client.stream("POST", url + "/v1/completions", json=body, timeout=600) as response:
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            elif first is None and chunk["choices"] and chunk["choices"][0]["text"]:
                first = time.perf_counter() - started
    return {"first": first, "seconds": time.perf_counter() - started, "tokens": tokens}


def served_round(url: str, clients: int, requests: int, new_tokens: int, offset: int) -> dict:
    import httpx

    def client_loop(k):
        with httpx.Client() as client:
            prompts = prompts_for(requests, offset + 1000 * k)
            return [one_request(client, url, p, new_tokens) for p in prompts]

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = [r for rs in pool.map(client_loop, range(clients)) for r in rs]
    return summary(results, time.perf_counter() - started)


def generate_round(model_dir: str, count: int, new_tokens: int, offset: int) -> dict:
    import tfclm

    results = []
    started = time.perf_counter()
    for prompt in prompts_for(count, offset):
        began = time.perf_counter()
        tfclm.generate(model_dir, prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, top_k=50, top_p=1.0)
        seconds = time.perf_counter() - began
        results.append({"first": seconds, "seconds": seconds, "tokens": new_tokens})
    return summary(results, time.perf_counter() - started)


def summary(results: list, wall: float) -> dict:
    seconds = [r["seconds"] for r in results]
    firsts = [r["first"] for r in results if r["first"] is not None]
    return {
        "requests/s": len(results) / wall,
        "tokens/s": sum(r["tokens"] for r in results) / wall,
        "p50 s": float(np.percentile(seconds, 50)),
        "p99 s": float(np.percentile(seconds, 99)),
        "first token p50 s": float(np.percentile(firsts, 50)) if firsts else float("nan"),
    }


def median_spread(values: list) -> str:
    median = float(np.median(values))
    spread = (max(values) - min(values)) / median if median else 0.0
    return f"{median:8.3f} ±{spread:4.0%}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--requests", type=int, default=2, help="requests each client sends, one after another")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--max-batches", type=int, nargs="+", default=[1, 4], help="a server for each")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder, open(os.path.join(folder, "serve.log"), "w") as log:
        model_dir = save_model(folder)
        servers = {b: start_server(model_dir, log, b) for b in args.max_batches}
        try:
            for _, url in servers.values():
                warm_up(url, args.new_tokens, max(args.levels))
            generate_round(model_dir, 1, args.new_tokens, offset=7)
            rows = run_levels({b: url for b, (_, url) in servers.items()}, model_dir, args)
        finally:
            for process, _ in servers.values():
                process.terminate()
                process.wait(120)
    report(rows, args)


def run_levels(urls: dict, model_dir: str, args) -> dict:
    """{clients: [{label: figures}, one a round]}: each server and the loop take turns within a round."""
    rows = {}
    for clients in args.levels:
        for r in range(args.rounds):
            figures = {}
            for batches, url in urls.items():
                figures[f"serve --max-batches {batches}"] = served_round(
                    url, clients, args.requests, args.new_tokens, offset=100 * r
                )
            figures["generate loop"] = generate_round(model_dir, clients * args.requests, args.new_tokens, 100 * r)
            rows.setdefault(clients, []).append(figures)
        print(f"{clients} clients: done", file=sys.stderr, flush=True)
    return rows


def report(rows: dict, args) -> None:
    names = ["requests/s", "tokens/s", "p50 s", "p99 s", "first token p50 s"]
    print(f"{args.new_tokens} new tokens a request, {args.requests} requests a client, {args.rounds} rounds")
    print(f"{'':34}" + "".join(f"{n:>18}" for n in names))
    labels = list(next(iter(rows.values()))[0])
    for clients, rounds in rows.items():
        for label in labels:
            values = [median_spread([figures[label][n] for figures in rounds]) for n in names]
            print(f"{f'{label} ({clients})':34}" + "".join(f"{v:>18}" for v in values))
        for label in labels[:-1]:
            ratios = [figures[label]["tokens/s"] / figures["generate loop"]["tokens/s"] for figures in rounds]
            print(f"{f'  {label} / loop tokens/s':34}{median_spread(ratios):>18}")
    low, high = min(rows), max(rows)
    for label in labels[:-1]:
        pairs = list(zip(rows[low], rows[high]))
        scale = [h[label]["tokens/s"] / lo[label]["tokens/s"] for lo, h in pairs]
        wait = [h[label]["first token p50 s"] / lo[label]["first token p50 s"] for lo, h in pairs]
        print(f"{label}: new tokens/s at {high} clients over {low}: {median_spread(scale)} (goal >= 4x)")
        print(f"{label}: first token at {high} clients over {low} (idle): {median_spread(wait)} (goal <= 2x)")


if __name__ == "__main__":
    main()
