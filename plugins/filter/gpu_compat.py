"""NVIDIA driver <-> container image compatibility, and the image references the roles use.

Facts (docs/gpu.md, "Driver and image compatibility", says where each was checked):

- A driver branch runs CUDA applications up to the CUDA release it shipped with (NVIDIA's CUDA
  toolkit release notes, "CUDA Toolkit and Corresponding Driver Versions"; NVIDIA's CUDA local
  installers are named cuda_<toolkit>_<driver>_linux.run after exactly that pair). Images built
  on nvidia/cuda base images declare NVIDIA_REQUIRE_CUDA=cuda>=X.Y, and the container toolkit
  refuses to start them on an older driver ("requirement error: unsatisfied condition:
  cuda>=12.9"); CUDA minor-version compatibility is not taken into account here, because that
  refusal happens before any application code runs.
- A branch newer than every row supports at least what the newest row supports; a branch
  between two rows at least what the lower row supports (conservative). Older than the first
  row: unknown, refused.

Filters:
- nvidia_branch_max_cuda(branch) -> "13.0"
- nvidia_branch_for_cuda(cuda) -> 580 (oldest listed branch that runs it)
- nvidia_branch_of(version) -> 580 for "580.95.05" (also the /proc/driver/nvidia/version text)
- model_servers_image_refs(images, digests=True) -> the same shape, every entry "image@digest"
- model_servers_gpu_compat(servers, images, branch, branch_var, tei_arch, loaded) -> report
- model_servers_needed_images(servers, refs, tei_arch_of) -> the references compose needs
- image_archives(items, var) -> [{path, remote}] (docker save archives, like dify_image_archives)
"""

import re

from ansible.errors import AnsibleFilterError

# Driver branch -> newest CUDA version it runs (toolkit release that shipped with the branch).
NVIDIA_BRANCH_MAX_CUDA = {
    535: (12, 2),   # cuda_12.2.0_535.54.03
    550: (12, 4),   # cuda_12.4.0_550.54.14
    555: (12, 5),   # CUDA 12.5 needs >= 555.42.02
    560: (12, 6),   # cuda_12.6.0_560.28.03
    570: (12, 8),   # CUDA 12.8 needs >= 570.26 (local repo 12.8.0-570.86.10)
    575: (12, 9),   # local repo 12.9.0-575.51.03
    580: (13, 0),   # local repo 13.0.0-580.65.06
    590: (13, 1),   # cuda_13.1.0_590.44.01
}

# Backend -> image key in model_servers_images (llama.cpp: CUDA build for servers with GPUs).
BACKEND_IMAGE = {"vllm": "vllm", "ollama": "ollama", "infinity": "infinity", "tei": "tei"}
DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
CUDA_RE = re.compile(r"^([0-9]+)\.([0-9]+)$")


def _cuda(value, what):
    if value is None or value == "":
        return None
    match = CUDA_RE.match(str(value).strip())
    if not match:
        raise AnsibleFilterError("%s: cuda must be a CUDA version such as \"12.8\" (or empty for CPU images), got %r"
                                 % (what, value))
    return int(match.group(1)), int(match.group(2))


def _fmt(cuda):
    return "%d.%d" % cuda


def _branch(value, what="branch"):
    text = str(value).strip()
    if not re.match(r"^[0-9]+$", text):
        raise AnsibleFilterError("%s must be a driver branch such as \"580\", got %r" % (what, value))
    return int(text)


def nvidia_branch_max_cuda(branch):
    """Newest CUDA version a driver branch runs, as "X.Y"."""
    number = _branch(branch)
    known = sorted(b for b in NVIDIA_BRANCH_MAX_CUDA if b <= number)
    if not known:
        raise AnsibleFilterError("driver branch %d is older than every branch the compatibility table knows (%s)"
                                 % (number, ", ".join(str(b) for b in sorted(NVIDIA_BRANCH_MAX_CUDA))))
    return _fmt(NVIDIA_BRANCH_MAX_CUDA[known[-1]])


def nvidia_branch_for_cuda(cuda):
    """Oldest listed driver branch that runs images built for this CUDA version."""
    need = _cuda(cuda, "nvidia_branch_for_cuda")
    for branch in sorted(NVIDIA_BRANCH_MAX_CUDA):
        if NVIDIA_BRANCH_MAX_CUDA[branch] >= need:
            return branch
    raise AnsibleFilterError("no driver branch in the compatibility table runs CUDA %s" % _fmt(need))


