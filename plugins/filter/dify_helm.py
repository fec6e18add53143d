"""Values for Dify on Kubernetes: the community Helm chart (BorisPolonsky/dify-helm, validated
against chart 0.38.0-rc2) and the NVIDIA GPU Operator, generated from the same inventory
variables the compose path (role dify) reads.

Pure functions (no I/O); unit tests: tests/unit/test_dify_helm.py. Templates and tasks only
pass the results on (docs/kubernetes.md).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import copy
import re
from urllib.parse import urlsplit

from ansible.errors import AnsibleFilterError

DOCUMENTATION = """
name: dify_helm
short_description: Helm values for Dify (dify-helm chart) and the NVIDIA GPU Operator from the inventory
description:
  - C(dify_helm_values) turns the inventory's dify_*, dify_external_* and dify_kubernetes_* variables and the
    generated secrets into the dify chart's values.
  - C(dify_helm_secrets_from_values) reads the generated secrets back from a release's values.
  - C(dify_helm_mask) replaces every secret in a values tree by a placeholder (for display).
  - C(dify_gpu_operator_values) builds the GPU Operator's values.
  - C(dify_kubernetes_bootstrap) gives the bootstrap its URL and the model endpoints, checked for
    addresses a pod cannot reach.
"""

# The secrets the dify role generates (roles/dify/vars/main.yml __dify_secret_names); the
# Kubernetes path generates and stores the same set, so one secrets file serves both paths.
SECRET_NAMES = (
    "secret_key",
    "db_password",
    "redis_password",
    "plugin_daemon_key",
    "plugin_dify_inner_api_key",
    "sandbox_api_key",
    "weaviate_api_key",
    "pgvector_password",
)

# Where a generated secret lives in the chart's values (also how it is read back from a release).
SECRET_PATHS = {
    "secret_key": ("global", "appSecretKey"),
    "plugin_daemon_key": ("pluginDaemon", "auth", "serverKey"),
    "plugin_dify_inner_api_key": ("api", "auth", "internalApiKey"),
    "sandbox_api_key": ("sandbox", "auth", "apiKey"),
    "db_password": ("postgresql", "global", "postgresql", "auth", "postgresPassword"),
    "redis_password": ("redis", "auth", "password"),
    "weaviate_api_key": ("weaviate", "env", "AUTHENTICATION_APIKEY_ALLOWED_KEYS"),
}

# Every secret-bearing leaf of the chart's values.yaml (0.38.0-rc2) that has a public default.
# Each is overwritten: with a generated or given secret where the component runs, with "" where
# it does not, so no public default stays anywhere in the merged values (the test derives this
# list from the chart's values.yaml and fails when the chart grows a new one).
CHART_SECRET_LEAVES = (
    ("global", "appSecretKey"),
    ("api", "auth", "internalApiKey"),
    ("api", "mail", "resend", "apiKey"),
    ("api", "mail", "smtp", "password"),
    ("sandbox", "auth", "apiKey"),
    ("pluginDaemon", "auth", "serverKey"),
    ("agentBackend", "auth", "serverSecretKey"),
    ("postgresql", "global", "postgresql", "auth", "postgresPassword"),
    ("weaviate", "env", "AUTHENTICATION_APIKEY_ALLOWED_KEYS"),
    ("redis", "auth", "password"),
    ("externalPostgres", "password"),
    ("externalMysql", "password"),
    ("externalRedis", "password"),
    ("externalS3", "accessKey"),
    ("externalS3", "secretKey"),
    ("externalAzureBlobStorage", "key"),
    ("externalOSS", "accessKey"),
    ("externalOSS", "secretKey"),
    ("externalCOS", "secretKey"),
    ("externalCOS", "secretId"),
    ("externalOBS", "accessKey"),
    ("externalOBS", "secretKey"),
    ("externalTOS", "accessKey"),
    ("externalTOS", "secretKey"),
    ("externalWeaviate", "apiKey"),
    ("externalQdrant", "apiKey"),
    ("externalPgvector", "password"),
    ("externalTencentVectorDB", "apiKey"),
    ("externalTableStore", "accessKeyId"),
    ("externalTableStore", "accessKeySecret"),
)

# Public values that ship in upstream Dify's .env.example / compose file and in the chart's
# values.yaml: identical on every install, never acceptable as a secret.
PUBLIC_DEFAULTS = frozenset((
    "difyai123456",
    "Difyai123456",
    "dify-sandbox",
    "lYkiYYT6owG+71oLerGzA7GXCgOT++6ovaezWAjpCjf+Sjc3ZtU+qUEi",
    "QaHbTe77CtuXmsfyhR7+vRjI/+XbV1AaFy691iy+kGDv2Jvy0/eAh8Y1",
    "WVF5YThaHlkYwhGUSmCRgsX3tD5ngdN8pkih",
    "sk-9f73s3ljTXVcMT3Blb3ljTqtsKiGHXVcMT3BlbkFJLK7U",
    "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY",
    "ak-difyai",
    "sk-difyai",
    "difyai",
    "xxxx",
    "YOUR EMAIL PASSWORD",
    "your-secret-key",
    "your-secret-id",
    "your-access-key",
    "your-tencent-vector-db-api-key",
    "dify",
    "password",
    "postgres",
))

# Inventory variables the values are built from (all passed by the role; tests load the roles'
# defaults and the example inventories).
INPUTS = (
    "dify_version", "dify_versions", "dify_infra_images", "dify_secret_overrides",
    "dify_vector_store", "dify_collaboration_enabled", "dify_public_url", "dify_cookie_domain",
    "dify_upload_file_size_limit_mb", "dify_upload_file_batch_limit", "dify_proxy_timeout_s",
    "dify_gunicorn_timeout_s", "dify_server_worker_amount", "dify_celery_worker_amount",
    "dify_celery_auto_scale", "dify_tenant_isolated_task_concurrency", "dify_marketplace_enabled",
    "dify_force_verifying_signature", "dify_pip_mirror_url", "dify_plugin_max_package_size",
    "dify_log_level", "dify_migration_enabled", "dify_env_extra",
    "dify_external_postgres", "dify_external_redis", "dify_external_s3",
    "dify_kubernetes_release_name", "dify_kubernetes_namespace", "dify_kubernetes_replicas",
    "dify_kubernetes_resources", "dify_kubernetes_storage_class", "dify_kubernetes_api_storage_size",
    "dify_kubernetes_plugin_daemon_storage_size", "dify_kubernetes_vector_storage_size",
    "dify_kubernetes_ingress_enabled", "dify_kubernetes_ingress_class", "dify_kubernetes_ingress_tls_secret",
    "dify_kubernetes_ingress_annotations", "dify_kubernetes_values_extra",
)

BOOTSTRAP_INPUTS = ("dify_kubernetes_bootstrap_url", "dify_kubernetes_model_endpoints")
GPU_OPERATOR_INPUTS = ("dify_kubernetes_gpu_operator_driver_preinstalled",
                       "dify_kubernetes_gpu_operator_toolkit_preinstalled",
                       "dify_kubernetes_gpu_operator_values")

REPLICA_KEYS = {"api": "api", "worker": "worker", "web": "web", "sandbox": "sandbox",
                "plugin_daemon": "pluginDaemon", "proxy": "proxy", "ssrf_proxy": "ssrfProxy"}
RESOURCE_KEYS = dict(REPLICA_KEYS, beat="beat", api_websocket="apiWebsocket")

POSTGRES_KEYS = {"host", "port", "user", "password", "database", "plugin_database", "sslmode", "vector_database"}
POSTGRES_SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
REDIS_KEYS = {"host", "port", "username", "password", "tls", "tls_verify", "db", "celery_db",
              "sentinels", "sentinel_service_name", "sentinel_password"}
S3_KEYS = {"endpoint", "region", "bucket", "plugin_bucket", "access_key", "secret_key", "use_iam", "path_style"}

# dify_env_extra keys that would carry a secret as a plain environment variable of a Deployment.
SECRET_ENV_RE = re.compile(r"(PASSWORD|SECRET|TOKEN|_KEY$|_KEYS$|API_KEY|CREDENTIALS|_DSN$)")
# Characters the chart cannot carry in a Redis password: it builds CELERY_BROKER_URL by pasting
# the password into a URL without encoding it.
URL_UNSAFE_RE = re.compile(r"[@/:?#%\s\[\]]")
# The chart's in-stack nginx fixes proxy_read_timeout / proxy_send_timeout at 3600 s.
CHART_PROXY_TIMEOUT_S = 3600
UNREACHABLE_HOSTS = ("localhost", "host.docker.internal", "0.0.0.0", "::1", "::")


def _fail(msg):
    raise AnsibleFilterError(msg)


def _get(settings, name):
    if name not in settings:
        _fail("dify_helm: setting %s is missing (the role passes every variable of INPUTS)" % name)
    return settings[name]


def _as_int(value, name, minimum=None):
    try:
        number = int(value)
    except (TypeError, ValueError):
        _fail("%s must be an integer, got %r" % (name, value))
    if isinstance(value, bool) or (minimum is not None and number < minimum):
        _fail("%s must be an integer >= %s, got %r" % (name, minimum, value))
    return number


def _as_bool(value, name):
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
        return value.lower() in ("true", "yes", "1")
    _fail("%s must be a boolean, got %r" % (name, value))


def _as_dict(value, name):
    if value is None:
        return {}
    if not isinstance(value, dict):
        # The type only: the value may hold secrets, and Ansible prints a filter's message even
        # for a no_log task.
        _fail("%s must be a mapping, got a %s" % (name, type(value).__name__))
    return value


def _unknown_keys(given, allowed, name):
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        _fail("%s has unknown keys %s (known: %s)" % (name, ", ".join(unknown), ", ".join(sorted(allowed))))


def _deep_merge(base, extra):
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _set(tree, path, value):
    node = tree
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value


def _lookup(tree, path):
    node = tree
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _leaves(tree, path=()):
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _leaves(value, path + (str(key),))
    elif isinstance(tree, list):
        for index, value in enumerate(tree):
            yield from _leaves(value, path + (str(index),))
    else:
        yield path, tree


SECRET_KEY_RE = re.compile(r"(password|secret|apikey|api_key|token|accesskey|access_key|_KEYS?$|serverKey)", re.I)


def _is_secret_path(path):
    """A leaf that holds a secret: a known secret leaf of the chart, or one named like a secret."""
    if tuple(path) in CHART_SECRET_LEAVES:
        return True
    if len(path) >= 2 and path[-2] == "allowed_keys":
        return True
    return bool(SECRET_KEY_RE.search(path[-1]))


def _check_secret(value, name):
    if not isinstance(value, str) or not value:
        _fail("%s must be a non-empty string" % name)
    if value in PUBLIC_DEFAULTS:
        _fail("%s is a public upstream default; use a secret of your own (Ansible Vault)" % name)


def image_ref(ref, name="image"):
    """Split an image reference into the chart's {repository, tag}; a digest stays with the tag."""
    if not isinstance(ref, str) or not ref.strip():
        _fail("%s must be an image reference, got %r" % (name, ref))
    ref = ref.strip()
    digest = ""
    if "@" in ref:
        ref, digest = ref.split("@", 1)
        digest = "@" + digest
    slash = ref.rfind("/")
    colon = ref.rfind(":")
    if colon <= slash:
        _fail("%s (%s%s) has no tag: the chart builds repository:tag and would fall back to its own "
              "appVersion" % (name, ref, digest))
    return {"repository": ref[:colon], "tag": ref[colon + 1:] + digest}


