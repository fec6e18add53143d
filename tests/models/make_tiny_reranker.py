"""Make a tiny random cross-encoder (BertForSequenceClassification, one label) for tests.

Usage: make_tiny_reranker.py TOKENIZER_DIR OUT_DIR

The weights are random (seeded, so the result is deterministic); the tokenizer files are copied
from TOKENIZER_DIR (all-MiniLM-L6-v2's BERT uncased tokenizer). Head size 32 (hidden 64,
2 heads) so attention kernels that require head_dim >= 32 accept it.
"""

import shutil
import sys
from pathlib import Path

import torch
from transformers import BertConfig, BertForSequenceClassification

TOKENIZER_FILES = ["vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]


def main():
    tokenizer_dir, out_dir = Path(sys.argv[1]), Path(sys.argv[2])
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=512,
        num_labels=1,
    )
    model = BertForSequenceClassification(config).eval()
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    for name in TOKENIZER_FILES:
        shutil.copy2(tokenizer_dir / name, tmp / name)
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)


if __name__ == "__main__":
    main()
