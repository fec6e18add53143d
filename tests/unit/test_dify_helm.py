"""Unit tests of plugins/filter/dify_helm.py: the dify chart's values generated from the inventory.

The chart (BorisPolonsky/dify-helm 3c4ef102: chart 0.38.0-rc2, appVersion 1.16.1, with
values.schema.json) is read in place from ../shared/upstream/dify-helm-3c4ef102-chart.tar.gz;
the tests that need it are skipped, saying so, when that archive is absent. The values of a few
inventories (the roles' defaults, inventories/example-kubernetes, inventories/example-managed)
are checked against the chart's values.yaml (every key the values set exists there), its
values.schema.json, and rendered with `helm template` (tests/unit/test_dify_helm_template.py).
"""

import copy
import importlib.util
import json
import re
import tarfile
from pathlib import Path

import jsonschema
import pytest
import yaml
from ansible.errors import AnsibleFilterError
from real_dify.upstream import SHARED_UPSTREAM  # ../shared/upstream, or REAL_DIFY_UPSTREAM_DIR

ROOT = Path(__file__).resolve().parents[2]
CHART_ARCHIVE = Path(SHARED_UPSTREAM) / "dify-helm-3c4ef102-chart.tar.gz"
CHART_MEMBER = "dify-helm-3c4ef102/charts/dify"

_spec = importlib.util.spec_from_file_location("dify_helm", ROOT / "plugins" / "filter" / "dify_helm.py")
dify_helm = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(dify_helm)


def load(path):
    return yaml.safe_load(Path(path).read_text()) or {}


# Secrets as the role would hold them (48 letters and digits each).
SECRETS = {name: ("T" + name.replace("_", "") + "0123456789abcdefghijklmnopqrstuvwxyz")[:48]
           for name in dify_helm.SECRET_NAMES}
VAULT_RE = re.compile(r"^\{\{\s*(vault_[a-z0-9_]+)\s*\}\}$")


def _devault(node):
    """Inventory values that point into Ansible Vault become fake strong secrets."""
    if isinstance(node, dict):
        return {k: _devault(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_devault(v) for v in node]
    if isinstance(node, str) and VAULT_RE.match(node):
        return "Vx" + VAULT_RE.match(node).group(1).replace("_", "")[:30] + "9f8e7d6c5b4a"
    return node


def settings_for(*group_vars, **overrides):
    """The filter's settings as the role collects them: the dify role's defaults, this role's
    defaults, then inventory group_vars files, then overrides."""
    settings = load(ROOT / "roles" / "dify" / "defaults" / "main.yml")
    settings.update(load(ROOT / "roles" / "dify_kubernetes" / "defaults" / "main.yml"))
    settings.update({"dify_external_postgres": {}, "dify_external_redis": {}, "dify_external_s3": {},
                     "dify_kubernetes_model_endpoints": []})
    given = {}
    for path in group_vars:
        given.update(_devault(load(ROOT / path)))
    given.update(overrides)
    settings.update(given)
    # roles/dify_kubernetes/vars/main.yml: the chart bundles Weaviate only, so without a vector store
    # chosen and without dify_external_postgres the dify role's default (pgvector) becomes weaviate
    if "dify_vector_store" not in given and not settings["dify_external_postgres"]:
        settings["dify_vector_store"] = "weaviate"
    return settings


MINIMAL = settings_for(dify_public_url="https://dify.example.com")
KUBERNETES = settings_for("inventories/example-kubernetes/group_vars/all.yml")
MANAGED = settings_for("inventories/example-managed/group_vars/all.yml",
                       "inventories/example-managed/group_vars/dify_servers.yml")
SENTINEL = settings_for(
    dify_public_url="http://dify.lan",
    dify_external_redis={"sentinels": ["10.0.0.5:26379", "10.0.0.6:26379"], "password": "Redis-Pw.1234567890",
                         "sentinel_service_name": "dify", "sentinel_password": "Sentinel-Pw-1234567890"},
    dify_collaboration_enabled=True,
    dify_kubernetes_ingress_class="traefik",
)
CASES = {"minimal": MINIMAL, "kubernetes": KUBERNETES, "managed": MANAGED, "sentinel": SENTINEL}


def values_of(settings, secrets=SECRETS):
    return dify_helm.dify_helm_values(copy.deepcopy(settings), dict(secrets))


def env_of(values, component):
    return {e["name"]: e["value"] for e in values[component]["extraEnv"]}


# --- the chart, read in place -------------------------------------------------------------------

@pytest.fixture(scope="session")
def chart_dir(tmp_path_factory):
    if not CHART_ARCHIVE.exists():
        pytest.skip("the dify chart archive %s is absent (shared/upstream, see its README): "
                    "schema and chart checks skipped" % CHART_ARCHIVE)
    dest = tmp_path_factory.mktemp("chart")
    with tarfile.open(CHART_ARCHIVE) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(CHART_MEMBER)]
        tar.extractall(dest, members=members, filter="data")
    return dest / CHART_MEMBER


