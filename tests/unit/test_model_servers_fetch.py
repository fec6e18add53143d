"""The model_servers role's download helper (roles/model_servers/files/model_fetch.py), URL source:
resume with an HTTP Range request, sha256 check, status file and marker. A local HTTP server on
127.0.0.1 (ephemeral port) plays the model host."""

import hashlib
import importlib.util
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

HELPER = Path(__file__).resolve().parents[2] / "roles" / "model_servers" / "files" / "model_fetch.py"
spec = importlib.util.spec_from_file_location("model_fetch", HELPER)
model_fetch = importlib.util.module_from_spec(spec)
spec.loader.exec_module(model_fetch)

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture()
def server():
    seen = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server API
            rng = self.headers.get("Range")
            seen.append(rng)
            start = int(rng.split("=")[1].split("-")[0]) if rng else 0
            body = PAYLOAD[start:]
            self.send_response(206 if rng else 200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield "http://127.0.0.1:%d/model.gguf" % httpd.server_address[1], seen
    httpd.shutdown()


def write_spec(tmp_path, url, checksum):
    dest = tmp_path / "models" / "llm"
    spec = {"url": url, "checksum": checksum, "dest": str(dest), "marker": json.dumps({"url": url})}
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    return path, dest


def test_download_checks_sha256_and_records_the_source(tmp_path, server):
    url, seen = server
    spec, dest = write_spec(tmp_path, url, "sha256:" + DIGEST)
    assert model_fetch.do_fetch(str(spec)) == 0
    assert (dest / "model.gguf").read_bytes() == PAYLOAD
    assert json.loads((dest / ".model-servers-source.json").read_text()) == {"url": url}
    assert model_fetch.read_status(str(dest))["state"] == "done"
    assert seen == [None]


def test_interrupted_download_resumes_with_a_range_request(tmp_path, server):
    url, seen = server
    spec, dest = write_spec(tmp_path, url, "sha256:" + DIGEST)
    dest.mkdir(parents=True)
    (dest / "model.gguf.part").write_bytes(PAYLOAD[:300000])  # what an interrupted run left
    assert model_fetch.do_fetch(str(spec)) == 0
    assert seen == ["bytes=300000-"]
    assert (dest / "model.gguf").read_bytes() == PAYLOAD


def test_wrong_checksum_fails_and_keeps_nothing(tmp_path, server):
    url, _ = server
    spec, dest = write_spec(tmp_path, url, "sha256:" + "0" * 64)
    assert model_fetch.do_fetch(str(spec)) == 1
    status = model_fetch.read_status(str(dest))
    assert status["state"] == "failed" and "checksum mismatch" in status["message"]
    assert not (dest / "model.gguf").exists() and not (dest / "model.gguf.part").exists()
    assert not (dest / ".model-servers-source.json").exists()


def test_present_file_with_the_right_checksum_is_not_fetched_again(tmp_path, server):
    url, seen = server
    spec, dest = write_spec(tmp_path, url, "sha256:" + DIGEST)
    dest.mkdir(parents=True)
    (dest / "model.gguf").write_bytes(PAYLOAD)
    assert model_fetch.do_fetch(str(spec)) == 0
    assert seen == []