def _url_parts(url, name):
    if not isinstance(url, str):
        _fail("%s must be an http(s) URL, got %r" % (name, url))
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        _fail("%s must be an http(s) URL with a host, got %r" % (name, url))
    return parts


def helm_fullname(release_name, chart_name="dify"):
    """The chart's dify.fullname: the release name when it contains the chart name."""
    if chart_name in release_name:
        name = release_name
    else:
        name = "%s-%s" % (release_name, chart_name)
    return name[:63].rstrip("-")


def _env(pairs):
    return [{"name": key, "value": str(value)} for key, value in pairs]


def _postgres(settings):
    name = "dify_external_postgres"
    pg = _as_dict(_get(settings, name), name)
    if not pg:
        return None
    _unknown_keys(pg, POSTGRES_KEYS, name)
    for key in ("host", "user"):
        if not isinstance(pg.get(key), str) or not pg[key].strip():
            _fail("%s.%s is required" % (name, key))
    _check_secret(pg.get("password"), name + ".password")
    sslmode = pg.get("sslmode", "require")
    if sslmode not in POSTGRES_SSLMODES:
        _fail("%s.sslmode must be one of %s, got %r" % (name, ", ".join(POSTGRES_SSLMODES), sslmode))
    database = pg.get("database", "dify")
    out = {
        "host": pg["host"].strip(),
        "port": _as_int(pg.get("port", 5432), name + ".port", 1),
        "user": pg["user"],
        "password": pg["password"],
        "database": database,
        "plugin_database": pg.get("plugin_database", "dify_plugin"),
        "sslmode": sslmode,
        "vector_database": pg.get("vector_database") or database,
    }
    if out["plugin_database"] == out["database"]:
        _fail("%s.plugin_database must differ from %s.database (the plugin daemon keeps its own "
              "tables in its own database)" % (name, name))
    return out


