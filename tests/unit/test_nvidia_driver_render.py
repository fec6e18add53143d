"""nvidia_driver, rendered per supported distribution: the CUDA repository key, the default
source and branch, and the branch pin -- proven with the real apt resolver.

NVIDIA's repository cannot be reached here. The pin is therefore checked against a local
flat repository that reproduces the metadata shape of NVIDIA's CUDA repository (several
driver branches side by side; Debian's cuda-drivers-580 depending on "nvidia-driver
(>= 580.65.06)" with no upper bound, as NVIDIA's forum shows for 580.105.08-1; Ubuntu's
names losing the branch suffix from 590 on, as NVIDIA's "Ubuntu 590 package renames" table
lists). apt-get resolves the role's own packages there with the role's rendered preference
file; without that file the same request picks the newest branch, which is what proves the
test can see a broken pin.
"""

import hashlib
import re
import shutil
import subprocess

import pytest

from role_render import RoleRender

PLATFORMS = ["debian12", "debian13", "ubuntu2204", "ubuntu2404"]

# Facts from NVIDIA (docs/gpu.md lists where each was checked): Debian 13's CUDA repository is
# signed with 8793F200.pub, the others with 3bf863cc.pub.
KEYS = {
    "debian12": ("3bf863cc.pub", "EB693B3035CD5710E231E123A4B469963BF863CC"),
    "debian13": ("8793F200.pub", "02182E60104FCDC26EAE1B8597A5D4CB8793F200"),
    "ubuntu2204": ("3bf863cc.pub", "EB693B3035CD5710E231E123A4B469963BF863CC"),
    "ubuntu2404": ("3bf863cc.pub", "EB693B3035CD5710E231E123A4B469963BF863CC"),
}


@pytest.mark.parametrize("platform", PLATFORMS)
@pytest.mark.parametrize("arch,repo_arch", [("x86_64", "x86_64"), ("aarch64", "sbsa")])
def test_cuda_repository_key_is_chosen_by_distribution(platform, arch, repo_arch):
    r = RoleRender("nvidia_driver", platform, arch=arch, nvidia_driver_source="cuda_repo")
    key_file, fingerprint = KEYS[platform]
    repo = "https://developer.download.nvidia.com/compute/cuda/repos/%s/%s" % (platform, repo_arch)
    assert r.var("nvidia_driver_cuda_repo_key_url") == repo + "/" + key_file
    assert r.var("nvidia_driver_cuda_repo_key_fingerprint") == fingerprint
    sources = r.template("nvidia-cuda.sources.j2")
    assert "URIs: %s/\n" % repo in sources
    assert "Suites: /\n" in sources
    assert "Signed-By: /etc/apt/keyrings/nvidia-cuda.asc\n" in sources


def test_unknown_distribution_has_no_key_to_guess():
    r = RoleRender("nvidia_driver", "debian12", nvidia_driver_source="cuda_repo")
    r.templar.available_variables = dict(r.templar.available_variables,
                                         ansible_facts=dict(r.var("ansible_facts"), distribution_major_version="11"))
    assert r.var("nvidia_driver_cuda_repo_key_fingerprint") == ""


@pytest.mark.parametrize("platform,source,branch", [
    ("debian12", "cuda_repo", "580"),   # Debian's own 535 is CUDA 12.2: too old for the images
    ("debian13", "cuda_repo", "580"),   # Debian's own 550 is CUDA 12.4: too old for the images
    ("ubuntu2204", "distro", "580"),
    ("ubuntu2404", "distro", "580"),
])
def test_default_source_and_branch(platform, source, branch):
    r = RoleRender("nvidia_driver", platform)
    assert r.var("nvidia_driver_source") == "auto"
    assert r.var("__nvidia_driver_source") == source
    assert r.var("__nvidia_driver_branch") == branch


@pytest.mark.parametrize("platform,branch", [("debian12", "535"), ("debian13", "550")])
def test_debian_distro_branches_stay_available(platform, branch):
    r = RoleRender("nvidia_driver", platform, nvidia_driver_source="distro")
    assert r.var("__nvidia_driver_branch") == branch
    assert r.var("__nvidia_driver_pin_branch") is True