def nvidia_branch_of(version):
    """580 for "580.95.05", or for the text of /proc/driver/nvidia/version; "" if none."""
    match = re.search(r"(?<![0-9.])([0-9]{3})\.[0-9]+(?:\.[0-9]+)?(?![0-9.])", str(version or ""))
    return int(match.group(1)) if match else ""


def _entry(value, name):
    """Normalise one model_servers_images entry to {image, digest, cuda, declared}."""
    if isinstance(value, str):
        image, _sep, digest = value.partition("@")
        entry = {"image": image, "digest": digest, "cuda": None, "declared": False}
    elif isinstance(value, dict) and isinstance(value.get("image"), str):
        unknown = set(value) - {"image", "digest", "cuda"}
        if unknown:
            raise AnsibleFilterError("model_servers_images.%s: unknown keys %s (image, digest, cuda)" % (name, sorted(unknown)))
        entry = {"image": value["image"], "digest": value.get("digest") or "",
                 "cuda": _cuda(value.get("cuda"), "model_servers_images.%s" % name), "declared": "cuda" in value}
    else:
        raise AnsibleFilterError("model_servers_images.%s must be an image reference or {image, digest, cuda}, got %r"
                                 % (name, value))
    if not entry["image"] or "@" in entry["image"] or entry["image"].endswith(":latest"):
        raise AnsibleFilterError("model_servers_images.%s: %r is not a pinned image tag" % (name, entry["image"]))
    if entry["digest"] and not DIGEST_RE.match(entry["digest"]):
        raise AnsibleFilterError("model_servers_images.%s: digest %r is not sha256:<64 hex digits>" % (name, entry["digest"]))
    return entry


def _ref(entry, digests):
    return entry["image"] + ("@" + entry["digest"] if digests and entry["digest"] else "")


def _flatten(images):
    if not isinstance(images, dict):
        raise AnsibleFilterError("model_servers_images must be a dict, got %r" % (images,))
    out = {}
    for key, value in images.items():
        if key == "tei":
            if not isinstance(value, dict):
                raise AnsibleFilterError("model_servers_images.tei must map GPU architectures to images")
            for arch, sub in value.items():
                out["tei." + arch] = _entry(sub, "tei." + arch)
        else:
            out[key] = _entry(value, key)
    return out


def model_servers_image_refs(images, digests=True):
    """model_servers_images with every entry as the reference compose uses: image@digest when
    a digest is recorded (and digests is true), else the tag."""
    flat = _flatten(images)
    refs = {"tei": {}}
    for key, entry in flat.items():
        if key.startswith("tei."):
            refs["tei"][key[4:]] = _ref(entry, digests)
        else:
            refs[key] = _ref(entry, digests)
    if not refs["tei"]:
        del refs["tei"]
    return refs


def _image_keys(server, tei_arch):
    backend = server.get("backend")
    if backend == "llamacpp":
        return ["llamacpp_cuda"]
    if backend == "tei":
        arch = server.get("tei_arch") or (tei_arch if tei_arch and tei_arch != "auto" else None)
        return ["tei." + arch] if arch else None   # None: every GPU architecture
    return [BACKEND_IMAGE[backend]] if backend in BACKEND_IMAGE else []


