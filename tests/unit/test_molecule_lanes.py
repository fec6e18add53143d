"""molecule/lanes: scenarios in different lanes run at the same time on one machine, in one
network namespace, so they must share no port, no writable host directory and no inner Docker
address range; every scenario sits in exactly one lane (tests/run.sh fails a scenario without one)."""
import itertools
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
MOLECULE = ROOT / "molecule"
PORT = re.compile(r"(?<![\d.])1[78]\d{3}(?![\d.])")         # the test ranges 17000-18999 (docs/development.md)
ADDRESS_RANGE = re.compile(r"\b172\.(\d+)\.\d+\.\d+")        # inner Docker pools and host-gateway bridges
SHARED_BY_DESIGN = {"/sys/fs/cgroup"}                          # every systemd host mounts it (cgroupns host)


def read_lanes(text):
    lanes = {}
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if words:
            lanes[words[0]] = words[1:]
    return lanes


def scenario_names():
    return sorted(p.parent.name for p in MOLECULE.glob("*/molecule.yml")
                  if not p.parent.name.startswith("_") and p.parent.name != "shared")


def scenario_files(name):
    """The scenario's own files and those its molecule.yml borrows (../dify/converge.yml, group_vars links)."""
    directory = MOLECULE / name
    dirs = {directory}
    for ref in re.findall(r"\.\./([\w./-]+)", (directory / "molecule.yml").read_text()):
        target = (directory / ".." / ref).resolve()
        dirs.add(target if target.is_dir() else target.parent)
    return [f for d in dirs for f in d.rglob("*") if f.is_file() and "__pycache__" not in f.parts]


def writable_host_dirs(name):
    doc = yaml.safe_load((MOLECULE / name / "molecule.yml").read_text())
    found = set()
    for platform in doc.get("platforms", []):
        for volume in platform.get("volumes", []):
            parts = volume.split(":")
            if len(parts) >= 2 and parts[0].startswith("/") and "ro" not in parts[2:] \
                    and parts[0] not in SHARED_BY_DESIGN:
                found.add(parts[0])
    return found


def resources(name):
    text = "\n".join(f.read_text(errors="ignore") for f in scenario_files(name))
    return ({"port " + p for p in PORT.findall(text)}
            | {"address range 172.%s" % a for a in ADDRESS_RANGE.findall(text)}
            | {"host directory " + d for d in writable_host_dirs(name)})


def conflicts(lanes, used):
    """Pairs of scenarios in different lanes that use one resource: [(a, b, resource), ...]."""
    lane_of = {s: lane for lane, members in lanes.items() for s in members}
    found = []
    for a, b in itertools.combinations(sorted(lane_of), 2):
        if lane_of[a] != lane_of[b]:
            found += [(a, b, r) for r in sorted(used.get(a, set()) & used.get(b, set()))]
    return found


def test_every_scenario_is_in_exactly_one_lane():
    lanes = read_lanes((MOLECULE / "lanes").read_text())
    placed = [s for members in lanes.values() for s in members]
    assert sorted(placed) == scenario_names(), "molecule/lanes must name each scenario once"
    assert len(lanes) >= 2


def test_lanes_share_nothing():
    lanes = read_lanes((MOLECULE / "lanes").read_text())
    used = {s: resources(s) for s in scenario_names()}
    assert conflicts(lanes, used) == []


def test_the_resources_of_the_stack_scenarios_are_seen():
    # the check above means something only if it finds what the stack scenarios hold
    assert {"port 17380", "address range 172.29",
            "host directory /var/cache/dify-test-images/docker-root"} <= resources("dify-restore")
    assert "address range 172.30" in resources("default")
    assert "port 17201" in resources("model_servers")


@pytest.mark.parametrize("lanes, used, expected", [
    ({"a": ["x"], "b": ["y"]}, {"x": {"port 17001"}, "y": {"port 17002"}}, []),
    ({"a": ["x"], "b": ["y"]}, {"x": {"port 17001"}, "y": {"port 17001"}}, [("x", "y", "port 17001")]),
    ({"a": ["x", "y"]}, {"x": {"port 17001"}, "y": {"port 17001"}}, []),
    ({"a": ["x"], "b": ["y"]}, {"x": {"host directory /d"}, "y": {"host directory /d", "port 1"}},
     [("x", "y", "host directory /d")]),
])
def test_conflicts(lanes, used, expected):
    assert conflicts(lanes, used) == expected


def test_read_lanes_skips_comments():
    assert read_lanes("# c\n\nstack dify multihost  # tail\nsite default\n") == {
        "stack": ["dify", "multihost"], "site": ["default"]}
