"""Verify the GPU layer on a no-GPU test host (testinfra + ansible-runner, run by molecule verify)."""

import json
import os
from pathlib import Path

import ansible_runner
import pytest
import testinfra.utils.ansible_runner

INVENTORY_FILE = os.environ["MOLECULE_INVENTORY_FILE"]
PROJECT = Path(os.environ["MOLECULE_PROJECT_DIRECTORY"])
SCENARIO = PROJECT / "molecule" / "nvidia"
HOSTS = testinfra.utils.ansible_runner.AnsibleRunner(INVENTORY_FILE).get_hosts("gpu_model_servers")
STANDIN_LOG = "/var/log/nvidia-container-runtime-standin.log"
BLACKLIST = "/etc/modprobe.d/blacklist-nouveau.conf"


def get_host(hostname):
    return testinfra.get_host(f"ansible://{hostname}?ansible_inventory={INVENTORY_FILE}")


def run_driver_role(tmp_path, hostname, playbook="driver_only.yml", **extravars):
    """Run one role alone against one host; return the ansible-runner result."""
    return ansible_runner.run(
        private_data_dir=str(tmp_path),
        playbook=str(SCENARIO / "playbooks" / playbook),
        inventory=INVENTORY_FILE,
        limit=hostname,
        extravars=extravars,
        envvars={
            "ANSIBLE_ROLES_PATH": str(PROJECT / "roles"),
            "ANSIBLE_FORCE_COLOR": "0",
        },
        quiet=True,
    )


def task_results(result, task_name, event="runner_on_ok"):
    return [
        e["event_data"]["res"]
        for e in result.events
        if e.get("event") == event and e["event_data"].get("task") == task_name
    ]


@pytest.fixture(params=HOSTS)
def host(request):
    return get_host(request.param)


# --- nvidia_driver ------------------------------------------------------------------------------


def is_ubuntu(host):
    return host.system_info.distribution == "ubuntu"


def test_archive_components_enabled_once(host):
    components = ("restricted",) if is_ubuntu(host) else ("contrib", "non-free", "non-free-firmware")
    lines = [
        line.split()
        for line in host.file("/etc/apt/sources.list").content_string.splitlines()
        if line.startswith("deb ")
    ]
    main_lines = [words for words in lines if "main" in words]
    assert main_lines
    for words in main_lines:
        for component in components:
            assert words.count(component) == 1, words


def test_driver_packages_installed_from_the_distribution(host):
    if is_ubuntu(host):
        names = ("nvidia-headless-580-server-open", "nvidia-dkms-580-server-open", "nvidia-utils-580-server",
                 "nvidia-compute-utils-580-server")
        probe, branch, origin = "nvidia-utils-580-server", "580.", "/ubuntu noble-updates/restricted"
    else:
        names = ("nvidia-driver", "nvidia-open-kernel-dkms", "nvidia-smi", "nvidia-persistenced",
                 "firmware-misc-nonfree", "libcuda1")
        probe, branch, origin = "nvidia-driver", "550.", "deb.debian.org/debian trixie/non-free"
    for name in names:
        assert host.package(name).is_installed, name
    assert host.package(probe).version.startswith(branch)
    assert origin in host.check_output(f"apt-cache policy {probe}")


def test_branch_pinned(host):
    pref = host.file("/etc/apt/preferences.d/nvidia-driver-branch")
    if is_ubuntu(host):  # the branch is in Ubuntu's package names
        assert not pref.exists
        return
    assert "Pin: version 550.*" in pref.content_string
    assert "Pin-Priority: 1001" in pref.content_string
    assert "550." in host.check_output("apt-cache policy nvidia-driver | grep Candidate")


def test_kernel_headers_package_resolves(host):
    """Headers are not installed here (DKMS would build for a kernel this container never runs);
    the package the role would install must still resolve from the archive."""
    headers = "linux-headers-generic" if is_ubuntu(host) else "linux-headers-amd64"
    cmd = host.run(f"apt-get install -s --no-install-recommends {headers} gcc make")
    assert cmd.rc == 0, cmd.stderr
    assert "Inst linux-headers-" in cmd.stdout