def _redis(settings):
    name = "dify_external_redis"
    redis = _as_dict(_get(settings, name), name)
    if not redis:
        return None
    _unknown_keys(redis, REDIS_KEYS, name)
    sentinels = redis.get("sentinels") or []
    if not isinstance(sentinels, list) or not all(isinstance(s, str) and re.match(r"^[^:\s]+:\d+$", s)
                                                  for s in sentinels):
        _fail("%s.sentinels must be a list of host:port strings, got %r" % (name, sentinels))
    if not sentinels and not (isinstance(redis.get("host"), str) and redis["host"].strip()):
        _fail("%s.host is required (or %s.sentinels for Redis Sentinel)" % (name, name))
    _check_secret(redis.get("password"), name + ".password")
    if URL_UNSAFE_RE.search(redis["password"]):
        _fail("%s.password contains a character the chart cannot put into CELERY_BROKER_URL unencoded "
              "(one of @ / : ? # %% [ ] or a space); use letters, digits and - . _ ~ ! $ & * + , ; =" % name)
    sentinel_password = redis.get("sentinel_password", "")
    if sentinel_password:
        _check_secret(sentinel_password, name + ".sentinel_password")
    out = {
        "host": (redis.get("host") or "").strip(),
        "port": _as_int(redis.get("port", 6379), name + ".port", 1),
        "username": redis.get("username", "") or "",
        "password": redis["password"],
        "tls": _as_bool(redis.get("tls", False), name + ".tls"),
        "tls_verify": _as_bool(redis.get("tls_verify", True), name + ".tls_verify"),
        "db": _as_int(redis.get("db", 0), name + ".db", 0),
        "celery_db": _as_int(redis.get("celery_db", 1), name + ".celery_db", 0),
        "sentinels": sentinels,
        "sentinel_service_name": redis.get("sentinel_service_name", "mymaster"),
        "sentinel_password": sentinel_password,
    }
    if out["db"] == out["celery_db"]:
        _fail("%s.db and %s.celery_db must differ (cache and Celery broker share no database)" % (name, name))
    return out


