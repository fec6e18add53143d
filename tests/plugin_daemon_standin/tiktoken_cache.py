"""tiktoken's GPT-2 files for offline plugins -- what the plugin daemon's image preloads.

The dify-plugin SDK (and openai_api_compatible) count LLM tokens with ``tiktoken`` "gpt2", whose files
tiktoken downloads from openaipublic.blob.core.windows.net at first use. dify-api asks for token counts
on every chat message (``get_llm_num_tokens``), so without them a host with no internet fails there.
The daemon's image (docker/local.dockerfile of dify-plugin-daemon 0.6.3) preloads the encodings into
``TIKTOKEN_CACHE_DIR=/app/.tiktoken``, which its plugin processes inherit. The stand-in does the same
with files it makes from a registry package: the PyPI sdist of ``openai-whisper`` ships GPT-2's ranks
(``whisper/assets/gpt2.tiktoken``); from them ``vocab.bpe`` and ``encoder.json`` are rebuilt and kept
only if their sha256 is exactly the one tiktoken itself checks -- so they are the very files it would
have downloaded. They are stored as tiktoken's cache stores them (file name = sha1 of the URL).

``ensure_gpt2(cache_dir, uv, python)`` returns the directory to use as ``TIKTOKEN_CACHE_DIR``.
"""

import base64
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tempfile

VOCAB_URL = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe"
ENCODER_URL = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json"
VOCAB_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
ENCODER_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
SOURCE_PACKAGE = "openai-whisper==20250625"
RANKS_FILE = os.path.join("whisper", "assets", "gpt2.tiktoken")


def cache_name(url):
    return hashlib.sha1(url.encode()).hexdigest()


def _byte_alphabet():
    """GPT-2's byte -> printable character table (tiktoken's data_gym format)."""
    order = [b for b in range(256) if chr(b).isprintable() and chr(b) != " "]
    table = {b: chr(b) for b in order}
    extra = 0
    for b in range(256):
        if b not in table:
            order.append(b)
            table[b] = chr(256 + extra)
            extra += 1
    return order, table


def files_from_ranks(ranks_text):
    """(vocab.bpe bytes, encoder.json bytes) rebuilt from a tiktoken rank file of GPT-2."""
    ranks = {}
    for line in ranks_text.splitlines():
        if line.strip():
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    order, table = _byte_alphabet()
    if any(ranks.get(bytes([b])) != i for i, b in enumerate(order)):
        raise ValueError("not GPT-2's byte ranks")

    def text(token):
        return "".join(table[b] for b in token)

    by_rank = sorted(ranks.items(), key=lambda kv: kv[1])
    merges = []
    for token, rank in by_rank[256:]:
        parts = [bytes([b]) for b in token]
        while len(parts) > 2:  # BPE with the merges learnt before this one leaves the pair it was made of
            best = None
            for i in range(len(parts) - 1):
                r = ranks.get(parts[i] + parts[i + 1])
                if r is not None and r < rank and (best is None or r < best[0]):
                    best = (r, i)
            if best is None:
                break
            i = best[1]
            parts[i:i + 2] = [parts[i] + parts[i + 1]]
        if len(parts) != 2:
            raise ValueError("token %r of rank %d is not a merge" % (token, rank))
        merges.append(text(parts[0]) + " " + text(parts[1]))
    vocab = ("#version: 0.2\n" + "\n".join(merges) + "\n").encode()
    encoder = {text(t): r for t, r in by_rank}
    encoder["<|endoftext|>"] = 50256
    return vocab, json.dumps(encoder).encode()


def _valid(directory):
    for url, digest in ((VOCAB_URL, VOCAB_SHA256), (ENCODER_URL, ENCODER_SHA256)):
        path = os.path.join(directory, cache_name(url))
        try:
            with open(path, "rb") as fh:
                if hashlib.sha256(fh.read()).hexdigest() != digest:
                    return False
        except OSError:
            return False
    return True


def ensure_gpt2(cache_dir, uv, python, log=None):
    """The tiktoken cache directory holding GPT-2's files (made once); RuntimeError when it cannot be made."""
    log = log or (lambda msg: None)
    directory = os.path.join(cache_dir, "tiktoken")
    if _valid(directory):
        return directory
    os.makedirs(directory, exist_ok=True)
    with open(directory + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _valid(directory):
            return directory
        tmp = tempfile.mkdtemp(prefix="tiktoken-src-", dir=cache_dir)
        try:
            res = subprocess.run([uv, "pip", "install", "--quiet", "--no-deps", "--target", tmp, "--python", python,
                                  SOURCE_PACKAGE], capture_output=True, timeout=600,
                                 env=dict(os.environ, UV_PYTHON_DOWNLOADS="never"))
            if res.returncode != 0:
                raise RuntimeError("uv pip install %s failed: %s" % (
                    SOURCE_PACKAGE, res.stderr.decode("utf-8", "replace").strip()[-1000:]))
            with open(os.path.join(tmp, RANKS_FILE), encoding="ascii") as fh:
                vocab, encoder = files_from_ranks(fh.read())
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if hashlib.sha256(vocab).hexdigest() != VOCAB_SHA256 or hashlib.sha256(encoder).hexdigest() != ENCODER_SHA256:
            raise RuntimeError("GPT-2 files rebuilt from %s do not match tiktoken's hashes" % SOURCE_PACKAGE)
        for url, data in ((VOCAB_URL, vocab), (ENCODER_URL, encoder)):
            path = os.path.join(directory, cache_name(url))
            with open(path + ".tmp", "wb") as fh:
                fh.write(data)
            os.replace(path + ".tmp", path)
        log("tiktoken GPT-2 files made in %s (from %s, sha256 verified)" % (directory, SOURCE_PACKAGE))
        return directory