@pytest.mark.parametrize("platform", PLATFORMS)
def test_cuda_repo_pins_every_platform_and_installs_the_pinning_package_first(platform):
    r = RoleRender("nvidia_driver", platform, nvidia_driver_source="cuda_repo")
    assert r.var("__nvidia_driver_pin_branch") is True
    assert r.var("nvidia_driver_cuda_repo_pinning_package") == "nvidia-driver-pinning-580"
    assert r.var("nvidia_driver_cuda_repo_packages") == ["nvidia-open"]
    r = RoleRender("nvidia_driver", platform, nvidia_driver_source="cuda_repo", nvidia_driver_kernel_modules="proprietary")
    assert r.var("nvidia_driver_cuda_repo_packages") == ["cuda-drivers"]


# --- a local repository shaped like NVIDIA's, and the real apt resolver -----------------------

DEBIAN_RELEASES = {"580": "580.105.08-1", "590": "590.48.01-1", "595": "595.71.05-1"}
UBUNTU_RELEASES = {"580": "580.95.05-0ubuntu1", "590": "590.48.01-0ubuntu1", "595": "595.71.05-0ubuntu1"}
DEBIAN_LEAVES = ["nvidia-driver-libs", "nvidia-driver-bin", "nvidia-driver-cuda", "libcuda1", "nvidia-smi",
                 "nvidia-kernel-support", "nvidia-settings", "nvidia-xconfig", "firmware-nvidia-gsp",
                 "libnvidia-ml1", "nvidia-persistenced"]


def stanza(name, version, depends=()):
    text = "Package: %s\nVersion: %s\nArchitecture: amd64\n" % (name, version)
    if depends:
        text += "Depends: %s\n" % ", ".join(depends)
    return text + "Filename: ./%s_%s_amd64.deb\nSize: 1\nDescription: stand-in\n" % (name, version)


def floor(version):
    return version.split("-")[0]


def debian_cuda_repo():
    out = []
    for branch, v in DEBIAN_RELEASES.items():
        low = floor(v)
        for leaf in DEBIAN_LEAVES:
            out.append(stanza(leaf, v))
        out.append(stanza("nvidia-driver", v, ["nvidia-driver-libs (= %s)" % v, "nvidia-driver-bin (= %s)" % v,
                                               "libcuda1 (= %s)" % v, "nvidia-smi (= %s)" % v,
                                               "nvidia-persistenced (>= %s)" % low]))
        for dkms in ("nvidia-kernel-dkms", "nvidia-kernel-open-dkms"):
            out.append(stanza(dkms, v, ["nvidia-kernel-support (= %s)" % v, "firmware-nvidia-gsp (= %s)" % v]))
        out.append(stanza("nvidia-open", v, ["nvidia-kernel-open-dkms (>= %s)" % low, "nvidia-driver (>= %s)" % low]))
        deps = ["nvidia-driver (>= %s)" % low, "nvidia-driver-cuda (>= %s)" % low, "nvidia-kernel-dkms (>= %s)" % low,
                "nvidia-settings (>= %s)" % low, "nvidia-xconfig (>= %s)" % low]
        out.append(stanza("cuda-drivers", v, deps))
        if branch == "580":  # the last branch with branch-named metapackages; no upper bound
            floor580 = ["nvidia-driver (>= 580.65.06)", "nvidia-driver-cuda (>= 580.65.06)",
                        "nvidia-kernel-dkms (>= 580.65.06)", "nvidia-settings (>= 580.65.06)",
                        "nvidia-xconfig (>= 580.65.06)"]
            out.append(stanza("cuda-drivers-580", v, floor580))
            out.append(stanza("nvidia-open-580", v, ["nvidia-kernel-open-dkms (>= 580.65.06)",
                                                     "nvidia-driver (>= 580.65.06)"]))
        out.append(stanza("nvidia-driver-pinning-%s" % branch, "%s-1" % branch))
    return out


