"""Knowledge as code against REAL Dify 1.15.0: a generated source repository (tests/knowledge/
make_fixture_repo.py) is synced into a knowledge base by the dify_knowledge role (dify_documents module
+ action plugin), indexed by Dify's real worker through the real embedding path (llama.cpp all-MiniLM-
L6-v2 behind its TEI-compatible front, huggingface_tei plugin), re-synced incrementally with exact
counts, and answered from by a chat app.
"""

import json
import os
import re
import subprocess
import sys

import pytest

from ansible.module_utils.dify_client import DifyClient
from conftest import ADMIN_EMAIL, ROOT, stored_credentials

DATASET = "Fixture repo"
NOTES = "Notes"
CLI = os.path.join(ROOT, "scripts", "dify-knowledge-sync")
APP = "Repo assistant"
# 200 files of code and docs, about 0.15 MB: every chunk goes through the real embedding model on CPU
# (all-MiniLM-L6-v2 in llama.cpp, ~1-2k tokens/s here), so the text volume sets this test's time
BODY_LIMIT = 16384
FILES = 200
SIZE_MB = "0.15"
MAKER = os.path.join(ROOT, "tests", "knowledge", "make_fixture_repo.py")
SOURCE_URL = "https://git.example.test/robot/fixture.git"

KNOWLEDGE_PLAYBOOK = """- name: Knowledge bases from sources (integration test against real Dify)
  hosts: dify
  gather_facts: false
  roles:
    - role: dify_knowledge
"""


def make_repo(dest, *extra):
    if "--edit" not in extra:
        extra = ("--files", str(FILES), "--size-mb", SIZE_MB, "--body-limit", str(BODY_LIMIT)) + extra
    subprocess.run([sys.executable, MAKER, dest] + list(extra), check=True, capture_output=True)
    with open(dest + ".manifest.json") as fh:
        return json.load(fh)


@pytest.fixture(scope="module")
def kb(real_dify, run_bootstrap, bootstrap_vars, tmp_path_factory):
    """The bootstrap with one more knowledge base (semantic search, no rerank: the tiny test reranker's
    head is random) and a chat app over it; then a fixture repository to sync."""
    defaults_ds = [{"name": "Documents", "description": "Documents the assistant answers from."}]
    run = run_bootstrap({
        "dify_bootstrap_datasets": defaults_ds + [
            {"name": DATASET, "description": "A generated source repository", "search_method": "semantic_search",
             "reranking_model": "", "top_k": 4},
            {"name": NOTES, "description": "A folder synced by the CLI", "search_method": "semantic_search",
             "reranking_model": ""}],
        "dify_bootstrap_apps": [
            {"name": "Assistant", "description": "Answers questions from the Documents knowledge base.",
             "pre_prompt": "Answer the user's question using the provided context. Say so when the context "
                           "does not contain the answer.", "datasets": ["Documents"]},
            {"name": APP, "description": "Answers from the fixture repository.", "datasets": [DATASET],
             "reranking_model": "", "top_k": 4, "pre_prompt": "Answer from the repository."}],
    })
    assert run.rc == 0, run.failures()
    creds = bootstrap_vars["dify_bootstrap_credentials_file"]
    repo = str(tmp_path_factory.mktemp("fixture") / "repo")
    manifest = make_repo(repo, "--git")
    stored = stored_credentials(creds)
    return {"repo": repo, "manifest": manifest, "creds": creds, "checkouts": str(tmp_path_factory.mktemp("checkouts")),
            "ds_key": stored["dataset_api_key"], "app_key": stored["app_api_keys"][APP],
            "client": DifyClient(real_dify.url, admin_email=ADMIN_EMAIL, admin_password=stored["admin_password"])}


def knowledge_vars(real_dify, kb, **over):
    # a git source: the role clones it (shallow) and the headers carry its URL and revision
    base = {"dataset": DATASET, "sources": [{"git": "file://" + kb["repo"], "ref": "main", "url": SOURCE_URL}],
            "retrieval_query": "the fixture repository"}
    base.update(over)
    return {
        "dify_knowledge_run_on": "controller",
        "dify_knowledge_controller_url": real_dify.url,
        "dify_knowledge_credentials_file": kb["creds"],
        "dify_knowledge_checkout_dir": kb["checkouts"],
        "dify_knowledge_max_request_kb": BODY_LIMIT // 1024,
        "dify_knowledge_poll_interval": 2,
        "dify_knowledge_wait_timeout": 1200,
        "dify_knowledge_bases": [base],
    }


