"""scripts/dify-knowledge-sync: the same sync without a playbook, against the fake of Dify's document API."""

import importlib.machinery
import importlib.util
import io
import json
import os
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "tests", "knowledge"))
from fake_dify import KEY, FakeServer  # noqa: E402


def load_cli():
    path = os.path.join(ROOT, "scripts", "dify-knowledge-sync")
    loader = importlib.machinery.SourceFileLoader("dify_knowledge_sync_cli", path)
    spec = importlib.util.spec_from_loader(loader.name, loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


CLI = load_cli()


class Tty(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture
def dify():
    srv = FakeServer(auto_ticks=6)  # every status read finishes the documents
    srv.fake.add_dataset("Handbook")
    yield srv
    srv.stop()


@pytest.fixture
def repo(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# A\n\nThe kfx_alpha planner.\n")
    (tmp_path / "b.py").write_text("print('kfx_beta')\n")
    return tmp_path


def run(dify, repo, *extra, stream=None):
    err, out = stream or io.StringIO(), io.StringIO()
    code = CLI.main(["--url", dify.url, "--dataset", "Handbook", "--source", str(repo), "--poll-interval", "1"]
                    + list(extra), stream=err, out=out)
    return code, err.getvalue(), out.getvalue()


def test_sync_resync_and_json(dify, repo, monkeypatch):
    monkeypatch.setenv("DIFY_DATASET_API_KEY", KEY)
    code, err, out = run(dify, repo, "--query", "kfx_alpha planner", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["added"] == ["b.py", "docs/a.md"] and result["retrieval"]["records"] >= 1
    assert "[Handbook] added 2, updated 0, removed 0, unchanged 0, skipped 0, failed 0" in err
    assert "indexing: 2/2 documents done" in err
    writes = len(dify.fake.writes())
    code, err, _ = run(dify, repo)
    assert code == 0 and "unchanged 2" in err and len(dify.fake.writes()) == writes


def test_check_and_diff_write_nothing(dify, repo, monkeypatch):
    monkeypatch.setenv("DIFY_DATASET_API_KEY", KEY)
    code, err, _ = run(dify, repo, "--check", "--diff")
    assert code == 0 and dify.fake.writes() == []
    assert "+ b.py\n+ docs/a.md\n" in err and "[Handbook] would add 2, update 0, remove 0" in err


def test_progress_bar_on_a_terminal(dify, repo, monkeypatch):
    monkeypatch.setenv("DIFY_DATASET_API_KEY", KEY)
    tty = Tty()
    code, err, _ = run(dify, repo, stream=tty)
    assert code == 0
    assert "\r\033[K[###############...............]  50% submitting: 1/2 writes" in err
    assert "\r\033[K[##############################] 100% indexing: 2/2 documents done" in err


@pytest.mark.parametrize("extra,env,code,needle", [
    ([], {}, 2, "--dataset-key-file: no knowledge API key"),
    (["--dataset", "Nope"], {"DIFY_DATASET_API_KEY": KEY}, 2, "--dataset: Dify has no knowledge base named 'Nope'"),
    (["--include", "*.rs"], {"DIFY_DATASET_API_KEY": KEY}, 2, "sources[0].include: '*.rs' matches no file"),
    (["--max-tokens", "10"], {"DIFY_DATASET_API_KEY": KEY}, 2, "chunking.max_tokens"),
    ([], {"DIFY_DATASET_API_KEY": "dataset-wrong"}, 3, "HTTP 401 unauthorized"),
])
def test_bad_input_exits_before_any_write(dify, repo, monkeypatch, extra, env, code, needle):
    monkeypatch.delenv("DIFY_DATASET_API_KEY", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    got, err, _ = run(dify, repo, *extra)
    assert got == code and needle in err, err
    assert dify.fake.writes() == []


def test_failed_documents_exit_1(dify, repo, monkeypatch):
    monkeypatch.setenv("DIFY_DATASET_API_KEY", KEY)
    (repo / "b.py").write_text("FAKE_INDEX_ERROR\n")
    code, err, _ = run(dify, repo)
    assert code == 1 and "  failed: b.py (add): fake embedding server: input too long" in err
    code, err, _ = run(dify, repo, "--tolerate-failures")
    assert code == 0


def test_key_file_and_config(dify, repo, tmp_path, monkeypatch):
    monkeypatch.delenv("DIFY_DATASET_API_KEY", raising=False)
    key = tmp_path / "key"
    key.write_text(KEY + "\n")
    cfg = tmp_path / "sync.json"
    cfg.write_text(json.dumps({"sources": [{"path": str(repo), "include": ["**/*.md"]}],
                               "chunking": {"max_tokens": 500}}))
    err = io.StringIO()
    code = CLI.main(["--url", dify.url, "--dataset", "Handbook", "--dataset-key-file", str(key), "--config", str(cfg)],
                    stream=err, out=io.StringIO())
    assert code == 0, err.getvalue()
    body = [r["json"] for r in dify.fake.requests if r["path"].endswith("/create-by-text")]
    assert [b["name"] for b in body] == ["docs/a.md"]
    assert body[0]["process_rule"]["rules"]["segmentation"]["max_tokens"] == 500