def model_servers_gpu_compat(servers, images, branch, branch_var="nvidia_driver_branch", tei_arch="auto", loaded=""):
    """Check every container server that uses GPUs against the driver branch.

    Returns {"problems": [messages], "unchecked": [messages], "checked": [summaries],
    "branch": int, "max_cuda": "X.Y"}. A problem names the image variable, the driver branch
    variable and both ways to fix it; "unchecked" lists images that declare no CUDA version.
    `loaded` is the running driver's version (or /proc/driver/nvidia/version); when it is
    older than `branch` the images must fit it too until the host reboots.
    """
    flat = _flatten(images)
    planned = _branch(branch, branch_var)
    max_cuda = _cuda(nvidia_branch_max_cuda(planned), "table")
    running = nvidia_branch_of(loaded)
    report = {"problems": [], "unchecked": [], "checked": [], "branch": planned, "max_cuda": _fmt(max_cuda)}
    for server in servers or []:
        if server.get("runtime") != "container" or not server.get("gpus"):
            continue
        keys = _image_keys(server, tei_arch)
        if keys is None:
            keys = sorted(k for k in flat if k.startswith("tei.") and k != "tei.cpu")
        for key in keys:
            if key not in flat:
                continue  # container.yml refuses an unknown TEI architecture itself
            entry = flat[key]
            var = "model_servers_images." + key
            if entry["cuda"] is None:
                if not entry["declared"]:
                    report["unchecked"].append(
                        "server %s: %s = %s declares no CUDA version (give it as {image, digest, cuda}); "
                        "not checked against driver branch %d" % (server.get("name"), var, entry["image"], planned))
                continue
            need = entry["cuda"]
            report["checked"].append("%s: %s needs CUDA %s" % (server.get("name"), entry["image"], _fmt(need)))
            if need > max_cuda:
                try:
                    fix_branch = "%d or newer" % nvidia_branch_for_cuda(_fmt(need))
                except AnsibleFilterError:
                    fix_branch = "newer than any the table knows"
                report["problems"].append(
                    "server %s (%s, GPUs %s) runs %s = %s, built for CUDA %s, but NVIDIA driver branch %d (%s) "
                    "supports CUDA up to %s. Fix: set %s to %s (e.g. \"580\"; on Debian with nvidia_driver_source: "
                    "cuda_repo), or set %s to an image built for CUDA %s or older, with its cuda: field."
                    % (server.get("name"), server.get("backend"), ",".join(str(g) for g in server.get("gpus")),
                       var, entry["image"], _fmt(need), planned, branch_var, _fmt(max_cuda), branch_var,
                       fix_branch, var, _fmt(max_cuda)))
            elif running and running < planned:
                running_max = _cuda(nvidia_branch_max_cuda(running), "table")
                if need > running_max:
                    report["problems"].append(
                        "server %s runs %s = %s, built for CUDA %s; driver branch %d (%s) supports it, but the "
                        "loaded driver is still %d (CUDA up to %s). Fix: reboot the host to load the installed "
                        "driver (or set nvidia_driver_reboot: true)."
                        % (server.get("name"), var, entry["image"], _fmt(need), planned, branch_var, running,
                           _fmt(running_max)))
    return report


def model_servers_needed_images(servers, refs, tei_arch_of=None):
    """The image references the container servers need (what compose pulls or builds FROM),
    sorted and unique. `refs` is model_servers_image_refs' result; `tei_arch_of` maps TEI
    server names to their resolved architecture (container.yml)."""
    needed = set()
    for server in servers or []:
        if server.get("runtime", "container") != "container":
            continue
        backend = server.get("backend")
        if backend == "llamacpp":
            needed.add(refs["llamacpp_cuda" if server.get("gpus") else "llamacpp_cpu"])
        elif backend == "tei":
            arch = (tei_arch_of or {}).get(server.get("name"))
            if arch not in refs.get("tei", {}):
                raise AnsibleFilterError("model_servers_needed_images: TEI server %s has no resolved image flavour (%r)"
                                         % (server.get("name"), arch))
            needed.add(refs["tei"][arch])
        elif backend in BACKEND_IMAGE:
            needed.add(refs[BACKEND_IMAGE[backend]])   # infinity: also the base of local builds
    return sorted(needed)


def image_archives(items, var="image archives"):
    """'a.tar' -> {'path': 'a.tar', 'remote': False}; {'path': 'b.tar', 'remote': True} is kept
    (remote = the path is on the managed host)."""
    if not isinstance(items, (list, tuple)):
        raise AnsibleFilterError("%s must be a list, got %r" % (var, items))
    out = []
    for item in items:
        if isinstance(item, str) and item:
            out.append({"path": item, "remote": False})
        elif isinstance(item, dict) and isinstance(item.get("path"), str) and item["path"] and set(item) <= {"path", "remote"}:
            out.append({"path": item["path"], "remote": bool(item.get("remote", False))})
        else:
            raise AnsibleFilterError("%s: each item is a path or {path, remote}, got %r" % (var, item))
    return out


class FilterModule(object):
    def filters(self):
        return {
            "nvidia_branch_max_cuda": nvidia_branch_max_cuda,
            "nvidia_branch_for_cuda": nvidia_branch_for_cuda,
            "nvidia_branch_of": nvidia_branch_of,
            "model_servers_image_refs": model_servers_image_refs,
            "model_servers_gpu_compat": model_servers_gpu_compat,
            "model_servers_needed_images": model_servers_needed_images,
            "image_archives": image_archives,
        }
