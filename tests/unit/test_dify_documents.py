"""plugins/modules/dify_documents.py and plugins/action/dify_documents.py: the exact HTTP calls, `changed`,
check mode, incremental re-syncs, busy documents, back-off, failures and progress -- against a fake of
Dify 1.15.0's document service API (tests/knowledge/fake_dify.py, a test double).
"""

import importlib.util
import json
import os
import shutil
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "tests", "knowledge"))
from fake_dify import KEY, FakeServer  # noqa: E402
import make_fixture_repo  # noqa: E402

from ansible.module_utils import dify_knowledge as k  # noqa: E402
from ansible.module_utils import dify_knowledge_api as api  # noqa: E402

DS = "/v1/datasets/%s"


@pytest.fixture
def dify():
    srv = FakeServer()
    srv.ds_id = srv.fake.add_dataset("Handbook")
    yield srv
    srv.stop()


@pytest.fixture
def repo(tmp_path):
    root = tmp_path / "repo"
    files = {
        "README.md": "# Handbook\n\nHow the kfx_readme works.\n",
        "src/app.py": "def main():\n    return 'kfx_app'\n",
        "src/lib/util.cpp": "int util() { return 1; } // kfx_util\n",
        "docs/guide.md": "# Guide\n\nThe kfx_guide explains the planner.\n",
        "vendor/dep/x.go": "package x\n",
        "assets/logo.png": "PNG",
    }
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


def args(dify, root, **kw):
    out = dict(url=dify.url, dataset_api_key=KEY, dataset="Handbook", retry_delay=0.01,
               sources=[{"path": str(root), "url": "https://git.example.com/handbook", "revision": "r1"}])
    out.update(kw)
    return out


def doc_calls(dify, since=0):
    return [(m, p.replace(dify.ds_id, "{ds}")) for m, p in dify.fake.calls(since)]


def bodies(dify, method, suffix, since=0):
    return [r["json"] for r in dify.fake.requests[since:] if r["method"] == method and r["path"].endswith(suffix)]


READS = [("GET", "/v1/datasets"), ("GET", "/v1/datasets/{ds}/metadata"), ("GET", "/v1/datasets/{ds}/documents")]


# ------------------------------------------------------------------------------ first sync, re-sync
def test_first_sync_exact_calls_and_bodies(dify, repo, run_module):
    res = run_module("dify_documents", args(dify, repo))
    assert res["changed"] and not res.get("failed"), res
    calls = doc_calls(dify)
    assert calls[:3] == READS
    assert calls[3:7] == [("POST", "/v1/datasets/{ds}/metadata")] * 4
    assert calls[7] == ("GET", "/v1/datasets/{ds}")  # its indexing technique: real Dify requires it on creates
    assert sorted(calls[8:12]) == [("POST", "/v1/datasets/{ds}/document/create-by-text")] * 4
    assert calls[12:] == [("POST", "/v1/datasets/{ds}/documents/metadata")]
    assert dify.fake.requests[0]["query"] == {"keyword": "Handbook", "page": "1", "limit": "100"}
    assert dify.fake.requests[2]["query"] == {"page": "1", "limit": "100"}
    assert all(r["auth"] == "Bearer " + KEY for r in dify.fake.requests)
    assert sorted(b["name"] for b in bodies(dify, "POST", "/metadata")[:4]) == sorted(k.METADATA_FIELDS)
    assert all(b["type"] == "string" for b in bodies(dify, "POST", "/metadata")[:4])
    created = sorted(bodies(dify, "POST", "/create-by-text"), key=lambda b: b["name"])
    assert [b["name"] for b in created] == ["README.md", "docs/guide.md", "src/app.py", "src/lib/util.cpp"]
    app = created[2]
    assert app["text"] == ("File: src/app.py\nLanguage: Python\nSource: https://git.example.com/handbook at revision "
                           "r1\n\ndef main():\n    return 'kfx_app'\n")
    assert app["process_rule"] == k.process_rule({}) and app["doc_form"] == "text_model"
    # Dify 1.15.0's KnowledgeConfig requires indexing_technique (proven against real Dify in
    # tests/integration/test_knowledge_sync.py): the knowledge base's own is sent
    assert app["doc_language"] == "English" and app["indexing_technique"] == "high_quality"
    ops = bodies(dify, "POST", "/documents/metadata")[0]["operation_data"]
    assert len(ops) == 4 and all(op["partial_update"] is True for op in ops)
    by_doc = dict((op["document_id"], dict((m["name"], m["value"]) for m in op["metadata_list"])) for op in ops)
    app_doc = dify.fake.by_name(dify.ds_id)["src/app.py"]
    want = k.build_documents([{"path": str(repo), "url": "https://git.example.com/handbook"}], k.sync_settings())
    assert by_doc[app_doc["id"]] == {"sync_sha256": want.by_name["src/app.py"].sha, "source_path": "src/app.py",
                                     "source_url": "https://git.example.com/handbook", "source_revision": "r1"}
    assert res["counts"] == {"added": 4, "updated": 0, "removed": 0, "unchanged": 0, "busy": 0, "failed": 0,
                             "skipped": 2}
    assert res["skipped_files"] == {"vendored": 1, "binary": 1}
    assert sorted(w["name"] for w in res["watch"]) == res["added"] and all(w["batch"] for w in res["watch"])
    assert res["diff"]["prepared"] == "+ README.md\n+ docs/guide.md\n+ src/app.py\n+ src/lib/util.cpp\n"


