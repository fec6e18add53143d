"""Build a ``.difypkg`` from a plugin's source directory, the way ``dify plugin package`` lays it out.

Part of the plugin daemon stand-in's test kit (tests install plugins the way an offline host does:
a package file uploaded through Dify's API). What ``dify plugin package`` (the packager of
langgenius/dify-plugin-daemon 0.6.3) does, and this builder does too:

* every file under the directory, walked in lexical order, except what ``.difyignore`` (or, when
  there is none, ``.gitignore``) excludes -- gitignore patterns, matched the way go-git matches
  them; a ``!pattern`` never re-includes (the packager only acts on exclusions);
* a ``requirements.txt`` generated with ``uv export --frozen --format requirements.txt --no-group dev
  --no-emit-project --no-hashes --no-header --no-annotate`` when the plugin has ``pyproject.toml`` and
  ``uv.lock`` but no ``requirements.txt``;
* a zip of files only (no directory entries), sorted by path, deflated, at most 50 MiB uncompressed;
  no signature (an unsigned package: install it with signature verification off).

``--set-version`` rewrites the top-level ``version:`` of manifest.yaml inside the package (the
source directory is not touched): a test's way to have a second version of the same plugin.

CLI::

    python -m plugin_daemon_standin.difypkg SRC_DIR [-o OUT.difypkg] [--set-version X.Y.Z] [--uv UV]

prints the package path and its plugin unique identifier.
"""

import argparse
import fnmatch
import io
import os
import re
import subprocess
import sys
import zipfile

from .envs import find_uv
from .package import DEFAULT_MAX_PACKAGE_SIZE, Package

GENERATED_REQUIREMENTS = "requirements.txt"
UV_EXPORT_ARGS = ("export", "--frozen", "--format", "requirements.txt", "--no-group", "dev", "--no-emit-project",
                  "--no-hashes", "--no-header", "--no-annotate")
ZIP_DATE = (1980, 1, 1, 0, 0, 0)


class IgnorePattern(object):
    """One gitignore line, matched like go-git's plumbing/format/gitignore pattern."""

    def __init__(self, line):
        self.inclusion = line.startswith("!")
        if self.inclusion:
            line = line[1:]
        if not line.endswith("\\ "):
            line = line.rstrip(" ")
        self.dir_only = line.endswith("/")
        if self.dir_only:
            line = line[:-1]
        self.is_glob = "/" in line
        self.parts = line.split("/")

    @staticmethod
    def _match(pattern, name):
        return fnmatch.fnmatchcase(name, pattern)

    def _simple(self, path, is_dir):
        for i, name in enumerate(path):
            if not self._match(self.parts[0], name):
                continue
            if self.dir_only and not is_dir and i == len(path) - 1:
                return False
            return True
        return False

    def _glob(self, path, is_dir):
        matched = traverse = False
        path = list(path)
        for i, part in enumerate(self.parts):
            if part == "":
                traverse = False
                continue
            if part == "**":
                if i == len(self.parts) - 1:
                    break
                traverse = True
                continue
            if "**" in part or not path:
                return False
            if traverse:
                traverse = False
                while path:
                    name = path.pop(0)
                    if self._match(part, name):
                        matched = True
                        break
                    if not path:
                        matched = False
            else:
                if not self._match(part, path[0]):
                    return False
                matched = True
                path.pop(0)
        if matched and self.dir_only and not is_dir and not path:
            matched = False
        return matched

    def excludes(self, path, is_dir):
        """True when this pattern excludes ``path`` (a list of components)."""
        hit = self._glob(path, is_dir) if self.is_glob else self._simple(path, is_dir)
        return hit and not self.inclusion


def ignore_patterns(root):
    for name in (".difyignore", ".gitignore"):
        try:
            with open(os.path.join(root, name), encoding="utf-8") as fh:
                text = fh.read()
        except OSError:
            continue
        return [IgnorePattern(line.strip()) for line in text.split("\n")
                if line.strip() and not line.strip().startswith("#")]
    return []


