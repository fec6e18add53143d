"""Verify the docker role on the test hosts (testinfra, run by molecule verify)."""

import json
import os
from pathlib import Path

import pytest
import testinfra.utils.ansible_runner
import yaml

INVENTORY = testinfra.utils.ansible_runner.AnsibleRunner(os.environ["MOLECULE_INVENTORY_FILE"])
PROJECT = Path(os.environ["MOLECULE_PROJECT_DIRECTORY"])
DOCKER_HOSTS = INVENTORY.get_hosts("docker_hosts")
RENDER_HOSTS = INVENTORY.get_hosts("render_hosts")


def expected_daemon_json():
    defaults = yaml.safe_load((PROJECT / "roles/docker/defaults/main.yml").read_text())
    test_opts = yaml.safe_load((PROJECT / "molecule/shared/docker_test_options.yml").read_text())
    expected = dict(defaults["docker_daemon_log_options"])
    expected.update(test_opts["docker_test_daemon_options"])
    return expected


@pytest.mark.parametrize("hostname", DOCKER_HOSTS)
class TestDockerHost:
    def host(self, hostname):
        return testinfra.get_host(f"ansible://{hostname}?ansible_inventory={os.environ['MOLECULE_INVENTORY_FILE']}")

    def test_dockerd_running_and_enabled(self, hostname):
        svc = self.host(hostname).service("docker")
        assert svc.is_running
        assert svc.is_enabled

    def test_compose_v2_new_enough(self, hostname):
        out = self.host(hostname).check_output("docker compose version --short").strip().lstrip("v")
        major, minor = (int(x) for x in out.split(".")[:2])
        assert (major, minor) >= (2, 24), out

    def test_daemon_json_holds_exactly_the_declared_options(self, hostname):
        h = self.host(hostname)
        assert json.loads(h.file("/etc/docker/daemon.json").content_string) == expected_daemon_json()

    def test_dockerd_runs_with_the_declared_options(self, hostname):
        info = json.loads(self.host(hostname).check_output("docker info --format '{{json .}}'"))
        assert info["LoggingDriver"] == "json-file"
        assert info["Driver"] == "overlay2"

    def test_container_runs_from_a_locally_imported_image(self, hostname):
        h = self.host(hostname)
        h.check_output("docker load -i /test-images/dify-test_base_debian13.tar")
        out = h.check_output("docker run --rm --network host dify-test/base:debian13 cat /etc/debian_version")
        assert out.strip().startswith("13")

    def test_operator_in_docker_group(self, hostname):
        assert "docker" in self.host(hostname).user("dify-operator").groups


def _vendor_repository_rendered(hostname):
    h = testinfra.get_host(f"ansible://{hostname}?ansible_inventory={os.environ['MOLECULE_INVENTORY_FILE']}")
    sources = h.file("/etc/apt/sources.list.d/docker.sources")
    assert sources.exists
    fields = dict(line.split(": ", 1) for line in sources.content_string.splitlines() if ": " in line)
    assert fields["Types"] == "deb"
    assert fields["URIs"] == "https://download.docker.com/linux/debian"
    assert fields["Suites"] == "bookworm"
    assert fields["Components"] == "stable"
    assert fields["Signed-By"] == "/etc/apt/keyrings/docker.asc"
    assert fields["Architectures"] == "amd64"
    key = h.file("/etc/apt/keyrings/docker.asc")
    assert key.exists and key.mode == 0o644
    # rendering only: nothing was installed and the refused distro source left no docker behind
    assert not h.package("docker-ce").is_installed
    assert not h.package("docker.io").is_installed


if RENDER_HOSTS:  # scenarios that share these tests without render hosts collect no empty test
    test_vendor_repository_rendered = pytest.mark.parametrize("hostname", RENDER_HOSTS)(
        _vendor_repository_rendered
    )
