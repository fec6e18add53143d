"""Python and plugin environments for the plugin daemon stand-in.

* ``find_python("3.12")``: the interpreter a plugin's ``meta.runner.version`` asks for -- pyenv's
  versions first, then ``uv python find``, then ``python3.12`` on PATH; each candidate is run to
  check it really is that version. ``PythonNotFound`` says what was tried.
* ``find_uv()``: ``--uv``, ``UV_PATH``, ``uv`` on PATH, then the uv beside this interpreter.
* ``build_env(plugin_dir, ...)``: the plugin's virtualenv, built from ITS OWN lock the way the real
  daemon builds it (``uv sync --no-dev --frozen`` when there is a ``pyproject.toml``; else
  ``uv pip install -r requirements.txt``): here ``uv export --frozen --no-dev --no-hashes
  --no-emit-project`` then ``uv pip install`` into a venv under ``<cache>/venvs/<key>``, the key a
  hash of the lock (or requirements), the pyproject and the interpreter's version -- so a second
  install of the same plugin, by any stand-in on the machine, costs nothing. A file lock keeps two
  builders apart; a venv is used only once its completion marker exists.
"""

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time

MARKER = ".plugin-daemon-standin-complete"
EXPORT_ARGS = ("export", "--frozen", "--no-dev", "--no-hashes", "--no-emit-project", "--no-header", "--no-annotate",
               "--format", "requirements.txt")


class PythonNotFound(RuntimeError):
    pass


class EnvBuildError(RuntimeError):
    pass


def _version_key(name):
    return [int(x) if x.isdigit() else -1 for x in re.split(r"[.]", name)]


def _interpreter_version(path, timeout=30):
    try:
        res = subprocess.run([path, "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"],
                             capture_output=True, timeout=timeout, text=True)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return res.stdout.strip() if res.returncode == 0 else None


def _pyenv_root():
    exe = shutil.which("pyenv")
    if exe:
        try:
            res = subprocess.run([exe, "root"], capture_output=True, text=True, timeout=30)
            if res.returncode == 0 and res.stdout.strip():
                return res.stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            pass
    return os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")


def find_uv(uv=None):
    for candidate in (uv, os.environ.get("UV_PATH"), shutil.which("uv"),
                      os.path.join(os.path.dirname(sys.executable), "uv")):
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def find_python(version="3.12", explicit=None, uv=None):
    """Path of a working python<version>; PythonNotFound listing what was tried."""
    tried = []

    def ok(path, how):
        got = _interpreter_version(path)
        if got and (got == version or got.startswith(version + ".")):
            return path
        tried.append("%s %s (%s)" % (how, path, "runs %s" % got if got else "does not run"))
        return None

    if explicit:
        if ok(explicit, "--python"):
            return explicit
        raise PythonNotFound("Python %s not found: %s" % (version, "; ".join(tried)))
    root = _pyenv_root()
    versions = os.path.join(root, "versions")
    found = []
    if os.path.isdir(versions):
        for name in os.listdir(versions):
            if name == version or name.startswith(version + "."):
                found.append(name)
    for name in sorted(found, key=_version_key, reverse=True):
        path = os.path.join(versions, name, "bin", "python" + version)
        if os.path.isfile(path) and ok(path, "pyenv"):
            return path
    if not found:
        tried.append("pyenv: no %s* under %s" % (version, versions))
    uv_bin = find_uv(uv)
    if uv_bin:
        try:
            res = subprocess.run([uv_bin, "python", "find", version], capture_output=True, text=True, timeout=60,
                                 env=dict(os.environ, UV_PYTHON_DOWNLOADS="never"))
            path = res.stdout.strip()
            if res.returncode == 0 and path and ok(path, "uv python find"):
                return path
            if res.returncode != 0:
                tried.append("uv python find %s: %s" % (version, (res.stderr.strip().splitlines() or ["failed"])[0]))
        except (OSError, subprocess.TimeoutExpired) as exc:
            tried.append("uv python find %s: %s" % (version, exc))
    else:
        tried.append("uv: not found")
    path = shutil.which("python" + version)
    if path and ok(path, "PATH"):
        return path
    if not path:
        tried.append("python%s: not on PATH" % version)
    raise PythonNotFound("Python %s not found (tried: %s)" % (version, "; ".join(tried)))


