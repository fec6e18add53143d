"""The role dify_kubernetes run by ansible-playbook against a helm stand-in (no cluster here).

The stand-in (FAKE_HELM below, a test double, not helm) answers the commands kubernetes.core.helm
and helm_info send — version, list, get values/manifest/notes/hooks, show chart, plugin list,
upgrade -i — and keeps the releases in a JSON file. That proves the role's plumbing: argument
specs and the preflight before any helm call, the settings collected from the inventory and the
dify role's defaults, secrets generated once then read back from the release, the controller copy
(0600), the values handed to helm, idempotence, check mode, and no secret in the output.
"""

import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
ANSIBLE_PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"

FAKE_HELM = textwrap.dedent('''\
    #!{python}
    """helm stand-in for tests/unit/test_dify_helm_role.py (state in $FAKE_HELM_STATE)."""
    import json, os, sys
    import yaml
    state_file = os.environ["FAKE_HELM_STATE"]
    state = json.load(open(state_file)) if os.path.exists(state_file) else {{}}
    args = sys.argv[1:]
    ns = os.environ.get("HELM_NAMESPACE", "default")
    with open(state_file + ".calls", "a") as log:
        log.write(" ".join(a for a in args if not a.startswith("-f=")) + "\\n")

    def flag(name):
        for i, a in enumerate(args_):
            if a.startswith(name + "="):
                return a.split("=", 1)[1]
            if a == name and i + 1 < len(args_):
                return args_[i + 1]
        return None

    # Global flags may come first ("--version=X --repo=Y show chart ref"); dispatch on the words.
    spaced = {{"--timeout", "--filter", "--namespace", "--kube-context", "--kubeconfig"}}
    words, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a in spaced:
            skip = True
        elif not a.startswith("-"):
            words.append(a)
    releases = state.setdefault(ns, {{}})
    args_, args = args, words
    if args[:1] == ["version"]:
        print("v3.17.2+gcc0bbbd" if "--short" in args_ else
              'version.BuildInfo{{Version:"v3.17.2", GitCommit:"cc0bbbd6", GitTreeState:"clean", GoVersion:"go1.23.7"}}')
    elif args[:2] == ["plugin", "list"]:
        print("NAME\\tVERSION\\tDESCRIPTION")
    elif args[:1] == ["list"]:
        name = flag("--filter")
        print(yaml.safe_dump([dict(r["status"], name=n) for n, r in releases.items() if n == name]))
    elif args[:2] == ["get", "values"]:
        release = releases.get(args[-1])
        print(yaml.safe_dump(release["values"]) if release else "null")
    elif args[:1] == ["get"]:
        print("")
    elif args[:2] == ["show", "chart"]:
        ref = args[2].strip("'")
        print(yaml.safe_dump({{"apiVersion": "v2", "name": os.path.basename(ref), "version": flag("--version"),
                              "appVersion": "1.16.1"}}))
    elif args[:1] == ["upgrade"]:
        values = {{}}
        for a in args_:
            if a.startswith("-f=") or a.startswith("--values="):
                values.update(yaml.safe_load(open(a.split("=", 1)[1])) or {{}})
        name, ref = args[1], args[2].strip("'")
        old = releases.get(name, {{}}).get("status", {{}})
        releases[name] = {{"values": values, "status": {{
            "namespace": ns, "revision": str(int(old.get("revision", "0")) + 1), "status": "deployed",
            "chart": "%s-%s" % (os.path.basename(ref), flag("--version")), "app_version": "1.16.1",
            "updated": "2026-01-01"}}}}
        json.dump(state, open(state_file, "w"))
        print("Release %s has been upgraded." % name)
    else:
        sys.exit("fake helm: unsupported command %r" % args)
''')


def fake_helm(tmp_path):
    """FAKE_HELM written to tmp_path/helm; returns (its path, its state file, releases(), calls())."""
    helm = tmp_path / "helm"
    helm.write_text(FAKE_HELM.format(python=sys.executable))
    helm.chmod(0o755)
    state = tmp_path / "helm-state.json"

    def releases():
        return json.loads(state.read_text()) if state.exists() else {}

    def calls():
        path = Path(str(state) + ".calls")
        return path.read_text().splitlines() if path.exists() else []

    return helm, state, releases, calls