def _s3(settings):
    name = "dify_external_s3"
    s3 = _as_dict(_get(settings, name), name)
    if not s3:
        return None
    _unknown_keys(s3, S3_KEYS, name)
    if not isinstance(s3.get("bucket"), str) or not s3["bucket"].strip():
        _fail("%s.bucket is required" % name)
    endpoint = s3.get("endpoint", "")
    if endpoint:
        _url_parts(endpoint, name + ".endpoint")
    use_iam = _as_bool(s3.get("use_iam", False), name + ".use_iam")
    if not use_iam:
        _check_secret(s3.get("access_key"), name + ".access_key")
        _check_secret(s3.get("secret_key"), name + ".secret_key")
    return {
        "endpoint": endpoint,
        "region": s3.get("region", "us-east-1"),
        "bucket": s3["bucket"].strip(),
        "plugin_bucket": s3.get("plugin_bucket", "") or "",
        "access_key": "" if use_iam else s3["access_key"],
        "secret_key": "" if use_iam else s3["secret_key"],
        "use_iam": use_iam,
        "path_style": _as_bool(s3.get("path_style", False), name + ".path_style"),
    }


def _secrets(secrets):
    secrets = _as_dict(secrets, "secrets")
    missing = [key for key in SECRET_NAMES if not secrets.get(key)]
    if missing:
        _fail("dify_helm_values: secrets lack %s (the role generates them before calling the filter)"
              % ", ".join(missing))
    for key in SECRET_NAMES:
        _check_secret(secrets[key], "secret %s (dify_secret_overrides or the stored secrets)" % key)
    return secrets


def _persistence(size, storage_class, name):
    if not isinstance(size, str) or not re.match(r"^\d+(\.\d+)?(Ki|Mi|Gi|Ti|Pi|K|M|G|T|P)?$", size):
        _fail("%s must be a Kubernetes quantity such as 20Gi, got %r" % (name, size))
    return {"persistentVolumeClaim": {"storageClass": storage_class, "size": size,
                                      "accessModes": "ReadWriteMany"}}