@pytest.fixture(scope="session")
def chart_values(chart_dir):
    return load(chart_dir / "values.yaml")


@pytest.fixture(scope="session")
def chart_schema(chart_dir):
    return json.loads((chart_dir / "values.schema.json").read_text())


def deep_merge(base, extra):
    return dify_helm._deep_merge(base, extra)


# Maps and lists the chart lets users fill freely (their keys are not in values.yaml).
FREE_FORM = re.compile(r"(^|\.)(extraEnv|resources|annotations|nodeSelector|tolerations|affinity|hosts|tls|"
                       r"allowed_keys|users|sentinels|env)(\.|$)")


def key_paths(tree, prefix=""):
    for key, value in tree.items():
        path = prefix + str(key)
        yield path
        if isinstance(value, dict) and not FREE_FORM.search(path):
            for sub in key_paths(value, path + "."):
                yield sub


def has_path(tree, path):
    node = tree
    for key in path.split("."):
        if not isinstance(node, dict) or key not in node:
            return False
        node = node[key]
    return True


# --- values against the chart -------------------------------------------------------------------

@pytest.mark.parametrize("case", sorted(CASES))
def test_values_validate_against_the_charts_schema(case, chart_schema):
    values = values_of(CASES[case])
    jsonschema.Draft7Validator(chart_schema).validate(values)


def test_the_schema_check_catches_a_wrong_type(chart_schema):
    values = values_of(MINIMAL)
    values["api"]["replicas"] = "two"
    values["externalRedis"] = {"port": "6379"}
    errors = sorted(e.json_path for e in jsonschema.Draft7Validator(chart_schema).iter_errors(values))
    assert errors == ["$.api.replicas", "$.externalRedis.port"]


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_key_the_values_set_exists_in_the_chart(case, chart_values):
    """The schema allows unknown keys; a misspelt key would silently do nothing."""
    values = values_of(CASES[case])
    unknown = [p for p in key_paths(values) if not has_path(chart_values, p)]
    assert unknown == []


def test_the_key_check_catches_a_misspelt_key(chart_values):
    values = values_of(MINIMAL)
    values["externalRedis"] = {"useSsl": True}
    assert [p for p in key_paths(values) if not has_path(chart_values, p)] == ["externalRedis.useSsl"]


SECRET_NAME = re.compile(r"(password|secret|key|token)", re.I)
NOT_SECRET = {"weaviate.authentication.apikey.users.0", "weaviate.env.AUTHENTICATION_APIKEY_ENABLED",
              "weaviate.env.AUTHENTICATION_APIKEY_USERS"}


def chart_secret_leaves(chart_values):
    found = set()
    for path, leaf in dify_helm._leaves(chart_values):
        dotted = ".".join(path)
        if dotted.startswith("externalSecret.") or dotted in NOT_SECRET or not isinstance(leaf, str) or not leaf:
            continue
        if any(SECRET_NAME.search(part) for part in path[-3:]) and "affinity" not in dotted:
            found.add(tuple(p for p in path if not p.isdigit()))
    return found