def test_unchanged_resync_makes_no_write_and_changed_false(dify, repo, run_module):
    run_module("dify_documents", args(dify, repo))
    dify.fake.finish()
    mark = len(dify.fake.requests)
    res = run_module("dify_documents", args(dify, repo, sources=[{"path": str(repo), "revision": "r2",
                                                                   "url": "https://git.example.com/handbook"}]))
    assert not res["changed"] and res["counts"]["unchanged"] == 4 and res["watch"] == []
    assert doc_calls(dify, mark) == READS  # a new revision alone re-uploads nothing


def test_edit_delete_rename_exact_changes(dify, repo, run_module):
    run_module("dify_documents", args(dify, repo))
    dify.fake.finish()
    before = dify.fake.by_name(dify.ds_id)
    (repo / "src" / "app.py").write_text("def main():\n    return 'kfx_app v2'\n")
    (repo / "docs" / "guide.md").unlink()
    (repo / "src" / "lib" / "util.cpp").rename(repo / "src" / "lib" / "helpers.cpp")
    mark = len(dify.fake.requests)
    res = run_module("dify_documents", args(dify, repo))
    assert res["changed"]
    assert (res["added"], res["updated"], sorted(res["removed"])) == (
        ["src/lib/helpers.cpp"], ["src/app.py"], ["docs/guide.md", "src/lib/util.cpp"])
    assert res["counts"]["unchanged"] == 1
    calls = doc_calls(dify, mark)
    app_id = before["src/app.py"]["id"]
    assert calls[:3] == READS
    assert calls[3] == ("GET", "/v1/datasets/{ds}")  # the indexing technique a create must carry
    assert sorted(calls[4:6]) == sorted([("POST", "/v1/datasets/{ds}/documents/%s/update-by-text" % app_id),
                                 ("POST", "/v1/datasets/{ds}/document/create-by-text")])
    assert sorted(calls[6:8]) == sorted([("DELETE", "/v1/datasets/{ds}/documents/%s" % before["docs/guide.md"]["id"]),
                                         ("DELETE", "/v1/datasets/{ds}/documents/%s" % before["src/lib/util.cpp"]["id"])])
    assert calls[8:] == [("POST", "/v1/datasets/{ds}/documents/metadata")]
    after = dify.fake.by_name(dify.ds_id)
    assert after["src/app.py"]["id"] == app_id and "kfx_app v2" in after["src/app.py"]["text"]  # in place
    assert sorted(after) == ["README.md", "src/app.py", "src/lib/helpers.cpp"]
    assert res["diff"]["prepared"] == "- docs/guide.md\n~ src/app.py\n+ src/lib/helpers.cpp\n- src/lib/util.cpp\n"