def dify_helm_values(settings, secrets):
    """The dify chart's values for `settings` (inventory variables by name) and `secrets`.

    Raises AnsibleFilterError naming the variable on bad input. See docs/kubernetes.md for what
    the values hold and what they leave to the chart.
    """
    settings = _as_dict(settings, "settings")
    secrets = _secrets(secrets)

    version = _get(settings, "dify_version")
    versions = _as_dict(_get(settings, "dify_versions"), "dify_versions")
    if version not in versions:
        _fail("dify_version %s is not in dify_versions (known: %s)" % (version, ", ".join(sorted(versions))))
    row = _as_dict(versions[version], "dify_versions[%s]" % version)
    for key in ("api", "web", "plugin_daemon", "sandbox"):
        if key not in row:
            _fail("dify_versions[%s] lacks the %s image" % (version, key))
    infra = _as_dict(_get(settings, "dify_infra_images"), "dify_infra_images")
    for key in ("nginx", "ssrf_proxy", "weaviate"):
        if key not in infra:
            _fail("dify_infra_images lacks %s" % key)

    public = _url_parts(_get(settings, "dify_public_url"), "dify_public_url")
    base = "%s://%s%s" % (public.scheme, public.netloc, public.path.rstrip("/"))
    origin = "%s://%s" % (public.scheme, public.netloc)
    ws_url = "%s://%s" % ("wss" if public.scheme == "https" else "ws", public.netloc)
    cookie_domain = _get(settings, "dify_cookie_domain") or ""

    upload_mb = _as_int(_get(settings, "dify_upload_file_size_limit_mb"), "dify_upload_file_size_limit_mb", 1)
    batch = _as_int(_get(settings, "dify_upload_file_batch_limit"), "dify_upload_file_batch_limit", 1)
    proxy_timeout = _as_int(_get(settings, "dify_proxy_timeout_s"), "dify_proxy_timeout_s", 1)
    if proxy_timeout > CHART_PROXY_TIMEOUT_S:
        _fail("dify_proxy_timeout_s is %d but the chart's nginx cuts requests after %d s (fixed in its "
              "proxy.conf); use at most %d on Kubernetes" % (proxy_timeout, CHART_PROXY_TIMEOUT_S, CHART_PROXY_TIMEOUT_S))
    gunicorn_timeout = _as_int(_get(settings, "dify_gunicorn_timeout_s"), "dify_gunicorn_timeout_s", 1)
    tenant_concurrency = _as_int(_get(settings, "dify_tenant_isolated_task_concurrency"),
                                 "dify_tenant_isolated_task_concurrency", 1)
    package_size = _as_int(_get(settings, "dify_plugin_max_package_size"), "dify_plugin_max_package_size", 1)
    log_level = _get(settings, "dify_log_level")
    if log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        _fail("dify_log_level must be DEBUG, INFO, WARNING or ERROR, got %r" % log_level)
    vector_store = _get(settings, "dify_vector_store")
    if vector_store not in ("weaviate", "pgvector"):
        _fail("dify_vector_store must be weaviate or pgvector, got %r" % vector_store)
    collaboration = _as_bool(_get(settings, "dify_collaboration_enabled"), "dify_collaboration_enabled")
    marketplace = _as_bool(_get(settings, "dify_marketplace_enabled"), "dify_marketplace_enabled")
    force_signature = _as_bool(_get(settings, "dify_force_verifying_signature"), "dify_force_verifying_signature")
    pip_mirror = _get(settings, "dify_pip_mirror_url") or ""

    env_extra = _as_dict(_get(settings, "dify_env_extra"), "dify_env_extra")
    for key, value in env_extra.items():
        if SECRET_ENV_RE.search(str(key)):
            _fail("dify_env_extra.%s would be a plain environment variable of the Deployments on Kubernetes; "
                  "set it through the chart's own values in dify_kubernetes_values_extra (e.g. api.mail.smtp.password), "
                  "which the chart keeps in its Secrets" % key)
        if str(value) in PUBLIC_DEFAULTS:
            _fail("dify_env_extra.%s is a public upstream default" % key)

    pg = _postgres(settings)
    redis = _redis(settings)
    s3 = _s3(settings)
    if vector_store == "pgvector" and pg is None:
        _fail("dify_vector_store: pgvector needs dify_external_postgres on Kubernetes (the chart's bundled "
              "PostgreSQL image has no pgvector extension); or use weaviate")

    release = _get(settings, "dify_kubernetes_release_name")
    if not isinstance(release, str) or not re.match(r"^[a-z0-9]([-a-z0-9]{0,51}[a-z0-9])?$", release):
        _fail("dify_kubernetes_release_name must be a DNS label of at most 53 characters, got %r" % release)
    fullname = helm_fullname(release)
    api_url = "http://%s-api:5001" % fullname

    replicas = _as_dict(_get(settings, "dify_kubernetes_replicas"), "dify_kubernetes_replicas")
    _unknown_keys(replicas, REPLICA_KEYS, "dify_kubernetes_replicas")
    resources = _as_dict(_get(settings, "dify_kubernetes_resources"), "dify_kubernetes_resources")
    _unknown_keys(resources, RESOURCE_KEYS, "dify_kubernetes_resources")
    storage_class = _get(settings, "dify_kubernetes_storage_class") or ""

    server_workers = _get(settings, "dify_server_worker_amount")
    celery_workers = _get(settings, "dify_celery_worker_amount")

    # Environment every api-image process (api, worker, beat) gets on top of the chart's ConfigMap.
    common = [
        ("CHECK_UPDATE_URL", ""),
        ("DEPLOY_ENV", "PRODUCTION"),
        ("APP_API_URL", base),
        ("CONSOLE_CORS_ALLOW_ORIGINS", origin),
        ("WEB_API_CORS_ALLOW_ORIGINS", origin),
        ("COOKIE_DOMAIN", cookie_domain),
        ("ENDPOINT_URL_TEMPLATE", base + "/e/{hook_id}"),
        ("INTERNAL_FILES_URL", api_url),
        ("UPLOAD_FILE_SIZE_LIMIT", upload_mb),
        ("UPLOAD_FILE_BATCH_LIMIT", batch),
        ("TENANT_ISOLATED_TASK_CONCURRENCY", tenant_concurrency),
        ("PLUGIN_MAX_PACKAGE_SIZE", package_size),
    ]
    if pg is not None:
        common.append(("DB_EXTRAS", "sslmode=" + pg["sslmode"]))
    if redis is not None and redis["tls"]:
        common.append(("REDIS_SSL_CERT_REQS", "CERT_REQUIRED" if redis["tls_verify"] else "CERT_NONE"))
    api_env = list(common) + [("GUNICORN_TIMEOUT", gunicorn_timeout)]
    if server_workers is not None:
        api_env.append(("SERVER_WORKER_AMOUNT", _as_int(server_workers, "dify_server_worker_amount", 1)))
    worker_env = list(common) + [("CELERY_AUTO_SCALE", str(_as_bool(_get(settings, "dify_celery_auto_scale"),
                                                                    "dify_celery_auto_scale")).lower())]
    if celery_workers is not None:
        worker_env.append(("CELERY_WORKER_AMOUNT", _as_int(celery_workers, "dify_celery_worker_amount", 1)))
    extra = [(str(k), "" if v is None else (str(v).lower() if isinstance(v, bool) else v))
             for k, v in sorted(env_extra.items())]

    plugin_env = [
        ("MAX_PLUGIN_PACKAGE_SIZE", package_size),
        ("FORCE_VERIFYING_SIGNATURE", str(force_signature).lower()),
        ("PYTHON_ENV_INIT_TIMEOUT", 120),
        ("PLUGIN_MAX_EXECUTION_TIMEOUT", 600),
        ("DB_SSL_MODE", pg["sslmode"] if pg is not None else "disable"),
    ]
    if pg is None:
        # The chart points the plugin daemon at the api's database when PostgreSQL is bundled;
        # give it its own (it creates the database on first start), as the compose path does.
        plugin_env.append(("DB_DATABASE", "dify_plugin"))
    if pip_mirror:
        plugin_env.append(("PIP_MIRROR_URL", pip_mirror))
    sandbox_env = [("WORKER_TIMEOUT", 15), ("ENABLE_NETWORK", "true")]
    if pip_mirror:
        sandbox_env.append(("PIP_MIRROR_URL", pip_mirror))
    web_env = [("NEXT_PUBLIC_COOKIE_DOMAIN", cookie_domain)]

    images = {
        "api": image_ref(row["api"], "dify_versions[%s].api" % version),
        "web": image_ref(row["web"], "dify_versions[%s].web" % version),
        "sandbox": image_ref(row["sandbox"], "dify_versions[%s].sandbox" % version),
        "pluginDaemon": image_ref(row["plugin_daemon"], "dify_versions[%s].plugin_daemon" % version),
        "proxy": image_ref(infra["nginx"], "dify_infra_images.nginx"),
        "ssrfProxy": image_ref(infra["ssrf_proxy"], "dify_infra_images.ssrf_proxy"),
    }

    values = {
        "global": {
            "appSecretKey": secrets["secret_key"],
            "consoleApiDomain": base,
            "consoleWebDomain": base,
            "serviceApiDomain": base,
            "appApiDomain": base,
            "appWebDomain": base,
            "filesDomain": base,
            "triggerDomain": base,
            "marketplace": {"enabled": marketplace},
        },
        "image": images,
        "api": {
            "logLevel": log_level,
            "migration": _as_bool(_get(settings, "dify_migration_enabled"), "dify_migration_enabled"),
            "auth": {"internalApiKey": secrets["plugin_dify_inner_api_key"]},
            # No mail unless configured through dify_kubernetes_values_extra (the chart's default
            # is resend with a placeholder key).
            "mail": {"type": ""},
            "extraEnv": _env(api_env + extra),
        },
        "worker": {"logLevel": log_level, "extraEnv": _env(worker_env + extra)},
        "beat": {"logLevel": log_level, "extraEnv": _env(common + extra)},
        "web": {"extraEnv": _env(web_env)},
        "sandbox": {"auth": {"apiKey": secrets["sandbox_api_key"]}, "extraEnv": _env(sandbox_env)},
        "ssrfProxy": {"enabled": True},
        "proxy": {"clientMaxBodySize": "%dm" % upload_mb},
        "pluginDaemon": {"auth": {"serverKey": secrets["plugin_daemon_key"]}, "extraEnv": _env(plugin_env)},
        "apiWebsocket": {"enabled": collaboration},
        # The agent backend and its local sandbox belong to Dify 1.16 (agent v2), which the
        # project's version table does not carry yet.
        "agentBackend": {"enabled": False},
        "localSandbox": {"enabled": False},
        "service": {"type": "ClusterIP", "port": 80},
    }
    if collaboration:
        values["apiWebsocket"]["socketUrl"] = ws_url

    # Storage for uploads and the RSA keys that encrypt model credentials: S3, else a RWX volume.
    if s3 is not None:
        values["externalS3"] = {
            "enabled": True,
            "endpoint": s3["endpoint"],
            "pathStyle": s3["path_style"],
            "accessKey": s3["access_key"],
            "secretKey": s3["secret_key"],
            "bucketName": {"api": s3["bucket"], "pluginDaemon": s3["plugin_bucket"]},
            "useIAM": s3["use_iam"],
            "region": s3["region"],
        }
    else:
        values["api"]["persistence"] = _persistence(_get(settings, "dify_kubernetes_api_storage_size"),
                                                    storage_class, "dify_kubernetes_api_storage_size")
    if s3 is None or not s3["plugin_bucket"]:
        values["pluginDaemon"]["persistence"] = _persistence(
            _get(settings, "dify_kubernetes_plugin_daemon_storage_size"), storage_class,
            "dify_kubernetes_plugin_daemon_storage_size")

    if pg is not None:
        values["postgresql"] = {"enabled": False}
        values["externalPostgres"] = {
            "enabled": True,
            "username": pg["user"],
            "password": pg["password"],
            "address": pg["host"],
            "port": pg["port"],
            "database": {"api": pg["database"], "pluginDaemon": pg["plugin_database"]},
        }
    else:
        values["postgresql"] = {
            "enabled": True,
            "architecture": "standalone",
            "global": {"postgresql": {"auth": {"postgresPassword": secrets["db_password"], "database": "dify"}}},
            "primary": {"persistence": {"storageClass": storage_class}},
        }

    if redis is not None:
        values["redis"] = {"enabled": False}
        values["externalRedis"] = {
            "enabled": True,
            "host": redis["host"],
            "port": redis["port"],
            "username": redis["username"],
            "password": redis["password"],
            "useSSL": redis["tls"],
            "db": {"app": redis["db"], "celery": redis["celery_db"], "agent": 2},
            "sentinel": {
                "enabled": bool(redis["sentinels"]),
                "masterSet": redis["sentinel_service_name"],
                "sentinels": redis["sentinels"],
                "password": redis["sentinel_password"],
            },
        }
    else:
        values["redis"] = {
            "enabled": True,
            "architecture": "standalone",
            "auth": {"enabled": True, "sentinel": False, "password": secrets["redis_password"]},
            "master": {"persistence": {"storageClass": storage_class}},
        }

    if vector_store == "pgvector":
        values["weaviate"] = {"enabled": False}
        values["externalPgvector"] = {
            "enabled": True,
            "username": pg["user"],
            "password": pg["password"],
            "address": pg["host"],
            "port": pg["port"],
            "dbName": pg["vector_database"],
        }
    else:
        weaviate_image = image_ref(infra["weaviate"], "dify_infra_images.weaviate")
        registry, _sep, repo = weaviate_image["repository"].partition("/")
        if "." not in registry and ":" not in registry and registry != "localhost":
            registry, repo = "docker.io", weaviate_image["repository"]
        user = "dify@localhost"
        values["weaviate"] = {
            "enabled": True,
            "image": {"registry": registry, "repo": repo, "tag": weaviate_image["tag"]},
            "storage": {"size": _get(settings, "dify_kubernetes_vector_storage_size"),
                        "storageClassName": storage_class},
            "authentication": {"anonymous_access": {"enabled": False},
                               "apikey": {"enabled": True, "allowed_keys": [secrets["weaviate_api_key"]],
                                          "users": [user]}},
            "authorization": {"admin_list": {"enabled": True, "users": [user]}},
            "env": {"AUTHENTICATION_APIKEY_ENABLED": "true",
                    "AUTHENTICATION_APIKEY_ALLOWED_KEYS": secrets["weaviate_api_key"],
                    "AUTHENTICATION_APIKEY_USERS": user,
                    "AUTHORIZATION_ADMINLIST_ENABLED": "true",
                    "AUTHORIZATION_ADMINLIST_USERS": user},
        }

    for key, count in replicas.items():
        count = _as_int(count, "dify_kubernetes_replicas.%s" % key, 1)
        values.setdefault(REPLICA_KEYS[key], {})["replicas"] = count
    for key, spec in resources.items():
        values.setdefault(RESOURCE_KEYS[key], {})["resources"] = _as_dict(spec, "dify_kubernetes_resources.%s" % key)

    if _as_bool(_get(settings, "dify_kubernetes_ingress_enabled"), "dify_kubernetes_ingress_enabled"):
        ingress_class = _get(settings, "dify_kubernetes_ingress_class") or ""
        annotations = {}
        if ingress_class == "nginx":
            # ingress-nginx: the same body size and timeouts as every other proxy in front of Dify,
            # and no response buffering (streamed answers).
            annotations = {
                "nginx.ingress.kubernetes.io/proxy-body-size": "%dm" % upload_mb,
                "nginx.ingress.kubernetes.io/proxy-read-timeout": str(proxy_timeout),
                "nginx.ingress.kubernetes.io/proxy-send-timeout": str(proxy_timeout),
                "nginx.ingress.kubernetes.io/proxy-buffering": "off",
            }
        annotations.update(_as_dict(_get(settings, "dify_kubernetes_ingress_annotations"),
                                    "dify_kubernetes_ingress_annotations"))
        path = public.path.rstrip("/") or "/"
        values["ingress"] = {
            "enabled": True,
            "className": ingress_class,
            "annotations": {str(k): str(v) for k, v in annotations.items()},
            "hosts": [{"host": public.hostname, "paths": [{"path": path, "pathType": "Prefix"}]}],
            "tls": [],
        }
        tls_secret = _get(settings, "dify_kubernetes_ingress_tls_secret") or ""
        if tls_secret:
            if public.scheme != "https":
                _fail("dify_kubernetes_ingress_tls_secret is set but dify_public_url is not https")
            values["ingress"]["tls"] = [{"hosts": [public.hostname], "secretName": tls_secret}]
    else:
        values["ingress"] = {"enabled": False}

    # No public default anywhere: blank every secret leaf of the chart that the values above
    # did not fill.
    for path in CHART_SECRET_LEAVES:
        if _lookup(values, path) is None:
            _set(values, path, "")
    if not (_lookup(values, ("weaviate", "enabled"))):
        _set(values, ("weaviate", "authentication", "apikey", "allowed_keys"), [])

    values = _deep_merge(values, _as_dict(_get(settings, "dify_kubernetes_values_extra"),
                                          "dify_kubernetes_values_extra"))
    for path, leaf in _leaves(values):
        if isinstance(leaf, str) and leaf in PUBLIC_DEFAULTS and _is_secret_path(path):
            _fail("the values would carry a public upstream default at %s (from dify_kubernetes_values_extra?)"
                  % ".".join(path))
        if leaf is None:
            _fail("the values hold a null at %s (Helm drops nulls, so the release would never compare "
                  "equal to them); leave the key out instead" % ".".join(path))
    return values


