"""Pure checks of the model_servers role's data: presets, defaults and argument specs agree."""

import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "plugins" / "filter"))

import model_servers as ms  # noqa: E402

ROLE = ROOT / "roles" / "model_servers"
DOCS = (ROOT / "docs" / "model-servers.md").read_text()
VARS = yaml.safe_load((ROLE / "vars" / "main.yml").read_text())
DEFAULTS = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
SPECS = yaml.safe_load((ROLE / "meta" / "argument_specs.yml").read_text())["argument_specs"]["main"]["options"]
PRESETS = VARS["__model_servers_presets"]


def test_every_default_is_specified_and_vice_versa():
    assert set(DEFAULTS) == set(SPECS)
    for name, spec in SPECS.items():
        if "default" in spec:
            assert spec["default"] == DEFAULTS[name], name
        if "choices" in spec:
            assert DEFAULTS[name] in spec["choices"], name


def test_preset_choices_match_the_presets():
    assert set(SPECS["model_servers_preset"]["choices"]) == set(PRESETS)


@pytest.mark.parametrize("preset", [p for p in PRESETS if p != "none"])
def test_preset_has_one_server_per_kind_with_valid_backends(preset):
    servers = PRESETS[preset]
    assert sorted(s["kind"] for s in servers) == ["embedding", "llm", "rerank"]
    assert len({s["port"] for s in servers}) == len(servers)
    assert len({s["name"] for s in servers}) == len(servers)
    for s in servers:
        assert s["kind"] in ms.BACKENDS[s["backend"]]["kinds"], s["name"]
        sources = [k for k in ("hf", "url", "src", "ollama") if k in s["model"]]
        assert len(sources) == 1, s["name"]
        if s["backend"] == "llamacpp":
            assert s["model"]["file"].endswith(".gguf")
            assert s["model"]["file"] in s["model"].get("include", [s["model"]["file"]])
        if s.get("runtime") == "native":
            assert ms.BACKENDS[s["backend"]]["native"]
        assert set(s) <= ms.SERVER_KEYS, s["name"]


def test_cpu_tiny_needs_no_gpu_and_runs_natively():
    for s in PRESETS["cpu-tiny"]:
        assert s["gpus"] == [] and s["runtime"] == "native"


def test_ja_preset_matches_the_on_prem_guide():
    by_kind = {s["kind"]: s for s in PRESETS["ja"]}
    assert "ELYZA" in by_kind["llm"]["model"]["hf"] and by_kind["llm"]["model"]["file"].endswith(".gguf")
    assert by_kind["embedding"]["model"]["hf"] == "cl-nagoya/ruri-large"
    assert by_kind["rerank"]["model"]["hf"] == "cl-nagoya/ruri-reranker-large"
    # ruri's tokenizer needs MeCab: TEI cannot load it, Infinity gets fugashi + unidic-lite
    for kind in ("embedding", "rerank"):
        assert by_kind[kind]["backend"] == "infinity"
        assert {"fugashi", "unidic-lite"} <= set(by_kind[kind]["pip_packages"])


def test_images_are_pinned():
    images = DEFAULTS["model_servers_images"]
    flat = [v for k, v in images.items() if k != "tei"] + list(images["tei"].values())
    for entry in flat:  # {image, digest, cuda} (tests/unit/test_gpu_compat.py checks the rest)
        name, _, tag = entry["image"].rpartition(":")
        assert name and tag and tag != "latest", entry
    assert set(images["tei"]) == set(SPECS["model_servers_tei_arch"]["choices"]) - {"auto"}
    assert set(VARS["__model_servers_tei_arch_by_cc"].values()) <= set(images["tei"])


# The trained maximum context of every preset model (docs/model-servers.md, "Contexts that fit the chunks",
# says where each was checked). Embedding and rerank contexts are derived from the chunk size and capped here.
MODEL_MAX = {
    "elyza/Llama-3-ELYZA-JP-8B-GGUF": 8192, "cl-nagoya/ruri-large": 512, "cl-nagoya/ruri-reranker-large": 512,
    "Qwen/Qwen2.5-7B-Instruct-AWQ": 32768, "BAAI/bge-base-en-v1.5": 512, "BAAI/bge-reranker-base": 512,
    "Qwen/Qwen2.5-0.5B-Instruct-GGUF": 32768, "CompendiumLabs/bge-small-en-v1.5-gguf": 512,
    "gpustack/bge-reranker-v2-m3-GGUF": 8192,
}


@pytest.mark.parametrize("preset", [p for p in PRESETS if p != "none"])
def test_every_preset_entry_records_the_models_trained_maximum(preset):
    for s in PRESETS[preset]:
        assert s["model_max_tokens"] == MODEL_MAX[s["model"]["hf"]], s["name"]
        # documented with its source, in the table of docs/model-servers.md
        row = [line for line in DOCS.splitlines() if line.startswith("| `%s`" % s["model"]["hf"])]
        assert row and "| %d |" % s["model_max_tokens"] in row[0], s["model"]["hf"]
        if s["kind"] != "llm":   # derived from model_servers_chunk_chars, not set per preset
            assert "context_size" not in s, s["name"]


def test_no_render_only_mode_is_left():
    assert "model_servers_deploy_mode" not in DEFAULTS and "model_servers_deploy_mode" not in SPECS
    for path in (ROLE / "tasks").glob("*.yml"):
        assert "deploy_mode" not in path.read_text(), path.name
