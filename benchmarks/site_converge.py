#!/usr/bin/env python3
"""Benchmark: converge site.yml on a fresh test host, then re-run it.

Prints first-run seconds, re-run seconds and the changed count of each, and their ratio. The test
host is started exactly as molecule/default describes it (platform read from its molecule.yml),
prepared by that scenario's own prepare.yml (tiny models, the stack's test images, the model
servers' wheels) and gets the same test profile (tests/profiles/site-test). It takes the Molecule
locks of tests/run.sh (same host network and ports as molecule/default). Not a test: it prints figures.

    .venv/bin/python benchmarks/site_converge.py [--keep]
"""

import argparse
import fcntl
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import ansible_runner
import yaml

ROOT = Path(__file__).resolve().parent.parent
SCENARIO = ROOT / "molecule" / "default"
NAME = "bench-site-debian13"


def docker_run_args(platform):
    args = ["docker", "run", "-d", "--name", NAME, "--hostname", NAME]
    args += [f"--network={platform.get('network_mode', 'host')}"]
    for cap in platform.get("capabilities", []):
        args += ["--cap-add", cap]
    for opt in platform.get("security_opts", []):
        args += ["--security-opt", opt]
    if platform.get("cgroupns_mode"):
        args += [f"--cgroupns={platform['cgroupns_mode']}"]
    for vol in platform.get("volumes", []):
        args += ["-v", vol]
    for tmp in platform.get("tmpfs", []):
        args += ["--tmpfs", tmp]
    return args + [platform["image"], platform.get("command", "/lib/systemd/systemd")]


def converge(data_dir, playbook):
    env = {
        # ansible-runner starts ansible-playbook from PATH: the project venv's, whoever runs this
        "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
        "MS_CACHE": str(ROOT / ".cache" / "model_servers"),
        "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
        "ANSIBLE_ROLES_PATH": str(ROOT / "roles"),
        "ANSIBLE_LIBRARY": str(ROOT / "plugins" / "modules"),
        "ANSIBLE_MODULE_UTILS": str(ROOT / "plugins" / "module_utils"),
        "ANSIBLE_FILTER_PLUGINS": str(ROOT / "plugins" / "filter"),
    }
    start = time.monotonic()
    run = ansible_runner.run(private_data_dir=data_dir, playbook=str(playbook), envvars=env, quiet=True)
    seconds = time.monotonic() - start
    if run.rc != 0:
        print(f"converge failed (rc={run.rc}); events in {data_dir}/artifacts", file=sys.stderr)
    return seconds, sum(run.stats.get("changed", {}).values()) if run.stats else None, run.rc


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="leave the test host running")
    opts = parser.parse_args()

    # every Molecule lane's lock (tests/run.sh, molecule/lanes): a benchmark measures best alone
    prefix = os.environ.get("DIFY_TEST_MOLECULE_LOCK", "/tmp/dify-test-molecule")
    locks = []
    for line in (ROOT / "molecule" / "lanes").read_text().splitlines():
        words = line.split("#", 1)[0].split()
        if words:
            locks.append(open(f"{prefix}-{words[0]}.lock", "w"))  # noqa: SIM115
            fcntl.flock(locks[-1], fcntl.LOCK_EX)  # held until the process ends
    platform = yaml.safe_load((SCENARIO / "molecule.yml").read_text())["platforms"][0]
    subprocess.run(["tests/images/build.sh", "debian13"], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["tests/images/archive.sh", "dify-test/base:debian13"], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL)
    subprocess.run(["docker", "rm", "-f", "-v", NAME], capture_output=True)
    subprocess.run(docker_run_args(platform), check=True, stdout=subprocess.DEVNULL)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-site-") as data_dir:
            inv = Path(data_dir) / "inventory"
            inv.mkdir()
            hosts = {"all": {"hosts": {NAME: {"ansible_connection": "community.docker.docker"}},
                             "children": {g: {"hosts": {NAME: None}} for g in platform["groups"]}}}
            (inv / "hosts.yml").write_text(yaml.safe_dump(hosts))
            os.symlink(ROOT / "tests" / "profiles" / "site-test" / "group_vars", inv / "group_vars")
            prep = converge(data_dir, SCENARIO / "prepare.yml")
            if prep[2] != 0:
                print("the scenario's prepare.yml failed (rc=%s); see %s" % (prep[2], data_dir), file=sys.stderr)
                return 1
            first = converge(data_dir, SCENARIO / "converge.yml")
            second = converge(data_dir, SCENARIO / "converge.yml")
    finally:
        if not opts.keep:
            subprocess.run(["docker", "rm", "-f", "-v", NAME], capture_output=True)
    print(f"first run:  {first[0]:7.1f} s  changed={first[1]}  rc={first[2]}")
    print(f"re-run:     {second[0]:7.1f} s  changed={second[1]}  rc={second[2]}")
    if second[0]:
        print(f"ratio (first run / re-run): {first[0] / second[0]:.2f}x")
    return 0 if first[2] == 0 and second[2] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