def collect_files(root):
    """Relative paths (``/``-separated) of the files that go into the package, sorted."""
    patterns = ignore_patterns(root)
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        parts = [] if rel_dir == "." else rel_dir.split(os.sep)
        keep = []
        for d in sorted(dirnames):
            if not any(p.excludes(parts + [d], True) for p in patterns):
                keep.append(d)
        dirnames[:] = keep
        for f in sorted(filenames):
            if not any(p.excludes(parts + [f], False) for p in patterns):
                out.append("/".join(parts + [f]))
    return sorted(out)


def export_requirements(root, uv=None):
    uv_bin = find_uv(uv)
    if uv_bin is None:
        raise RuntimeError("uv is needed to export requirements.txt from %s/uv.lock (give --uv or UV_PATH)" % root)
    res = subprocess.run([uv_bin] + list(UV_EXPORT_ARGS), cwd=root, capture_output=True, timeout=300)
    if res.returncode != 0:
        raise RuntimeError("uv export failed: %s" % res.stderr.decode("utf-8", "replace").strip())
    return res.stdout


def set_manifest_version(text, version):
    new, count = re.subn(r"(?m)^version:[ \t]*\S.*$", "version: %s" % version, text, count=1)
    if count != 1:
        raise ValueError("manifest.yaml has no top-level version: line")
    return new


def build(src, out=None, set_version=None, uv=None, max_size=DEFAULT_MAX_PACKAGE_SIZE):
    """Package ``src``; returns (package bytes, plugin unique identifier). Writes ``out`` when given."""
    src = os.path.abspath(src)
    if not os.path.isfile(os.path.join(src, "manifest.yaml")):
        raise ValueError("%s has no manifest.yaml" % src)
    files = {}
    for rel in collect_files(src):
        with open(os.path.join(src, *rel.split("/")), "rb") as fh:
            files[rel] = fh.read()
    on_disk = lambda name: os.path.isfile(os.path.join(src, name))  # noqa: E731 - the packager stats the disk
    if not on_disk(GENERATED_REQUIREMENTS) and on_disk("pyproject.toml") and on_disk("uv.lock"):
        files[GENERATED_REQUIREMENTS] = export_requirements(src, uv)
    if set_version:
        files["manifest.yaml"] = set_manifest_version(files["manifest.yaml"].decode("utf-8"), set_version).encode()
    total = 0
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for rel in sorted(files):
            total += len(files[rel])
            if total > max_size:
                biggest = sorted(files, key=lambda k: -len(files[k]))[:5]
                raise ValueError("Plugin package size is too large. Please ensure the uncompressed size is less than "
                                 "%d bytes. Largest files: %s" % (max_size, ", ".join(biggest)))
            info = zipfile.ZipInfo(rel, date_time=ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, files[rel])
    data = buf.getvalue()
    uid = Package(data).unique_identifier  # validates manifest, provider and model yamls like the daemon
    if out:
        tmp = out + ".tmp"
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, out)
    return data, uid


def main(argv=None):
    p = argparse.ArgumentParser(prog="plugin_daemon_standin.difypkg",
                                description="Build a .difypkg from a Dify plugin source directory "
                                            "(plugin daemon stand-in test kit)")
    p.add_argument("src", help="plugin source directory (with manifest.yaml)")
    p.add_argument("-o", "--output", help="package file to write (default: <name>-<version>.difypkg here)")
    p.add_argument("--set-version", help="version to write into the packaged manifest.yaml")
    p.add_argument("--uv", help="uv binary (for requirements.txt from uv.lock)")
    args = p.parse_args(argv)
    data, uid = build(args.src, set_version=args.set_version, uv=args.uv)
    out = args.output
    if not out:
        name_version = uid.split("@")[0].split("/")[-1].replace(":", "-")
        out = name_version + ".difypkg"
    with open(out, "wb") as fh:
        fh.write(data)
    print(out)
    print(uid)
    return 0


if __name__ == "__main__":
    sys.exit(main())
