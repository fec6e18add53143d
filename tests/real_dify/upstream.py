"""Upstream sources the real-Dify harness runs: where they come from and how they are verified.

The harness runs Dify's own api and worker, and Dify's own provider plugins, from their
unmodified upstream source. On these machines the source sits beside the project in
``../shared/upstream/`` (checked by the sha256 of the file). Elsewhere the same revision is
downloaded from its public GitHub archive and checked by *content anchors*: sha256 of files
inside it, which do not depend on how the archive was packed (a GitHub archive holds the whole
repository, the shared file only the folders the tests need).
"""

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SHARED_UPSTREAM = os.environ.get("REAL_DIFY_UPSTREAM_DIR", os.path.join(ROOT, "..", "shared", "upstream"))

# Dify version -> its source. The harness runs the version the dify role deploys by default.
DIFY_SOURCES = {
    "1.15.0": {
        "file": "dify-1.15.0-api-docker.tar.gz",
        "sha256": "3d548abeb6f0186070ac9afa17cc46cdb19ff5a585841230601cfca001dbf571",
        "url": "https://github.com/langgenius/dify/archive/3aa26fb6374bbd47e5469f7d7cc25f3e0075a60c.tar.gz",
        "anchors": {
            "api/uv.lock": "05c852d29a95e1b22ebad9a188993313af7082d65770fa233a09e74e6f31e1c2",
            "api/pyproject.toml": "18abc348f1ddbba26bd6bf224ffeddb71f11c5a352bcf0eea4b6ecf721d139dc",
            "docker/docker-compose.yaml": "f769ad158427974daa38669ad6e00b39f06815a6d7518d65a26ad024510a8370",
        },
        # folders of the repository the harness needs (api/ has dify-agent/ as a path dependency)
        "keep": ("api", "dify-agent", "docker", "LICENSE"),
    },
}

PLUGINS_SOURCE = {
    "file": "dify-official-plugins-7af22831-models.tar.gz",
    "sha256": "1f288b483ef594fe3335e842a3ec63829d0d1929c3f2ae0cb141f5adc5fd1dcd",
    "url": "https://github.com/langgenius/dify-official-plugins/archive/7af22831a58ded846388b8de0c232b2b377a1055.tar.gz",
    # read from the shared archive (verified by its README's sha256)
    "anchors": {
        "models/openai_api_compatible/manifest.yaml": "eaa38d75e8bde1af1f2d55acdc3e857fc744fe5176a4c7007cc31f3c222231e9",
        "models/openai_api_compatible/uv.lock": "7a95e885aa512b35ae19407a00584ccd64520e398fcb17217f063c9dbdb659d4",
        "models/huggingface_tei/manifest.yaml": "4ab88148e7daee6de6fe3c87a37d615ac476ba7ac11e9984be438e1b8546b1d7",
        "models/huggingface_tei/uv.lock": "1b32ca25e0e1f8b55731a91feb18377dd0440189dbc4a096546fc3d0bdbcbbe2",
    },
    "keep": ("models/openai_api_compatible", "models/huggingface_tei", "LICENSE"),
}


class UpstreamError(RuntimeError):
    pass


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _download(url, dest):
    tmp = dest + ".part"
    with urllib.request.urlopen(url, timeout=120) as resp, open(tmp, "wb") as out:  # noqa: S310 - fixed https URL
        shutil.copyfileobj(resp, out)
    os.replace(tmp, dest)


def _top_dir(tar):
    names = tar.getnames()
    tops = {n.split("/", 1)[0] for n in names if n}
    if len(tops) != 1:
        raise UpstreamError("archive has %d top-level entries, expected one folder" % len(tops))
    return tops.pop()


def _check_anchors(tree, anchors):
    for rel, digest in anchors.items():
        path = os.path.join(tree, rel)
        if not os.path.isfile(path):
            raise UpstreamError("upstream source lacks %s" % rel)
        if digest and sha256_file(path) != digest:
            raise UpstreamError("upstream %s has sha256 %s, expected %s" % (rel, sha256_file(path), digest))


def fetch(spec, dest, cache):
    """Unpack ``spec`` into ``dest`` (a fixed path: uv keeps venvs of path members warm by path).

    Returns the path. Reuses an earlier unpack whose marker names the same archive digest.
    """
    marker = os.path.join(dest, ".real-dify-source")
    want = spec["sha256"]
    if os.path.isfile(marker) and open(marker).read().strip() == want:
        return dest
    archive = os.path.join(SHARED_UPSTREAM, spec["file"])
    if os.path.isfile(archive):
        got = sha256_file(archive)
        if got != want:
            raise UpstreamError("%s has sha256 %s, expected %s" % (archive, got, want))
    else:
        os.makedirs(cache, exist_ok=True)
        archive = os.path.join(cache, "download-" + os.path.basename(spec["url"]))
        if not os.path.isfile(archive):
            try:
                _download(spec["url"], archive)
            except OSError as err:
                raise UpstreamError(
                    "upstream source %s is not in %s and could not be downloaded from %s: %s"
                    % (spec["file"], SHARED_UPSTREAM, spec["url"], err))
    parent = os.path.dirname(dest)
    os.makedirs(parent, exist_ok=True)
    work = tempfile.mkdtemp(prefix=".unpack-", dir=parent)
    try:
        with tarfile.open(archive) as tar:
            top = _top_dir(tar)
            members = [m for m in tar.getmembers()
                       if m.name == top or any(m.name == "%s/%s" % (top, k) or m.name.startswith("%s/%s/" % (top, k))
                                               for k in spec["keep"])]
            tar.extractall(work, members=members, filter="data")
        tree = os.path.join(work, top)
        # a download is verified by the files inside it (the shared archive also by its own hash)
        _check_anchors(tree, spec["anchors"])
        if os.path.isdir(dest):
            shutil.rmtree(dest)
        os.replace(tree, dest)
        with open(marker, "w") as fh:
            fh.write(want + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return dest
