"""Repository keys are checked on every run, not kept forever once downloaded.

Runs the roles' own key tasks (nvidia_driver tasks/cuda_repo.yml, cloudflared
tasks/repo_key.yml) with ansible-playbook on this machine, against file:// URLs serving the
test keys of tests/unit/data/openpgp and with every path under tmp_path. For each role:
a fresh run installs the key, a second run changes nothing, a keyring replaced by another key
(or by junk) is put back, a URL serving a key with another fingerprint fails naming the
fingerprint variable and leaves no key of its own behind, and check mode on a fresh host
reports the change without writing anything. Also the pinned facts: Cloudflare's key since
its November 2025 rotation.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
KEYS = ROOT / "tests" / "unit" / "data" / "openpgp"
RSA = "0FCD13ADA81FD93165C57A8A7FDE4C968A74EFFA"
ED25519 = "EB1B853224C9CE09835DBFF5DA5B60F76910F8C3"
PLAYBOOK = shutil.which("ansible-playbook", path=str(Path(sys.executable).parent)) or shutil.which("ansible-playbook")

pytestmark = pytest.mark.skipif(PLAYBOOK is None, reason="ansible-playbook is not installed")

ROLES = {
    "nvidia_driver": {
        "tasks_from": "cuda_repo.yml",
        "keyring_var": "nvidia_driver_cuda_repo_keyring",
        "url_var": "nvidia_driver_cuda_repo_key_url",
        "fingerprint_var": "nvidia_driver_cuda_repo_key_fingerprint",
        "extra": lambda tmp: {"__nvidia_driver_cuda_sources_file": str(tmp / "nvidia-cuda.sources")},
    },
    "cloudflared": {
        "tasks_from": "repo_key.yml",
        "keyring_var": "cloudflared_repo_keyring",
        "url_var": "cloudflared_repo_key_url",
        "fingerprint_var": "cloudflared_repo_key_fingerprint",
        "extra": lambda tmp: {},
    },
}


def run(tmp_path, role, url, fingerprint, check=False):
    spec = ROLES[role]
    keyring = tmp_path / "keyrings" / "repo.gpg"
    play = [{"hosts": "localhost", "connection": "local", "gather_facts": role == "nvidia_driver",
             "gather_subset": ["!all", "!min", "distribution", "platform"], "tasks": [
        {"name": "Create the keyring directory", "ansible.builtin.file": {"path": str(keyring.parent), "state": "directory", "mode": "0755"}},
        {"ansible.builtin.include_role": {"name": role, "tasks_from": spec["tasks_from"]}}]}]
    (tmp_path / "play.yml").write_text(yaml.safe_dump(play))
    extra = {spec["keyring_var"]: str(keyring), spec["url_var"]: url, spec["fingerprint_var"]: fingerprint,
             "ansible_python_interpreter": sys.executable}
    extra.update(spec["extra"](tmp_path))
    env = dict(os.environ, ANSIBLE_ROLES_PATH=str(ROOT / "roles"), ANSIBLE_FILTER_PLUGINS=str(ROOT / "plugins" / "filter"),
               ANSIBLE_COLLECTIONS_PATH=str(ROOT / "collections"),  # the roles call dify_gpu.dify.* filters
               ANSIBLE_STDOUT_CALLBACK="json", ANSIBLE_NOCOLOR="1", ANSIBLE_LOCAL_TEMP=str(tmp_path / "ansible-tmp"),
               ANSIBLE_RETRY_FILES_ENABLED="0")
    cmd = [PLAYBOOK, "-i", "localhost,", str(tmp_path / "play.yml"), "-e", json.dumps(extra)]
    if check:
        cmd.append("--check")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=str(tmp_path))
    try:
        result = json.loads(proc.stdout[proc.stdout.index("{"):])
    except ValueError:
        raise AssertionError(proc.stdout + proc.stderr)
    stats = result["stats"]["localhost"]
    failures = [t["hosts"]["localhost"] for p in result["plays"] for t in p["tasks"]
                if t["hosts"].get("localhost", {}).get("failed")]
    return stats, failures, keyring


def serve(tmp_path, name):
    target = tmp_path / "served" / name
    target.parent.mkdir(exist_ok=True)
    shutil.copy(KEYS / name, target)
    return "file://%s" % target


@pytest.mark.parametrize("role", sorted(ROLES))
def test_key_is_checked_on_every_run(tmp_path, role):
    url = serve(tmp_path, "rsa-with-subkey.asc")
    good = (KEYS / "rsa-with-subkey.asc").read_bytes()

    stats, failures, keyring = run(tmp_path, role, url, RSA, check=True)
    assert not failures and stats["changed"] > 0
    assert not keyring.exists(), "check mode wrote the key"

    stats, failures, keyring = run(tmp_path, role, url, RSA)
    assert not failures and keyring.read_bytes() == good

    # converged: nothing changes (the fingerprint given in gpg's spaced, lower-case form)
    spaced = " ".join(RSA[i:i + 4] for i in range(0, 40, 4)).lower()
    stats, failures, _ = run(tmp_path, role, url, spaced)
    assert not failures and stats["changed"] == 0, "a converged key was touched"

    # drift: another key in the keyring -> fetched again and checked
    keyring.write_bytes((KEYS / "ed25519.gpg").read_bytes())
    stats, failures, _ = run(tmp_path, role, url, RSA)
    assert not failures and stats["changed"] > 0 and keyring.read_bytes() == good


@pytest.mark.parametrize("role", sorted(ROLES))
def test_a_key_with_another_fingerprint_is_refused(tmp_path, role):
    url = serve(tmp_path, "ed25519.gpg")
    stats, failures, keyring = run(tmp_path, role, url, RSA)
    assert failures, "a key with another fingerprint was accepted"
    message = failures[0]["msg"]
    assert ROLES[role]["fingerprint_var"] in message and RSA in message and ED25519 in message
    assert not keyring.exists(), "the refused key was installed"
    assert not (keyring.parent / (keyring.name + ".download")).exists(), "the download was left behind"


def test_cloudflare_key_facts():
    """Cloudflare rotated its package signing key in November 2025: the role pins the new
    primary key ("CloudFlare Software Packaging 2025"), not the 2015 key it replaced."""
    defaults = yaml.safe_load((ROOT / "roles" / "cloudflared" / "defaults" / "main.yml").read_text())
    assert defaults["cloudflared_repo_key_url"] == "https://pkg.cloudflare.com/cloudflare-main.gpg"
    assert defaults["cloudflared_repo_key_fingerprint"] == "CC94B39C77AE7342A68B89628A682D308D4E5E73"
    assert defaults["cloudflared_repo_key_fingerprint"] != "FBA8C0EE63617C5EED695C43254B391D8CACCBF8"