def dify_helm_secrets_from_values(values):
    """The generated secrets a release's values carry (those present and non-empty)."""
    values = _as_dict(values, "values")
    found = {}
    for name, path in SECRET_PATHS.items():
        value = _lookup(values, path)
        if isinstance(value, str) and value:
            found[name] = value
    return found


def dify_helm_mask(values, secrets, extra_secrets=None):
    """A copy of `values` where every leaf that contains a secret reads '********'."""
    hidden = [str(v) for v in list(_as_dict(secrets, "secrets").values()) + list(extra_secrets or []) if v]

    def mask(node):
        if isinstance(node, dict):
            return {k: mask(v) for k, v in node.items()}
        if isinstance(node, list):
            return [mask(v) for v in node]
        if isinstance(node, str) and any(secret in node for secret in hidden):
            return "********"
        return node

    return mask(values)


def dify_helm_redact(text, secrets, extra_secrets=None):
    """`text` (e.g. helm's error output) with every secret replaced by '********'."""
    text = "" if text is None else str(text)
    hidden = sorted((str(v) for v in list(_as_dict(secrets, "secrets").values()) + list(extra_secrets or []) if v),
                    key=len, reverse=True)
    for secret in hidden:
        text = text.replace(secret, "********")
    return text


def dify_helm_external_secrets(settings):
    """Secrets given as data in dify_external_* (to mask them next to the generated ones)."""
    out = []
    for name, keys in (("dify_external_postgres", ("password",)),
                       ("dify_external_redis", ("password", "sentinel_password")),
                       ("dify_external_s3", ("access_key", "secret_key"))):
        given = _as_dict(settings.get(name), name)
        out.extend(str(given[k]) for k in keys if given.get(k))
    return out


