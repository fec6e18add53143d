#!/usr/bin/env python3
"""TEI-compatible front for llama.cpp and Infinity embedding / rerank servers.

Speaks the HTTP API of Hugging Face text-embeddings-inference (TEI 1.8, the version the
model_servers role pins) in front of ONE llama.cpp server (xllamacpp or llama-server) or ONE
Infinity server, so that Dify registers it through the ``langgenius/huggingface_tei`` provider
plugin: that plugin reads ``max_client_batch_size`` from ``GET /info`` and Dify then sends
batches of that size (``langgenius/openai_api_compatible`` sends one text per request), and TEI's
``/rerank`` returns sigmoid scores in 0..1 (llama.cpp's own rerank returns raw logits, which Dify's
score threshold of 0.0 throws away).

    tei_front.py /etc/model-servers/<name>-tei.json
    tei_front.py --check CONFIG.json      (validate a configuration and exit: 0 = valid)

Configuration (JSON object; unknown keys are refused):
  host, port                  where the front listens (default host 127.0.0.1)
  backend                     "llamacpp" | "infinity"
  backend_url                 llama.cpp: the server root (http://127.0.0.1:8082);
                              Infinity: root plus its url prefix (http://127.0.0.1:8082/v1).
                              Health is always <scheme>://<host:port>/health.
  backend_model               model name sent to the backend (default: model_id)
  kind                        "embedding" | "rerank"
  model_id                    TEI's model_id (the name Dify registers)
  max_input_length            tokens per input (rerank: query + text), as TEI's --max-input-length
  max_client_batch_size       inputs per request, as TEI's --max-client-batch-size
  auto_truncate               truncate over-long inputs instead of refusing them (TEI's --auto-truncate);
                              must be true for Infinity, which truncates by itself and has no tokenizer API
  api_key_env                 environment variable holding the bearer key (default TEI_FRONT_API_KEY):
                              clients must send it (TEI's --api-key), and it is sent to the backend
  backend_timeout             seconds per backend request (default 300)
  max_concurrent_requests     requests in flight before 429 (default 512)
  payload_limit               request body bytes (default 2000000, TEI's default)
  max_batch_tokens            reported in /info (default max_input_length * max_client_batch_size)
  coalesce                    embedding kind: batch the inputs of concurrent requests into one backend
                              call (up to max_client_batch_size inputs), as TEI's own queue does (default true)
  pooling                     reported in /info for embedding models (default "mean")
  model_dtype                 reported in /info (default "float16")
  default_prompt              text put before every embedding input (TEI's --default-prompt), e.g. ruri's
                              "文章: "; counted in max_input_length. Dify's huggingface_tei plugin does not tell
                              queries from documents, so one prompt serves both (default: none)
  info_max_input_length       max_input_length as /info reports it (default max_input_length; not below it).
                              huggingface_tei cuts every text whose GPT-2 token count reaches /info's
                              max_input_length before sending it, and GPT-2 counts CJK text at 1.4-3 tokens
                              per character: reporting more keeps chunks whole, and the front still truncates
                              by the backend's own tokens (auto_truncate must be true)

One client request with up to max_client_batch_size inputs becomes ONE backend inference request
(/v1/embeddings or /v1/rerank for llama.cpp, /embeddings or /rerank for Infinity). With llama.cpp,
inputs that may exceed max_input_length (more UTF-8 bytes than the limit allows) are counted with the
backend's /tokenize first and, when truncating, cut by tokens and turned back into text with
/detokenize. Python standard library only; SIGTERM/SIGINT stop it; one log line per request.
"""

import base64
import hmac
import http.client
import json
import math
import os
import signal
import struct
import sys
import threading
import time
import unicodedata
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

VERSION = "tei-front 1 (text-embeddings-inference 1.8 API)"

DEFAULTS = {
    "host": "127.0.0.1",
    "backend_model": None,
    "auto_truncate": True,
    "api_key_env": "TEI_FRONT_API_KEY",
    "backend_timeout": 300,
    "max_concurrent_requests": 512,
    "payload_limit": 2000000,
    "max_batch_tokens": None,
    "pooling": "mean",
    "model_dtype": "float16",
    "default_prompt": "",
    "info_max_input_length": None,
    "coalesce": True,
}
REQUIRED = ("port", "backend", "backend_url", "kind", "model_id", "max_input_length", "max_client_batch_size")
BACKENDS = ("llamacpp", "infinity")
KINDS = ("embedding", "rerank")

# TEI 1.8 (router/src/http/server.rs, impl From<&ErrorType> for StatusCode). TEI >= 1.9.0 answers
# Validation with 422 instead of 413 (commit "Fix HTTP error code for validation (#818)").
STATUS = {"Unhealthy": 503, "Backend": 424, "Overloaded": 429, "Validation": 413, "Tokenizer": 422, "Empty": 400}


class ConfigError(ValueError):
    pass


class TeiError(Exception):
    """An error TEI would answer with: {"error": ..., "error_type": ...} and its status code."""

    def __init__(self, error_type, message, status=None):
        Exception.__init__(self, message)
        self.error_type = error_type
        self.message = message
        self.status = status or STATUS[error_type]

    def body(self, openai=False):
        if openai:  # OpenAICompatErrorResponse: error_type is serialized as "type"
            return {"message": self.message, "code": self.status, "type": self.error_type}
        return {"error": self.message, "error_type": self.error_type}


