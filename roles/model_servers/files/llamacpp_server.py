#!/usr/bin/env python3
"""Run llama.cpp's HTTP server in-process through the `xllamacpp` package.

Installed by the `model_servers` role into each llama.cpp server's venv and
started by its systemd unit:  llamacpp_server.py /etc/model-servers/<name>.json

The JSON file holds llama-server's options under llama-server-like names:
  model (path), host, port, alias, ctx_size, batch_size, ubatch_size, parallel,
  threads, n_gpu_layers, mode (llm | embedding | rerank), pooling
  (mean | cls | last | rank | none), extra (dict of CommonParams attributes set
  verbatim, e.g. {"cont_batching": true}).
The API key, if any, comes from the LLAMA_API_KEY environment variable (as for llama-server).
The process stays in the foreground until SIGTERM/SIGINT, like llama-server.
"""

import json
import os
import signal
import sys
import threading

import xllamacpp as xlc

POOLING = {
    "none": "LLAMA_POOLING_TYPE_NONE",
    "mean": "LLAMA_POOLING_TYPE_MEAN",
    "cls": "LLAMA_POOLING_TYPE_CLS",
    "last": "LLAMA_POOLING_TYPE_LAST",
    "rank": "LLAMA_POOLING_TYPE_RANK",
}


def build_params(cfg):
    params = xlc.CommonParams()
    params.model.path = cfg["model"]
    params.hostnames = [cfg.get("host", "127.0.0.1")]
    params.port = int(cfg["port"])
    params.n_ctx = int(cfg.get("ctx_size", 4096))
    params.n_batch = int(cfg.get("batch_size", 2048))
    params.n_ubatch = int(cfg.get("ubatch_size", 512))
    params.n_parallel = int(cfg.get("parallel", 1))
    params.n_gpu_layers = int(cfg.get("n_gpu_layers", 0))
    params.endpoint_metrics = True
    params.ui = False
    if cfg.get("alias"):
        params.model_alias = {cfg["alias"]}
    if cfg.get("threads"):
        params.cpuparams.n_threads = int(cfg["threads"])
        params.cpuparams_batch.n_threads = int(cfg["threads"])
    mode = cfg.get("mode", "llm")
    if mode in ("embedding", "rerank"):
        params.embedding = True
        pooling = cfg.get("pooling") or ("rank" if mode == "rerank" else "mean")
        params.pooling_type = getattr(xlc.llama_pooling_type, POOLING[pooling])
    if mode == "rerank" and hasattr(params, "reranking"):
        params.reranking = True
    if os.environ.get("LLAMA_API_KEY"):
        params.api_keys = [os.environ["LLAMA_API_KEY"]]
    for key, value in (cfg.get("extra") or {}).items():
        setattr(params, key, value)
    return params


def main(argv):
    if len(argv) != 2:
        sys.exit("usage: llamacpp_server.py CONFIG.json")
    with open(argv[1], encoding="utf-8") as fh:
        cfg = json.load(fh)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    server = xlc.Server(build_params(cfg))
    print("llama.cpp server (xllamacpp %s) listening on %s" % (xlc.__version__, server.listening_address), flush=True)
    stop.wait()
    print("stopping", flush=True)
    del server
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
