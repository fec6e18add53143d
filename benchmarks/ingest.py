#!/usr/bin/env python3
"""Ingest benchmark: a generated source repository into REAL Dify, Dify's defaults vs the project's tuning.

Starts real Dify 1.15.0 (tests/real_dify: api + Celery worker from upstream source, the plugin daemon
stand-in running the real provider plugins, llama.cpp with all-MiniLM-L6-v2 on CPU), bootstraps it with
the dify_bootstrap role, generates a repository (tests/knowledge/make_fixture_repo.py; default 2,000
files / ~20 MB as the issue asks; --quick for 200 files / ~1 MB) and syncs it with the project's own
CLI (scripts/dify-knowledge-sync), twice, into two knowledge bases:

  Dify's defaults   Celery worker concurrency 1 (CELERY_WORKER_AMOUNT's default), embeddings through
                    langgenius/openai_api_compatible (the SDK fixes max_chunks at 1: one text per request)
  project tuning    the worker concurrency the dify role derives for this host (dify_tuned_limits) and
                    embeddings through the model_servers role's TEI-compatible front and
                    langgenius/huggingface_tei (Dify batches up to the front's max_client_batch_size)

Then, on the tuned knowledge base, an unchanged re-sync and a re-sync after changing 1% of the files.
A counting proxy in front of each embedding endpoint counts the HTTP requests and texts Dify sends;
llama.cpp's /metrics gives the forward passes (decode calls) each path cost.

Prints one table and the ratios measured side by side in this run. Not a test: it prints figures.

    .venv/bin/python benchmarks/ingest.py [--quick] [--files N --size-mb M] [--batch 32]
"""

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
TESTS = os.path.join(ROOT, "tests")
sys.path.insert(0, TESTS)
sys.path.insert(0, os.path.join(TESTS, "integration"))
sys.path.insert(0, os.path.join(ROOT, "plugins", "filter"))

from real_dify.harness import RealDify  # noqa: E402

MAKER = os.path.join(TESTS, "knowledge", "make_fixture_repo.py")
CLI = os.path.join(ROOT, "scripts", "dify-knowledge-sync")
OAC = "langgenius/openai_api_compatible"
TEI = "langgenius/huggingface_tei"
PROXY_PORTS = {"direct": 17626, "batched": 17627}  # + --port-offset


class CountingProxy(object):
    """Forwards every request to ``target`` and counts requests and input texts per path."""

    def __init__(self, port, target):
        counts = self.counts = {"requests": 0, "texts": 0}
        lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def _forward(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.command == "POST" and self.path.rstrip("/").endswith("embeddings"):
                    try:
                        texts = json.loads(body or b"{}").get("input")
                    except ValueError:
                        texts = None
                    with lock:
                        counts["requests"] += 1
                        counts["texts"] += len(texts) if isinstance(texts, list) else 1
                req = urllib.request.Request(target + self.path, data=body or None, method=self.command,
                                             headers={k: v for k, v in self.headers.items()
                                                      if k.lower() not in ("host", "content-length")})
                try:
                    with urllib.request.urlopen(req, timeout=600) as resp:  # noqa: S310 - loopback
                        status, payload, ctype = resp.status, resp.read(), resp.headers.get("Content-Type")
                except urllib.error.HTTPError as err:
                    status, payload, ctype = err.code, err.read(), err.headers.get("Content-Type")
                self.send_response(status)
                self.send_header("Content-Type", ctype or "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = _forward

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def take(self):
        out = dict(self.counts)
        self.counts.update(requests=0, texts=0)
        return out

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def metric(port, name):
    """A counter from a server's Prometheus text (/metrics) so far; 0 when absent."""
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=10) as resp:  # noqa: S310
        text = resp.read().decode()
    match = re.search(r"^%s\s+([0-9.e+]+)" % re.escape(name), text, re.M)
    return float(match.group(1)) if match else 0.0


def server_counters(harness):
    """llama.cpp's forward passes and prompt tokens, and the front's backend embedding calls."""
    emb, front = harness.ports["embedding"], harness.ports["embedding_tei"]
    return {"decodes": metric(emb, "llamacpp:n_decode_total"), "tokens": metric(emb, "llamacpp:prompt_tokens_total"),
            "front_calls": metric(front, 'tei_front_backend_requests{path="/v1/embeddings"}')}


def tuned_worker_amount():
    import dify_tuning

    cpus = os.cpu_count() or 1
    mem_mb = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 20)
    return dify_tuning.dify_tuned_limits(cpus, mem_mb)["celery_worker_amount"]