def validation(message):
    return TeiError("Validation", message)


# ----------------------------------------------------------------------------- configuration
def load_config(source):
    """Validated configuration (defaults filled in) from a dict or a JSON file path; ConfigError names the key."""
    if isinstance(source, dict):
        raw = dict(source)
    else:
        try:
            with open(source, encoding="utf-8") as fh:
                raw = json.load(fh)
        except (OSError, ValueError) as exc:
            raise ConfigError("cannot read %s: %s" % (source, exc)) from exc
    if not isinstance(raw, dict):
        raise ConfigError("the configuration must be a JSON object")
    unknown = sorted(set(raw) - set(DEFAULTS) - set(REQUIRED))
    if unknown:
        raise ConfigError("unknown configuration key(s): %s" % ", ".join(unknown))
    missing = [k for k in REQUIRED if raw.get(k) in (None, "")]
    if missing:
        raise ConfigError("missing configuration key(s): %s" % ", ".join(missing))
    cfg = dict(DEFAULTS)
    cfg.update(raw)
    if cfg["backend"] not in BACKENDS:
        raise ConfigError("backend must be one of %s, not %r" % ("/".join(BACKENDS), cfg["backend"]))
    if cfg["kind"] not in KINDS:
        raise ConfigError("kind must be one of %s, not %r" % ("/".join(KINDS), cfg["kind"]))
    for key in ("port", "max_input_length", "max_client_batch_size", "max_concurrent_requests", "payload_limit"):
        value = cfg[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < (0 if key == "port" else 1):
            raise ConfigError("%s must be a positive integer, not %r" % (key, value))
    if cfg["port"] > 65535:
        raise ConfigError("port must be at most 65535, not %r" % cfg["port"])
    if not isinstance(cfg["auto_truncate"], bool):
        raise ConfigError("auto_truncate must be true or false, not %r" % (cfg["auto_truncate"],))
    if cfg["backend"] == "infinity" and not cfg["auto_truncate"]:
        raise ConfigError("auto_truncate must be true with the infinity backend: Infinity truncates every input to "
                          "its model's length by itself and has no tokenizer endpoint to refuse longer ones")
    if not isinstance(cfg["backend_timeout"], (int, float)) or isinstance(cfg["backend_timeout"], bool) \
            or cfg["backend_timeout"] <= 0:
        raise ConfigError("backend_timeout must be a positive number, not %r" % (cfg["backend_timeout"],))
    url = urllib.parse.urlsplit(str(cfg["backend_url"]))
    if url.scheme not in ("http", "https") or not url.netloc:
        raise ConfigError("backend_url must be an http(s) URL, not %r" % cfg["backend_url"])
    cfg["backend_url"] = str(cfg["backend_url"]).rstrip("/")
    if cfg["max_batch_tokens"] is None:
        cfg["max_batch_tokens"] = cfg["max_input_length"] * cfg["max_client_batch_size"]
    if not cfg["backend_model"]:
        cfg["backend_model"] = cfg["model_id"]
    if not isinstance(cfg["coalesce"], bool):
        raise ConfigError("coalesce must be true or false, not %r" % (cfg["coalesce"],))
    if not isinstance(cfg["default_prompt"], str):
        raise ConfigError("default_prompt must be a string, not %r" % (cfg["default_prompt"],))
    info = cfg["info_max_input_length"]
    if info is None:
        cfg["info_max_input_length"] = cfg["max_input_length"]
    elif isinstance(info, bool) or not isinstance(info, int) or info < cfg["max_input_length"]:
        raise ConfigError("info_max_input_length must be an integer of at least max_input_length (%d), not %r"
                          % (cfg["max_input_length"], info))
    elif info > cfg["max_input_length"] and not cfg["auto_truncate"]:
        raise ConfigError("info_max_input_length above max_input_length needs auto_truncate: true (longer inputs "
                          "would be refused)")
    return cfg


# ----------------------------------------------------------------------------- backend HTTP
class BackendHTTP:
    """JSON over HTTP to the backend; one kept-alive connection per thread (a client request's calls share it)."""

    def __init__(self, base_url, api_key=None, timeout=300.0, counter=None):
        parts = urllib.parse.urlsplit(base_url)
        self.base_url = base_url
        self.scheme = parts.scheme
        self.netloc = parts.netloc
        self.prefix = parts.path.rstrip("/")
        self.origin = "%s://%s" % (parts.scheme, parts.netloc)
        self.api_key = api_key
        self.timeout = timeout
        self.counter = counter or (lambda path: None)
        self.local = threading.local()

    def _conn(self):
        conn = getattr(self.local, "conn", None)
        if conn is None:
            cls = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
            conn = cls(self.netloc, timeout=self.timeout)
            self.local.conn = conn
        return conn

    def close(self):
        conn = getattr(self.local, "conn", None)
        if conn is not None:
            conn.close()
            self.local.conn = None

    def request(self, method, path, body=None, root=False):
        """(status, parsed JSON or text) of METHOD prefix+path (root: without the prefix); TeiError when unreachable."""
        full = path if root else self.prefix + path
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        if self.api_key:
            headers["Authorization"] = "Bearer " + self.api_key
        self.counter(full)
        for attempt in (1, 2):
            conn = self._conn()
            try:
                conn.request(method, full, body=data, headers=headers)
                resp = conn.getresponse()
                raw = resp.read()
                status = resp.status
                if resp.getheader("Connection", "").lower() == "close":
                    self.close()
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                # a kept-alive connection the backend closed meanwhile: once more on a new one
                self.close()
                if attempt == 2:
                    raise TeiError("Backend", "Backend error: %s backend at %s closed the connection (%s)" % (
                        self._name(), self.origin, exc)) from exc
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                if isinstance(exc, TimeoutError):
                    raise TeiError("Backend", "Backend error: %s backend at %s did not answer %s within %ss" % (
                        self._name(), self.origin, full, self.timeout)) from exc
                raise TeiError("Backend", "Backend error: %s backend at %s is unreachable (%s)" % (
                    self._name(), self.origin, exc)) from exc
        text = raw.decode("utf-8", "replace")
        try:
            return status, json.loads(text) if text else None
        except ValueError:
            return status, text

    def _name(self):
        return getattr(self, "name", "model")


def backend_message(payload):
    """The error text of a llama.cpp / Infinity / FastAPI error body."""
    if isinstance(payload, dict):
        err = payload.get("error", payload.get("detail", payload))
        if isinstance(err, dict):
            return str(err.get("message") or err)
        return str(err)
    return str(payload)[:500]


def check(status, payload, what):
    if status == 200:
        return payload
    if status in (401, 403):
        raise TeiError("Backend", "Backend error: the backend refused the API key for %s (HTTP %d): %s" % (
            what, status, backend_message(payload)))
    if status == 503:
        raise TeiError("Unhealthy", "Backend error: the backend is not ready for %s (HTTP 503): %s" % (
            what, backend_message(payload)))
    raise TeiError("Backend", "Backend error: %s failed (HTTP %d): %s" % (what, status, backend_message(payload)))


def _piece_text(piece):
    if isinstance(piece, list):  # llama.cpp sends pieces that are not valid UTF-8 as a list of bytes
        return bytes(piece).decode("utf-8", "replace")
    return str(piece)


class LlamaCppBackend:
    """llama.cpp's HTTP server: /health, /tokenize, /detokenize, /v1/embeddings, /v1/rerank."""

    name = "llamacpp"
    has_tokenizer = True

    def __init__(self, http_client, model):
        self.http = http_client
        self.http.name = self.name
        self.model = model
        self._specials = None
        self._pair_overhead = None
        self._lock = threading.RLock()

    def health(self):
        status, payload = self.http.request("GET", "/health", root=True)
        return status == 200, backend_message(payload) if status != 200 else "ok"

    def tokenize(self, text, add_special=True):
        """[(id, piece text)] of TEXT."""
        status, payload = self.http.request("POST", "/tokenize", {
            "content": text, "add_special": bool(add_special), "with_pieces": True})
        tokens = check(status, payload, "tokenize").get("tokens", [])
        out = []
        for tok in tokens:
            if isinstance(tok, dict):
                out.append((int(tok["id"]), _piece_text(tok.get("piece", ""))))
            else:
                out.append((int(tok), ""))
        return out

    def count(self, text):
        """Tokens of TEXT without special tokens (one /tokenize)."""
        status, payload = self.http.request("POST", "/tokenize", {"content": text, "add_special": False})
        return [int(t) for t in check(status, payload, "tokenize").get("tokens", [])]

    def detokenize(self, ids):
        status, payload = self.http.request("POST", "/detokenize", {"tokens": list(ids)})
        return check(status, payload, "detokenize").get("content", "")

    def specials(self):
        """Ids the tokenizer adds around one text (e.g. [CLS] and [SEP]): tokenize("") with special tokens."""
        with self._lock:
            if self._specials is None:
                self._specials = [tid for tid, _ in self.tokenize("", add_special=True)]
            return self._specials

    def pair_overhead(self):
        """Tokens llama.cpp adds to one (query, text) pair, measured once: the prompt tokens of a rerank of
        ("a", ["a"]) minus twice the tokens of "a" (BERT / XLM-R rerankers: 4)."""
        with self._lock:
            if self._pair_overhead is None:
                status, payload = self.http.request("POST", "/v1/rerank", {
                    "model": self.model, "query": "a", "documents": ["a"], "top_n": 1})
                used = (check(status, payload, "rerank").get("usage") or {}).get("prompt_tokens")
                single = len(self.count("a"))
                if isinstance(used, int) and used >= 2 * single:
                    self._pair_overhead = used - 2 * single
                else:  # no usage in the answer: two texts' worth of special tokens
                    self._pair_overhead = 2 * len(self.tokenize("", add_special=True))
            return self._pair_overhead

    def embed(self, inputs, normalize=True):
        """(vectors, prompt tokens or None) for INPUTS (strings or token id lists): ONE /v1/embeddings."""
        body = {"model": self.model, "input": list(inputs), "encoding_format": "float"}
        if not normalize:
            body["embd_normalize"] = -1
        status, payload = self.http.request("POST", "/v1/embeddings", body)
        payload = check(status, payload, "embeddings")
        data = sorted(payload.get("data") or [], key=lambda d: d.get("index", 0))
        if len(data) != len(inputs):
            raise TeiError("Backend", "Backend error: %d embeddings for %d inputs" % (len(data), len(inputs)))
        return [d["embedding"] for d in data], (payload.get("usage") or {}).get("prompt_tokens")

    def rerank(self, query, texts, raw_scores=False):
        """[score per text, in input order] (0..1 unless RAW_SCORES): ONE /v1/rerank; llama.cpp's are logits."""
        status, payload = self.http.request("POST", "/v1/rerank", {
            "model": self.model, "query": query, "documents": list(texts), "top_n": len(texts)})
        payload = check(status, payload, "rerank")
        logits = scores_by_index(payload.get("results"), len(texts))
        return logits if raw_scores else [sigmoid(x) for x in logits]


class InfinityBackend:
    """Infinity (infinity-emb 0.0.78): /health at the server root, /embeddings and /rerank under its url prefix."""

    name = "infinity"
    has_tokenizer = False

    def __init__(self, http_client, model):
        self.http = http_client
        self.http.name = self.name
        self.model = model

    def health(self):
        status, payload = self.http.request("GET", "/health", root=True)
        return status == 200, backend_message(payload) if status != 200 else "ok"

    def embed(self, inputs, normalize=True):
        if any(not isinstance(x, str) for x in inputs):
            raise validation("token id inputs are not supported by the infinity backend")
        status, payload = self.http.request("POST", "/embeddings", {
            "model": self.model, "input": list(inputs), "encoding_format": "float"})
        payload = check(status, payload, "embeddings")
        data = sorted(payload.get("data") or [], key=lambda d: d.get("index", 0))
        if len(data) != len(inputs):
            raise TeiError("Backend", "Backend error: %d embeddings for %d inputs" % (len(data), len(inputs)))
        # normalize=false cannot be honoured: Infinity returns what its model returns
        return [d["embedding"] for d in data], (payload.get("usage") or {}).get("prompt_tokens")

    def rerank(self, query, texts, raw_scores=False):
        """Infinity's scores (sigmoid unless RAW_SCORES, as TEI): ONE /rerank."""
        status, payload = self.http.request("POST", "/rerank", {
            "model": self.model, "query": query, "documents": list(texts), "raw_scores": bool(raw_scores),
            "return_documents": False})
        payload = check(status, payload, "rerank")
        return scores_by_index(payload.get("results"), len(texts))


def scores_by_index(results, n):
    scores = [None] * n
    for item in results or []:
        idx = item.get("index")
        if isinstance(idx, int) and 0 <= idx < n:
            scores[idx] = float(item.get("relevance_score", item.get("score")))
    if any(s is None for s in scores):
        raise TeiError("Backend", "Backend error: the rerank answer does not score every text")
    return scores


def sigmoid(x):
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


# ----------------------------------------------------------------------------- request shaping
def as_inputs(value, name):
    """TEI's Input (a string, a token id list, or a list of those) as a list of inputs."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        if not value:
            return []
        if all(isinstance(x, int) and not isinstance(x, bool) for x in value):
            return [value]
        out = []
        for item in value:
            if isinstance(item, str):
                out.append(item)
            elif isinstance(item, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in item):
                out.append(item)
            else:
                raise TeiError("Validation", "`%s` must be a string, a list of token ids or a list of those" % name,
                               status=422)
        return out
    raise TeiError("Validation", "`%s` must be a string, a list of token ids or a list of those" % name, status=422)


def direction(value):
    if value is None:
        return "right"
    text = str(value).lower()
    if text not in ("left", "right"):
        raise TeiError("Validation", "truncation_direction must be Left or Right, not %r" % (value,), status=422)
    return text


def may_exceed(text, limit, specials):
    """False when TEXT cannot have more than LIMIT tokens: a token covers at least one UTF-8 byte,
    plus one for a SentencePiece dummy prefix, plus the special tokens."""
    return len(text.encode("utf-8")) + 1 + specials > limit


def cut(ids, keep, side):
    return ids[:keep] if side == "right" else ids[len(ids) - keep:]


def pair_budget(q_len, d_len, budget):
    """(query tokens, text tokens) kept so that their sum fits BUDGET, cutting the longer one first, one token
    at a time (the tokenizers' LongestFirst strategy TEI truncates pairs with; ties cut the text)."""
    budget = max(0, budget)
    excess = q_len + d_len - budget
    if excess <= 0:
        return q_len, d_len
    longer_is_text = d_len >= q_len
    diff = abs(d_len - q_len)
    if excess <= diff:
        return (q_len, d_len - excess) if longer_is_text else (q_len - excess, d_len)
    rest = excess - diff
    even = min(q_len, d_len) - rest // 2
    return even, even - rest % 2


def float_b64(vector):
    return base64.b64encode(struct.pack("<%df" % len(vector), *vector)).decode("ascii")


_COMBINING = unicodedata.combining


def _fold(ch):
    return "".join(c for c in unicodedata.normalize("NFD", ch) if not _COMBINING(c)).casefold()


def token_offsets(text, pieces, special_ids):
    """TEI's SimpleToken list for llama.cpp pieces: byte offsets found by matching each piece in TEXT
    (case- and accent-insensitive, as WordPiece lowercases); null offsets when a piece is not found."""
    folded, owner = [], []  # folded characters and the index of the TEXT character each comes from
    for i, ch in enumerate(text):
        for c in _fold(ch):
            folded.append(c)
            owner.append(i)
    folded = "".join(folded)
    byte_at = [0]
    for ch in text:
        byte_at.append(byte_at[-1] + len(ch.encode("utf-8")))
    out, pos = [], 0
    for tid, piece in pieces:
        if tid in special_ids:
            out.append({"id": tid, "text": piece, "special": True, "start": None, "stop": None})
            continue
        needle = piece.replace("\u2581", " ").replace("\u0120", " ").strip()
        if needle.startswith("##"):
            needle = needle[2:]
        needle = "".join(_fold(c) for c in needle)
        at = folded.find(needle, pos) if needle else -1
        if at < 0:
            out.append({"id": tid, "text": piece.strip() or piece, "special": False, "start": None, "stop": None})
            continue
        first, last = owner[at], owner[at + len(needle) - 1]
        start, stop = byte_at[first], byte_at[last + 1]
        pos = at + len(needle)
        out.append({"id": tid, "text": text[first:last + 1], "special": False, "start": start, "stop": stop})
    return out


# ----------------------------------------------------------------------------- the front
class Coalescer:
    """TEI's dynamic batching for embeddings: while one backend call runs, the inputs of the requests that
    arrive queue up; the next call carries all of them (up to ``max_inputs``, whole requests only), and
    each request gets its own vectors back. No timer: an idle front sends a request at once.

    Why: Dify 1.15.0 embeds a document's chunks from 10 threads (core/indexing_runner.py splits them into
    10 groups by hash), so with files of a few chunks each, huggingface_tei's batches are 1-2 texts;
    coalescing turns those concurrent small requests into full backend batches.
    """

    def __init__(self, embed, max_inputs):
        self.embed = embed
        self.max_inputs = max(1, int(max_inputs))
        self.cond = threading.Condition()
        self.queue = []
        self.calls = 0
        threading.Thread(target=self._loop, name="coalescer", daemon=True).start()

    def __call__(self, inputs, normalize=True):
        item = {"inputs": list(inputs), "normalize": normalize, "done": threading.Event()}
        with self.cond:
            self.queue.append(item)
            self.cond.notify()
        item["done"].wait()
        if "error" in item:
            raise item["error"]
        return item["vectors"], item["tokens"]

    def _take(self):
        with self.cond:
            while not self.queue:
                self.cond.wait()
            batch, count = [self.queue.pop(0)], None
            count = len(batch[0]["inputs"])
            while (self.queue and self.queue[0]["normalize"] == batch[0]["normalize"]
                   and count + len(self.queue[0]["inputs"]) <= self.max_inputs):
                item = self.queue.pop(0)
                batch.append(item)
                count += len(item["inputs"])
            return batch

    def _loop(self):
        while True:
            batch = self._take()
            try:
                self.calls += 1
                vectors, tokens = self.embed([x for it in batch for x in it["inputs"]], normalize=batch[0]["normalize"])
                at = 0
                for it in batch:
                    n = len(it["inputs"])
                    it["vectors"], it["tokens"] = vectors[at:at + n], (tokens if len(batch) == 1 else None)
                    at += n
            except Exception as exc:  # noqa: BLE001 - every waiting request gets the backend's error
                for it in batch:
                    it["error"] = exc
            for it in batch:
                it["done"].set()


class Front:
    """TEI's endpoints over one backend, free of HTTP (the handler below only moves JSON)."""

    def __init__(self, cfg, backend):
        self.cfg = cfg
        self.backend = backend
        self.limit = cfg["max_input_length"]
        self.batch = cfg["max_client_batch_size"]
        self._embed = backend.embed
        if cfg["kind"] == "embedding" and cfg.get("coalesce", True):
            self._embed = Coalescer(backend.embed, self.batch)

    # -- /info and /health
    def info(self):
        cfg = self.cfg
        if cfg["kind"] == "embedding":
            model_type = {"embedding": {"pooling": cfg["pooling"]}}
        else:
            model_type = {"reranker": {"id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0}}}
        return {
            "model_id": cfg["model_id"],
            "model_sha": None,
            "model_dtype": cfg["model_dtype"],
            "served_model_name": cfg["model_id"],
            "model_type": model_type,
            "max_concurrent_requests": cfg["max_concurrent_requests"],
            "max_input_length": cfg["info_max_input_length"],
            "max_batch_tokens": cfg["max_batch_tokens"],
            "max_batch_requests": None,
            "max_client_batch_size": self.batch,
            "auto_truncate": cfg["auto_truncate"],
            "tokenization_workers": 1,
            "version": VERSION,
            "sha": None,
            "docker_label": None,
        }

    def health(self):
        try:
            ok, why = self.backend.health()
        except TeiError as exc:
            ok, why = False, exc.message
        return ok, why

    # -- shared checks
    def _batch_checks(self, inputs, name):
        if not inputs:
            raise TeiError("Empty", "`%s` cannot be empty" % name)
        if len(inputs) > self.batch:
            raise validation("batch size %d > maximum allowed batch size %d" % (len(inputs), self.batch))
        for item in inputs:
            if isinstance(item, str) and item == "" or isinstance(item, list) and not item:
                raise TeiError("Empty", "Input validation error: `inputs` cannot be empty")

    def _too_long(self, n):
        return validation("Input validation error: `inputs` must have less than %d tokens. Given: %d" % (self.limit, n))

    def fit_inputs(self, inputs, truncate, side):
        """INPUTS with each one within max_input_length tokens: truncated (TRUNCATE) or a TEI validation error."""
        backend = self.backend
        if not backend.has_tokenizer:
            return list(inputs)  # Infinity truncates by itself (auto_truncate is required for it)
        nspecial = None
        out = []
        for item in inputs:
            if isinstance(item, list):  # token ids are sent as they are
                if len(item) > self.limit:
                    if not truncate:
                        raise self._too_long(len(item))
                    item = cut(item, self.limit, side)
                out.append(item)
                continue
            if nspecial is None:
                nspecial = len(backend.specials())
            if not may_exceed(item, self.limit, nspecial):
                out.append(item)
                continue
            ids = backend.count(item)
            if len(ids) + nspecial <= self.limit:
                out.append(item)
                continue
            if not truncate:
                raise self._too_long(len(ids) + nspecial)
            out.append(self._truncate_text(ids, self.limit - nspecial, side))
        return out

    def _truncate_text(self, ids, keep, side):
        """Text of the first (right) or last (left) KEEP tokens of IDS, through /detokenize, re-counted so it
        really is within KEEP tokens (a detokenized text can tokenize a little differently)."""
        target = keep
        for _ in range(4):
            if keep <= 0:
                return ""
            text = self.backend.detokenize(cut(ids, keep, side)).strip()
            again = len(self.backend.count(text)) if text else 0
            if again <= target:
                return text
            keep -= again - target
        raise TeiError("Backend", "Backend error: could not truncate an input to %d tokens" % target)

    def fit_pairs(self, query, texts, truncate, side):
        """(texts, query per text) so that every query + text pair is within max_input_length tokens."""
        backend = self.backend
        if not backend.has_tokenizer:
            return list(texts), [query] * len(texts)
        overhead = None
        q_ids = None
        out_texts, out_queries = [], []
        for text in texts:
            if overhead is None:
                overhead = backend.pair_overhead()
            q_bytes = len(query.encode("utf-8")) + 1
            if q_bytes + len(text.encode("utf-8")) + 1 + overhead <= self.limit:
                out_texts.append(text)
                out_queries.append(query)
                continue
            if q_ids is None:
                q_ids = backend.count(query)
            d_ids = backend.count(text)
            total = len(q_ids) + len(d_ids) + overhead
            if total <= self.limit:
                out_texts.append(text)
                out_queries.append(query)
                continue
            if not truncate:
                raise self._too_long(total)
            q_keep, d_keep = pair_budget(len(q_ids), len(d_ids), self.limit - overhead)
            out_texts.append(self._truncate_text(d_ids, d_keep, side) if d_keep < len(d_ids) else text)
            out_queries.append(self._truncate_text(q_ids, q_keep, side) if q_keep < len(q_ids) else query)
        return out_texts, out_queries

    # -- /embed, /v1/embeddings
    def embed(self, body, openai=False):
        if not isinstance(body, dict):
            raise TeiError("Validation", "the request body must be a JSON object", status=422)
        if self.cfg["kind"] != "embedding":
            raise TeiError("Backend", "Backend error: Inference failed: Model is not an embedding model")
        key = "input" if openai else "inputs"
        if key not in body:
            raise TeiError("Validation", "missing field `%s`" % key, status=422)
        inputs = as_inputs(body[key], key)
        if body.get("dimensions") is not None:
            raise validation("Input validation error: `dimensions` is not supported by this server")
        if not openai and body.get("prompt_name") is not None:
            raise validation("Input validation error: `prompt_name` is not supported by this server")
        self._batch_checks(inputs, key if openai else "inputs")
        prompt = self.cfg["default_prompt"]
        if prompt:  # as TEI's --default-prompt: before the text, inside the length limit
            inputs = [prompt + x if isinstance(x, str) else x for x in inputs]
        if openai:
            truncate, side, normalize = self.cfg["auto_truncate"], "right", True
            fmt = body.get("encoding_format") or "float"
            if fmt not in ("float", "base64"):
                raise TeiError("Validation", "encoding_format must be float or base64", status=422)
        else:
            truncate = body.get("truncate")
            truncate = self.cfg["auto_truncate"] if truncate is None else bool(truncate)
            side = direction(body.get("truncation_direction"))
            normalize = body.get("normalize", True) is not False
            fmt = "float"
        fitted = self.fit_inputs(inputs, truncate, side)
        vectors, used = self._embed(fitted, normalize=normalize)
        if not openai:
            return vectors
        data = [{"object": "embedding", "embedding": float_b64(v) if fmt == "base64" else v, "index": i}
                for i, v in enumerate(vectors)]
        tokens = used if isinstance(used, int) else 0
        return {"object": "list", "data": data, "model": self.cfg["model_id"],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    # -- /rerank
    def rerank(self, body):
        if not isinstance(body, dict):
            raise TeiError("Validation", "the request body must be a JSON object", status=422)
        for field in ("query", "texts"):
            if field not in body:
                raise TeiError("Validation", "missing field `%s`" % field, status=422)
        query, texts = body["query"], body["texts"]
        if not isinstance(query, str) or not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise TeiError("Validation", "`query` must be a string and `texts` a list of strings", status=422)
        if not texts:
            raise TeiError("Empty", "`texts` cannot be empty")
        if self.cfg["kind"] != "rerank":
            raise TeiError("Backend", "Backend error: Inference failed: model is not a re-ranker model")
        if len(texts) > self.batch:
            raise validation("batch size %d > maximum allowed batch size %d" % (len(texts), self.batch))
        truncate = body.get("truncate")
        truncate = self.cfg["auto_truncate"] if truncate is None else bool(truncate)
        side = direction(body.get("truncation_direction"))
        raw = bool(body.get("raw_scores", False))
        fitted, queries = self.fit_pairs(query, texts, truncate, side)
        if len(set(queries)) > 1:  # the query itself had to be cut for some texts: score those pairs apart
            scores = [None] * len(texts)
            groups = {}
            for i, q in enumerate(queries):
                groups.setdefault(q, []).append(i)
            for q, idxs in groups.items():
                for i, s in zip(idxs, self.backend.rerank(q, [fitted[i] for i in idxs], raw_scores=raw)):
                    scores[i] = s
        else:
            scores = self.backend.rerank(queries[0], fitted, raw_scores=raw)
        if any(isinstance(s, float) and math.isnan(s) for s in scores):
            raise TeiError("Backend", "score is NaN")
        ranks = []
        for i, s in enumerate(scores):
            rank = {"index": i, "score": s}
            if body.get("return_text"):
                rank["text"] = texts[i]
            ranks.append(rank)
        ranks.sort(key=lambda r: (-r["score"], r["index"]))
        return ranks

    # -- /tokenize, /decode
    def tokenize(self, body):
        if not isinstance(body, dict) or "inputs" not in body:
            raise TeiError("Validation", "missing field `inputs`", status=422)
        value = body["inputs"]
        if isinstance(value, str):
            inputs = [value]
        elif isinstance(value, list) and all(isinstance(x, str) for x in value):
            inputs = value
            if not inputs:
                raise TeiError("Empty", "`inputs` cannot be empty")
            if len(inputs) > self.batch:
                raise validation("batch size %d > maximum allowed batch size %d" % (len(inputs), self.batch))
        else:
            raise TeiError("Validation", "`inputs` must be a string or a list of strings", status=422)
        if not self.backend.has_tokenizer:
            raise TeiError("Backend", "Backend error: tokenization is not available with the %s backend"
                           % self.backend.name)
        add_special = body.get("add_special_tokens", True) is not False
        special_ids = set(self.backend.specials())
        return [token_offsets(text, self.backend.tokenize(text, add_special), special_ids) for text in inputs]

    def decode(self, body):
        if not isinstance(body, dict) or "ids" not in body:
            raise TeiError("Validation", "missing field `ids`", status=422)
        ids = body["ids"]
        batch = ids if ids and all(isinstance(x, list) for x in ids) else [ids]
        if not all(isinstance(x, int) for seq in batch for x in seq):
            raise TeiError("Validation", "`ids` must be a list of token ids or a list of those", status=422)
        if not self.backend.has_tokenizer:
            raise TeiError("Backend", "Backend error: decoding is not available with the %s backend"
                           % self.backend.name)
        skip = body.get("skip_special_tokens", True) is not False
        special_ids = set(self.backend.specials()) if skip else set()
        return [self.backend.detokenize([x for x in seq if x not in special_ids]).strip() for seq in batch]


# ----------------------------------------------------------------------------- HTTP server
class Metrics:
    def __init__(self):
        self.lock = threading.Lock()
        self.counts = {}

    def inc(self, name, **labels):
        key = (name, tuple(sorted(labels.items())))
        with self.lock:
            self.counts[key] = self.counts.get(key, 0) + 1

    def text(self):
        lines = []
        with self.lock:
            for (name, labels), value in sorted(self.counts.items()):
                label = ",".join('%s="%s"' % kv for kv in labels)
                lines.append("%s{%s} %d" % (name, label, value) if label else "%s %d" % (name, value))
        return "\n".join(lines) + "\n"


def count_inputs(body):
    """How many inputs a request carries (for the log line)."""
    if isinstance(body, dict):
        for key in ("texts", "input", "inputs", "ids"):
            value = body.get(key)
            if isinstance(value, str) or isinstance(value, list) and value and isinstance(value[0], int):
                return 1
            if isinstance(value, list):
                return len(value)
    return 0


PUBLIC = {("GET", "/health"), ("GET", "/"), ("GET", "/ping"), ("GET", "/metrics")}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "tei-front/1"
    front = None  # set by make_server
    metrics = None
    api_key = None
    slots = None
    log = None

    def log_message(self, *args):  # one line per request is written by _finish
        pass

    def _send(self, status, payload=None, content_type="application/json"):
        if payload is None:
            data = b""
        elif isinstance(payload, (bytes, str)):
            data = payload.encode("utf-8") if isinstance(payload, str) else payload
        else:
            data = json.dumps(payload, separators=(",", ":")).encode("utf-8")
        self._status = status
        self.front.backend.http.close()
        # the request's log line goes out before its answer: a client that has the answer has the line too
        self.log("%s %s inputs=%d status=%d ms=%.0f" % (
            self.command, self._path, self._inputs, status, (time.monotonic() - self._started) * 1000))
        self.send_response(status)
        if data:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _authorized(self):
        if not self.api_key:
            return True
        got = self.headers.get("Authorization", "")
        return hmac.compare_digest(got.encode("utf-8"), ("Bearer " + self.api_key).encode("utf-8"))

    def _handle(self):
        self._started = time.monotonic()
        self._status, self._inputs = 0, 0
        self._path = urllib.parse.urlsplit(self.path).path
        try:
            self._route(self._path)
        except Exception as exc:  # noqa: BLE001 - answer TEI-shaped instead of dropping the connection
            self.log("%s %s: unexpected %s: %s" % (self.command, self._path, type(exc).__name__, exc))
            if not self._status:
                self.close_connection = True
                self._send(500, {"error": "Backend error: %s" % exc, "error_type": "Backend"})
        finally:
            self.front.backend.http.close()

    def do_GET(self):  # noqa: N802 - http.server API
        self._handle()

    def do_POST(self):  # noqa: N802 - http.server API
        self._handle()

    def _route(self, path):
        method = self.command
        if (method, path) not in PUBLIC and not self._authorized():
            self._drain()
            self.metrics.inc("te_request_failure", err="unauthorized")
            return self._send(401)
        if method == "GET":
            if path in ("/health", "/", "/ping"):
                ok, why = self.front.health()
                if ok:
                    return self._send(200)
                self.log("health: backend unhealthy: %s" % why)
                return self._send(503, {"error": "unhealthy", "error_type": "Unhealthy"})
            if path == "/info":
                return self._send(200, self.front.info())
            if path == "/metrics":
                return self._send(200, self.metrics.text(), content_type="text/plain; version=0.0.4")
            return self._send(404)
        routes = {
            "/embed": lambda b: self.front.embed(b),
            "/v1/embeddings": lambda b: self.front.embed(b, openai=True),
            "/embeddings": lambda b: self.front.embed(b, openai=True),
            "/rerank": self.front.rerank,
            "/tokenize": self.front.tokenize,
            "/decode": self.front.decode,
            "/": self.front.embed if self.front.cfg["kind"] == "embedding" else self.front.rerank,
            "/invocations": self.front.embed if self.front.cfg["kind"] == "embedding" else self.front.rerank,
        }
        if path not in routes:
            self._drain()
            return self._send(404)
        openai = path in ("/v1/embeddings", "/embeddings")
        try:
            body = self._read_json()
            self._inputs = count_inputs(body)
            if not self.slots.acquire(blocking=False):
                raise TeiError("Overloaded", "Model is overloaded")
            try:
                result = routes[path](body)
            finally:
                self.slots.release()
        except TeiError as exc:
            self.metrics.inc("te_request_failure", err=exc.error_type.lower())
            if exc.status >= 500 or exc.error_type == "Backend":
                self.log("%s %s: %s" % (method, path, exc.message))
            return self._send(exc.status, exc.body(openai=openai))
        self.metrics.inc("te_request_success", method=path.strip("/").replace("/", "_") or "root")
        return self._send(200, result)

    def _drain(self, length=None):
        """Read (and drop) the request body, so that the client reads the answer instead of a reset."""
        if length is None:
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
        if length < 0 or length > 64 * max(self.front.cfg["payload_limit"], 1 << 20):
            self.close_connection = True
            return
        while length > 0:
            chunk = self.rfile.read(min(length, 1 << 16))
            if not chunk:
                break
            length -= len(chunk)

    def _read_json(self):
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            raise TeiError("Validation", "a Content-Length header is required", status=411)
        if length > self.front.cfg["payload_limit"]:
            self._drain(length)
            raise TeiError("Validation", "Failed to buffer the request body: length limit exceeded", status=413)
        raw = self.rfile.read(length) if length else b""
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise TeiError("Validation", "Expected request with `Content-Type: application/json`", status=415)
        try:
            return json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise TeiError("Validation", "Failed to parse the request body as JSON: %s" % exc, status=400) from exc


def build_front(cfg, api_key=None, counter=None):
    client = BackendHTTP(cfg["backend_url"], api_key=api_key, timeout=float(cfg["backend_timeout"]), counter=counter)
    backend_cls = LlamaCppBackend if cfg["backend"] == "llamacpp" else InfinityBackend
    return Front(cfg, backend_cls(client, cfg["backend_model"]))


def make_server(cfg, api_key=None, log=None, front=None):
    """A ThreadingHTTPServer serving CFG (not started)."""
    metrics = Metrics()
    front = front or build_front(cfg, api_key=api_key,
                                 counter=lambda path: metrics.inc("tei_front_backend_requests", path=path))

    def default_log(line):
        print(line, flush=True)

    attrs = {"front": front, "metrics": metrics, "api_key": api_key or None,
             "slots": threading.BoundedSemaphore(cfg["max_concurrent_requests"]),
             "log": staticmethod(log or default_log)}
    handler = type("TeiFrontHandler", (Handler,), attrs)
    server = ThreadingHTTPServer((cfg["host"], cfg["port"]), handler)
    server.daemon_threads = True
    server.front = front
    server.metrics = metrics
    return server


def main(argv):
    if len(argv) == 3 and argv[1] == "--check":
        try:
            load_config(argv[2])
        except ConfigError as exc:
            print("tei_front: %s: %s" % (argv[2], exc), file=sys.stderr)
            return 1
        return 0
    if len(argv) != 2:
        sys.exit("usage: tei_front.py CONFIG.json | tei_front.py --check CONFIG.json")
    try:
        cfg = load_config(argv[1])
    except ConfigError as exc:
        sys.exit("tei_front: %s: %s" % (argv[1], exc))
    api_key = os.environ.get(cfg["api_key_env"]) or None
    server = make_server(cfg, api_key=api_key)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    thread = threading.Thread(target=server.serve_forever, name="tei-front", daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    print("tei-front (%s) listening on http://%s:%d: %s %s model %s at %s (batch %d, %d tokens, auto_truncate %s)" % (
        VERSION, host, port, cfg["kind"], cfg["backend"], cfg["backend_model"], cfg["backend_url"],
        cfg["max_client_batch_size"], cfg["max_input_length"], str(cfg["auto_truncate"]).lower()), flush=True)
    stop.wait()
    print("stopping", flush=True)
    server.shutdown()
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
