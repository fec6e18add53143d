"""`make check` (site.yml --check --diff) on fresh hosts with the shipped inventories.

inventories/local (one box) and inventories/example (a GPU host, a Dify host that is also the edge),
each as shipped, plus an overlay inventory for this test machine: the docker connection to the test
hosts, and the two things the machine cannot provide - Docker's apt repository is unreachable here
(docker_install_source: distro) and there is no GPU (nvidia_driver_require_gpu: false on the example's
GPU host). The check must run to the end, print the end-of-run report, and leave the hosts untouched.
"""

import os
import re
import subprocess
from pathlib import Path

import pytest
import testinfra
import yaml

PROJECT = Path(os.environ["MOLECULE_PROJECT_DIRECTORY"])
INVENTORY_FILE = os.environ["MOLECULE_INVENTORY_FILE"]

# inventory host -> the Molecule instance that plays it
LAYOUT = {
    "local": {"localhost": "site-check-local"},
    "example": {"gpu1.example.internal": "site-check-gpu1", "dify1.example.internal": "site-check-dify1"},
}
OVERLAY_VARS = {
    "local": {"localhost": {"docker_install_source": "distro"}},
    "example": {"gpu1.example.internal": {"docker_install_source": "distro", "nvidia_driver_require_gpu": False},
                "dify1.example.internal": {"docker_install_source": "distro"}},
}
# what a real run would create on a fresh host; --check must leave every one absent
UNTOUCHED = ["/etc/docker", "/opt/dify", "/etc/ansible/facts.d", "/etc/nginx/sites-available/dify.conf",
             "/etc/model-servers", "/etc/apt/sources.list.d/docker.sources"]


def instance(name):
    return testinfra.get_host("ansible://%s?ansible_inventory=%s" % (name, INVENTORY_FILE))


# Inventories the preflight must refuse: a REAL run (no --check) of site.yml with the example inventory and
# one mistake, which must stop in the preflight before any host changes, naming the variable and the host.
BAD = {
    # an argument that does not fit a role's meta/argument_specs.yml
    "bad-argument": ({"gpu1.example.internal": {"nvidia_driver_require_gpu": "perhaps"}},
                     ["Preflight on gpu1.example.internal: role arguments", "[role nvidia_driver]",
                      "nvidia_driver_require_gpu"]),
    # dify_bootstrap's own checks, which the role runs only after the stack is up: the preflight runs them first
    "bad-knowledge-base": ({"dify1.example.internal": {"dify_bootstrap_datasets": [{"name": "Handbook " * 5}]}},
                           ["dify_bootstrap_datasets: '" + "Handbook " * 5 + "' is invalid",
                            "Names are unique and 1 to 40 characters (this one has 45)"]),
    # a cross-host rule: the host nginx on dify1 would refuse uploads Dify accepts
    "bad-upload-limit": ({"dify1.example.internal": {"nginx_client_max_body_size_mb": 1}},
                         ["Preflight: the inventory is not consistent across hosts",
                          "nginx_client_max_body_size_mb=1 on dify1.example.internal is smaller than "
                          "dify_upload_file_size_limit_mb=100 on dify1.example.internal"]),
}


def start_check(tmp_path, inventory, mistake=None):
    """site.yml --check --diff with the shipped inventory and this machine's overlay, in the background;
    with MISTAKE (a key of BAD): a real run of the example inventory with that mistake in the overlay."""
    hosts = {}
    for host, container in LAYOUT[inventory].items():
        hosts[host] = dict(OVERLAY_VARS[inventory][host], ansible_connection="community.docker.docker",
                           ansible_host=container, ansible_user="root", ansible_python_interpreter="/usr/bin/python3")
        if mistake:
            hosts[host].update(BAD[mistake][0].get(host, {}))
    name = mistake or inventory
    overlay = tmp_path / ("%s-overlay.yml" % name)
    overlay.write_text(yaml.safe_dump({"all": {"hosts": hosts}}))
    # profile_tasks: the slowest tasks at the end of each log, to keep this scenario cheap
    env = dict(os.environ, ANSIBLE_CONFIG=str(PROJECT / "ansible.cfg"), ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0",
               ANSIBLE_PIPELINING="True", ANSIBLE_CALLBACKS_ENABLED="ansible.posix.profile_tasks")
    # kept after the scenario (its temporary directories are not): .cache/test-logs/site-check-<inventory>.log
    logdir = PROJECT / ".cache" / "test-logs"
    logdir.mkdir(parents=True, exist_ok=True)
    log = open(logdir / ("site-check-%s.log" % name), "w+")
    proc = subprocess.Popen(
        ["ansible-playbook", "-i", "inventories/%s/hosts.yml" % inventory, "-i", str(overlay), "site.yml"]
        + ([] if mistake else ["--check", "--diff"]),
        cwd=str(PROJECT), env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    return proc, log


def recap(output):
    return {m.group(1): {"changed": int(m.group(2)), "failed": int(m.group(3))}
            for m in re.finditer(r"^(\S+)\s*:\s*ok=\d+\s+changed=(\d+)\s+unreachable=0\s+failed=(\d+)", output, re.M)}


@pytest.fixture(scope="module")
def checks(tmp_path_factory):
    """Both checks and the refused real runs at once (they wait on the hosts most of the time):
    {inventory or mistake: (rc, output)}."""
    for hosts in LAYOUT.values():
        for container in hosts.values():
            assert not instance(container).file("/usr/bin/dockerd").exists, "not a fresh host: %s" % container
    tmp = tmp_path_factory.mktemp("site-check")
    running = {inv: start_check(tmp, inv) for inv in LAYOUT}
    running.update({bad: start_check(tmp, "example", bad) for bad in BAD})
    out = {}
    for inv, (proc, log) in running.items():
        rc = proc.wait(timeout=2400)
        log.seek(0)
        out[inv] = (rc, log.read())
    return out


@pytest.mark.parametrize("inventory", ["local", "example"])
def test_make_check_runs_to_the_end_on_fresh_hosts(checks, inventory):
    rc, out = checks[inventory]
    assert rc == 0, out[-6000:]
    stats = recap(out)
    assert set(stats) == set(LAYOUT[inventory]), out[-3000:]
    for host, counts in stats.items():
        assert counts["failed"] == 0 and counts["changed"] > 0, (host, counts)
    # the preflight ran first, the end-of-run report last
    assert out.index("PLAY [Preflight - every role's arguments") < out.index("PLAY [GPU layer")
    assert "Dify site report (check mode: what a real run would give)" in out
    assert "Open Dify: %s" % ("https://localhost" if inventory == "local" else "https://dify.example.com") in out


@pytest.mark.parametrize("inventory", ["local", "example"])
def test_make_check_leaves_the_hosts_untouched(checks, inventory):
    """(also after the refused real runs of BAD on the example's hosts)"""
    assert checks[inventory][0] == 0
    for container in LAYOUT[inventory].values():
        host = instance(container)
        for path in UNTOUCHED:
            assert not host.file(path).exists, (container, path)


@pytest.mark.parametrize("mistake", sorted(BAD))
def test_the_preflight_stops_a_real_run_before_any_host_changes(checks, mistake):
    rc, out = checks[mistake]
    assert rc != 0, out[-6000:]
    for words in BAD[mistake][1]:
        assert words in out, (words, out[-6000:])
    # no play after the preflight started, and nothing changed anywhere
    assert "PLAY [GPU layer" not in out and "PLAY [Docker engine" not in out, out[-6000:]
    for host, counts in recap(out).items():
        assert counts["changed"] == 0, (host, counts)