def test_check_mode_reports_without_any_write(dify, repo, run_module):
    res = run_module("dify_documents", args(dify, repo), check_mode=True)
    assert res["changed"] and res["would"]["add"] == ["README.md", "docs/guide.md", "src/app.py", "src/lib/util.cpp"]
    assert doc_calls(dify) == READS and dify.fake.fields[dify.ds_id] == []
    run_module("dify_documents", args(dify, repo))
    dify.fake.finish()
    (repo / "README.md").write_text("# Handbook v2\n")
    mark = len(dify.fake.requests)
    res = run_module("dify_documents", args(dify, repo), check_mode=True)
    assert res["changed"] and res["would"] == {"add": [], "update": ["README.md"], "remove": []}
    assert res["diff"]["prepared"] == "~ README.md\n" and doc_calls(dify, mark) == READS
    (repo / "README.md").write_text("# Handbook\n\nHow the kfx_readme works.\n")
    res = run_module("dify_documents", args(dify, repo), check_mode=True)
    assert not res["changed"] and res["diff"]["prepared"] == ""


def test_no_prune_keeps_foreign_documents(dify, repo, run_module):
    dify.fake.handle("POST", DS % dify.ds_id + "/document/create-by-text", {}, {
        "name": "uploaded-by-hand.pdf", "text": "x", "process_rule": {"mode": "automatic"},
        "indexing_technique": "high_quality"})
    dify.fake.finish()
    res = run_module("dify_documents", args(dify, repo, prune=False))
    assert res["removed"] == [] and "uploaded-by-hand.pdf" in dify.fake.by_name(dify.ds_id)
    dify.fake.finish()
    res = run_module("dify_documents", args(dify, repo))
    assert res["removed"] == ["uploaded-by-hand.pdf"] and "uploaded-by-hand.pdf" not in dify.fake.by_name(dify.ds_id)


# ------------------------------------------------------------------------------ busy, errors, back-off
def test_busy_document_is_not_resubmitted(dify, repo, run_module):
    run_module("dify_documents", args(dify, repo))
    dify.fake.tick(2)  # still indexing
    (repo / "README.md").write_text("# changed while Dify indexes it\n")
    mark = len(dify.fake.requests)
    res = run_module("dify_documents", args(dify, repo))
    assert not res["changed"] and doc_calls(dify, mark) == READS
    assert [(b["name"], b["action"]) for b in res["busy"]] == [("README.md", "update")]
    assert sorted(w["name"] for w in res["watch"]) == ["README.md", "docs/guide.md", "src/app.py", "src/lib/util.cpp"]
    assert res["diff"]["prepared"] == "? README.md (still indexing in Dify: waits, then syncs)\n"
    dify.fake.finish()
    res = run_module("dify_documents", args(dify, repo))
    assert res["updated"] == ["README.md"] and res["busy"] == []


def test_update_refused_as_not_available_is_deferred(dify, repo, run_module):
    run_module("dify_documents", args(dify, repo))
    dify.fake.finish()
    (repo / "README.md").write_text("# v2\n")
    dify.fake.fail("POST", "/update-by-text$", 400, code="invalid_param", message="Document is not available")
    res = run_module("dify_documents", args(dify, repo))
    assert res["updated"] == [] and res["failed_documents"] == []
    assert [(b["name"], b["action"]) for b in res["busy"]] == [("README.md", "update")]
    assert [w["name"] for w in res["watch"]] == ["README.md"]


def test_rate_limits_are_waited_out(dify, repo, run_module):
    dify.fake.fail("POST", "/create-by-text$", 429, code="too_many_requests", message="slow down", count=3,
                   headers={"Retry-After": "0"})
    dify.fake.fail("POST", "/documents/metadata$", 403, code="forbidden", count=1,
                   message="Sorry, you have reached the knowledge base request rate limit of your subscription.")
    res = run_module("dify_documents", args(dify, repo, concurrency=1))
    assert res["counts"]["added"] == 4 and res["failed_documents"] == []
    assert res["requests"]["rate_limited"] == 4
    statuses = [r["status"] for r in dify.fake.requests if r["path"].endswith("/create-by-text")]
    assert statuses == [429, 429, 429, 200, 200, 200, 200]


def test_rate_limit_wait_is_bounded(dify, repo, run_module):
    dify.fake.fail("POST", "/create-by-text$", 429, code="too_many_requests", message="slow down", count=100)
    res = run_module("dify_documents", args(dify, repo, concurrency=1, backoff_max=0))
    assert res["counts"]["failed"] == 4 and res["counts"]["added"] == 0
    assert "HTTP 429 too_many_requests: slow down (still refused after waiting 0s; backoff_max)" in \
        res["failed_documents"][0]["error"]


