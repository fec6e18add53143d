"""roles/dify_knowledge through ansible-playbook (playbooks/ingest.yml) against the fake of Dify's document
API: a git source (the fixture repository) and a folder; check mode, first run, no-op re-run with
changed=0 and no write, the fixture's edit set with exact counts, and bad input failing before any write
with the variable named. The action plugin's progress lines are read from the real Ansible output.
"""

import json
import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "tests", "knowledge"))
from fake_dify import KEY, FakeServer  # noqa: E402
import make_fixture_repo  # noqa: E402

pytestmark = pytest.mark.skipif(not os.path.exists(os.path.join(os.path.dirname(sys.executable), "ansible-playbook")),
                                reason="ansible-playbook is not beside this Python")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("role")
    srv = FakeServer(auto_ticks=2)
    srv.fake.add_dataset("Code")
    srv.fake.add_dataset("Notes")
    repo = str(tmp / "repo")
    manifest = make_fixture_repo.generate(repo, files=40, size_mb=0.1, body_limit=16384, git=True)
    notes = tmp / "notes"
    notes.mkdir()
    (notes / "howto.md").write_text("# How to\n\nkfx_notes: restart the planner.\n")
    inv = tmp / "hosts.yml"
    inv.write_text("all:\n  children:\n    dify_servers:\n      hosts:\n        localhost:\n"
                   "          ansible_connection: local\n          ansible_python_interpreter: %s\n" % sys.executable)
    yield {"srv": srv, "tmp": tmp, "repo": repo, "notes": str(notes), "inv": str(inv), "manifest": manifest}
    srv.stop()


def kb_vars(env, **extra):
    v = {
        "dify_knowledge_run_on": "controller",
        "dify_knowledge_controller_url": env["srv"].url,
        "dify_knowledge_dataset_api_key": KEY,
        "dify_knowledge_checkout_dir": str(env["tmp"] / "checkouts"),
        "dify_knowledge_credentials_dir": str(env["tmp"] / "creds"),
        "dify_knowledge_poll_interval": 1,
        "dify_knowledge_max_request_kb": 16,
        "dify_knowledge_bases": [
            {"dataset": "Code", "sources": [{"git": env["repo"], "ref": "main"}],
             "retrieval_query": "oversized reference"},
            {"dataset": "Notes", "sources": [{"path": env["notes"]}]},
        ],
    }
    v.update(extra)
    return v


def playbook(env, variables, *args):
    path = env["tmp"] / "vars.json"
    path.write_text(json.dumps(variables))
    bindir = os.path.dirname(sys.executable)
    run_env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"), ANSIBLE_FORCE_COLOR="0",
                   ANSIBLE_LOCAL_TEMP=str(env["tmp"] / "ansible-tmp"), PATH=bindir + os.pathsep + os.environ["PATH"])
    before = len(env["srv"].fake.writes())
    r = subprocess.run([os.path.join(bindir, "ansible-playbook"), "-i", env["inv"], "-e", "@%s" % path,
                        os.path.join(ROOT, "playbooks", "ingest.yml")] + list(args),
                       cwd=ROOT, env=run_env, capture_output=True, text=True, timeout=600)
    recap = re.search(r"localhost\s+: ok=(\d+)\s+changed=(\d+)\s+unreachable=\d+\s+failed=(\d+)", r.stdout)
    r.changed = int(recap.group(2)) if recap else None
    r.writes = len(env["srv"].fake.writes()) - before
    return r


def test_role_check_sync_resync_edit_and_bad_input(env):
    fake = env["srv"].fake
    m = env["manifest"]
    code_ds = [d for d, ds in fake.datasets.items() if ds["name"] == "Code"][0]
    # check mode on a fresh knowledge base: the plan and the paths, no write
    r = playbook(env, kb_vars(env), "--check", "--diff")
    assert r.returncode == 0, r.stdout[-3000:]
    assert r.writes == 0 and fake.fields == {k: [] for k in fake.fields}
    assert "dify_documents [Code] plan: add %d, update 0, remove 0" % m["documents"] in r.stdout
    assert "+ README.md" in r.stdout and "+ docs/big/oversized_reference.md [part 2]" in r.stdout

    # first run: everything added, progress printed while indexing, retrieval checked
    r = playbook(env, kb_vars(env))
    assert r.returncode == 0, r.stdout[-3000:]
    assert r.changed == 1 and r.writes > m["documents"]
    assert re.search(r"dify_documents \[Code\] indexing: \d+/%d documents done" % m["documents"], r.stdout)
    assert ("dify_documents [Code] added %d, updated 0, removed 0, unchanged 0, skipped %d"
            % (m["documents"], sum(m["skipped"].values()) + 1)) in r.stdout  # + .git
    assert "dify_documents [Notes] added 1, updated 0, removed 0" in r.stdout
    assert len(fake.by_name(code_ds)) == m["documents"]

    # a re-run over unchanged sources: changed=0 and not one write
    r = playbook(env, kb_vars(env))
    assert r.returncode == 0 and r.changed == 0 and r.writes == 0, r.stdout[-3000:]
    assert "dify_documents [Code] added 0, updated 0, removed 0, unchanged %d" % m["documents"] in r.stdout

    # the fixture's edit set, committed: exactly those changes
    after = make_fixture_repo.apply_edits(env["repo"])
    edits = after["edits"]
    r = playbook(env, kb_vars(env))
    assert r.returncode == 0 and r.changed == 2, r.stdout[-3000:]  # the checkout and the Code knowledge base
    assert "dify_documents [Code] added 1, updated 3, removed 3, unchanged %d" % (after["documents"] - 4) in r.stdout
    names = set(fake.by_name(code_ds))
    assert set(edits["added"]) <= names and not set(edits["removed"]) & names

    # bad input fails before any write, naming the variable
    bad = kb_vars(env, dify_knowledge_bases=[{"dataset": "Notes", "sources": [{"path": env["notes"]}]},
                                              {"dataset": "Missing", "sources": [{"path": env["notes"]}]}])
    r = playbook(env, bad)
    assert r.returncode != 0 and r.writes == 0
    assert "dify_knowledge_bases[1].dataset: Dify has no knowledge base named 'Missing'" in r.stdout
    bad = kb_vars(env, dify_knowledge_bases=[{"dataset": "Code", "sources": [{"git": env["repo"], "ref": "nope"}]}])
    r = playbook(env, bad)
    assert r.returncode != 0 and r.writes == 0
    assert "dify_knowledge_bases[0].sources[0].ref: cannot check out 'nope'" in r.stdout
    bad = kb_vars(env, dify_knowledge_bases=[{"dataset": "Notes", "sources": [{"path": str(env["tmp"] / "nope")}]}])
    r = playbook(env, bad)
    assert r.returncode != 0 and r.writes == 0 and len(fake.requests) > 0
    assert "dify_knowledge_bases[0].sources[0].path: %s is not a folder" % (env["tmp"] / "nope") in r.stdout
