#!/usr/bin/env python3
"""Fetch one model for the model_servers role, resumably, with checksums.

  model_fetch.py fetch SPEC.json   download (run by Ansible as an async job)
  model_fetch.py status DEST       print progress as JSON: {"state", "bytes", "total", "message"}

SPEC.json: {"dest": dir, "marker": json-string written to DEST/.model-servers-source.json
on success, and either
  {"url": ..., "checksum": "sha256:<hex>", "filename": ...}        (stdlib only) or
  {"hf": repo, "revision": ..., "include": [...], "sha256": {file: hex}, "endpoint": ...}
(needs huggingface_hub; the token comes from the HF_TOKEN environment variable).
Interrupted downloads resume: URL downloads continue their .part file with an HTTP Range
request, Hugging Face downloads keep huggingface_hub's .incomplete files. Every Hugging Face
LFS file is checked against the sha256 the Hub publishes, a URL file against its checksum.
"""

import fnmatch
import hashlib
import json
import os
import sys
import time
import traceback
import urllib.request

STATUS = ".model-servers-fetch.json"
MARKER = ".model-servers-source.json"


def write_status(dest, **fields):
    fields.setdefault("time", int(time.time()))
    tmp = os.path.join(dest, STATUS + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(fields, fh)
    os.replace(tmp, os.path.join(dest, STATUS))


def read_status(dest):
    try:
        with open(os.path.join(dest, STATUS), encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return {"state": "unknown"}


def dir_bytes(path):
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:
                pass
    return total


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_url(spec, dest):
    name = spec.get("filename") or os.path.basename(spec["url"].split("?")[0])
    target = os.path.join(dest, name)
    want = spec["checksum"].split(":", 1)[1].lower()
    if os.path.exists(target) and sha256_of(target) == want:
        return
    part = target + ".part"
    have = os.path.getsize(part) if os.path.exists(part) else 0
    request = urllib.request.Request(spec["url"], headers={"Range": "bytes=%d-" % have} if have else {})
    with urllib.request.urlopen(request, timeout=60) as resp:  # noqa: S310 - operator-given URL
        if have and resp.status != 206:
            have = 0  # server ignored the range: start over
        length = resp.headers.get("Content-Length")
        total = have + int(length) if length else None
        with open(part, "ab" if have else "wb") as out:
            done, last = have, 0.0
            for block in iter(lambda: resp.read(1 << 20), b""):
                out.write(block)
                done += len(block)
                if time.time() - last > 2:
                    write_status(dest, state="running", bytes=done, total=total, message="downloading " + name)
                    last = time.time()
    got = sha256_of(part)
    if got != want:
        os.unlink(part)
        raise RuntimeError("checksum mismatch for %s: got sha256:%s, want sha256:%s" % (name, got, want))
    os.replace(part, target)


def fetch_hf(spec, dest):
    from huggingface_hub import HfApi, snapshot_download  # noqa: PLC0415 - lives in the tools venv

    token = os.environ.get("HF_TOKEN") or None
    endpoint = spec.get("endpoint") or None
    include = spec.get("include") or None
    revision = spec.get("revision") or "main"
    api = HfApi(endpoint=endpoint, token=token)
    info = api.model_info(spec["hf"], revision=revision, files_metadata=True)
    files = [s for s in info.siblings
             if include is None or any(fnmatch.fnmatch(s.rfilename, pat) for pat in include)]
    total = sum((s.size or 0) for s in files)
    write_status(dest, state="running", bytes=dir_bytes(dest), total=total,
                 message="downloading %d files of %s@%s" % (len(files), spec["hf"], info.sha))
    snapshot_download(repo_id=spec["hf"], revision=info.sha, allow_patterns=include, local_dir=dest,
                      token=token, endpoint=endpoint)
    pinned = spec.get("sha256") or {}
    for s in files:
        path = os.path.join(dest, s.rfilename)
        want = pinned.get(s.rfilename) or (s.lfs.sha256 if s.lfs else None)
        if want and sha256_of(path) != want.lower():
            os.unlink(path)
            raise RuntimeError("checksum mismatch for %s (removed; re-run to download it again)" % s.rfilename)


def do_fetch(spec_path):
    with open(spec_path, encoding="utf-8") as fh:
        spec = json.load(fh)
    dest = spec["dest"]
    os.makedirs(dest, exist_ok=True)
    write_status(dest, state="running", bytes=dir_bytes(dest), total=None, message="starting")
    try:
        if "url" in spec:
            fetch_url(spec, dest)
        else:
            fetch_hf(spec, dest)
    except Exception as exc:  # noqa: BLE001 - reported to Ansible through the status file
        write_status(dest, state="failed", bytes=dir_bytes(dest), total=None, message=str(exc))
        traceback.print_exc()
        return 1
    with open(os.path.join(dest, MARKER), "w", encoding="utf-8") as fh:
        fh.write(spec["marker"])
    size = dir_bytes(dest)
    write_status(dest, state="done", bytes=size, total=size, message="complete")
    return 0


def main(argv):
    if len(argv) == 3 and argv[1] == "fetch":
        return do_fetch(argv[2])
    if len(argv) == 3 and argv[1] == "status":
        status = read_status(argv[2])
        if status.get("state") == "running":
            status["bytes"] = dir_bytes(argv[2])
        print(json.dumps(status))
        return 0
    sys.stderr.write(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