def test_a_failed_document_does_not_stop_the_rest(dify, repo, run_module):
    dify.fake.fail("POST", "/create-by-text$", 400, code="invalid_param", message="Invalid doc_form.", count=1)
    res = run_module("dify_documents", args(dify, repo, concurrency=1))
    assert res["counts"]["added"] == 3 and res["counts"]["failed"] == 1
    f = res["failed_documents"][0]
    assert (f["action"], f["stage"], f["status"], f["code"]) == ("add", "submit", 400, "invalid_param")
    assert f["error"].endswith("/document/create-by-text failed: HTTP 400 invalid_param: Invalid doc_form.")
    assert not res.get("failed")  # the module reports; the action plugin fails the task at the end
    dify.fake.finish()
    res = run_module("dify_documents", args(dify, repo))
    assert res["added"] == [f["name"]]  # the next run adds what failed


def test_a_bad_key_stops_at_the_first_write(dify, repo, run_module):
    dify.fake.fail("POST", "/create-by-text$", 401, code="unauthorized", message="Access token is invalid", count=9)
    res = run_module("dify_documents", args(dify, repo, concurrency=1))
    assert res["failed"] and "HTTP 401 unauthorized" in res["msg"]
    assert len([r for r in dify.fake.requests if r["path"].endswith("/create-by-text")]) == 1


def test_indexing_errors_are_retried_in_place(dify, repo, run_module):
    (repo / "README.md").write_text("# FAKE_INDEX_ERROR\n")
    run_module("dify_documents", args(dify, repo))
    dify.fake.finish()
    failed = dify.fake.by_name(dify.ds_id)["README.md"]
    assert failed["indexing_status"] == "error"
    mark = len(dify.fake.requests)
    res = run_module("dify_documents", args(dify, repo))
    assert res["updated"] == ["README.md"]
    assert doc_calls(dify, mark)[3:] == [("GET", "/v1/datasets/{ds}"),
                                         ("POST", "/v1/datasets/{ds}/document/create-by-text"),
                                         ("POST", "/v1/datasets/{ds}/documents/metadata")]
    assert dify.fake.by_name(dify.ds_id)["README.md"]["id"] == failed["id"]  # re-indexed, same document
    dify.fake.finish()
    res = run_module("dify_documents", args(dify, repo, retry_errors=False))
    assert not res["changed"]


# ------------------------------------------------------------------------------ parts, names, limits
def test_big_files_become_parts_and_every_request_fits(dify, tmp_path, run_module):
    root = tmp_path / "big"
    root.mkdir()
    (root / "huge.md").write_text("".join("line %05d: \u00e9\"\\ text\n" % i for i in range(3000)))
    long_rel = "/".join("directory_number_%02d" % i for i in range(12)) + "/leaf.py"
    (root / long_rel).parent.mkdir(parents=True)
    (root / long_rel).write_text("x = 1\n")
    res = run_module("dify_documents", args(dify, root, max_request_size=16384))
    assert not res.get("failed"), res
    names = sorted(dify.fake.by_name(dify.ds_id))
    parts = [n for n in names if n.startswith("huge.md [part ")]
    assert len(parts) >= 5 and len(names) == len(parts) + 1
    long_name = [n for n in names if n.startswith(".../")][0]
    assert len(long_name) <= 200 and long_name.split(" ~")[0].endswith("/leaf.py")
    sizes = [r["bytes"] for r in dify.fake.requests if r["method"] == "POST"]
    assert max(sizes) <= 16384
    text = "".join(dify.fake.by_name(dify.ds_id)[p]["text"].split("\n\n", 1)[1] for p in
                   sorted(parts, key=lambda n: int(n.rsplit(" ", 1)[1][:-1])))
    assert text == (root / "huge.md").read_text()


