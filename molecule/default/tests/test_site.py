"""The whole site on one host: each role that joins site.yml adds its checks here."""

import os

import testinfra.utils.ansible_runner

testinfra_hosts = testinfra.utils.ansible_runner.AnsibleRunner(
    os.environ["MOLECULE_INVENTORY_FILE"]
).get_hosts("all")


def test_docker_engine_serves(host):
    assert host.service("docker").is_running
    assert host.service("docker").is_enabled
    assert host.check_output("docker compose version --short").strip()