def test_the_filter_knows_every_secret_default_of_the_chart(chart_values):
    # Weaviate's list of allowed keys is filled (or emptied) as a list, beside the string leaves.
    allowed_keys = ("weaviate", "authentication", "apikey", "allowed_keys")
    assert chart_secret_leaves(chart_values) == set(dify_helm.CHART_SECRET_LEAVES) | {allowed_keys}


@pytest.mark.parametrize("case", sorted(CASES))
def test_no_public_default_survives_the_merge_with_the_charts_values(case, chart_values):
    merged = deep_merge(chart_values, values_of(CASES[case]))
    public = set(dify_helm.PUBLIC_DEFAULTS)
    for path in dify_helm.CHART_SECRET_LEAVES:
        leaf = dify_helm._lookup(merged, path)
        assert leaf not in public, ".".join(path)
    assert merged["weaviate"]["authentication"]["apikey"]["allowed_keys"] in ([], [SECRETS["weaviate_api_key"]])
    chart_defaults = {leaf for path, leaf in dify_helm._leaves(chart_values)
                      if tuple(p for p in path if not p.isdigit()) in set(dify_helm.CHART_SECRET_LEAVES)}
    # Anywhere else a leaf named like a secret holds one of the chart's secret defaults (e.g. a
    # default the chart adds in a later version).
    leftovers = [".".join(p) for p, leaf in dify_helm._leaves(merged)
                 if isinstance(leaf, str) and leaf in chart_defaults and dify_helm._is_secret_path(p)]
    assert leftovers == []


def test_public_defaults_include_the_dify_roles_list():
    dify_vars = load(ROOT / "roles" / "dify" / "vars" / "main.yml")
    assert set(dify_vars["__dify_public_defaults"]) <= dify_helm.PUBLIC_DEFAULTS


def test_secret_names_are_the_dify_roles():
    dify_vars = load(ROOT / "roles" / "dify" / "vars" / "main.yml")
    role_vars = load(ROOT / "roles" / "dify_kubernetes" / "vars" / "main.yml")
    assert list(dify_helm.SECRET_NAMES) == dify_vars["__dify_secret_names"] == role_vars["__dify_kubernetes_secret_names"]


def test_the_role_passes_every_input_the_filters_read():
    role_vars = load(ROOT / "roles" / "dify_kubernetes" / "vars" / "main.yml")
    expected = list(dify_helm.INPUTS) + list(dify_helm.BOOTSTRAP_INPUTS) + list(dify_helm.GPU_OPERATOR_INPUTS)
    assert role_vars["__dify_kubernetes_inputs"] == expected


def test_every_role_input_has_an_argument_spec():
    specs = load(ROOT / "roles" / "dify_kubernetes" / "meta" / "argument_specs.yml")
    options = specs["argument_specs"]["main"]["options"]
    role_vars = load(ROOT / "roles" / "dify_kubernetes" / "vars" / "main.yml")
    assert [name for name in role_vars["__dify_kubernetes_inputs"] if name not in options] == []


# --- what the values carry ----------------------------------------------------------------------

def test_images_follow_dify_version_not_the_charts_app_version():
    values = values_of(MINIMAL)
    images = {k: "%s:%s" % (v["repository"], v["tag"]) for k, v in values["image"].items()}
    assert images == {
        "api": "langgenius/dify-api:1.15.0",
        "web": "langgenius/dify-web:1.15.0",
        "sandbox": "langgenius/dify-sandbox:0.2.15",
        "pluginDaemon": "langgenius/dify-plugin-daemon:0.6.3-local",
        "proxy": "nginx:latest",
        "ssrfProxy": "ubuntu/squid:latest",
    }


@pytest.mark.parametrize("ref,expected", [
    ("langgenius/dify-api:1.15.0", {"repository": "langgenius/dify-api", "tag": "1.15.0"}),
    ("registry.lan:5000/dify/dify-api:1.15.0", {"repository": "registry.lan:5000/dify/dify-api", "tag": "1.15.0"}),
    ("nginx:1.27@sha256:" + "a" * 64, {"repository": "nginx", "tag": "1.27@sha256:" + "a" * 64}),
])
def test_image_references_split_into_repository_and_tag(ref, expected):
    assert dify_helm.image_ref(ref) == expected


