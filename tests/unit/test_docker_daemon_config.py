"""The docker role's daemon.json is the merge of log options, options and runtimes.

Renders the role's own vars (roles/docker/vars/main.yml) with Ansible's templar, so the
expression under test is the one the role uses.
"""

from pathlib import Path

import pytest
from ansible.template import Templar, trust_as_template
from ansible.parsing.dataloader import DataLoader

ROOT = Path(__file__).resolve().parents[2]
ROLE = ROOT / "roles" / "docker"


LOADER = DataLoader()


def load(path):
    # Role files are trusted templates to Ansible; mark them so, as the role loader does.
    return {k: trust_as_template(v) if isinstance(v, str) else v
            for k, v in LOADER.load_from_file(str(path)).items()}


def render(overrides=None, facts=None):
    variables = {}
    variables.update(load(ROLE / "defaults" / "main.yml"))
    variables.update(load(ROLE / "vars" / "main.yml"))
    variables["ansible_facts"] = {"distribution": "Debian", "architecture": "x86_64"}
    variables.update(facts or {})
    variables.update(overrides or {})
    templar = Templar(loader=LOADER, variables=variables)
    return templar.template(variables["__docker_daemon_config"])


def test_log_rotation_on_by_default():
    assert render() == {"log-driver": "json-file", "log-opts": {"max-size": "50m", "max-file": "5"}}


def test_options_override_log_defaults_and_add_keys():
    cfg = render({"docker_daemon_options": {"log-driver": "local", "live-restore": True}})
    assert cfg["log-driver"] == "local"
    assert cfg["live-restore"] is True


def test_contributed_runtime_and_default_runtime():
    nvidia = {"nvidia": {"path": "nvidia-container-runtime", "args": []}}
    cfg = render(facts={"docker_contributed_runtimes": nvidia, "docker_contributed_default_runtime": "nvidia"})
    assert cfg["runtimes"] == nvidia
    assert cfg["default-runtime"] == "nvidia"


def test_declared_runtimes_merge_with_contributed_ones():
    cfg = render({"docker_daemon_runtimes": {"crun": {"path": "/usr/bin/crun"}}},
                 facts={"docker_contributed_runtimes": {"nvidia": {"path": "nvidia-container-runtime"}}})
    assert set(cfg["runtimes"]) == {"crun", "nvidia"}
    assert "default-runtime" not in cfg


@pytest.mark.parametrize("arch,expected", [("x86_64", "amd64"), ("aarch64", "arm64")])
def test_apt_architecture(arch, expected):
    variables = dict(load(ROLE / "vars" / "main.yml"))
    variables["ansible_facts"] = {"architecture": arch}
    assert Templar(loader=LOADER, variables=variables).template(variables["__docker_apt_arch"]) == expected