def bootstrap(harness, work, batch):
    """The dify_bootstrap role (ansible-runner) with two embedding registrations of the same server."""
    import ansible_runner
    from conftest import BOOTSTRAP_PLAYBOOK, _envvars, build_package

    pkgs = {OAC: build_package(os.path.join(harness.plugins_src, "models", "openai_api_compatible"), work),
            TEI: build_package(os.path.join(harness.plugins_src, "models", "huggingface_tei"), work)}
    eps = {e["name"]: e for e in harness.model_endpoints(path="tei")}
    llm = eps["llm"]
    batched = dict(eps["embedding"], name="embedding-batched", model="bench-embed")
    batched["credentials"] = dict(batched["credentials"], server_url="http://127.0.0.1:%d" % PROXY_PORTS["batched"])
    direct = {"name": "embedding-direct", "kind": "embedding", "model_type": "text-embedding", "plugin_id": OAC,
              "provider": OAC + "/openai_api_compatible", "model": "bench-embed-direct", "max_batch": 1,
              "credentials": {"endpoint_url": "http://127.0.0.1:%d/v1" % PROXY_PORTS["direct"],
                              "endpoint_model_name": "tiny-embed", "context_size": "512", "max_chunks": "1"}}
    creds = os.path.join(work, "bootstrap-credentials.yml")
    extravars = {
        "dify_bootstrap_url": harness.url, "dify_bootstrap_public_url": harness.public_url,
        "dify_bootstrap_credentials_file": creds, "dify_bootstrap_import_credentials_dir": "",
        "dify_bootstrap_plugin_packages": pkgs, "model_servers_dify_endpoints": [llm, batched, direct],
        "dify_bootstrap_default_models": {"llm": "tiny-chat", "text-embedding": "bench-embed"},
        "dify_bootstrap_datasets": [
            {"name": "Bench direct", "embedding_model": "bench-embed-direct", "search_method": "semantic_search",
             "reranking_model": ""},
            {"name": "Bench batched", "embedding_model": "bench-embed", "search_method": "semantic_search",
             "reranking_model": ""}],
        "dify_bootstrap_apps": [],
    }
    pdd = os.path.join(work, "runner")
    os.makedirs(os.path.join(pdd, "project"))
    os.makedirs(os.path.join(pdd, "inventory"))
    open(os.path.join(pdd, "project", "site.yml"), "w").write(BOOTSTRAP_PLAYBOOK)
    open(os.path.join(pdd, "inventory", "hosts"), "w").write(
        "[dify]\nlocalhost ansible_connection=local ansible_python_interpreter=%s\n" % sys.executable)
    run = ansible_runner.run(private_data_dir=pdd, playbook="site.yml", extravars=extravars, envvars=_envvars(work),
                             quiet=True, settings={"suppress_ansible_output": True})
    if run.rc != 0:
        # the work directory is removed on exit: print what failed
        for ev in run.events:
            if ev.get("event") in ("runner_on_failed", "runner_on_unreachable"):
                data = ev.get("event_data", {})
                print("failed: %s: %s" % (data.get("task"), json.dumps(data.get("res", {}))[:3000]))
        sys.exit("bootstrap failed (rc=%s)" % run.rc)
    import yaml

    return yaml.safe_load(open(creds))["dataset_api_key"]


def sync(harness, key_file, dataset, repo, timeout):
    start = time.monotonic()
    out = subprocess.run([sys.executable, CLI, "--url", harness.url, "--dataset", dataset, "--dataset-key-file",
                          key_file, "--source", repo, "--poll-interval", "5", "--wait-timeout", str(timeout),
                          "--json"], capture_output=True, text=True, timeout=timeout + 600)
    seconds = time.monotonic() - start
    if out.returncode != 0:
        sys.exit("sync into %s failed (rc=%d):\n%s" % (dataset, out.returncode, out.stderr[-3000:]))
    return seconds, json.loads(out.stdout)


def segments(res):
    prog = res.get("progress") or {}
    return prog.get("segments_done") or prog.get("segments_total") or 0