def test_a_version_row_of_the_inventory_moves_every_image():
    versions = {"1.15.0": {"api": "registry.lan/dify-api:1.15.0-p1", "web": "registry.lan/dify-web:1.15.0-p1",
                           "plugin_daemon": "registry.lan/pd:0.6.3-local", "sandbox": "registry.lan/sb:0.2.15"}}
    values = values_of(settings_for(dify_versions=versions))
    assert values["image"]["api"] == {"repository": "registry.lan/dify-api", "tag": "1.15.0-p1"}
    assert values["image"]["pluginDaemon"] == {"repository": "registry.lan/pd", "tag": "0.6.3-local"}


def test_every_public_url_comes_from_dify_public_url():
    values = values_of(settings_for(dify_public_url="https://dify.example.com/", dify_collaboration_enabled=True))
    base = "https://dify.example.com"
    assert {k: v for k, v in values["global"].items() if k.endswith("Domain")} == {
        k: base for k in ("consoleApiDomain", "consoleWebDomain", "serviceApiDomain", "appApiDomain",
                          "appWebDomain", "filesDomain", "triggerDomain")}
    env = env_of(values, "api")
    assert env["CONSOLE_CORS_ALLOW_ORIGINS"] == env["WEB_API_CORS_ALLOW_ORIGINS"] == base
    assert env["APP_API_URL"] == base
    assert env["ENDPOINT_URL_TEMPLATE"] == base + "/e/{hook_id}"
    assert values["apiWebsocket"] == {"enabled": True, "socketUrl": "wss://dify.example.com"}
    assert values["ingress"]["hosts"] == [{"host": "dify.example.com", "paths": [{"path": "/", "pathType": "Prefix"}]}]