def _sha(*chunks):
    h = hashlib.sha256()
    for c in chunks:
        h.update(c if isinstance(c, bytes) else c.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()


def _read(path):
    with open(path, "rb") as fh:
        return fh.read()


def _clean_env():
    env = dict(os.environ)
    for key in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "UV_PROJECT_ENVIRONMENT"):
        env.pop(key, None)
    env["UV_PYTHON_DOWNLOADS"] = "never"
    return env


def dependency_spec(plugin_dir):
    """('uv.lock' | 'requirements.txt', key material) of a plugin directory; EnvBuildError when neither."""
    pyproject = os.path.join(plugin_dir, "pyproject.toml")
    lock = os.path.join(plugin_dir, "uv.lock")
    reqs = os.path.join(plugin_dir, "requirements.txt")
    if os.path.isfile(pyproject) and os.path.isfile(lock):
        return "uv.lock", _sha("uv.lock", _read(lock), _read(pyproject))
    if os.path.isfile(reqs):
        return "requirements.txt", _sha("requirements.txt", _read(reqs))
    if os.path.isfile(pyproject):
        raise EnvBuildError("%s has a pyproject.toml but no uv.lock: the plugin daemon stand-in builds only from "
                            "a lock (uv.lock) or a requirements.txt" % plugin_dir)
    raise EnvBuildError("neither pyproject.toml nor requirements.txt found in plugin directory")


def _run(argv, cwd, env, timeout, children):
    """subprocess.run in its own process group, registered in ``children`` (a set) while it runs."""
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    if children is not None:
        children.add(proc)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.communicate()
        raise
    finally:
        if children is not None:
            children.discard(proc)
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def build_env(plugin_dir, python, uv, cache_dir, log=None, timeout=900, children=None):
    """Path of the venv's python for the plugin unpacked in ``plugin_dir`` (built when absent).

    ``children``: a set the running uv processes are added to (so a stopping daemon can end them)."""
    log = log or (lambda msg: None)
    uv_bin = find_uv(uv)
    if uv_bin is None:
        raise EnvBuildError("uv not found (give --uv or UV_PATH)")
    kind, material = dependency_spec(plugin_dir)
    py_version = _interpreter_version(python)
    if not py_version:
        raise EnvBuildError("python %s does not run" % python)
    key = _sha(material, py_version)[:24]
    venvs = os.path.join(cache_dir, "venvs")
    os.makedirs(venvs, exist_ok=True)
    venv = os.path.join(venvs, key)
    venv_python = os.path.join(venv, "bin", "python")
    with open(os.path.join(venvs, key + ".lock"), "w") as lock_fh:
        fcntl.flock(lock_fh, fcntl.LOCK_EX)
        if os.path.isfile(os.path.join(venv, MARKER)):
            log("python environment %s is cached (%s)" % (venv, kind))
            return venv_python
        start = time.time()
        shutil.rmtree(venv, ignore_errors=True)
        env = _clean_env()
        steps = []
        if kind == "uv.lock":
            res = _run([uv_bin] + list(EXPORT_ARGS), plugin_dir, env, 300, children)
            if res.returncode != 0:
                raise EnvBuildError("uv export failed: %s" % res.stderr.decode("utf-8", "replace").strip())
            requirements = os.path.join(venvs, key + ".requirements.txt")
            with open(requirements, "wb") as fh:
                fh.write(res.stdout)
        else:
            requirements = os.path.join(plugin_dir, "requirements.txt")
        steps.append([uv_bin, "venv", "--quiet", "--python", python, venv])
        steps.append([uv_bin, "pip", "install", "--quiet", "--python", venv_python, "-r", requirements])
        for argv in steps:
            log("running %s" % " ".join(argv))
            try:
                res = _run(argv, plugin_dir, env, timeout, children)
            except subprocess.TimeoutExpired:
                raise EnvBuildError("%s timed out after %ss" % (" ".join(argv[:3]), timeout))
            if res.returncode != 0:
                raise EnvBuildError("failed to install dependencies: %s" % (
                    res.stderr.decode("utf-8", "replace").strip()[-2000:] or "exit %d" % res.returncode))
        with open(os.path.join(venv, MARKER), "w") as fh:
            json.dump({"kind": kind, "python": python, "python_version": py_version,
                       "seconds": round(time.time() - start, 2), "built_at": time.time()}, fh)
        log("python environment %s built from %s in %.1fs" % (venv, kind, time.time() - start))
        return venv_python