def ubuntu_cuda_repo():
    out = []
    for branch, v in UBUNTU_RELEASES.items():
        low = floor(v)
        sfx = "-" + branch if branch == "580" else ""  # names lose the branch from 590 on
        libs = ["libnvidia-compute", "libnvidia-gl", "libnvidia-decode", "libnvidia-encode",
                "libnvidia-cfg1", "nvidia-utils", "nvidia-compute-utils", "nvidia-kernel-common"]
        for lib in libs:
            out.append(stanza(lib + sfx, v))
        for flavour in ("", "-open"):
            dkms = "nvidia-dkms" + sfx + flavour
            out.append(stanza("nvidia-kernel-source" + sfx + flavour, v))
            out.append(stanza(dkms, v, ["nvidia-kernel-source%s%s (= %s)" % (sfx, flavour, v),
                                        "nvidia-kernel-common%s (= %s)" % (sfx, v)]))
            out.append(stanza("nvidia-driver" + sfx + flavour, v,
                              ["%s (= %s)" % (dkms, v)] + ["%s%s (= %s)" % (lib, sfx, v) for lib in libs]))
        out.append(stanza("nvidia-open", v, ["nvidia-driver%s-open (>= %s)" % (sfx, low)]))
        out.append(stanza("cuda-drivers", v, ["nvidia-driver%s (>= %s)" % (sfx, low)]))
        if sfx:
            out.append(stanza("nvidia-open" + sfx, v, ["nvidia-driver%s-open (>= %s)" % (sfx, low)]))
            out.append(stanza("cuda-drivers" + sfx, v, ["nvidia-driver%s (>= %s)" % (sfx, low)]))
        out.append(stanza("nvidia-driver-pinning-%s" % branch, "%s-1" % branch))
    return out


def debian_archive():
    # bookworm's 535 and a later 550 in the same sources (as a backport would add it)
    out = []
    for v in ("535.261.03-1", "550.163.01-4"):
        for leaf in ["nvidia-driver-libs", "nvidia-driver-bin", "libcuda1", "nvidia-smi", "nvidia-kernel-support",
                     "nvidia-open-kernel-support", "firmware-nvidia-gsp", "libnvidia-ml1", "nvidia-persistenced",
                     "nvidia-alternative"]:
            out.append(stanza(leaf, v))
        out.append(stanza("nvidia-driver", v, ["nvidia-driver-libs (= %s)" % v, "nvidia-driver-bin (= %s)" % v,
                                               "nvidia-kernel-support (= %s)" % v, "nvidia-alternative (= %s)" % v]))
        out.append(stanza("nvidia-open-kernel-dkms", v, ["nvidia-open-kernel-support (= %s)" % v]))
    # versioned on its own in Debian (trixie: 570.x): must stay installable whatever the branch
    out.append(stanza("nvidia-modprobe", "570.133.07-1"))
    return out