@pytest.fixture(scope="module")
def sync(ansible_run, real_dify, kb):
    def run(check=False, **over):
        return ansible_run(KNOWLEDGE_PLAYBOOK, knowledge_vars(real_dify, kb, **over), check=check)

    return run


def documents(kb, dataset_id):
    out, page = [], 1
    while True:
        data = kb["client"].service_request("GET", "/v1/datasets/%s/documents" % dataset_id, kb["ds_key"],
                                            query={"page": page, "limit": 100})
        out += data["data"]
        if not data.get("has_more"):
            return out
        page += 1


def dataset_id(kb):
    data = kb["client"].service_request("GET", "/v1/datasets", kb["ds_key"], query={"keyword": DATASET, "limit": 100})
    return [d["id"] for d in data["data"] if d["name"] == DATASET][0]


def sync_result(run):
    (res,) = run.results("Sync, wait for indexing, check retrieval")
    return res


def meta(doc):
    return {m["name"]: m["value"] for m in doc.get("doc_metadata") or []}


@pytest.fixture(scope="module")
def state():
    return {}


def test_first_sync_indexes_every_file(kb, sync, state):
    man = kb["manifest"]
    run = sync()
    assert run.rc == 0, run.stdout[-6000:]
    res = sync_result(run)
    assert res["counts"]["added"] == man["documents"], res["counts"]
    assert res["counts"]["failed"] == 0 and res["counts"]["updated"] == res["counts"]["removed"] == 0
    # the manifest counts the tree's files; a git checkout also has its .git (reason vcs)
    assert res["skipped_files"] == dict(man["skipped"], vcs=1), res["skipped_files"]
    assert "indexing:" in run.stdout and "ETA" in run.stdout, run.stdout[-3000:]
    assert res["retrieval"]["records"] >= 1
    ds = dataset_id(kb)
    docs = documents(kb, ds)
    assert len(docs) == man["documents"]
    assert all(d["indexing_status"] == "completed" for d in docs), [d for d in docs if d["indexing_status"] != "completed"][:3]
    names = {d["name"] for d in docs}
    big = man["oversized"]
    assert {big + " [part 1]", big + " [part 2]"} <= names, sorted(n for n in names if "oversized" in n)
    assert all(len(n) <= 200 for n in names)
    assert not any(n.startswith(("vendor/", "node_modules/", "build/")) for n in names)
    readme = [d for d in docs if d["name"] == "README.md"][0]
    m = meta(readme)
    assert m["source_path"] == "README.md" and m["source_url"] == SOURCE_URL and len(m["sync_sha256"]) == 64
    head = subprocess.run(["git", "-C", kb["repo"], "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert m["source_revision"] == head
    state.update(ds=ds, ids={d["name"]: d["id"] for d in docs}, hashes={d["name"]: meta(d)["sync_sha256"] for d in docs})


def test_unchanged_resync_makes_no_upload(kb, sync, state):
    run = sync()
    assert run.rc == 0, run.failures()
    assert run.changed == {}, run.changed_tasks()
    res = sync_result(run)
    assert (res["counts"]["added"], res["counts"]["updated"], res["counts"]["removed"]) == (0, 0, 0)
    assert res["counts"]["unchanged"] == kb["manifest"]["documents"]
    assert {d["name"]: d["id"] for d in documents(kb, state["ds"])} == state["ids"]


def test_edits_in_check_mode_then_for_real(kb, sync, state):
    man = make_repo(kb["repo"], "--edit")
    edits = man["edits"]
    assert (len(edits["updated"]), len(edits["removed"]), len(edits["added"])) == (3, 3, 1)
    check = sync(check=True)
    assert check.rc == 0, check.failures()
    (plan,) = check.results("Plan every knowledge base (read-only)")
    assert plan["changed"]
    assert sorted(plan["would"]["update"]) == sorted(edits["updated"])
    assert sorted(plan["would"]["remove"]) == sorted(edits["removed"])
    assert sorted(plan["would"]["add"]) == sorted(edits["added"])
    assert {d["name"]: d["id"] for d in documents(kb, state["ds"])} == state["ids"]  # nothing written

    run = sync()
    assert run.rc == 0, run.failures()
    res = sync_result(run)
    counts = res["counts"]
    assert (counts["added"], counts["updated"], counts["removed"], counts["failed"]) == (1, 3, 3, 0), counts
    docs = {d["name"]: d for d in documents(kb, state["ds"])}
    for name in edits["updated"]:  # updated in place: same document, new hash, re-indexed
        assert docs[name]["id"] == state["ids"][name]
        assert meta(docs[name])["sync_sha256"] != state["hashes"][name]
        assert docs[name]["indexing_status"] == "completed"
    for name in edits["removed"]:
        assert name not in docs
    for name in edits["added"]:
        assert docs[name]["indexing_status"] == "completed"
    again = sync()
    assert again.rc == 0 and again.changed == {}, again.changed_tasks()


def test_the_app_answers_from_the_right_file(kb):
    files = kb["manifest"]["text_files"]
    path = sorted(p for p in files if p.startswith("src/python/"))[0]
    query = "Which code does this: %s?" % files[path]["topic"]
    answer = kb["client"].service_request("POST", "/v1/chat-messages", kb["app_key"], body={
        "inputs": {}, "query": query, "response_mode": "blocking", "user": "knowledge-test"})
    resources = [r["document_name"] for r in answer["metadata"]["retriever_resources"]]
    assert path in resources, (path, resources)


@pytest.mark.parametrize("change,needle", [
    ({"sources": [{"path": "/nonexistent/source"}]}, "dify_knowledge_bases[0]"),
    ({"sources": [{"path": None, "include": ["*.nothing"]}]}, "matches no file"),
    ({"dataset": "No such knowledge base"}, "No such knowledge base"),
    ({"sources": [{"git": "file:///nonexistent/repo.git", "ref": "main"}]}, "dify_knowledge_bases[0]"),
], ids=["missing-source", "glob-matches-nothing", "dataset-not-found", "unreadable-ref"])
def test_bad_input_fails_before_any_write(kb, sync, state, change, needle):
    for src in change.get("sources", []):
        if "path" in src and src["path"] is None:
            src["path"] = kb["repo"]
    before = {d["name"]: (d["id"], meta(d).get("sync_sha256")) for d in documents(kb, state["ds"])}
    run = sync(**change)
    assert run.rc != 0
    msgs = " ".join(m for _t, m in run.failures())
    assert needle in msgs, msgs
    assert re.search(r"dify_knowledge_bases|sources|dataset", msgs)
    after = {d["name"]: (d["id"], meta(d).get("sync_sha256")) for d in documents(kb, state["ds"])}
    assert after == before


def test_cli_syncs_a_folder_with_progress(kb, real_dify, tmp_path):
    """scripts/dify-knowledge-sync: the same sync for cron/CI, a folder source, a re-run with 0 uploads."""
    notes = tmp_path / "notes"
    (notes / "ops").mkdir(parents=True)
    (notes / "howto.md").write_text("# How to restart the planner\n\nRun kfx_notes_restart and wait.\n")
    (notes / "ops" / "backup.md").write_text("# Backups\n\nThe kfx_notes_backup job runs at 02:00.\n")
    key = tmp_path / "key"
    key.write_text(kb["ds_key"])

    def cli(*extra):
        return subprocess.run([sys.executable, CLI, "--url", real_dify.url, "--dataset", NOTES,
                               "--dataset-key-file", str(key), "--source", str(notes), "--poll-interval", "1",
                               "--query", "restart the planner", "--json"] + list(extra),
                              capture_output=True, text=True, timeout=600)

    first = cli()
    assert first.returncode == 0, first.stderr[-3000:]
    out = json.loads(first.stdout)
    assert out["counts"]["added"] == 2 and out["counts"]["failed"] == 0, out["counts"]
    assert "indexing:" in first.stderr  # one progress line per poll when stderr is not a terminal
    assert out["retrieval"]["records"] >= 1
    again = cli()
    assert again.returncode == 0, again.stderr[-3000:]
    out = json.loads(again.stdout)
    assert (out["counts"]["added"], out["counts"]["updated"], out["counts"]["removed"]) == (0, 0, 0)
    assert out["changed"] is False
