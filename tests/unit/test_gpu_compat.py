"""Driver <-> image compatibility (plugins/filter/gpu_compat.py) and the pinned image set.

Table-driven: the driver-branch table, the preflight's verdict and message, the references
compose uses, and -- rendered per supported distribution -- that the default images and the
default driver branch of every platform are a compatible set.
"""

import re
import sys
from pathlib import Path

import pytest
import yaml
from ansible.errors import AnsibleFilterError

from role_render import PLATFORMS, RoleRender

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "plugins" / "filter"))

import gpu_compat as g  # noqa: E402

MS = ROOT / "roles" / "model_servers"
IMAGES = yaml.safe_load((MS / "defaults" / "main.yml").read_text())["model_servers_images"]
SPECS = yaml.safe_load((MS / "meta" / "argument_specs.yml").read_text())["argument_specs"]["main"]["options"]
MS_VARS = yaml.safe_load((MS / "vars" / "main.yml").read_text())
DOCS = (ROOT / "docs" / "model-servers.md").read_text() + (ROOT / "docs" / "gpu.md").read_text()


@pytest.mark.parametrize("branch,cuda", [
    ("535", "12.2"), ("550", "12.4"), ("555", "12.5"), ("560", "12.6"),
    ("565", "12.6"),   # between rows: what the lower row runs (conservative)
    ("570", "12.8"), ("575", "12.9"), ("580", "13.0"), ("590", "13.1"),
    ("610", "13.1"),   # newer than the table: at least the newest row
    (580, "13.0"),
])
def test_branch_max_cuda(branch, cuda):
    assert g.nvidia_branch_max_cuda(branch) == cuda


@pytest.mark.parametrize("bad", ["525", "", "latest", "58x"])
def test_branch_max_cuda_refuses_unknown(bad):
    with pytest.raises(AnsibleFilterError):
        g.nvidia_branch_max_cuda(bad)


@pytest.mark.parametrize("cuda,branch", [("12.1", 535), ("12.2", 535), ("12.4", 550), ("12.8", 570),
                                         ("12.9", 575), ("13.0", 580), ("13.1", 590)])
def test_branch_for_cuda(cuda, branch):
    assert g.nvidia_branch_for_cuda(cuda) == branch


@pytest.mark.parametrize("text,branch", [
    ("580.95.05", 580), ("550.163.01", 550),
    ("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.105.08  Release Build  (dvs-builder@U16-I1-N08-12-3)  Wed Oct 29 2025\n"
     "GCC version:  gcc version 14.2.0 (Debian 14.2.0-19)\n", 580),
    ("", ""), (None, ""),
])
def test_branch_of_a_driver_version(text, branch):
    assert g.nvidia_branch_of(text) == branch


def server(name, backend, gpus=("0",), runtime="container", **extra):
    return dict(name=name, backend=backend, gpus=list(gpus), runtime=runtime, **extra)


ALL_GPU_SERVERS = [server("vllm", "vllm"), server("llamacpp", "llamacpp"), server("ollama", "ollama"),
                   server("infinity", "infinity")] + [
    server("tei-" + arch, "tei", tei_arch=arch) for arch in IMAGES["tei"] if arch != "cpu"]


@pytest.mark.parametrize("images,servers,branch,loaded,problems,count", [
    # the defaults on the default branch
    (IMAGES, ALL_GPU_SERVERS, "580", "", [], 0),
    # Debian 13's own branch: the CUDA 12.8 llama.cpp image (and everything newer) is refused
    (IMAGES, [server("llm", "llamacpp")], "550", "", ["model_servers_images.llamacpp_cuda"], 1),
    # Debian 12's own branch
    (IMAGES, [server("emb", "infinity")], "535", "", ["model_servers_images.infinity"], 1),
    # 570 runs the CUDA 12.8 images but not TEI 1.9 (CUDA 12.9)
    (IMAGES, [server("llm", "llamacpp"), server("tei", "tei", tei_arch="ada")], "570", "",
     ["model_servers_images.tei.ada"], 1),
    # TEI with tei_arch auto: every GPU flavour is checked
    (IMAGES, [server("tei", "tei")], "570", "", ["model_servers_images.tei.turing", "model_servers_images.tei.blackwell120"], 7),
    # CPU-only servers and native servers need no driver
    (IMAGES, [server("llm", "llamacpp", gpus=()), server("emb", "infinity", runtime="native")], "535", "", [], 0),
    # branch 580 planned, 550 still loaded (upgrade waiting for a reboot)
    (IMAGES, [server("llm", "llamacpp")], "580",
     "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  550.163.01  Release Build", ["reboot"], 1),
    # an image built for an older CUDA fits the old branch
    (dict(IMAGES, llamacpp_cuda={"image": "example/llama:cuda12.2", "digest": "", "cuda": "12.2"}),
     [server("llm", "llamacpp")], "535", "", [], 0),
], ids=["defaults-580", "debian13-550", "debian12-535", "570-tei", "tei-auto", "cpu-and-native", "reboot-pending",
        "older-image"])
def test_compatibility_verdict(images, servers, branch, loaded, problems, count):
    report = g.model_servers_gpu_compat(servers, images, branch, "nvidia_driver_branch", "auto", loaded)
    assert len(report["problems"]) == count, report["problems"]
    for needle in problems:
        assert any(needle in p for p in report["problems"]), (needle, report["problems"])