def test_nouveau_blacklisted(host):
    content = host.file(BLACKLIST).content_string
    assert "blacklist nouveau" in content
    assert "options nouveau modeset=0" in content


def test_persistenced_enabled(host):
    assert host.service("nvidia-persistenced").is_enabled


def test_no_gpu_skip_with_one_message(tmp_path, host):
    """Defaults on a host without a GPU: one clear message, nothing installed or changed."""
    hostname = host.backend.host
    r = run_driver_role(tmp_path, hostname, nvidia_driver_install_without_gpu=False)
    assert r.rc == 0, r.stdout.read()
    assert r.stats["changed"] == {}
    messages = [
        res["msg"] for res in task_results(r, "No NVIDIA GPU on this host")
    ]
    assert messages == [f"No NVIDIA GPU found on {hostname}: skipping the NVIDIA driver install."]
    ran = {e["event_data"].get("task") for e in r.events if e.get("event") == "runner_on_ok"}
    assert "Install the driver packages" not in ran
    assert "Blacklist nouveau so the NVIDIA driver can bind the GPU" not in ran


def test_require_gpu_fails_before_any_change(tmp_path, host):
    """nvidia_driver_require_gpu on a host without a GPU fails, naming the variable, before
    changing anything: a file the role would otherwise write stays absent."""
    hostname = host.backend.host
    saved = host.file(BLACKLIST).content_string
    host.run_expect([0], f"rm -f {BLACKLIST}")
    try:
        r = run_driver_role(tmp_path, hostname, nvidia_driver_require_gpu=True)
        assert r.rc != 0
        failures = task_results(r, "Fail when a GPU is required but none is present", "runner_on_failed")
        assert len(failures) == 1
        assert "nvidia_driver_require_gpu" in failures[0]["msg"]
        assert "No NVIDIA GPU found" in failures[0]["msg"]
        assert r.stats["changed"] == {}
        assert not host.file(BLACKLIST).exists
    finally:
        host.run_expect([0], f"printf '%s' '{saved}' > {BLACKLIST}")


# --- nvidia_container_toolkit -------------------------------------------------------------------


def test_vendor_repository_rendered(host):
    sources = host.file("/etc/apt/sources.list.d/nvidia-container-toolkit.sources").content_string
    assert "Types: deb\n" in sources
    assert "URIs: https://nvidia.github.io/libnvidia-container/stable/deb/amd64/\n" in sources
    assert "Suites: /\n" in sources
    assert "Signed-By: /etc/apt/keyrings/nvidia-container-toolkit.asc\n" in sources
    assert "Enabled: no\n" in sources  # it cannot be reached from the test machines
    key = host.file("/etc/apt/keyrings/nvidia-container-toolkit.asc")
    assert key.is_file and key.mode == 0o644
    assert "BEGIN PGP PUBLIC KEY BLOCK" in key.content_string
    pin = host.file("/etc/apt/preferences.d/nvidia-container-toolkit").content_string
    assert "Pin: version 1.17.8-1" in pin
    assert "nvidia-container-toolkit-base" in pin
    # apt ignores the disabled repository
    assert "nvidia.github.io" not in host.check_output("apt-get indextargets --no-release-info")


def test_toolkit_no_gpu_skip_with_one_message(tmp_path, host):
    """Defaults on a host without a GPU: one message, no runtime handed to Docker, no change."""
    hostname = host.backend.host
    r = run_driver_role(tmp_path, hostname, playbook="toolkit_only.yml",
                        nvidia_container_toolkit_install_without_gpu=False)
    assert r.rc == 0, r.stdout.read()
    assert r.stats["changed"] == {}
    messages = [res["msg"] for res in task_results(r, "No NVIDIA GPU on this host")]
    assert messages == [f"No NVIDIA GPU found on {hostname}: skipping the NVIDIA container toolkit."]
    ran = {e["event_data"].get("task") for e in r.events if e.get("event") == "runner_on_ok"}
    assert not any(t and t.startswith("Contribute the NVIDIA runtime") for t in ran)
    assert not any(t and t.startswith("Install the toolkit") for t in ran)


