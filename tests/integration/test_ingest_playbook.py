"""playbooks/ingest.yml run alone against REAL Dify, exactly as a user runs it:

    ansible-playbook -i <inventory> playbooks/ingest.yml

The inventory (written here, in a temporary directory) puts this machine in dify_servers (connection
local) with what a user's inventory gives on a host whose Dify this run does not deploy: where Dify
is, the bootstrap's credentials file, the model endpoints and one knowledge base of a small folder.
The playbook's first play is the preflight; the knowledge play reads the dify and dify_bootstrap
contracts through site_contract (this run's, else the local facts, else what the preflight declared
from this inventory: here the declared values, nothing is written to /etc/ansible/facts.d).
"""

import json
import os
import re
import subprocess
import sys

import pytest
import yaml

from conftest import ADMIN_EMAIL, ROOT, stored_credentials
from ansible.module_utils.dify_client import DifyClient

DATASET = "Documents"  # the bootstrap's default knowledge base
ANSIBLE_PLAYBOOK = os.path.join(os.path.dirname(sys.executable), "ansible-playbook")
FILES = {
    "howto.md": "# How to restart the planner\n\nRun qzv_ingest_restart and wait a minute.\n",
    "ops/backup.md": "# Backups\n\nThe qzv_ingest_backup job runs at 02:00 every night.\n",
    "ops/rotate.txt": "Rotate the qzv_ingest keys every 90 days.\n",
}


@pytest.fixture(scope="module")
def ingest(real_dify, run_bootstrap, bootstrap_vars, tmp_path_factory):
    run = run_bootstrap()
    assert run.rc == 0, run.failures()
    base = tmp_path_factory.mktemp("ingest")
    folder = base / "notes"
    for name, text in FILES.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    creds = bootstrap_vars["dify_bootstrap_credentials_file"]
    host = {
        "ansible_connection": "local",
        "ansible_python_interpreter": sys.executable,
        "ansible_become_method": "su",  # this machine has no sudo; root su's to root without a password
        "dify_bootstrap_url": real_dify.url,
        "dify_bootstrap_public_url": real_dify.public_url,
        "dify_bootstrap_credentials_file": creds,
        "dify_bootstrap_admin_email": ADMIN_EMAIL,
        "dify_bootstrap_model_endpoints": real_dify.model_endpoints(),
        "dify_knowledge_poll_interval": 2,
        "dify_knowledge_wait_timeout": 900,
        # no max_request_kb, as in a user's inventory (the preflight once failed on it: map(attribute=...,
        # default=none) is Undefined, Jinja taking default=None for no default)
        "dify_knowledge_bases": [{"dataset": DATASET, "sources": [{"path": str(folder)}],
                                  "retrieval_query": "restart the planner"}],
    }
    inventory = base / "hosts.yml"
    inventory.write_text(yaml.safe_dump({"all": {"children": {"dify_servers": {"hosts": {"localhost": host}}}}}))

    def run_playbook(*extra):
        env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"), ANSIBLE_NOCOLOR="1",
                   ANSIBLE_STDOUT_CALLBACK="default", ANSIBLE_LOCAL_TEMP=str(base / "tmp"),
                   ANSIBLE_HOME=str(base / "ansible-home"),
                   PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
        # -v: the sync's result (its counts) in the output
        return subprocess.run([ANSIBLE_PLAYBOOK, "-v", "-i", str(inventory), "playbooks/ingest.yml", *extra],
                              capture_output=True, text=True, env=env, cwd=ROOT, timeout=1200)

    stored = stored_credentials(creds)
    client = DifyClient(real_dify.url, admin_email=ADMIN_EMAIL, admin_password=stored["admin_password"])
    return {"run": run_playbook, "folder": folder, "key": stored["dataset_api_key"], "client": client}


def recap(output):
    line = [l for l in output.splitlines() if l.startswith("localhost")][-1]
    return {k: int(v) for k, v in (part.split("=") for part in line.split()[2:])}


def documents(ingest):
    c = ingest["client"]
    data = c.service_request("GET", "/v1/datasets", ingest["key"], query={"keyword": DATASET, "limit": 100})
    ds = [d["id"] for d in data["data"] if d["name"] == DATASET][0]
    docs = c.service_request("GET", "/v1/datasets/%s/documents" % ds, ingest["key"], query={"limit": 100})["data"]
    return {d["name"]: d for d in docs}


def counts(output):
    """The counts of the sync's result (the last `counts:` block of the -v output, YAML)."""
    blocks = re.findall(r"^( *)counts:\n((?:\1 +\w+: \d+\n)+)", output, re.M)
    assert blocks, output[-4000:]
    return {k: int(v) for k, v in re.findall(r"(\w+): (\d+)", blocks[-1][1])}


def test_ingest_alone_syncs_then_a_rerun_changes_nothing(ingest):
    first = ingest["run"]()
    assert first.returncode == 0, first.stdout[-6000:] + first.stderr[-2000:]
    assert "Preflight - every role's arguments and the cross-host rules" in first.stdout
    assert recap(first.stdout)["changed"] >= 1
    docs = documents(ingest)
    assert set(FILES) <= set(docs), sorted(docs)
    assert all(docs[n]["indexing_status"] == "completed" for n in FILES), {n: docs[n]["indexing_status"] for n in FILES}
    ids = {n: docs[n]["id"] for n in FILES}
    got = counts(first.stdout)
    assert (got["added"], got["failed"]) == (len(FILES), 0), got

    second = ingest["run"]()
    assert second.returncode == 0, second.stdout[-6000:] + second.stderr[-2000:]
    assert recap(second.stdout)["changed"] == 0, second.stdout[-4000:]
    got = counts(second.stdout)
    assert (got["added"], got["updated"], got["removed"], got["unchanged"]) == (0, 0, 0, len(FILES)), got
    assert {n: d["id"] for n, d in documents(ingest).items() if n in FILES} == ids  # nothing uploaded again


def test_ingest_refuses_a_missing_source_folder_before_any_write(ingest, tmp_path):
    before = {n: d["id"] for n, d in documents(ingest).items()}
    bad = {"dify_knowledge_bases": [{"dataset": DATASET, "sources": [{"path": str(tmp_path / "no-such-folder")}]}]}
    proc = ingest["run"]("-e", json.dumps(bad))
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "dify_knowledge_bases[0]" in out, out[-4000:]
    assert {n: d["id"] for n, d in documents(ingest).items()} == before