def change_files(repo, fraction, seed=7):
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(repo) if ".git" not in d for f in fs
                   if f.endswith((".py", ".md", ".go", ".ts", ".rs", ".cpp")))
    picked = random.Random(seed).sample(files, max(1, int(len(files) * fraction)))
    for path in picked:
        with open(path, "a") as fh:
            fh.write("\n\n# changed by the ingest benchmark: recalibrated after the review.\n")
    return len(picked)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--size-mb", type=float, default=20.0)
    ap.add_argument("--quick", action="store_true", help="200 files / ~1 MB (a few minutes)")
    ap.add_argument("--batch", type=int, default=32,
                    help="the embedding front's max_client_batch_size (the model_servers role's default batch_size 32)")
    ap.add_argument("--timeout", type=int, default=8 * 3600, help="seconds each sync may wait for indexing")
    ap.add_argument("--port-offset", type=int, default=200,
                    help="shift of the harness's ports (default 200: it runs beside the tests' real Dify)")
    args = ap.parse_args()
    if args.quick:
        args.files, args.size_mb = 200, 1.0
    tuned = tuned_worker_amount()
    harness = RealDify(worker_concurrency=tuned, embedding_batch=args.batch, port_offset=args.port_offset)
    for name in PROXY_PORTS:
        PROXY_PORTS[name] += args.port_offset
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as work:
        repo = os.path.join(work, "repo")
        subprocess.run([sys.executable, MAKER, repo, "--files", str(args.files), "--size-mb", str(args.size_mb)],
                       check=True, capture_output=True)
        harness.start()
        proxies = {"direct": CountingProxy(PROXY_PORTS["direct"], "http://127.0.0.1:%d" % harness.ports["embedding"]),
                   "batched": CountingProxy(PROXY_PORTS["batched"],
                                            "http://127.0.0.1:%d" % harness.ports["embedding_tei"])}
        try:
            key = bootstrap(harness, work, args.batch)
            key_file = os.path.join(work, "key")
            open(key_file, "w").write(key)
            for p in proxies.values():
                p.take()

            def measure(label, dataset, proxy, workers):
                if harness.worker_concurrency != workers:
                    harness.restart_worker(workers)
                before = server_counters(harness)
                seconds, res = sync(harness, key_file, dataset, repo, args.timeout)
                counts = proxies[proxy].take()
                after = server_counters(harness)
                # inference calls the embedding server got: the front's (coalesced) calls on the batched path,
                # Dify's own requests on the direct one
                backend = (after["front_calls"] - before["front_calls"]) if proxy == "batched" else counts["requests"]
                c = res["counts"]
                rows.append((label, workers, seconds, c["added"] + c["updated"], segments(res), counts["requests"],
                             int(backend), counts["texts"], int(after["tokens"] - before["tokens"]),
                             int(after["decodes"] - before["decodes"])))
                return seconds, res, counts

            measure("Dify defaults: first sync", "Bench direct", "direct", 1)
            measure("tuned: first sync", "Bench batched", "batched", tuned)
            _s, res, _c = measure("tuned: unchanged re-sync", "Bench batched", "batched", tuned)
            assert res["counts"]["added"] + res["counts"]["updated"] + res["counts"]["removed"] == 0, res["counts"]
            changed = change_files(repo, 0.01)
            measure("tuned: %d files (1%%) changed" % changed, "Bench batched", "batched", tuned)
        finally:
            for p in proxies.values():
                p.stop()
            harness.stop()
    print("ingest benchmark: %d files, ~%.1f MB, real Dify %s on this host (%d CPUs), all-MiniLM-L6-v2 on CPU,"
          " front batch %d" % (args.files, args.size_mb, harness.version, os.cpu_count() or 1, args.batch))
    print("columns: uploads = documents written; requests = embedding requests Dify sent; server calls = inference"
          " calls the embedding server got; tokens = tokens it embedded; decodes = its forward passes")
    print("%-34s %7s %9s %8s %9s %7s %9s %7s %7s %9s %8s" % (
        "run", "workers", "seconds", "uploads", "segments", "seg/s", "requests", "server", "texts", "tokens",
        "decodes"))
    for label, workers, seconds, uploads, segs, reqs, backend, texts, tokens, decodes in rows:
        print("%-34s %7d %9.1f %8d %9d %7.1f %9d %7d %7d %9d %8d" % (
            label, workers, seconds, uploads, segs, segs / seconds if seconds else 0, reqs, backend, texts, tokens,
            decodes))
    d, t = rows[0], rows[1]
    print("ratios (Dify defaults / tuned, same corpus, same run): time %.2fx, embedding requests from Dify %.1fx, "
          "inference calls at the server %.1fx, forward passes %.1fx" % (
              d[2] / t[2], d[5] / max(1, t[5]), d[6] / max(1, t[6]), d[9] / max(1, t[9])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
