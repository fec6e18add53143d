"""The real-Dify harness's own logic (tests/real_dify): upstream sources and their verification, the one
PyPI substitution, finding Python 3.12. No Dify is started here."""

import hashlib
import io
import os
import tarfile

import pytest

from real_dify import harness, toolchain, upstream


def make_archive(path, top, files):
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo("%s/%s" % (top, name))
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def spec_for(files, anchors, keep, sha="0" * 64):
    return {"file": "x.tar.gz", "sha256": sha, "url": "https://example.invalid/x.tar.gz",
            "anchors": anchors, "keep": keep}


def sha(data):
    return hashlib.sha256(data).hexdigest()


FILES = {"api/uv.lock": b"lock", "api/app.py": b"print(1)", "docker/docker-compose.yaml": b"services: {}",
         "web/huge.js": b"x" * 100, "LICENSE": b"license"}


def test_the_shared_archive_is_checked_by_its_sha256(tmp_path, monkeypatch):
    shared = tmp_path / "shared"
    shared.mkdir()
    archive = make_archive(str(shared / "x.tar.gz"), "dify-1.15.0", FILES)
    monkeypatch.setattr(upstream, "SHARED_UPSTREAM", str(shared))
    spec = spec_for(FILES, {"api/uv.lock": sha(b"lock")}, ("api", "docker", "LICENSE"),
                    sha=upstream.sha256_file(archive))
    dest = str(tmp_path / "src" / "dify")
    assert upstream.fetch(spec, dest, str(tmp_path / "dl")) == dest
    assert sorted(os.listdir(dest)) == [".real-dify-source", "LICENSE", "api", "docker"]  # web/ left out
    with pytest.raises(upstream.UpstreamError, match="has sha256"):
        upstream.fetch(dict(spec, sha256="f" * 64), str(tmp_path / "other"), str(tmp_path / "dl"))


def test_a_download_is_checked_by_content_anchors(tmp_path, monkeypatch):
    monkeypatch.setattr(upstream, "SHARED_UPSTREAM", str(tmp_path / "absent"))
    good = make_archive(str(tmp_path / "good.tar.gz"), "dify-3aa26fb", FILES)
    bad = make_archive(str(tmp_path / "bad.tar.gz"), "dify-3aa26fb", dict(FILES, **{"api/uv.lock": b"tampered"}))
    anchors = {"api/uv.lock": sha(b"lock"), "docker/docker-compose.yaml": sha(b"services: {}")}

    def download_from(src):
        def fake(url, dest):
            with open(src, "rb") as fh, open(dest, "wb") as out:
                out.write(fh.read())
        return fake

    monkeypatch.setattr(upstream, "_download", download_from(good))
    spec = spec_for(FILES, anchors, ("api", "docker"))
    dest = upstream.fetch(spec, str(tmp_path / "src" / "a"), str(tmp_path / "dl-a"))
    assert open(os.path.join(dest, "api", "uv.lock"), "rb").read() == b"lock"
    monkeypatch.setattr(upstream, "_download", download_from(bad))
    with pytest.raises(upstream.UpstreamError, match="api/uv.lock has sha256"):
        upstream.fetch(spec, str(tmp_path / "src" / "b"), str(tmp_path / "dl-b"))
    assert not os.path.exists(str(tmp_path / "src" / "b"))


def test_no_source_and_no_download_names_both(tmp_path, monkeypatch):
    monkeypatch.setattr(upstream, "SHARED_UPSTREAM", str(tmp_path / "absent"))

    def offline(url, dest):
        raise OSError("network unreachable")

    monkeypatch.setattr(upstream, "_download", offline)
    with pytest.raises(upstream.UpstreamError, match="is not in .* and could not be downloaded from https://"):
        upstream.fetch(spec_for(FILES, {}, ("api",)), str(tmp_path / "d"), str(tmp_path / "dl"))


def test_the_harness_runs_the_version_the_dify_role_deploys():
    assert harness.role_default("dify", "dify_version") in upstream.DIFY_SOURCES


def test_exactly_one_pypi_substitution(monkeypatch):
    h = harness.RealDify.__new__(harness.RealDify)
    h.uv, h.api_dir = "uv", "/nonexistent"
    lock = ("-e ./providers/vdb/vdb-pgvector\nflask==3.1.2\n"
            "flask-restx @ git+https://github.com/asukaminato0721/flask-restx@27758e2\n")

    class Out(object):
        stdout = lock

    monkeypatch.setattr(h, "_run", lambda *a, **k: Out(), raising=False)
    reqs = h.api_requirements()
    assert "flask-restx==1.3.2" in reqs.splitlines() and "git+" not in reqs
    assert "flask==3.1.2" in reqs.splitlines() and "-e ./providers/vdb/vdb-pgvector" in reqs.splitlines()
    Out.stdout = "flask==3.1.2\n"  # upstream dropped the fork: the substitution must be looked at again
    with pytest.raises(harness.HarnessError, match="expected exactly one git-pinned flask-restx"):
        h.api_requirements()


def test_missing_python_312_is_named_with_the_places_searched(monkeypatch, tmp_path):
    monkeypatch.setenv("PYENV_ROOT", str(tmp_path / "pyenv"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    monkeypatch.setattr(toolchain, "find_uv", lambda required=True: None)
    with pytest.raises(toolchain.MissingTool, match=r"(?s)Python 3\.12 is needed .* pyenv .*`uv python find 3\.12"):
        toolchain.find_python("3.12")