class Apt(object):
    """apt-get/apt-cache on a private root: a flat file: repository and nothing else."""

    def __init__(self, tmp_path, stanzas, preferences=None):
        self.root = tmp_path / "root"
        repo = tmp_path / "repo"
        for sub in ("etc/apt/preferences.d", "etc/apt/apt.conf.d", "etc/apt/trusted.gpg.d", "var/lib/dpkg",
                    "var/lib/apt/lists/partial", "var/cache/apt/archives/partial"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        repo.mkdir()
        (self.root / "var/lib/dpkg/status").write_text("")
        packages = "\n".join(stanzas).encode()
        (repo / "Packages").write_bytes(packages)
        (repo / "Release").write_text("Origin: stand-in\nLabel: stand-in\nDate: Thu, 01 Jan 2026 00:00:00 UTC\n"
                                      "SHA256:\n %s %d Packages\n" % (hashlib.sha256(packages).hexdigest(), len(packages)))
        (self.root / "etc/apt/sources.list").write_text("deb [trusted=yes] file:%s ./\n" % repo)
        if preferences is not None:
            (self.root / "etc/apt/preferences.d/nvidia-driver-branch").write_text(preferences)
        self.opts = ["-o", "Dir=%s" % self.root, "-o", "Dir::State::status=%s/var/lib/dpkg/status" % self.root,
                     "-o", "Dir::Bin::Methods=/usr/lib/apt/methods", "-o", "APT::Architecture=amd64",
                     "-o", "Debug::NoLocking=1", "-q"]
        self.run("apt-get", "update")

    def run(self, tool, *args, check=True):
        r = subprocess.run([tool] + self.opts + list(args), capture_output=True, text=True, timeout=120)
        if check and r.returncode != 0:
            raise AssertionError("%s %s failed:\n%s%s" % (tool, " ".join(args), r.stdout, r.stderr))
        return r

    def install(self, *packages):
        out = self.run("apt-get", "-s", "install", "--no-install-recommends", *packages).stdout
        return dict(re.findall(r"^Inst (\S+) \((\S+) ", out, re.M))

    def candidate(self, package):
        out = self.run("apt-cache", "policy", package).stdout
        return re.search(r"Candidate: (\S+)", out).group(1)


needs_apt = pytest.mark.skipif(not shutil.which("apt-get"), reason="apt-get is not installed")


def preferences(platform, **extra):
    return RoleRender("nvidia_driver", platform, **extra).template("nvidia-driver-branch.pref.j2")


@needs_apt
@pytest.mark.parametrize("platform", PLATFORMS)
@pytest.mark.parametrize("branch", ["580", "590"])
@pytest.mark.parametrize("modules", ["open", "proprietary"])
def test_cuda_repo_pin_holds_the_branch(tmp_path, platform, branch, modules):
    debian = platform.startswith("debian")
    repo = debian_cuda_repo() if debian else ubuntu_cuda_repo()
    extra = dict(nvidia_driver_source="cuda_repo", nvidia_driver_branch=branch, nvidia_driver_kernel_modules=modules)
    r = RoleRender("nvidia_driver", platform, **extra)
    apt = Apt(tmp_path, repo, preferences(platform, **extra))
    # the role's preflight: the probe package's candidate is on the branch
    assert apt.candidate(r.var("__nvidia_driver_probe_package")).startswith(branch + ".")
    # what the role installs: the pinning package, then the metapackage; all on the branch
    installed = apt.install(r.var("nvidia_driver_cuda_repo_pinning_package"), *r.var("nvidia_driver_cuda_repo_packages"))
    driver = {name: v for name, v in installed.items() if not name.startswith("nvidia-driver-pinning")}
    assert driver and all(v.startswith(branch + ".") for v in driver.values()), driver
    # the unbounded branch metapackage of 580 stays on 580 too (it pulls 595 unpinned, below)
    if branch == "580" and debian:
        held = apt.install("cuda-drivers-580")
        assert held and all(v.startswith("580.") for v in held.values()), held
    # every held package has no candidate outside the branch
    for name in ("nvidia-driver", "libcuda1") if debian else ("nvidia-open", "cuda-drivers"):
        assert apt.candidate(name).startswith(branch + "."), name


@needs_apt
@pytest.mark.parametrize("platform", PLATFORMS)
def test_without_the_pin_the_newest_branch_wins(tmp_path, platform):
    """The control: the same repository without the preference drifts to 595."""
    debian = platform.startswith("debian")
    apt = Apt(tmp_path, debian_cuda_repo() if debian else ubuntu_cuda_repo())
    installed = apt.install("cuda-drivers-580" if debian else "nvidia-open")
    assert any(v.startswith("595.") for v in installed.values()), installed


@needs_apt
@pytest.mark.parametrize("platform,branch", [("debian12", "535"), ("debian13", "550")])
def test_debian_distro_pin_holds_the_branch(tmp_path, platform, branch):
    extra = dict(nvidia_driver_source="distro", nvidia_driver_branch=branch)
    apt = Apt(tmp_path, debian_archive(), preferences(platform, **extra))
    installed = apt.install("nvidia-driver", "nvidia-open-kernel-dkms", "nvidia-modprobe")
    assert installed.pop("nvidia-modprobe") == "570.133.07-1"  # not a driver package: never held
    assert installed and all(v.startswith(branch + ".") for v in installed.values()), installed


@needs_apt
def test_branch_without_packages_installs_nothing_else(tmp_path):
    """A branch the sources do not offer leaves no candidate (the role then fails, naming
    nvidia_driver_branch) instead of installing another branch."""
    extra = dict(nvidia_driver_source="cuda_repo", nvidia_driver_branch="570")
    apt = Apt(tmp_path, debian_cuda_repo(), preferences("debian13", **extra))
    assert apt.candidate("nvidia-open") == "(none)"
    assert apt.run("apt-get", "-s", "install", "nvidia-open", check=False).returncode != 0