@pytest.mark.parametrize("extra,needle,requests", [
    ({"sources": [{"path": "/nonexistent/kb"}]}, "sources[0].path: /nonexistent/kb is not a readable folder", 0),
    ({"sources": [{"path": "{repo}", "include": ["**/*.rs"]}]}, "sources[0].include: '**/*.rs' matches no file", 0),
    ({"sources": [{"path": "{repo}", "include": ["*.png", "vendor/**"]}]}, "matches no file", 0),
    ({"chunking": {"max_tokens": 10}}, "chunking.max_tokens", 0),
    ({"retrieval_query": "x" * 251}, "retrieval_query: 1 to 250", 0),
    ({"concurrency": 0}, "concurrency", 0),
    ({"poll_interval": 60}, "poll_interval", 0),
    ({"max_request_size": 1000}, "max_request_size", 0),
    ({"dataset": "Nope"}, "dataset: Dify has no knowledge base named 'Nope'", 1),
])
def test_bad_input_fails_before_any_write(dify, repo, run_module, extra, needle, requests):
    extra = json.loads(json.dumps(extra).replace("{repo}", str(repo)))
    res = run_module("dify_documents", args(dify, repo, **extra))
    assert res["failed"] and needle in res["msg"], res["msg"]
    assert len(dify.fake.requests) == requests and dify.fake.writes() == []


def test_empty_source_refuses_to_empty_the_knowledge_base(dify, tmp_path, run_module):
    (tmp_path / "only.png").write_bytes(b"\x89PNG")
    res = run_module("dify_documents", args(dify, tmp_path))
    assert res["failed"] and res["msg"].startswith("sources: no file to sync (skipped: binary 1)")
    assert dify.fake.requests == []


# ------------------------------------------------------------------------------ status and verify phases
def test_status_phase_reads_batches_of_a_small_watch(dify, repo, run_module):
    res = run_module("dify_documents", args(dify, repo))
    watch = [{"id": w["id"], "batch": w["batch"]} for w in res["watch"]]
    dify.fake.tick(4)
    mark = len(dify.fake.requests)
    st = run_module("dify_documents", args(dify, repo, phase="status", dataset_id=dify.ds_id, dataset=None,
                                           watch=watch))
    assert not st.get("failed") and not st["changed"], st
    assert sorted(doc_calls(dify, mark)) == sorted(("GET", "/v1/datasets/{ds}/documents/%s/indexing-status" % w["batch"])
                                                   for w in watch)
    assert sorted(d["state"] for d in st["documents"]) == ["indexing"] * 4
    assert all(d["segments_known"] and d["total_segments"] >= 1 for d in st["documents"])
    assert [c for c in doc_calls(dify, mark) if c[0] != "GET"] == []


def test_status_phase_lists_the_dataset_for_a_large_watch(dify, tmp_path, run_module):
    root = tmp_path / "many"
    root.mkdir()
    for i in range(30):
        (root / ("f%02d.md" % i)).write_text("file %d\n" % i)
    res = run_module("dify_documents", args(dify, root))
    watch = [{"id": w["id"], "batch": w["batch"]} for w in res["watch"]]
    dify.fake.finish()
    mark = len(dify.fake.requests)
    st = run_module("dify_documents", args(dify, root, phase="status", dataset_id=dify.ds_id, dataset=None,
                                           watch=watch))
    calls = doc_calls(dify, mark)
    assert calls[0] == ("GET", "/v1/datasets/{ds}/documents") and len(calls) == 1 + 30
    assert set(calls[1:]) == set(("GET", "/v1/datasets/{ds}/documents/%s/indexing-status" % w["batch"]) for w in watch)
    assert [d["state"] for d in st["documents"]] == ["completed"] * 30


def test_verify_phase(dify, repo, run_module):
    run_module("dify_documents", args(dify, repo))
    dify.fake.finish()
    mark = len(dify.fake.requests)
    res = run_module("dify_documents", args(dify, repo, phase="verify", retrieval_query="kfx_guide planner"))
    assert doc_calls(dify, mark) == [("GET", "/v1/datasets"), ("POST", "/v1/datasets/{ds}/retrieve")]
    assert bodies(dify, "POST", "/retrieve", mark) == [{"query": "kfx_guide planner"}]
    assert res["retrieval"]["records"] >= 1 and res["retrieval"]["top"][0]["document"] == "docs/guide.md"


