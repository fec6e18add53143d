"""playbooks/kubernetes.yml run alone, as a user runs it, against the helm stand-in.

`ansible-playbook -i <inventory> playbooks/kubernetes.yml` with the inventory of
inventories/example-kubernetes copied to a temporary directory: the controller (localhost, connection
local) runs the fake helm of tests/unit/test_dify_helm_role.py; the example's GPU host outside the
cluster is left out (nothing to reach here) and its vault values are given. The play imports
playbooks/preflight.yml first, so this proves the whole entry point: the preflight, then the
dify_kubernetes role, idempotence, and a bad input refused by the preflight before helm is asked
anything. The Dify API half (dify_bootstrap) needs a running Dify, which no unit test has: it is
skipped by its tag here and tested against real Dify in tests/integration.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml

from test_dify_helm_role import ANSIBLE_PLAYBOOK, ROOT, fake_helm, recap

EXAMPLE = ROOT / "inventories" / "example-kubernetes"
OPENAI = "langgenius/openai_api_compatible"
IN_CLUSTER_ENDPOINTS = [  # the commented example of inventories/example-kubernetes/group_vars/all.yml
    {"name": "llm", "kind": "llm", "model_type": "llm", "plugin_id": OPENAI, "provider": OPENAI + "/openai_api_compatible",
     "model": "qwen2.5-7b", "max_batch": 8,
     "credentials": {"endpoint_url": "http://vllm.models.svc:8000/v1", "endpoint_model_name": "qwen2.5-7b",
                     "mode": "chat", "context_size": "8192", "max_tokens_to_sample": "2048"}},
    {"name": "embedding", "kind": "embedding", "model_type": "text-embedding", "plugin_id": OPENAI,
     "provider": OPENAI + "/openai_api_compatible", "model": "bge-m3", "max_batch": 32,
     "credentials": {"endpoint_url": "http://tei.models.svc:8080/v1", "endpoint_model_name": "bge-m3",
                     "context_size": "8192", "max_chunks": "32"}},
]


@pytest.fixture()
def user_bench(tmp_path):
    helm, state, releases, calls = fake_helm(tmp_path)
    inventory = tmp_path / "inventory"
    shutil.copytree(EXAMPLE, inventory)
    hosts = yaml.safe_load((inventory / "hosts.yml").read_text())
    children = hosts["all"]["children"]
    # The GPU host of the example is outside the cluster and not reachable from here: the example's
    # other way, model servers inside the cluster (dify_kubernetes_model_endpoints), instead.
    children["gpu_model_servers"] = {"hosts": {}}
    children["dify_kubernetes"]["hosts"]["localhost"].update({
        "ansible_python_interpreter": sys.executable,
        "dify_kubernetes_helm_binary": str(helm),
        "dify_kubernetes_secrets_file": str(tmp_path / "creds" / "kubernetes" / "secrets.yml"),
    })
    hosts["all"]["vars"] = {"vault_dify_external_postgres_password": "Given-Postgres-Pw-0123456789",
                            "vault_dify_external_redis_password": "Given-Redis-Pw-0123456789",
                            "dify_kubernetes_model_endpoints": IN_CLUSTER_ENDPOINTS}
    (inventory / "hosts.yml").write_text(yaml.safe_dump(hosts))

    def run(*extra):
        env = dict(os.environ, FAKE_HELM_STATE=str(state), ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
                   ANSIBLE_NOCOLOR="1", ANSIBLE_STDOUT_CALLBACK="default",
                   ANSIBLE_LOCAL_TEMP=str(tmp_path / "tmp"), ANSIBLE_HOME=str(tmp_path / "ansible-home"),
                   PATH=str(tmp_path) + os.pathsep + os.environ.get("PATH", ""))
        return subprocess.run(
            [str(ANSIBLE_PLAYBOOK), "-i", str(inventory / "hosts.yml"), "playbooks/kubernetes.yml",
             "--skip-tags", "dify_bootstrap", *extra],
            capture_output=True, text=True, env=env, cwd=str(ROOT), timeout=300)

    return {"run": run, "releases": releases, "calls": calls}


def test_the_playbook_alone_converges_then_changes_nothing(user_bench):
    first = user_bench["run"]()
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-2000:]
    assert "Preflight - every role's arguments and the cross-host rules" in first.stdout
    releases = user_bench["releases"]()
    assert sorted(releases) == ["dify", "gpu-operator"]
    values = releases["dify"]["dify"]["values"]
    assert values["global"]["consoleApiDomain"] == "https://dify.example.com"
    assert values["externalRedis"]["password"] == "Given-Redis-Pw-0123456789"
    assert recap(first.stdout)["changed"] >= 1

    second = user_bench["run"]()
    assert second.returncode == 0, second.stdout[-4000:] + second.stderr[-2000:]
    assert recap(second.stdout)["changed"] == 0
    assert user_bench["releases"]()["dify"]["dify"]["status"]["revision"] == "1"


def test_the_preflight_refuses_a_bad_input_before_helm_is_asked_anything(user_bench):
    proc = user_bench["run"]("-e", json.dumps({"dify_upload_file_size_limit_mb": "a lot"}))
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "Preflight on localhost" in out, out[-3000:]
    assert "[role dify_kubernetes]" in out and "dify_upload_file_size_limit_mb" in out
    assert "PLAY [Dify on Kubernetes" not in out
    assert user_bench["calls"]() == []


@pytest.mark.parametrize("bad, words", [
    # dify_bootstrap's own checks (roles/dify_bootstrap/tasks/checks.yml), which the role itself would
    # run only after helm: the preflight runs them first, with the endpoints dify_kubernetes hands it
    ({"dify_bootstrap_datasets": [{"name": "K" * 41}]}, ["dify_bootstrap_datasets: '" + "K" * 41 + "' is invalid"]),
    ({"dify_bootstrap_admin_email": "not-an-address"}, ["dify_bootstrap_admin_email must be a valid email address"]),
])
def test_the_preflight_runs_the_bootstraps_own_checks_before_helm(user_bench, bad, words):
    proc = user_bench["run"]("-e", json.dumps(bad))
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    for w in words:
        assert w in out, out[-3000:]
    assert "PLAY [Dify on Kubernetes" not in out
    assert user_bench["calls"]() == []