def dify_gpu_operator_values(settings):
    """Values of the NVIDIA GPU Operator chart.

    The driver and the container toolkit are installed by the operator unless the nodes already
    have them (e.g. prepared by this project's nvidia_driver / nvidia_container_toolkit roles).
    """
    settings = _as_dict(settings, "settings")
    driver = _as_bool(settings.get("dify_kubernetes_gpu_operator_driver_preinstalled", False),
                      "dify_kubernetes_gpu_operator_driver_preinstalled")
    toolkit = _as_bool(settings.get("dify_kubernetes_gpu_operator_toolkit_preinstalled", False),
                       "dify_kubernetes_gpu_operator_toolkit_preinstalled")
    values = {"driver": {"enabled": not driver}, "toolkit": {"enabled": not toolkit}}
    return _deep_merge(values, _as_dict(settings.get("dify_kubernetes_gpu_operator_values"),
                                        "dify_kubernetes_gpu_operator_values"))


def _endpoint_urls(endpoint):
    creds = endpoint.get("credentials") or {}
    return [(key, creds[key]) for key in ("endpoint_url", "server_url", "base_url") if creds.get(key)]


def dify_kubernetes_bootstrap(settings):
    """{url, model_endpoints, dify_version} for the dify_bootstrap role on the Kubernetes path.

    `url` is dify_kubernetes_bootstrap_url, else dify_public_url. Model endpoints keep the
    contract-2 shape (model_servers_dify_endpoints); an endpoint a pod cannot reach (loopback,
    host.docker.internal) fails with the endpoint's name.
    """
    settings = _as_dict(settings, "settings")
    url = settings.get("dify_kubernetes_bootstrap_url") or _get(settings, "dify_public_url")
    _url_parts(url, "dify_kubernetes_bootstrap_url")
    endpoints = settings.get("dify_kubernetes_model_endpoints") or []
    if not isinstance(endpoints, list):
        _fail("dify_kubernetes_model_endpoints must be a list in the model_servers_dify_endpoints shape")
    for index, endpoint in enumerate(endpoints):
        if not isinstance(endpoint, dict) or not endpoint.get("model") or not endpoint.get("model_type"):
            _fail("dify_kubernetes_model_endpoints[%d] needs at least model, model_type and credentials" % index)
        for key, value in _endpoint_urls(endpoint):
            host = (urlsplit(str(value)).hostname or "").lower()
            if host in UNREACHABLE_HOSTS or host.startswith("127."):
                _fail("model endpoint %s (%s): credentials.%s %s is not reachable from a pod; set "
                      "model_servers_dify_host on the GPU hosts to an address the cluster reaches, or give "
                      "dify_kubernetes_model_endpoints with in-cluster Service URLs"
                      % (endpoint.get("name", index), endpoint["model"], key, value))
    return {"url": url.rstrip("/"), "model_endpoints": endpoints, "dify_version": settings.get("dify_version", "")}


class FilterModule(object):
    def filters(self):
        return {
            "dify_helm_values": dify_helm_values,
            "dify_helm_secrets_from_values": dify_helm_secrets_from_values,
            "dify_helm_mask": dify_helm_mask,
            "dify_helm_external_secrets": dify_helm_external_secrets,
            "dify_helm_redact": dify_helm_redact,
            "dify_helm_image_ref": image_ref,
            "dify_gpu_operator_values": dify_gpu_operator_values,
            "dify_kubernetes_bootstrap": dify_kubernetes_bootstrap,
        }