# ------------------------------------------------------------------------------ the action plugin's loop
def load_action():
    path = os.path.join(ROOT, "plugins", "action", "dify_documents.py")
    spec = importlib.util.spec_from_file_location("dify_documents_action", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class Clock(object):
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t

    def sleep(self, s):
        self.t += s


def drive(run_module, dify, task_args, check_mode=False, ticks=2):
    action = load_action()
    lines, calls = [], []
    clock = Clock()

    def execute(extra):
        a = dict(task_args)
        a.update(extra)
        if "dataset_id" in extra:
            a.pop("dataset", None)
        calls.append(a["phase"])
        if a["phase"] == "status":
            dify.fake.tick(ticks)
        return run_module("dify_documents", a, check_mode=check_mode)

    res = action.drive(execute, task_args, check_mode, action.load_lib(), say=lines.append, clock=clock,
                       sleep=clock.sleep)
    return res, lines, calls


def test_action_plugin_waits_with_progress_and_summary(dify, repo, run_module):
    res, lines, calls = drive(run_module, dify, args(dify, repo, retrieval_query="kfx_guide planner",
                                                     poll_interval=10))
    assert res["changed"] and not res["failed"], res
    assert calls == ["sync", "status", "status", "status", "verify"]
    assert lines[0] == "dify_documents [Handbook] plan: add 4, update 0, remove 0, unchanged 0, busy 0, skipped 2"
    progress = [line for line in lines if " indexing: " in line]
    assert len(progress) == 3
    assert progress[0] == "dify_documents [Handbook] indexing: 0/4 documents done, 0/0+ segments, ETA -- (elapsed 0s)"
    assert progress[-1].startswith("dify_documents [Handbook] indexing: 4/4 documents done, 4/4 segments, ")
    assert "ETA 0s" in progress[-1] and "documents/s" in progress[-1]
    assert lines[-1] == ("dify_documents [Handbook] added 4, updated 0, removed 0, unchanged 0, skipped 2 (binary 1, "
                         "vendored 1), failed 0")
    assert res["progress"]["documents_done"] == 4 and res["retrieval"]["records"] >= 1
    assert res["diff"]["prepared"].startswith("+ README.md\n")
    res, lines, calls = drive(run_module, dify, args(dify, repo, poll_interval=10))
    assert not res["changed"] and calls == ["sync"] and res["counts"]["unchanged"] == 4


def test_action_plugin_fails_at_the_end_with_difys_error(dify, repo, run_module):
    (repo / "docs" / "guide.md").write_text("FAKE_INDEX_ERROR\n")
    res, lines, _ = drive(run_module, dify, args(dify, repo, poll_interval=5))
    assert res["failed"] and res["counts"]["added"] == 4 and res["counts"]["failed"] == 1
    assert res["failed_documents"] == [{"name": "docs/guide.md", "id": dify.fake.by_name(dify.ds_id)["docs/guide.md"]["id"],
                                        "action": "add", "stage": "indexing",
                                        "error": "fake embedding server: input too long"}]
    assert "dify_documents [Handbook]   failed: docs/guide.md (add): fake embedding server: input too long" in lines
    assert "1 document(s) failed" in res["msg"]
    res, _, _ = drive(run_module, dify, args(dify, repo, poll_interval=5, tolerate_failures=True))
    assert not res["failed"] and res["counts"]["failed"] == 1  # retried, failed again, tolerated


def test_action_plugin_check_mode_writes_nothing(dify, repo, run_module):
    res, lines, calls = drive(run_module, dify, args(dify, repo, retrieval_query="x"), check_mode=True)
    assert res["changed"] and calls == ["sync"] and dify.fake.writes() == []
    assert res["would"]["add"] == ["README.md", "docs/guide.md", "src/app.py", "src/lib/util.cpp"]
    assert "(plan only, nothing written)" in lines[0]


def test_action_plugin_slices_the_submit(dify, tmp_path, run_module, monkeypatch):
    root = tmp_path / "slices"
    root.mkdir()
    for i in range(6):
        (root / ("f%d.md" % i)).write_text("file %d\n" % i)
    ticks = iter(range(10 ** 6))
    monkeypatch.setattr(api.KnowledgeSync, "_over_budget", lambda self, started: next(ticks) % 3 == 2)
    res, lines, calls = drive(run_module, dify, args(dify, root, concurrency=1, poll_interval=5), ticks=6)
    assert calls[:3] == ["sync", "sync", "sync"] and res["counts"]["added"] == 6 and not res["failed"]
    assert [line for line in lines if "submitting" in line][0].startswith(
        "dify_documents [Handbook] submitting: 2/6 writes done")
    assert len(dify.fake.by_name(dify.ds_id)) == 6


# ------------------------------------------------------------------------------ fixture repository
def test_fixture_repository_is_deterministic_and_syncs_exactly(dify, tmp_path, run_module):
    a, b = tmp_path / "a", tmp_path / "b"
    ma = make_fixture_repo.generate(str(a), files=60, size_mb=0.2, body_limit=16384)
    make_fixture_repo.generate(str(b), files=60, size_mb=0.2, body_limit=16384)
    for dirpath, _, files in os.walk(str(a)):
        for f in files:
            rel = os.path.relpath(os.path.join(dirpath, f), str(a))
            assert open(os.path.join(str(a), rel), "rb").read() == open(os.path.join(str(b), rel), "rb").read()
    res, _, _ = drive(run_module, dify, args(dify, a, max_request_size=16384, sources=[{"path": str(a)}]), ticks=6)
    assert not res["failed"], res["msg"]
    assert res["counts"]["added"] == ma["documents"] == len(ma["text_files"]) + 1
    assert res["skipped_files"] == ma["skipped"]
    assert any(n.startswith(ma["oversized"] + " [part 2]") for n in res["added"])
    m = make_fixture_repo.apply_edits(str(a))
    res, _, _ = drive(run_module, dify, args(dify, a, max_request_size=16384, sources=[{"path": str(a)}]), ticks=6)
    assert (res["updated"], sorted(res["removed"]), res["added"]) == (m["edits"]["updated"], m["edits"]["removed"],
                                                                      m["edits"]["added"])
    assert res["counts"]["unchanged"] == m["documents"] - 4
    shutil.rmtree(str(b))


# ------------------------------------------------------------------------------ the console key path
class FakeConsole(object):
    def __init__(self, keys):
        self.keys = keys
        self.calls = []

    def request(self, method, path):
        self.calls.append((method, path))
        if method == "GET":
            return {"data": self.keys}
        return {"token": "dataset-new"}


@pytest.mark.parametrize("keys,check_mode,token,created,calls", [
    ([{"token": "dataset-old"}], False, "dataset-old", False, ["GET"]),
    ([], False, "dataset-new", True, ["GET", "POST"]),
    ([], True, None, False, ["GET"]),
])
def test_dataset_key_from_the_console(keys, check_mode, token, created, calls):
    console = FakeConsole(keys)
    assert api.dataset_api_key(console, check_mode) == (token, created)
    assert [m for m, _ in console.calls] == calls and all(p == "/console/api/datasets/api-keys" for _, p in console.calls)


def test_only_idempotent_requests_are_retried_on_5xx(dify, repo, run_module):
    dify.fake.fail("GET", "/documents$", 502, code="bad_gateway", count=1)
    dify.fake.fail("POST", "/create-by-text$", 500, code="internal_server_error", count=1)
    res = run_module("dify_documents", args(dify, repo, concurrency=1))
    lists = [r["status"] for r in dify.fake.requests if r["path"].endswith("/documents") and r["method"] == "GET"]
    assert lists == [502, 200]  # the list was read again
    creates = [r["status"] for r in dify.fake.requests if r["path"].endswith("/create-by-text")]
    assert creates == [500, 200, 200, 200]  # the failed create was not repeated blindly
    assert res["counts"]["failed"] == 1 and res["failed_documents"][0]["status"] == 500
    assert res["requests"]["retries"] == 1


def test_check_mode_before_the_knowledge_base_exists(dify, repo, run_module):
    res = run_module("dify_documents", args(dify, repo, dataset="Later"), check_mode=True)
    assert res["failed"] and "dataset: Dify has no knowledge base named 'Later'" in res["msg"]
    res = run_module("dify_documents", args(dify, repo, dataset="Later", allow_missing_dataset=True), check_mode=True)
    assert res["changed"] and res["would"]["add"] == ["README.md", "docs/guide.md", "src/app.py", "src/lib/util.cpp"]
    assert res["diff"]["prepared"].startswith("+ README.md\n") and "not there yet" in res["warnings"][0]
    res = run_module("dify_documents", args(dify, repo, url="http://127.0.0.1:9", allow_missing_dataset=True,
                                           retries=0), check_mode=True)
    assert res["changed"] and len(res["would"]["add"]) == 4
    res = run_module("dify_documents", args(dify, repo, dataset="Later", allow_missing_dataset=True))
    assert res["failed"]  # outside check mode a missing knowledge base always fails
    assert dify.fake.writes() == []