@pytest.fixture()
def bench(tmp_path):
    helm, state, releases, calls = fake_helm(tmp_path)
    playbook = tmp_path / "play.yml"
    playbook.write_text(yaml.safe_dump([{"name": "Dify on Kubernetes", "hosts": "dify_kubernetes",
                                         "gather_facts": False, "roles": ["dify_kubernetes"]}]))
    secrets_file = tmp_path / "creds" / "kubernetes" / "secrets.yml"
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(yaml.safe_dump({"all": {"children": {"dify_kubernetes": {"hosts": {"localhost": {
        "ansible_connection": "local", "ansible_python_interpreter": sys.executable}}}}, "vars": {
        "dify_kubernetes_helm_binary": str(helm),
        "dify_kubernetes_secrets_file": str(secrets_file),
        "dify_public_url": "https://dify.test.example",
        "dify_kubernetes_gpu_operator_enabled": True,
        "dify_external_redis": {"host": "redis.test.example", "password": "Given-Redis-Pw-0123456789"},
    }}}))

    def run(*extra):
        env = dict(os.environ, FAKE_HELM_STATE=str(state), ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
                   ANSIBLE_ROLES_PATH=str(ROOT / "roles"), ANSIBLE_NOCOLOR="1", ANSIBLE_STDOUT_CALLBACK="default",
                   ANSIBLE_LOCAL_TEMP=str(tmp_path / "tmp"), ANSIBLE_HOME=str(tmp_path / "ansible-home"))
        proc = subprocess.run([str(ANSIBLE_PLAYBOOK), "-i", str(inventory), str(playbook), *extra],
                              capture_output=True, text=True, env=env, cwd=str(ROOT), timeout=300)
        return proc

    return {"run": run, "releases": releases, "calls": calls, "secrets_file": secrets_file}


def recap(output):
    line = [l for l in output.splitlines() if l.startswith("localhost")][-1]
    return {k: int(v) for k, v in (part.split("=") for part in line.split()[2:])}


def test_install_then_nothing_changes_and_secrets_come_back_from_the_release(bench):
    first = bench["run"]()
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-2000:]
    releases = bench["releases"]()
    assert sorted(releases) == ["dify", "gpu-operator"]
    dify = releases["dify"]["dify"]
    assert dify["status"]["chart"] == "dify-0.38.0-rc2"
    values = dify["values"]
    assert values["global"]["consoleApiDomain"] == "https://dify.test.example"
    assert values["externalRedis"]["password"] == "Given-Redis-Pw-0123456789"
    assert values["image"]["api"] == {"repository": "langgenius/dify-api", "tag": "1.15.0"}
    assert releases["gpu-operator"]["gpu-operator"]["values"] == {"driver": {"enabled": True}, "toolkit": {"enabled": True}}

    stored = yaml.safe_load(bench["secrets_file"].read_text())
    assert stat.S_IMODE(bench["secrets_file"].stat().st_mode) == 0o600
    assert stat.S_IMODE(bench["secrets_file"].parent.stat().st_mode) == 0o700
    assert sorted(stored) == sorted(["secret_key", "db_password", "redis_password", "plugin_daemon_key",
                                     "plugin_dify_inner_api_key", "sandbox_api_key", "weaviate_api_key",
                                     "pgvector_password"])
    assert all(len(v) == 48 and v.isalnum() for v in stored.values())
    assert values["global"]["appSecretKey"] == stored["secret_key"]
    assert values["sandbox"]["auth"]["apiKey"] == stored["sandbox_api_key"]
    secrets = list(stored.values()) + ["Given-Redis-Pw-0123456789"]
    assert [s for s in secrets if s in first.stdout + first.stderr] == []

    second = bench["run"]()
    assert second.returncode == 0, second.stdout[-3000:]
    assert recap(second.stdout)["changed"] == 0
    assert bench["releases"]()["dify"]["dify"]["status"]["revision"] == "1"

    # The controller copy lost: the secrets are read back from the release, nothing changes.
    bench["secrets_file"].unlink()
    third = bench["run"]()
    assert third.returncode == 0, third.stdout[-3000:]
    assert bench["releases"]()["dify"]["dify"]["status"]["revision"] == "1"
    assert yaml.safe_load(bench["secrets_file"].read_text())["secret_key"] == stored["secret_key"]
    assert [s for s in secrets if s in second.stdout + third.stdout] == []


def test_check_mode_installs_nothing_and_writes_no_secret(bench):
    proc = bench["run"]("--check")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert bench["releases"]() in ({}, {"dify": {}, "gpu-operator": {}})
    assert not [c for c in bench["calls"]() if c.startswith("upgrade")]
    assert not bench["secrets_file"].exists()
    assert recap(proc.stdout)["changed"] >= 1


@pytest.mark.parametrize("extra,message", [
    ({"dify_vector_store": "pgvector"}, "dify_vector_store: pgvector needs dify_external_postgres"),
    ({"dify_kubernetes_replicas": {"api": "two"}}, "dify_kubernetes_replicas"),
    ({"dify_external_redis": {"host": "r", "password": "difyai123456"}}, "dify_external_redis.password is a public upstream default"),
    ({"dify_external_postgres": {"host": "db", "user": "u", "password": "x" * 20, "port": "fivefour"}},
     "dify_external_postgres"),
])
def test_bad_input_fails_before_helm_is_asked_anything(bench, extra, message):
    proc = bench["run"]("-e", json.dumps(extra))
    assert proc.returncode != 0
    assert message in proc.stdout + proc.stderr
    assert [c for c in bench["calls"]() if not c.startswith("version")] == []