def test_problem_names_the_image_variable_the_branch_variable_and_the_fix():
    report = g.model_servers_gpu_compat([server("llm", "llamacpp")], IMAGES, "550", "nvidia_driver_branch")
    (msg,) = report["problems"]
    assert "model_servers_images.llamacpp_cuda" in msg and IMAGES["llamacpp_cuda"]["image"] in msg
    assert "CUDA 12.8" in msg and "branch 550 (nvidia_driver_branch)" in msg and "up to 12.4" in msg
    assert "set nvidia_driver_branch to 570 or newer" in msg and "image built for CUDA 12.4 or older" in msg
    report = g.model_servers_gpu_compat([server("llm", "llamacpp")], IMAGES, "550", "model_servers_gpu_driver_branch")
    assert "model_servers_gpu_driver_branch" in report["problems"][0]


def test_undeclared_cuda_is_reported_not_guessed():
    images = dict(IMAGES, vllm="vllm/vllm-openai:v0.11.0")
    report = g.model_servers_gpu_compat([server("llm", "vllm")], images, "535")
    assert report["problems"] == [] and "model_servers_images.vllm" in report["unchecked"][0]


@pytest.mark.parametrize("digests,expected", [
    (True, IMAGES["vllm"]["image"] + "@" + IMAGES["vllm"]["digest"]),
    (False, IMAGES["vllm"]["image"]),
])
def test_references_carry_the_digest(digests, expected):
    refs = g.model_servers_image_refs(IMAGES, digests)
    assert refs["vllm"] == expected
    assert refs["llamacpp_cpu"] == IMAGES["llamacpp_cpu"]["image"]  # no verified digest: the tag
    assert set(refs["tei"]) == set(IMAGES["tei"])


@pytest.mark.parametrize("bad", [
    {"vllm": "vllm/vllm-openai:latest"},
    {"vllm": {"image": "vllm/vllm-openai:v0.11.0", "digest": "sha256:abc"}},
    {"vllm": {"image": "vllm/vllm-openai:v0.11.0", "cuda": "twelve"}},
    {"vllm": {"image": "vllm/vllm-openai:v0.11.0", "tag": "x"}},
    {"tei": "ghcr.io/huggingface/text-embeddings-inference:1.9.3"},
])
def test_bad_image_entries_are_refused(bad):
    with pytest.raises(AnsibleFilterError):
        g.model_servers_image_refs(bad)


def test_needed_images():
    refs = g.model_servers_image_refs(IMAGES)
    servers = [server("llm", "llamacpp"), server("cpu", "llamacpp", gpus=()), server("tei", "tei"),
               server("emb", "infinity"), server("native", "infinity", runtime="native")]
    assert g.model_servers_needed_images(servers, refs, {"tei": "blackwell120"}) == sorted(
        [refs["llamacpp_cuda"], refs["llamacpp_cpu"], refs["tei"]["blackwell120"], refs["infinity"]])
    with pytest.raises(AnsibleFilterError):
        g.model_servers_needed_images([server("tei", "tei")], refs, {})


@pytest.mark.parametrize("items,expected", [
    (["a.tar", {"path": "/srv/b.tar", "remote": True}],
     [{"path": "a.tar", "remote": False}, {"path": "/srv/b.tar", "remote": True}]),
    ([], []),
])
def test_image_archives(items, expected):
    assert g.image_archives(items) == expected


@pytest.mark.parametrize("bad", ["a.tar", [{"file": "a.tar"}], [""]])
def test_image_archives_refuses(bad):
    with pytest.raises(AnsibleFilterError):
        g.image_archives(bad, "model_servers_image_archives")


# --- the pinned image set ----------------------------------------------------------------------

def entries():
    for key, value in IMAGES.items():
        if key == "tei":
            for arch, sub in value.items():
                yield "tei." + arch, sub
        else:
            yield key, value


@pytest.mark.parametrize("platform", sorted(PLATFORMS))
def test_defaults_are_a_compatible_set_on_every_platform(platform):
    """The driver branch each platform gets by default runs every default GPU image."""
    branch = RoleRender("nvidia_driver", platform).var("__nvidia_driver_branch")
    report = g.model_servers_gpu_compat(ALL_GPU_SERVERS, IMAGES, branch)
    assert report["problems"] == [] and report["unchecked"] == []
    assert len(report["checked"]) == len(ALL_GPU_SERVERS)


def test_every_image_declares_its_cuda_need():
    for key, entry in entries():
        assert set(entry) == {"image", "digest", "cuda"}, key
        cpu = key in ("llamacpp_cpu", "tei.cpu")
        assert (entry["cuda"] is None) == cpu, key
        assert entry["digest"] == "" or re.match(r"^sha256:[0-9a-f]{64}$", entry["digest"]), key
        assert ":" in entry["image"].split("/")[-1] and not entry["image"].endswith(":latest"), key


def test_tei_covers_every_architecture_including_blackwell():
    tei = IMAGES["tei"]
    assert tei["blackwell100"]["image"].endswith(":100-1.9.3")
    assert tei["blackwell120"]["image"].endswith(":120-1.9.3")
    assert set(MS_VARS["__model_servers_tei_arch_by_cc"].values()) | {"cpu"} == set(tei)
    assert MS_VARS["__model_servers_tei_arch_by_cc"]["10.0"] == "blackwell100"
    assert MS_VARS["__model_servers_tei_arch_by_cc"]["12.0"] == "blackwell120"
    assert set(SPECS["model_servers_tei_arch"]["choices"]) == set(tei) | {"auto"}
    # one TEI release for every flavour
    assert len({e["image"].rsplit("-", 1)[-1].rsplit(":", 1)[-1] for e in tei.values()}) == 1


def test_every_image_and_digest_is_documented_with_its_source():
    """docs/model-servers.md lists every default image, its digest (or why it is missing) and
    where it was checked: a new image without its row fails here."""
    for key, entry in entries():
        assert "`%s`" % entry["image"] in DOCS, entry["image"]
        if entry["digest"]:
            assert entry["digest"] in DOCS, (key, entry["digest"])
