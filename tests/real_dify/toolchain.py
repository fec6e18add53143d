"""Finding the tools the real-Dify harness needs, with a clear message for each one missing."""

import glob
import os
import shutil
import subprocess
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


class MissingTool(RuntimeError):
    pass


def _version_of(python):
    try:
        out = subprocess.run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                             capture_output=True, text=True, timeout=30, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out


def find_python(minor="3.12"):
    """A Python of ``minor`` (Dify's api requires ~=3.12.0): pyenv, then uv, then PATH."""
    candidates = []
    roots = [os.environ.get("PYENV_ROOT"), os.path.expanduser("~/.pyenv")]
    pyenv = shutil.which("pyenv")
    if pyenv:
        try:
            roots.insert(0, subprocess.run([pyenv, "root"], capture_output=True, text=True, timeout=30).stdout.strip())
        except (OSError, subprocess.SubprocessError):
            pass
    for root in filter(None, roots):
        candidates += sorted(glob.glob(os.path.join(root, "versions", minor + ".*", "bin", "python" + minor)),
                             reverse=True)
    uv = find_uv(required=False)
    if uv:
        try:
            found = subprocess.run([uv, "python", "find", "--no-python-downloads", minor], capture_output=True,
                                   text=True, timeout=60).stdout.strip()
            if found:
                candidates.append(found)
        except (OSError, subprocess.SubprocessError):
            pass
    candidates += [p for p in (shutil.which("python" + minor),) if p]
    for cand in candidates:
        if os.path.isfile(cand) and _version_of(cand) == minor:
            return cand
    raise MissingTool(
        "Python %s is needed to run Dify's api (its pyproject says requires-python ~=%s.0) and none was "
        "found: not in pyenv (%s), not by `uv python find %s`, not as python%s on PATH. Install it, e.g. "
        "`pyenv install %s` or Debian/Ubuntu's python%s package." % (
            minor, minor, ", ".join(filter(None, roots)) or "no pyenv", minor, minor, minor, minor))


def find_uv(required=True):
    """uv from the project venv (requirements.txt pins it), else PATH."""
    cands = [os.path.join(os.path.dirname(sys.executable), "uv"), os.path.join(ROOT, ".venv", "bin", "uv"),
             shutil.which("uv")]
    for cand in cands:
        if cand and os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    if required:
        raise MissingTool("uv is needed to install Dify's api from its uv.lock: run `make setup` "
                          "(requirements.txt pins uv) or put uv on PATH")
    return None


DEBIAN_PACKAGES = {
    # tool -> Debian package that carries it
    "/usr/lib/postgresql/15/bin/postgres": "postgresql-15",
    "redis-server": "redis-server",
}


def require_system_tools():
    """PostgreSQL 15 (Dify's database) and Redis from Debian; scripts/ensure-test-tools.sh installs them."""
    missing = []
    for tool, package in DEBIAN_PACKAGES.items():
        found = os.path.isfile(tool) if tool.startswith("/") else shutil.which(tool)
        if not found:
            missing.append(package)
    if missing:
        raise MissingTool("the real-Dify harness needs %s: apt-get install -y %s (scripts/ensure-test-tools.sh "
                          "does it)" % (", ".join(missing), " ".join(missing)))
    try:
        import pwd

        pwd.getpwnam("postgres")
    except KeyError:
        raise MissingTool("user 'postgres' is missing (it comes with Debian's postgresql-15 package)")