def test_the_upload_limit_feeds_dify_the_charts_nginx_and_the_ingress():
    values = values_of(settings_for(dify_public_url="https://d.example.com", dify_upload_file_size_limit_mb=300,
                                    dify_proxy_timeout_s=1800))
    assert env_of(values, "api")["UPLOAD_FILE_SIZE_LIMIT"] == "300"
    assert values["proxy"]["clientMaxBodySize"] == "300m"
    annotations = values["ingress"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/proxy-body-size"] == "300m"
    assert annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"] == "1800"
    assert annotations["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"


def test_other_ingress_classes_get_only_the_given_annotations():
    values = values_of(SENTINEL)
    assert values["ingress"]["className"] == "traefik"
    assert values["ingress"]["annotations"] == {}


def test_tuned_limits_are_set_only_when_given():
    assert "SERVER_WORKER_AMOUNT" not in env_of(values_of(MINIMAL), "api")
    values = values_of(settings_for(dify_server_worker_amount=4, dify_celery_worker_amount=8))
    assert env_of(values, "api")["SERVER_WORKER_AMOUNT"] == "4"
    assert env_of(values, "worker")["CELERY_WORKER_AMOUNT"] == "8"
    assert "CELERY_WORKER_AMOUNT" not in env_of(values, "api")


def test_bundled_services_get_the_generated_secrets():
    values = values_of(MINIMAL)
    assert values["postgresql"]["enabled"] is True
    assert values["postgresql"]["global"]["postgresql"]["auth"]["postgresPassword"] == SECRETS["db_password"]
    assert values["redis"]["auth"]["password"] == SECRETS["redis_password"]
    assert values["weaviate"]["env"]["AUTHENTICATION_APIKEY_ALLOWED_KEYS"] == SECRETS["weaviate_api_key"]
    assert values["weaviate"]["image"] == {"registry": "docker.io", "repo": "semitechnologies/weaviate", "tag": "1.27.0"}
    assert env_of(values, "pluginDaemon")["DB_DATABASE"] == "dify_plugin"
    assert values["api"]["persistence"]["persistentVolumeClaim"]["accessModes"] == "ReadWriteMany"


def test_external_services_replace_the_bundled_ones():
    values = values_of(KUBERNETES)
    assert values["postgresql"] == {"enabled": False, "global": {"postgresql": {"auth": {"postgresPassword": ""}}}}
    assert values["redis"] == {"enabled": False, "auth": {"password": ""}}
    pg = values["externalPostgres"]
    assert (pg["enabled"], pg["address"], pg["port"], pg["username"], pg["database"]) == (
        True, "dify-db.cluster-abcdefghijkl.eu-central-1.rds.amazonaws.com", 5432, "dify",
        {"api": "dify", "pluginDaemon": "dify_plugin"})
    assert env_of(values, "api")["DB_EXTRAS"] == "sslmode=require"
    assert env_of(values, "pluginDaemon")["DB_SSL_MODE"] == "require"
    assert "DB_DATABASE" not in env_of(values, "pluginDaemon")
    assert values["externalRedis"]["useSSL"] is True
    assert env_of(values, "worker")["REDIS_SSL_CERT_REQS"] == "CERT_REQUIRED"
    assert values["externalPgvector"]["enabled"] is True and values["externalPgvector"]["dbName"] == "dify"
    assert values["weaviate"]["enabled"] is False
    s3 = values["externalS3"]
    assert (s3["useIAM"], s3["accessKey"], s3["secretKey"], s3["bucketName"]) == (
        True, "", "", {"api": "example-dify-files", "pluginDaemon": "example-dify-plugins"})
    assert "persistence" not in values["api"] and "persistence" not in values["pluginDaemon"]
    assert values["api"]["serviceAccount"]["create"] is True
    assert values["api"]["replicas"] == 2 and values["api"]["resources"]["limits"] == {"memory": "4Gi"}


def test_redis_sentinel():
    redis = values_of(SENTINEL)["externalRedis"]
    assert redis["sentinel"] == {"enabled": True, "masterSet": "dify", "sentinels": ["10.0.0.5:26379", "10.0.0.6:26379"],
                                 "password": "Sentinel-Pw-1234567890"}


def test_no_null_anywhere():
    for case in CASES.values():
        assert [p for p, leaf in dify_helm._leaves(values_of(case)) if leaf is None] == []


BAD = [
    ("version not in the table", {"dify_version": "1.16.1"}, "dify_version 1.16.1 is not in dify_versions"),
    ("row without sandbox", {"dify_versions": {"1.15.0": {"api": "a:1", "web": "w:1", "plugin_daemon": "p:1"}}},
     "dify_versions[1.15.0] lacks the sandbox image"),
    ("image without tag", {"dify_versions": {"1.15.0": {"api": "langgenius/dify-api", "web": "w:1", "plugin_daemon": "p:1",
                                                        "sandbox": "s:1"}}}, "dify_versions[1.15.0].api"),
    ("public url", {"dify_public_url": "dify.example.com"}, "dify_public_url must be an http(s) URL"),
    ("upload limit", {"dify_upload_file_size_limit_mb": 0}, "dify_upload_file_size_limit_mb"),
    ("timeout above the chart's nginx", {"dify_proxy_timeout_s": 7200}, "dify_proxy_timeout_s is 7200"),
    ("pgvector without postgres", {"dify_vector_store": "pgvector"}, "dify_vector_store: pgvector needs dify_external_postgres"),
    ("postgres public password", {"dify_external_postgres": {"host": "db", "user": "dify", "password": "difyai123456"}},
     "dify_external_postgres.password is a public upstream default"),
    ("postgres without host", {"dify_external_postgres": {"user": "dify", "password": "S3cret-enough-123"}},
     "dify_external_postgres.host is required"),
    ("postgres sslmode", {"dify_external_postgres": {"host": "db", "user": "u", "password": "S3cret-enough-123",
                                                     "sslmode": "on"}}, "dify_external_postgres.sslmode"),
    ("same databases", {"dify_external_postgres": {"host": "db", "user": "u", "password": "S3cret-enough-123",
                                                   "plugin_database": "dify"}}, "dify_external_postgres.plugin_database"),
    ("postgres unknown key", {"dify_external_postgres": {"host": "db", "user": "u", "password": "S3cret-enough-123",
                                                         "hostname": "x"}}, "dify_external_postgres has unknown keys hostname"),
    ("redis url-unsafe password", {"dify_external_redis": {"host": "r", "password": "abc@def/ghi-123456"}},
     "dify_external_redis.password contains a character"),
    ("redis without host", {"dify_external_redis": {"password": "abcdefghijklmnop"}}, "dify_external_redis.host is required"),
    ("redis same dbs", {"dify_external_redis": {"host": "r", "password": "abcdefghijklmnop", "celery_db": 0}},
     "dify_external_redis.db and dify_external_redis.celery_db must differ"),
    ("redis bad sentinel", {"dify_external_redis": {"sentinels": ["s1"], "password": "abcdefghijklmnop"}},
     "dify_external_redis.sentinels must be a list of host:port"),
    ("s3 without bucket", {"dify_external_s3": {"access_key": "AKIAEXAMPLE123", "secret_key": "x" * 40}},
     "dify_external_s3.bucket is required"),
    ("s3 placeholder key", {"dify_external_s3": {"bucket": "b", "access_key": "ak-difyai", "secret_key": "x" * 40}},
     "dify_external_s3.access_key is a public upstream default"),
    ("secret in env_extra", {"dify_env_extra": {"SMTP_PASSWORD": "hunter2hunter2"}}, "dify_env_extra.SMTP_PASSWORD"),
    ("public default in values_extra", {"dify_kubernetes_values_extra": {"api": {"mail": {"smtp": {"password": "YOUR EMAIL PASSWORD"}}}}},
     "public upstream default at api.mail.smtp.password"),
    ("null in values_extra", {"dify_kubernetes_values_extra": {"api": {"nodeSelector": None}}}, "null at api.nodeSelector"),
    ("unknown replica key", {"dify_kubernetes_replicas": {"beat": 2}}, "dify_kubernetes_replicas has unknown keys beat"),
    ("release name", {"dify_kubernetes_release_name": "Dify_Prod"}, "dify_kubernetes_release_name"),
    ("tls with http", {"dify_public_url": "http://d.example.com", "dify_kubernetes_ingress_tls_secret": "t"},
     "dify_kubernetes_ingress_tls_secret is set but dify_public_url is not https"),
    ("volume size", {"dify_kubernetes_api_storage_size": "20 GB"}, "dify_kubernetes_api_storage_size"),
    ("log level", {"dify_log_level": "TRACE"}, "dify_log_level"),
]


@pytest.mark.parametrize("overrides,message", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_fails_naming_the_variable(overrides, message):
    with pytest.raises(AnsibleFilterError) as err:
        values_of(settings_for(**dict({"dify_public_url": "https://dify.example.com"}, **overrides)))
    assert message in str(err.value)


@pytest.mark.parametrize("secret,value", [("db_password", "difyai123456"), ("sandbox_api_key", "dify-sandbox"),
                                          ("secret_key", "sk-9f73s3ljTXVcMT3Blb3ljTqtsKiGHXVcMT3BlbkFJLK7U"),
                                          ("plugin_daemon_key", "")])
def test_a_public_or_missing_secret_is_refused(secret, value):
    with pytest.raises(AnsibleFilterError) as err:
        values_of(MINIMAL, dict(SECRETS, **{secret: value}))
    assert secret in str(err.value)
    assert value == "" or value not in str(err.value)


def test_a_wrong_type_is_named_without_its_value():
    with pytest.raises(AnsibleFilterError) as err:
        dify_helm.dify_helm_secrets_from_values(["Zq8secretvalue0123456789"])
    assert "values must be a mapping, got a list" in str(err.value)
    assert "Zq8secretvalue" not in str(err.value)


def test_error_messages_never_carry_a_given_secret():
    settings = settings_for(dify_external_redis={"host": "r", "password": "Secr3t@Value-123456"})
    with pytest.raises(AnsibleFilterError) as err:
        values_of(settings)
    assert "Secr3t@Value-123456" not in str(err.value)


# --- secrets: read back, masked, redacted -------------------------------------------------------

def test_generated_secrets_are_read_back_from_the_release_values():
    values = values_of(MINIMAL)
    assert dify_helm.dify_helm_secrets_from_values(values) == {k: v for k, v in SECRETS.items() if k != "pgvector_password"}
    external = dify_helm.dify_helm_secrets_from_values(values_of(KUBERNETES))
    assert sorted(external) == ["plugin_daemon_key", "plugin_dify_inner_api_key", "sandbox_api_key", "secret_key"]
    assert dify_helm.dify_helm_secrets_from_values({}) == {}


@pytest.mark.parametrize("case", sorted(CASES))
def test_masked_values_show_no_secret(case):
    settings = CASES[case]
    values = values_of(settings)
    given = dify_helm.dify_helm_external_secrets(settings)
    everything = list(SECRETS.values()) + given
    text = json.dumps(values)
    present = [s for s in everything if s in text]
    assert present, "the values carry secrets, or this test proves nothing"
    masked = json.dumps(dify_helm.dify_helm_mask(values, SECRETS, given))
    assert [s for s in everything if s in masked] == []
    assert "********" in masked


def test_redact_replaces_secrets_inside_a_message():
    msg = "Error: UPGRADE FAILED: postgres://dify:%s@db/dify refused" % SECRETS["db_password"]
    assert dify_helm.dify_helm_redact(msg, SECRETS) == "Error: UPGRADE FAILED: postgres://dify:********@db/dify refused"


# --- bootstrap and GPU Operator -----------------------------------------------------------------

ENDPOINT = {"name": "llm", "kind": "llm", "model_type": "llm", "plugin_id": "langgenius/openai_api_compatible",
            "provider": "langgenius/openai_api_compatible/openai_api_compatible", "model": "qwen",
            "credentials": {"endpoint_url": "http://192.0.2.11:8081/v1", "endpoint_model_name": "qwen"}, "max_batch": 2}


def test_bootstrap_reaches_dify_at_the_public_url_unless_told():
    assert dify_helm.dify_kubernetes_bootstrap(MINIMAL) == {"url": "https://dify.example.com", "model_endpoints": [],
                                                            "dify_version": "1.15.0"}
    got = dify_helm.dify_kubernetes_bootstrap(dict(MINIMAL, dify_kubernetes_bootstrap_url="http://127.0.0.1:8080/",
                                                   dify_kubernetes_model_endpoints=[ENDPOINT]))
    assert got == {"url": "http://127.0.0.1:8080", "model_endpoints": [ENDPOINT], "dify_version": "1.15.0"}


@pytest.mark.parametrize("url", ["http://host.docker.internal:8081/v1", "http://127.0.0.1:8081/v1", "http://localhost:8081"])
def test_endpoints_a_pod_cannot_reach_are_refused(url):
    endpoint = dict(ENDPOINT, credentials={"endpoint_url": url})
    with pytest.raises(AnsibleFilterError) as err:
        dify_helm.dify_kubernetes_bootstrap(dict(MINIMAL, dify_kubernetes_model_endpoints=[endpoint]))
    assert "model endpoint llm (qwen)" in str(err.value) and "model_servers_dify_host" in str(err.value)


@pytest.mark.parametrize("driver,toolkit,extra,expected", [
    (False, False, {}, {"driver": {"enabled": True}, "toolkit": {"enabled": True}}),
    (True, True, {}, {"driver": {"enabled": False}, "toolkit": {"enabled": False}}),
    (True, False, {"dcgmExporter": {"enabled": False}, "driver": {"version": "x"}},
     {"driver": {"enabled": False, "version": "x"}, "toolkit": {"enabled": True}, "dcgmExporter": {"enabled": False}}),
])
def test_gpu_operator_values(driver, toolkit, extra, expected):
    settings = dict(KUBERNETES, dify_kubernetes_gpu_operator_driver_preinstalled=driver,
                    dify_kubernetes_gpu_operator_toolkit_preinstalled=toolkit,
                    dify_kubernetes_gpu_operator_values=extra)
    assert dify_helm.dify_gpu_operator_values(settings) == expected


def test_helm_fullname_follows_the_chart():
    assert dify_helm.helm_fullname("dify") == "dify"
    assert dify_helm.helm_fullname("prod") == "prod-dify"
    assert dify_helm.helm_fullname("my-dify-prod") == "my-dify-prod"