def test_standin_toolkit_installed(host):
    assert host.package("nvidia-container-toolkit-standin").is_installed
    assert host.file("/usr/bin/nvidia-container-runtime").mode == 0o755


def test_daemon_json_carries_the_nvidia_runtime(host):
    daemon = json.loads(host.file("/etc/docker/daemon.json").content_string)
    assert daemon["runtimes"]["nvidia"] == {"path": "nvidia-container-runtime", "args": []}
    assert daemon["default-runtime"] == "nvidia"
    assert daemon["bridge"] == "none"  # the scenario's own docker options survive the merge


def test_dockerd_registered_the_runtime(host):
    info = json.loads(host.check_output("docker info --format '{{json .}}'"))
    assert info["Runtimes"]["nvidia"]["path"] == "nvidia-container-runtime"
    assert info["DefaultRuntime"] == "nvidia"


def test_containers_start_through_the_runtime(host):
    """dockerd really uses the runtime: a tiny image imported on the host runs through the
    stand-in nvidia-container-runtime (default runtime and --runtime nvidia)."""
    host.run_expect([0], """set -e
        d=$(mktemp -d)
        cp -L --parents /usr/bin/true $(ldd /usr/bin/true | grep -o '/[^ ]*') "$d"
        tar -C "$d" -c . | docker import - nvidia-test/true:1 >/dev/null
        rm -rf "$d"
        """)
    host.run_expect([0], f"rm -f {STANDIN_LOG}")
    host.run_expect([0], "docker run --rm --network host nvidia-test/true:1 /usr/bin/true")
    host.run_expect([0], "docker run --rm --network host --runtime nvidia nvidia-test/true:1 /usr/bin/true")
    calls = host.file(STANDIN_LOG).content_string.splitlines()
    assert sum(1 for c in calls if " create " in f" {c} ") == 2, calls


# --- the contract with the docker role, across runs ------------------------------------------------


def test_toolkit_contract_is_persisted_on_the_host(host):
    fact = host.file("/etc/ansible/facts.d/nvidia_container_toolkit.fact")
    assert fact.mode == 0o644
    assert json.loads(fact.content_string) == {
        "docker_runtimes": {"nvidia": {"path": "nvidia-container-runtime", "args": []}},
        "docker_default_runtime": "nvidia"}


def test_docker_playbook_alone_keeps_the_nvidia_runtime(tmp_path, host):
    """playbooks/docker.yml in a run of its own, on this host whose GPU play ran in an earlier run:
    nothing of the toolkit is in memory, its local fact hands the docker role the runtime, so
    daemon.json keeps it and Docker is not restarted (nothing changes at all)."""
    import yaml

    options = yaml.safe_load((PROJECT / "molecule" / "shared" / "docker_test_options.yml").read_text())
    before = host.file("/etc/docker/daemon.json").content_string
    started = host.check_output("systemctl show -p ActiveEnterTimestampMonotonic --value docker")
    r = ansible_runner.run(
        private_data_dir=str(tmp_path),
        playbook=str(PROJECT / "playbooks" / "docker.yml"),
        inventory=INVENTORY_FILE,
        limit=host.backend.host,
        extravars=options,
        envvars={"ANSIBLE_CONFIG": str(PROJECT / "ansible.cfg"), "ANSIBLE_FORCE_COLOR": "0"},
        quiet=True,
    )
    assert r.rc == 0, r.stdout.read()[-4000:]
    assert r.stats["changed"] == {}, r.stats
    ran = {e["event_data"].get("task") for e in r.events if e.get("event") == "runner_on_ok"}
    assert "Write daemon.json" in ran
    assert host.file("/etc/docker/daemon.json").content_string == before
    daemon = json.loads(before)
    assert daemon["runtimes"]["nvidia"] == {"path": "nvidia-container-runtime", "args": []}
    assert daemon["default-runtime"] == "nvidia"
    assert host.check_output("systemctl show -p ActiveEnterTimestampMonotonic --value docker") == started
    info = json.loads(host.check_output("docker info --format '{{json .}}'"))
    assert info["Runtimes"]["nvidia"]["path"] == "nvidia-container-runtime"
