"""The dify role's compose project as data: the compose document, `.env`, the plan of the
services, data directories, backups and the external services' endpoints.

Pure functions (no I/O); unit tests: tests/unit/test_dify_compose.py. The role's templates
only print what these return (docs/dify.md).

The external services (dify_external_postgres, dify_external_redis, dify_external_s3) have the
shape the Kubernetes path defined: they are checked by the same functions (plugins/filter/
dify_helm.py), so one inventory serves both paths.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import importlib.util
import os
import re
from urllib.parse import quote, urlsplit

from ansible.errors import AnsibleFilterError

DOCUMENTATION = """
name: dify_compose
short_description: compose document, .env and plans of the dify role
description:
  - C(dify_compose_plan) gives the services, profiles, data directories, backup plan and external endpoints.
  - C(dify_compose_document) builds the compose document (services, profiles, volumes, health checks).
  - C(dify_compose_env) builds the .env variables; C(dify_env_file) prints them with compose's quoting.
  - C(dify_redis_conf) prints the configuration file of the stack's Redis (its password).
  - C(dify_compose_clients) gives the one-off client containers (pg_dump/pg_restore, redis-cli).
  - C(dify_compose_unhealthy) names the services whose containers are not running or not healthy.
  - C(dify_redis_cli) gives the redis-cli command line (no secret in it) for the stack's Redis.
"""


def _sibling(name):
    """Another filter file of this directory as a module (one source for shared rules)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), name + ".py")
    spec = importlib.util.spec_from_file_location("dify_compose_sibling_" + name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_helm = _sibling("dify_helm")  # the external services' shape and checks (shared with Kubernetes)
_tuning = _sibling("dify_tuning")  # tuned limits and URL helpers

# Every setting the filters read (roles/dify/vars/main.yml __dify_settings passes exactly these;
# tests/unit/test_dify_compose.py keeps both lists equal). `dify_version` is the version being
# deployed (a restore or rollback pins the backup's).
INPUTS = (
    "dify_version", "dify_versions", "dify_infra_images", "dify_compose_project",
    "dify_vector_store", "dify_collaboration_enabled", "dify_public_url", "dify_cookie_domain",
    "dify_expose_http_port", "dify_expose_http_address", "dify_upload_file_size_limit_mb",
    "dify_upload_file_batch_limit", "dify_proxy_timeout_s", "dify_gunicorn_timeout_s",
    "dify_server_worker_amount", "dify_celery_worker_amount", "dify_postgres_shared_buffers_mb",
    "dify_postgres_effective_cache_size_mb", "dify_postgres_max_connections", "dify_celery_auto_scale",
    "dify_tenant_isolated_task_concurrency", "dify_extra_hosts", "dify_marketplace_enabled",
    "dify_force_verifying_signature", "dify_pip_mirror_url", "dify_plugin_max_package_size",
    "dify_plugin_debugging_port", "dify_log_level", "dify_migration_enabled", "dify_env_extra",
    "dify_external_postgres", "dify_external_redis", "dify_external_s3", "dify_postgres_client_image",
    "host_cpus", "host_memory_mb",
)

VECTOR_STORES = ("weaviate", "pgvector")
VERSION_IMAGES = ("api", "plugin_daemon", "sandbox", "web")
INFRA_IMAGES = ("db_postgres", "redis", "nginx", "ssrf_proxy", "weaviate", "pgvector")

# Where the stack's Redis reads its configuration (the password), inside the container; the
# file is volumes-independent and belongs to the redis user of the image (uid 999 in the
# official images, Alpine and Debian alike): redis-server runs as that user and the file is 0600.
REDIS_CONF_PATH = "/usr/local/etc/redis/redis.conf"
REDIS_UID = 999

# Characters that may stand unquoted in .env (compose's dotenv parser).
ENV_BARE_RE = re.compile(r"^[A-Za-z0-9_./:,@*{}+=%-]*$")
ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _fail(msg):
    raise AnsibleFilterError(msg)


def _get(settings, name):
    if not isinstance(settings, dict):
        _fail("dify_compose: settings must be a mapping (roles/dify/vars/main.yml __dify_settings)")
    if name not in settings:
        _fail("dify_compose: setting %s is missing (the role passes every name of INPUTS)" % name)
    return settings[name]


def _bool(settings, name):
    return _helm._as_bool(_get(settings, name), name)


def _int(settings, name, minimum=None):
    return _helm._as_int(_get(settings, name), name, minimum)


def _external(settings):
    """The external services, checked and completed with their defaults (None = the stack's own)."""
    return {
        "postgres": _helm._postgres(settings),
        "redis": _helm._redis(settings),
        "s3": _helm._s3(settings),
    }


def _images(settings):
    version = _get(settings, "dify_version")
    versions = _helm._as_dict(_get(settings, "dify_versions"), "dify_versions")
    if version not in versions:
        _fail("dify_version %s is not in dify_versions (known: %s)" % (version, ", ".join(sorted(versions))))
    row = _helm._as_dict(versions[version], "dify_versions[%s]" % version)
    if sorted(row) != sorted(VERSION_IMAGES):
        _fail("dify_versions[%s] must hold exactly the images %s" % (version, ", ".join(VERSION_IMAGES)))
    infra = _helm._as_dict(_get(settings, "dify_infra_images"), "dify_infra_images")
    missing = [key for key in INFRA_IMAGES if not infra.get(key)]
    if missing:
        _fail("dify_infra_images lacks %s" % ", ".join(missing))
    return row, infra


def dify_compose_plan(settings):
    """What runs and what is backed up, for `settings` (the role's __dify_settings).

    Returns {profiles, services, app_services, data_services, data_dirs, config_dirs, redis_local,
    databases, database_jobs, archives, provider_owned, external, endpoints, images}.
    """
    row, infra = _images(settings)
    ext = _external(settings)
    store = _get(settings, "dify_vector_store")
    if store not in VECTOR_STORES:
        _fail("dify_vector_store must be one of %s, got %r" % (", ".join(VECTOR_STORES), store))
    collaboration = _bool(settings, "dify_collaboration_enabled")
    pg, redis, s3 = ext["postgres"], ext["redis"], ext["s3"]
    # the vector store runs in the stack unless it lives in the external PostgreSQL
    vector_local = store == "weaviate" or pg is None

    profiles = ([store] if vector_local else []) + (["postgresql"] if pg is None else [])
    profiles += ["collaboration"] if collaboration else []
    data_services = (["db_postgres"] if pg is None else []) + (["redis"] if redis is None else [])
    data_services += [store] if vector_local else []
    app = ["api"] + (["api_websocket"] if collaboration else []) + ["worker", "worker_beat", "web",
                                                                    "sandbox", "plugin_daemon", "ssrf_proxy", "nginx"]
    data_dirs = (["db/data"] if pg is None else []) + (["redis/data"] if redis is None else [])
    data_dirs += ["plugin_daemon", "sandbox/dependencies", "sandbox/conf"]
    if vector_local:
        data_dirs.append("weaviate" if store == "weaviate" else "pgvector/data")
    config_dirs = ["nginx", "nginx/conf.d", "ssrf_proxy", "volumes"] + (["redis"] if redis is None else [])

    # Databases: pg_dump / pg_restore by a one-off client container (dify_compose_clients), on the
    # stack's network for the stack's PostgreSQL, on the host's network for an external one.
    database = pg["database"] if pg else "dify"
    plugin_database = pg["plugin_database"] if pg else "dify_plugin"
    databases = [{"client": "postgres", "database": database, "dump": "dify.dump"},
                 {"client": "postgres", "database": plugin_database, "dump": "dify_plugin.dump"}]
    if store == "pgvector" and pg is None:
        databases.append({"client": "pgvector", "database": "dify", "dump": "vector.dump"})
    elif store == "pgvector" and pg["vector_database"] != pg["database"]:
        databases.append({"client": "postgres", "database": pg["vector_database"], "dump": "vector.dump"})

    # one client container per client for all its databases (fewer containers to start)
    database_jobs = []
    for client in ("postgres", "pgvector"):
        mine = [d for d in databases if d["client"] == client]
        if mine:
            database_jobs.append({"client": client, "label": ", ".join(d["database"] for d in mine),
                                  "args": [part for d in mine for part in (d["database"], d["dump"])]})

    archives = [{"src": "app/storage", "name": "storage", "stop": []},
                {"src": "plugin_daemon", "name": "plugin_daemon", "stop": []}]
    if store == "weaviate":
        # Weaviate's files are consistent only while it is stopped
        archives.append({"src": "weaviate", "name": "weaviate", "stop": ["weaviate"]})

    provider_owned = []
    if pg is not None:
        provider_owned.append(
            "dify_external_postgres (%s): the backup holds pg_dump copies of %s taken over the network; "
            "point-in-time recovery and snapshots are the provider's" % (pg["host"], ", ".join(
                sorted({d["database"] for d in databases}))))
    if redis is not None:
        provider_owned.append("dify_external_redis (%s): not backed up (caches, sessions and queues)"
                              % (redis["host"] or ",".join(redis["sentinels"])))
    if s3 is not None:
        buckets = [s3["bucket"]] + ([s3["plugin_bucket"]] if s3["plugin_bucket"] else [])
        provider_owned.append(
            "dify_external_s3 (bucket %s): uploads and the keys that encrypt model credentials live there and are "
            "NOT in this backup; the provider's versioning/replication owns them" % ", ".join(buckets))

    # every image a container of the stack or a one-off client runs
    images = [row["api"], row["web"], row["plugin_daemon"], row["sandbox"], infra["nginx"], infra["ssrf_proxy"],
              infra["redis"], _client_image(settings, infra)]
    if pg is None:
        images.append(infra["db_postgres"])
    if vector_local:
        images.append(infra[store])

    return {
        "profiles": profiles,
        "services": app + data_services,
        "app_services": app,
        "data_services": data_services,
        "data_dirs": data_dirs,
        "config_dirs": config_dirs,
        "redis_local": redis is None,
        "databases": databases,
        "database_jobs": database_jobs,
        "archives": archives,
        "provider_owned": provider_owned,
        "external": {
            "postgres": pg["host"] if pg else "",
            "redis": (redis["host"] or ",".join(redis["sentinels"])) if redis else "",
            "s3": s3["bucket"] if s3 else "",
        },
        "endpoints": _endpoints(ext),
        "images": sorted(set(images)),
    }


def _client_image(settings, infra):
    image = _get(settings, "dify_postgres_client_image") or ""
    if not isinstance(image, str):
        _fail("dify_postgres_client_image must be an image reference or empty")
    return image or infra["db_postgres"]


def _endpoints(ext):
    """TCP endpoints the Dify host must reach, each named by the variable that gives it."""
    out = []
    pg, redis, s3 = ext["postgres"], ext["redis"], ext["s3"]
    if pg is not None:
        out.append({"variable": "dify_external_postgres", "host": pg["host"], "port": pg["port"]})
    if redis is not None:
        if redis["sentinels"]:
            for index, sentinel in enumerate(redis["sentinels"]):
                host, _sep, port = sentinel.rpartition(":")
                out.append({"variable": "dify_external_redis.sentinels[%d]" % index, "host": host, "port": int(port)})
        else:
            out.append({"variable": "dify_external_redis", "host": redis["host"], "port": redis["port"]})
    if s3 is not None:
        if s3["endpoint"]:
            parts = urlsplit(s3["endpoint"])
            port = parts.port or (443 if parts.scheme == "https" else 80)
            out.append({"variable": "dify_external_s3.endpoint", "host": parts.hostname, "port": port})
        else:
            out.append({"variable": "dify_external_s3.region", "host": "s3.%s.amazonaws.com" % s3["region"],
                        "port": 443})
    for endpoint in out:
        endpoint["label"] = "%s (%s:%d)" % (endpoint["variable"], endpoint["host"], endpoint["port"])
    return out


def _depends(pg, redis, with_redis=True):
    deps = {}
    if pg is None:
        deps["db_postgres"] = {"condition": "service_healthy"}
    if redis is None and with_redis:
        deps["redis"] = {"condition": "service_healthy"}
    return deps


def _health(test, interval, timeout, retries, start_period, start_interval):
    return {"test": test, "interval": interval, "timeout": timeout, "retries": retries,
            "start_period": start_period, "start_interval": start_interval}


def dify_compose_document(settings, config_sha1):
    """The compose document. No secret in it: every value comes from .env (`${VAR}`).

    `config_sha1`: {nginx, ssrf_proxy, redis} hashes of the rendered configuration files; they
    become labels, so compose recreates exactly the container whose configuration changed.
    """
    plan = dify_compose_plan(settings)
    row, infra = _images(settings)
    ext = _external(settings)
    pg, redis = ext["postgres"], ext["redis"]
    store = _get(settings, "dify_vector_store")
    config_sha1 = _helm._as_dict(config_sha1, "config_sha1")
    extra_hosts = _get(settings, "dify_extra_hosts") or []
    if not isinstance(extra_hosts, list) or not all(isinstance(h, str) for h in extra_hosts):
        _fail("dify_extra_hosts must be a list of host:address strings")
    debug_port = _int(settings, "dify_plugin_debugging_port", 0)
    address = _get(settings, "dify_expose_http_address") or ""
    app_env = {"env_file": ["./.env"], "restart": "always"}
    networks = ["ssrf_proxy_network", "default"]
    deps = _depends(pg, redis)

    def app(mode, extra_env=None, storage=False, hosts=False, health=None):
        service = dict(app_env, image=row["api"])
        service["environment"] = dict({"MODE": mode}, **(extra_env or {}))
        if deps:
            service["depends_on"] = dict(deps)
        if storage:
            service["volumes"] = ["./volumes/app/storage:/app/api/storage"]
        if hosts:
            service["extra_hosts"] = list(extra_hosts)
        if health:
            service["healthcheck"] = health
        service["networks"] = list(networks)
        return service

    inner_key = "${PLUGIN_DIFY_INNER_API_KEY:?PLUGIN_DIFY_INNER_API_KEY is required}"
    services = {}
    services["api"] = app("api", {"PLUGIN_MAX_PACKAGE_SIZE": "${PLUGIN_MAX_PACKAGE_SIZE}",
                                  "INNER_API_KEY_FOR_PLUGIN": inner_key},
                          storage=True, hosts=True,
                          health=_health(["CMD", "curl", "-fsS", "http://localhost:5001/health"],
                                         "30s", "5s", 3, "120s", "2s"))
    if "api_websocket" in plan["app_services"]:
        websocket = app("api", {"SERVER_WORKER_AMOUNT": 1,
                                "SERVER_WORKER_CLASS": "geventwebsocket.gunicorn.workers.GeventWebSocketWorker",
                                "SERVER_WORKER_CONNECTIONS": 1000})
        websocket["profiles"] = ["collaboration"]
        services["api_websocket"] = websocket
    services["worker"] = app("worker", {"PLUGIN_MAX_PACKAGE_SIZE": "${PLUGIN_MAX_PACKAGE_SIZE}",
                                        "INNER_API_KEY_FOR_PLUGIN": inner_key}, storage=True, hosts=True)
    services["worker_beat"] = app("beat")
    services["web"] = {"image": row["web"], "restart": "always", "env_file": ["./.env"],
                       "environment": {"SERVER_CONSOLE_API_URL": "http://api:5001"}}
    if pg is None:
        services["db_postgres"] = {
            "image": infra["db_postgres"],
            "profiles": ["postgresql"],
            "restart": "always",
            "environment": {"POSTGRES_USER": "${DB_USERNAME}",
                            "POSTGRES_PASSWORD": "${DB_PASSWORD:?DB_PASSWORD is required}",
                            "POSTGRES_DB": "${DB_DATABASE}", "PGDATA": "${PGDATA}"},
            "command": ["postgres",
                        "-c", "max_connections=${POSTGRES_MAX_CONNECTIONS}",
                        "-c", "shared_buffers=${POSTGRES_SHARED_BUFFERS}",
                        "-c", "work_mem=${POSTGRES_WORK_MEM}",
                        "-c", "maintenance_work_mem=${POSTGRES_MAINTENANCE_WORK_MEM}",
                        "-c", "effective_cache_size=${POSTGRES_EFFECTIVE_CACHE_SIZE}"],
            "volumes": ["./volumes/db/data:/var/lib/postgresql/data"],
            "healthcheck": _health(["CMD", "pg_isready", "-h", "localhost", "-U", "${DB_USERNAME}",
                                    "-d", "${DB_DATABASE}"], "5s", "3s", 60, "60s", "1s"),
        }
    if redis is None:
        # The password is in the configuration file (0600, read by the redis user), never on the
        # command line; redis-cli (health check, day-2 tasks) reads it from REDISCLI_AUTH.
        services["redis"] = {
            "image": infra["redis"],
            "restart": "always",
            "labels": {"dify.config-sha1": str(config_sha1.get("redis", ""))},
            "environment": {"REDISCLI_AUTH": "${REDIS_PASSWORD:?REDIS_PASSWORD is required}"},
            "volumes": ["./volumes/redis/data:/data", "./redis/redis.conf:%s:ro" % REDIS_CONF_PATH],
            "command": ["redis-server", REDIS_CONF_PATH],
            "healthcheck": _health(["CMD-SHELL", "redis-cli ping | grep -q PONG"], "10s", "3s", 10, "30s", "1s"),
        }
    services["sandbox"] = {
        "image": row["sandbox"], "restart": "always", "env_file": ["./.env"],
        "environment": {"API_KEY": "${SANDBOX_API_KEY:?SANDBOX_API_KEY is required}",
                        "GIN_MODE": "${SANDBOX_GIN_MODE}", "WORKER_TIMEOUT": "${SANDBOX_WORKER_TIMEOUT}",
                        "ENABLE_NETWORK": "${SANDBOX_ENABLE_NETWORK}", "HTTP_PROXY": "${SANDBOX_HTTP_PROXY}",
                        "HTTPS_PROXY": "${SANDBOX_HTTPS_PROXY}", "SANDBOX_PORT": "${SANDBOX_PORT}",
                        "PIP_MIRROR_URL": "${PIP_MIRROR_URL}"},
        "volumes": ["./volumes/sandbox/dependencies:/dependencies", "./volumes/sandbox/conf:/conf"],
        "healthcheck": _health(["CMD", "curl", "-fsS", "http://localhost:8194/health"], "30s", "5s", 3, "60s", "2s"),
        "networks": ["ssrf_proxy_network"],
    }
    plugin_env = {
        "DB_DATABASE": "${DB_PLUGIN_DATABASE}",
        "DB_SSL_MODE": "${DB_SSL_MODE}",
        "SERVER_PORT": "${PLUGIN_DAEMON_PORT}",
        "SERVER_KEY": "${PLUGIN_DAEMON_KEY:?PLUGIN_DAEMON_KEY is required}",
        "MAX_PLUGIN_PACKAGE_SIZE": "${PLUGIN_MAX_PACKAGE_SIZE}",
        "DIFY_INNER_API_URL": "${PLUGIN_DIFY_INNER_API_URL}",
        "DIFY_INNER_API_KEY": "${PLUGIN_DIFY_INNER_API_KEY}",
        "PLUGIN_REMOTE_INSTALLING_HOST": "${PLUGIN_DEBUGGING_HOST}",
        "PLUGIN_REMOTE_INSTALLING_PORT": "${PLUGIN_DEBUGGING_PORT}",
        "PLUGIN_WORKING_PATH": "${PLUGIN_WORKING_PATH}",
        "FORCE_VERIFYING_SIGNATURE": "${FORCE_VERIFYING_SIGNATURE}",
        "PYTHON_ENV_INIT_TIMEOUT": "${PLUGIN_PYTHON_ENV_INIT_TIMEOUT}",
        "PLUGIN_MAX_EXECUTION_TIMEOUT": "${PLUGIN_MAX_EXECUTION_TIMEOUT}",
        "PIP_MIRROR_URL": "${PIP_MIRROR_URL}",
        "PLUGIN_STORAGE_TYPE": "${PLUGIN_STORAGE_TYPE}",
        "PLUGIN_STORAGE_LOCAL_ROOT": "${PLUGIN_STORAGE_LOCAL_ROOT}",
        "PLUGIN_INSTALLED_PATH": "${PLUGIN_INSTALLED_PATH}",
        "PLUGIN_PACKAGE_CACHE_PATH": "${PLUGIN_PACKAGE_CACHE_PATH}",
        "PLUGIN_MEDIA_CACHE_PATH": "${PLUGIN_MEDIA_CACHE_PATH}",
    }
    s3 = ext["s3"]
    if s3 is not None and s3["plugin_bucket"]:
        # upstream's names: the daemon reads S3_* / AWS_*, .env carries them as PLUGIN_*
        plugin_env.update({
            "PLUGIN_STORAGE_OSS_BUCKET": "${PLUGIN_STORAGE_OSS_BUCKET}",
            "S3_USE_AWS_MANAGED_IAM": "${PLUGIN_S3_USE_AWS_MANAGED_IAM}",
            "S3_USE_AWS": "${PLUGIN_S3_USE_AWS}",
            "S3_ENDPOINT": "${PLUGIN_S3_ENDPOINT}",
            "S3_USE_PATH_STYLE": "${PLUGIN_S3_USE_PATH_STYLE}",
            "AWS_ACCESS_KEY": "${PLUGIN_AWS_ACCESS_KEY}",
            "AWS_SECRET_KEY": "${PLUGIN_AWS_SECRET_KEY}",
            "AWS_REGION": "${PLUGIN_AWS_REGION}",
        })
    plugin = {"image": row["plugin_daemon"], "restart": "always", "env_file": ["./.env"], "environment": plugin_env}
    if debug_port > 0:
        plugin["ports"] = ["${EXPOSE_PLUGIN_DEBUGGING_PORT}:${PLUGIN_DEBUGGING_PORT}"]
    plugin["volumes"] = ["./volumes/plugin_daemon:/app/storage"]
    plugin["extra_hosts"] = list(extra_hosts)
    plugin_deps = _depends(pg, redis, with_redis=False)
    if plugin_deps:
        plugin["depends_on"] = plugin_deps
    plugin["networks"] = list(networks)
    services["plugin_daemon"] = plugin
    services["ssrf_proxy"] = {
        "image": infra["ssrf_proxy"], "restart": "always",
        "labels": {"dify.config-sha1": str(config_sha1.get("ssrf_proxy", ""))},
        "volumes": ["./ssrf_proxy/squid.conf:/etc/squid/squid.conf:ro"],
        "networks": list(networks),
    }
    services["nginx"] = {
        "image": infra["nginx"], "restart": "always",
        "labels": {"dify.config-sha1": str(config_sha1.get("nginx", ""))},
        "volumes": ["./nginx/conf.d:/etc/nginx/conf.d:ro"],
        "depends_on": {"api": {"condition": "service_healthy"}, "web": {"condition": "service_started"}},
        "ports": ["%s${EXPOSE_NGINX_PORT}:${NGINX_PORT}" % ((address + ":") if address else "")],
    }
    if store == "weaviate":
        services["weaviate"] = {
            "image": infra["weaviate"], "profiles": ["weaviate"], "restart": "always",
            "volumes": ["./volumes/weaviate:/var/lib/weaviate"],
            "environment": {
                "PERSISTENCE_DATA_PATH": "/var/lib/weaviate",
                "QUERY_DEFAULTS_LIMIT": 25,
                "AUTHENTICATION_ANONYMOUS_ACCESS_ENABLED": "false",
                "DEFAULT_VECTORIZER_MODULE": "none",
                "CLUSTER_HOSTNAME": "node1",
                "AUTHENTICATION_APIKEY_ENABLED": "true",
                "AUTHENTICATION_APIKEY_ALLOWED_KEYS": "${WEAVIATE_API_KEY:?WEAVIATE_API_KEY is required}",
                "AUTHENTICATION_APIKEY_USERS": "${WEAVIATE_AUTHENTICATION_APIKEY_USERS}",
                "AUTHORIZATION_ADMINLIST_ENABLED": "true",
                "AUTHORIZATION_ADMINLIST_USERS": "${WEAVIATE_AUTHENTICATION_APIKEY_USERS}",
                "DISABLE_TELEMETRY": "true",
            },
        }
    if store == "pgvector" and pg is None:
        services["pgvector"] = {
            "image": infra["pgvector"], "profiles": ["pgvector"], "restart": "always",
            "environment": {"PGUSER": "${PGVECTOR_USER}",
                            "POSTGRES_PASSWORD": "${PGVECTOR_PASSWORD:?PGVECTOR_PASSWORD is required}",
                            "POSTGRES_DB": "${PGVECTOR_DATABASE}", "PGDATA": "/var/lib/postgresql/data/pgdata"},
            "volumes": ["./volumes/pgvector/data:/var/lib/postgresql/data"],
            "healthcheck": _health(["CMD", "pg_isready"], "5s", "3s", 60, "60s", "1s"),
        }

    return {
        "name": _get(settings, "dify_compose_project"),
        "services": services,
        # sandbox reaches the outside only through ssrf_proxy (as upstream)
        "networks": {"ssrf_proxy_network": {"driver": "bridge", "internal": True}},
    }


def dify_compose_clients(settings, secrets):
    """One-off client containers (community.docker.docker_container, removed after the run):
    {postgres, pgvector?, redis} -> {image, network_mode, env}. The passwords travel in the
    containers' environment (through Docker's API, never on a command line); the tasks that use
    them are no_log.

    The stack's own services are reached on the project's network by their service names;
    external ones on the host's network, as the preflight reached them.
    """
    _dify_images, infra = _images(settings)
    ext = _external(settings)
    pg, redis = ext["postgres"], ext["redis"]
    secrets = _helm._as_dict(secrets, "secrets")
    project_network = "%s_default" % _get(settings, "dify_compose_project")
    clients = {}
    if pg is None:
        clients["postgres"] = {"image": _client_image(settings, infra), "network_mode": project_network,
                               "env": {"PGHOST": "db_postgres", "PGPORT": "5432", "PGUSER": "postgres",
                                       "PGPASSWORD": _secret(secrets, "db_password"), "PGSSLMODE": "disable"}}
    else:
        clients["postgres"] = {"image": _client_image(settings, infra), "network_mode": "host",
                               "env": {"PGHOST": pg["host"], "PGPORT": str(pg["port"]), "PGUSER": pg["user"],
                                       "PGPASSWORD": pg["password"], "PGSSLMODE": pg["sslmode"]}}
    if _get(settings, "dify_vector_store") == "pgvector" and pg is None:
        clients["pgvector"] = {"image": infra["pgvector"], "network_mode": project_network,
                               "env": {"PGHOST": "pgvector", "PGPORT": "5432", "PGUSER": "postgres",
                                       "PGPASSWORD": _secret(secrets, "pgvector_password"), "PGSSLMODE": "disable"}}
    if redis is None:
        clients["redis"] = {"image": infra["redis"], "network_mode": project_network,
                            "env": {"REDISCLI_AUTH": _secret(secrets, "redis_password")}}
    else:
        env = {"REDISCLI_AUTH": redis["password"]}
        if redis["sentinels"]:
            env["SENTINEL_AUTH"] = redis["sentinel_password"]
        clients["redis"] = {"image": infra["redis"], "network_mode": "host", "env": env}
    for client in clients.values():
        client["secrets"] = [v for k, v in client["env"].items() if k in ("PGPASSWORD", "REDISCLI_AUTH", "SENTINEL_AUTH") and v]
    return clients


def _secret(secrets, name):
    value = secrets.get(name)
    if not isinstance(value, str) or not value:
        _fail("dify_compose_clients: the secret %s is missing (read the stored secrets first)" % name)
    return value


def _url_auth(user, password):
    return "%s:%s@" % (quote(user or "", safe=""), quote(password, safe=""))


def _tuned(settings):
    """Worker counts and PostgreSQL memory: the inventory's numbers, else derived from the host."""
    names = {
        "server_worker_amount": "dify_server_worker_amount",
        "celery_worker_amount": "dify_celery_worker_amount",
        "postgres_shared_buffers_mb": "dify_postgres_shared_buffers_mb",
        "postgres_effective_cache_size_mb": "dify_postgres_effective_cache_size_mb",
        "postgres_max_connections": "dify_postgres_max_connections",
    }
    given = {key: _get(settings, var) for key, var in names.items()}
    derived = None
    if any(value is None for value in given.values()):
        cpus, memory = _get(settings, "host_cpus"), _get(settings, "host_memory_mb")
        if cpus in (None, "") or memory in (None, ""):
            _fail("dify: the host's CPUs and memory are unknown (gather facts) and %s are not set"
                  % ", ".join(names[k] for k, v in given.items() if v is None))
        derived = _tuning.dify_tuned_limits(cpus, memory)
    return {key: (derived[key] if value is None else _helm._as_int(value, names[key], 1))
            for key, value in given.items()}


def dify_compose_env(settings, secrets):
    """The .env variables (upstream names) for `settings` and the generated `secrets`.

    `dify_env_extra` is applied last and wins; the role refuses public defaults in it.
    """
    plan = dify_compose_plan(settings)
    ext = _external(settings)
    pg, redis, s3 = ext["postgres"], ext["redis"], ext["s3"]
    secrets = _helm._as_dict(secrets, "secrets")
    missing = [k for k in _helm.SECRET_NAMES if not secrets.get(k)]
    if missing:
        _fail("dify_compose_env: secrets lack %s (tasks/secrets.yml generates them first)" % ", ".join(missing))
    public_url = _get(settings, "dify_public_url")
    base = public_url.rstrip("/")
    origin = _tuning.dify_origin(public_url)
    cookie_domain = _get(settings, "dify_cookie_domain") or ""
    upload_mb = _int(settings, "dify_upload_file_size_limit_mb", 1)
    timeout = _int(settings, "dify_proxy_timeout_s", 1)
    debug_port = _int(settings, "dify_plugin_debugging_port", 0)
    tuned = _tuned(settings)

    def lower(name):
        return str(_bool(settings, name)).lower()

    env = {
        "COMPOSE_PROFILES": ",".join(plan["profiles"]),
        "CONSOLE_API_URL": base,
        "CONSOLE_WEB_URL": base,
        "SERVICE_API_URL": base,
        "APP_API_URL": base,
        "APP_WEB_URL": base,
        "FILES_URL": base,
        "TRIGGER_URL": base,
        "INTERNAL_FILES_URL": "http://api:5001",
        "ENDPOINT_URL_TEMPLATE": base + "/e/{hook_id}",
        "NEXT_PUBLIC_SOCKET_URL": _tuning.dify_ws_url(public_url),
        "CONSOLE_CORS_ALLOW_ORIGINS": origin,
        "WEB_API_CORS_ALLOW_ORIGINS": origin,
        "COOKIE_DOMAIN": cookie_domain,
        "NEXT_PUBLIC_COOKIE_DOMAIN": cookie_domain,
        "SECRET_KEY": secrets["secret_key"],
        "INIT_PASSWORD": "",
        "DEPLOY_ENV": "PRODUCTION",
        "LOG_LEVEL": _get(settings, "dify_log_level"),
        "MIGRATION_ENABLED": lower("dify_migration_enabled"),
        "DIFY_BIND_ADDRESS": "0.0.0.0",
        "DIFY_PORT": 5001,
        "SERVER_WORKER_AMOUNT": tuned["server_worker_amount"],
        "SERVER_WORKER_CLASS": "gevent",
        "SERVER_WORKER_CONNECTIONS": 10,
        "GUNICORN_TIMEOUT": _int(settings, "dify_gunicorn_timeout_s", 1),
        "CELERY_WORKER_AMOUNT": tuned["celery_worker_amount"],
        "CELERY_AUTO_SCALE": lower("dify_celery_auto_scale"),
        "TENANT_ISOLATED_TASK_CONCURRENCY": _int(settings, "dify_tenant_isolated_task_concurrency", 1),
        "UPLOAD_FILE_SIZE_LIMIT": upload_mb,
        "UPLOAD_FILE_BATCH_LIMIT": _int(settings, "dify_upload_file_batch_limit", 1),
        "DB_TYPE": "postgresql",
    }
    if pg is None:
        env.update({
            "DB_USERNAME": "postgres",
            "DB_PASSWORD": secrets["db_password"],
            "DB_HOST": "db_postgres",
            "DB_PORT": 5432,
            "DB_DATABASE": "dify",
            "DB_PLUGIN_DATABASE": "dify_plugin",
            "DB_SSL_MODE": "disable",
            "PGDATA": "/var/lib/postgresql/data/pgdata",
            "POSTGRES_MAX_CONNECTIONS": tuned["postgres_max_connections"],
            "POSTGRES_SHARED_BUFFERS": "%dMB" % tuned["postgres_shared_buffers_mb"],
            "POSTGRES_WORK_MEM": "4MB",
            "POSTGRES_MAINTENANCE_WORK_MEM": "64MB",
            "POSTGRES_EFFECTIVE_CACHE_SIZE": "%dMB" % tuned["postgres_effective_cache_size_mb"],
        })
    else:
        env.update({
            "DB_USERNAME": pg["user"],
            "DB_PASSWORD": pg["password"],
            "DB_HOST": pg["host"],
            "DB_PORT": pg["port"],
            "DB_DATABASE": pg["database"],
            "DB_PLUGIN_DATABASE": pg["plugin_database"],
            # the api (SQLAlchemy URL), the plugin daemon, and libpq (the pgvector connections)
            "DB_EXTRAS": "sslmode=" + pg["sslmode"],
            "DB_SSL_MODE": pg["sslmode"],
            "PGSSLMODE": pg["sslmode"],
        })

    if redis is None:
        env.update({
            "REDIS_HOST": "redis",
            "REDIS_PORT": 6379,
            "REDIS_USERNAME": "",
            "REDIS_PASSWORD": secrets["redis_password"],
            "REDIS_USE_SSL": "false",
            "REDIS_DB": 0,
            "CELERY_BROKER_URL": "redis://%sredis:6379/1" % _url_auth("", secrets["redis_password"]),
        })
    else:
        auth = _url_auth(redis["username"], redis["password"])
        env.update({
            "REDIS_USERNAME": redis["username"],
            "REDIS_PASSWORD": redis["password"],
            "REDIS_DB": redis["db"],
            "REDIS_USE_SSL": str(redis["tls"]).lower(),
        })
        if redis["tls"]:
            env["REDIS_SSL_CERT_REQS"] = "CERT_REQUIRED" if redis["tls_verify"] else "CERT_NONE"
        if redis["sentinels"]:
            env.update({
                "REDIS_USE_SENTINEL": "true",
                "REDIS_SENTINELS": ",".join(redis["sentinels"]),
                "REDIS_SENTINEL_SERVICE_NAME": redis["sentinel_service_name"],
                "REDIS_SENTINEL_PASSWORD": redis["sentinel_password"],
                "REDIS_SENTINEL_SOCKET_TIMEOUT": "0.1",
                "CELERY_USE_SENTINEL": "true",
                "CELERY_SENTINEL_MASTER_NAME": redis["sentinel_service_name"],
                "CELERY_SENTINEL_PASSWORD": redis["sentinel_password"],
                "CELERY_SENTINEL_SOCKET_TIMEOUT": "0.1",
                "CELERY_BROKER_URL": ";".join("sentinel://%s%s/%d" % (auth, s, redis["celery_db"])
                                              for s in redis["sentinels"]),
            })
        else:
            env.update({
                "REDIS_HOST": redis["host"],
                "REDIS_PORT": redis["port"],
                "CELERY_BROKER_URL": "%s://%s%s:%d/%d" % ("rediss" if redis["tls"] else "redis", auth, redis["host"],
                                                          redis["port"], redis["celery_db"]),
            })
    env["CELERY_BACKEND"] = "redis"

    if s3 is None:
        env.update({"STORAGE_TYPE": "opendal", "OPENDAL_SCHEME": "fs", "OPENDAL_FS_ROOT": "storage"})
    else:
        env.update({
            "STORAGE_TYPE": "s3",
            "S3_ENDPOINT": s3["endpoint"],
            "S3_REGION": s3["region"],
            "S3_BUCKET_NAME": s3["bucket"],
            "S3_ACCESS_KEY": s3["access_key"],
            "S3_SECRET_KEY": s3["secret_key"],
            "S3_ADDRESS_STYLE": "path" if s3["path_style"] else "auto",
            "S3_USE_AWS_MANAGED_IAM": str(s3["use_iam"]).lower(),
        })

    store = _get(settings, "dify_vector_store")
    env.update({
        "VECTOR_STORE": store,
        "WEAVIATE_ENDPOINT": "http://weaviate:8080",
        "WEAVIATE_API_KEY": secrets["weaviate_api_key"],
        "WEAVIATE_AUTHENTICATION_APIKEY_USERS": "dify@localhost",
    })
    if pg is None:
        env.update({"PGVECTOR_HOST": "pgvector", "PGVECTOR_PORT": 5432, "PGVECTOR_USER": "postgres",
                    "PGVECTOR_PASSWORD": secrets["pgvector_password"], "PGVECTOR_DATABASE": "dify"})
    else:
        env.update({"PGVECTOR_HOST": pg["host"], "PGVECTOR_PORT": pg["port"], "PGVECTOR_USER": pg["user"],
                    "PGVECTOR_PASSWORD": pg["password"], "PGVECTOR_DATABASE": pg["vector_database"]})

    env.update({
        "CODE_EXECUTION_ENDPOINT": "http://sandbox:8194",
        "CODE_EXECUTION_API_KEY": secrets["sandbox_api_key"],
        "SANDBOX_API_KEY": secrets["sandbox_api_key"],
        "SANDBOX_GIN_MODE": "release",
        "SANDBOX_WORKER_TIMEOUT": 15,
        "SANDBOX_ENABLE_NETWORK": "true",
        "SANDBOX_HTTP_PROXY": "http://ssrf_proxy:3128",
        "SANDBOX_HTTPS_PROXY": "http://ssrf_proxy:3128",
        "SANDBOX_PORT": 8194,
        "SSRF_PROXY_HTTP_URL": "http://ssrf_proxy:3128",
        "SSRF_PROXY_HTTPS_URL": "http://ssrf_proxy:3128",
        "PLUGIN_DAEMON_PORT": 5002,
        "PLUGIN_DAEMON_KEY": secrets["plugin_daemon_key"],
        "PLUGIN_DAEMON_URL": "http://plugin_daemon:5002",
        "PLUGIN_DIFY_INNER_API_KEY": secrets["plugin_dify_inner_api_key"],
        "PLUGIN_DIFY_INNER_API_URL": "http://api:5001",
        "PLUGIN_MAX_PACKAGE_SIZE": _int(settings, "dify_plugin_max_package_size", 1),
        "PLUGIN_DEBUGGING_HOST": "0.0.0.0",
        "PLUGIN_DEBUGGING_PORT": 5003,
        "EXPOSE_PLUGIN_DEBUGGING_HOST": "localhost",
        "EXPOSE_PLUGIN_DEBUGGING_PORT": debug_port if debug_port > 0 else 5003,
        "PLUGIN_PYTHON_ENV_INIT_TIMEOUT": 120,
        "PLUGIN_MAX_EXECUTION_TIMEOUT": 600,
        "PLUGIN_STORAGE_TYPE": "local",
        "PLUGIN_STORAGE_LOCAL_ROOT": "/app/storage",
        "PLUGIN_WORKING_PATH": "/app/storage/cwd",
        "PLUGIN_INSTALLED_PATH": "plugin",
        "PLUGIN_PACKAGE_CACHE_PATH": "plugin_packages",
        "PLUGIN_MEDIA_CACHE_PATH": "assets",
        "FORCE_VERIFYING_SIGNATURE": lower("dify_force_verifying_signature"),
        "PIP_MIRROR_URL": _get(settings, "dify_pip_mirror_url") or "",
        "MARKETPLACE_ENABLED": lower("dify_marketplace_enabled"),
        "NGINX_PORT": 80,
        "NGINX_CLIENT_MAX_BODY_SIZE": "%dM" % upload_mb,
        "NGINX_PROXY_READ_TIMEOUT": "%ds" % timeout,
        "NGINX_PROXY_SEND_TIMEOUT": "%ds" % timeout,
        "EXPOSE_NGINX_PORT": _int(settings, "dify_expose_http_port", 1),
    })
    if s3 is not None and s3["plugin_bucket"]:
        env.update({
            "PLUGIN_STORAGE_TYPE": "aws_s3",
            "PLUGIN_STORAGE_OSS_BUCKET": s3["plugin_bucket"],
            "PLUGIN_S3_USE_AWS": str(not s3["endpoint"]).lower(),
            "PLUGIN_S3_ENDPOINT": s3["endpoint"],
            "PLUGIN_S3_USE_PATH_STYLE": str(s3["path_style"]).lower(),
            "PLUGIN_AWS_ACCESS_KEY": s3["access_key"],
            "PLUGIN_AWS_SECRET_KEY": s3["secret_key"],
            "PLUGIN_AWS_REGION": s3["region"],
            "PLUGIN_S3_USE_AWS_MANAGED_IAM": str(s3["use_iam"]).lower(),
        })
    extra = _helm._as_dict(_get(settings, "dify_env_extra"), "dify_env_extra")
    for key, value in extra.items():
        if not isinstance(key, str) or not ENV_KEY_RE.match(key):
            _fail("dify_env_extra: %r is not an environment variable name" % (key,))
        env[key] = "" if value is None else (str(value).lower() if isinstance(value, bool) else value)
    return env


def _env_value(key, value):
    text = str(value)
    if ENV_BARE_RE.match(text):
        return text
    if "'" not in text and "\n" not in text:
        return "'%s'" % text  # literal: no escape, no ${} interpolation
    # double quotes: compose's dotenv parser unescapes \\ \" \$ \n and expands ${...} otherwise
    return '"%s"' % (text.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$").replace("\n", "\\n"))


def dify_env_file(env):
    """`KEY=value` lines, sorted by key, each value quoted the way compose reads it back verbatim."""
    env = _helm._as_dict(env, "env")
    lines = []
    for key in sorted(env):
        if not ENV_KEY_RE.match(str(key)):
            _fail("dify_env_file: %r is not an environment variable name" % (key,))
        lines.append("%s=%s" % (key, _env_value(key, env[key])))
    return "\n".join(lines) + "\n"


def dify_redis_conf(secrets):
    """redis.conf of the stack's Redis: the password, nothing else (the image's defaults rule)."""
    password = _helm._as_dict(secrets, "secrets").get("redis_password")
    if not isinstance(password, str) or not password or re.search(r"\s|\"", password):
        _fail("dify_redis_conf: the redis_password secret must be a non-empty string without spaces or quotes")
    return "requirepass %s\n" % password


def dify_compose_unhealthy(containers, services=None):
    """Problems of a running stack: services (of `services`) without a container, containers not
    running, health checks not `healthy`. Empty when all is well.

    `containers`: docker_host_info's `containers` (verbose_output) filtered on the project.
    """
    if not isinstance(containers, list):
        _fail("dify_compose_unhealthy: expected the list of containers of docker_host_info")
    bad, seen = [], set()
    for container in containers:
        labels = container.get("Labels") or {}
        if labels.get("com.docker.compose.oneoff") == "True":
            continue
        name = labels.get("com.docker.compose.service") or (container.get("Names") or ["?"])[0].lstrip("/")
        seen.add(name)
        state = container.get("State") or ""
        status = container.get("Status") or ""
        health = ("unhealthy" if "(unhealthy)" in status else
                  "starting" if "(health: starting)" in status else "")
        if state != "running":
            bad.append("%s (%s)" % (name, state or "no state"))
        elif health:
            bad.append("%s (%s)" % (name, health))
    bad.extend("%s (no container)" % name for name in (services or []) if name not in seen)
    return sorted(bad)


def dify_redis_cli(settings, args):
    """argv of the one-off redis client (dify_compose_clients) that runs `redis-cli <args>` against
    the stack's Redis (its own, or dify_external_redis, through Sentinel when given). Passwords
    come from the client's environment (REDISCLI_AUTH, SENTINEL_AUTH), never from argv."""
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        _fail("dify_redis_cli: args must be a list of strings")
    redis = _helm._redis(settings)
    if redis is None:
        return ["redis-cli", "-h", "redis", "-p", "6379", "-n", "0"] + args
    tls = []
    if redis["tls"]:
        tls = ["--tls"] + ([] if redis["tls_verify"] else ["--insecure"])
    user = ["--user", redis["username"]] if redis["username"] else []
    if not redis["sentinels"]:
        return ["redis-cli", "-h", redis["host"], "-p", str(redis["port"])] + tls + user + ["-n", str(redis["db"])] + args
    # Sentinel: ask the sentinels for the master, then talk to it
    script = (
        'for s in $SENTINELS; do '
        'm=$(REDISCLI_AUTH="$SENTINEL_AUTH" redis-cli -h "${s%:*}" -p "${s##*:}" '
        'SENTINEL get-master-addr-by-name "$MASTER" 2>/dev/null | tr "\\n" " ") && [ -n "$m" ] && break; done; '
        'set -- $m; [ -n "$1" ] || { echo "no Redis Sentinel answered for $MASTER" >&2; exit 1; }; '
        'exec redis-cli -h "$1" -p "$2" ' + " ".join(_sh(a) for a in tls + user + ["-n", str(redis["db"])] + args)
    )
    return ["env", "SENTINELS=" + " ".join(redis["sentinels"]), "MASTER=" + redis["sentinel_service_name"],
            "sh", "-c", script]


def _sh(word):
    return "'" + word.replace("'", "'\\''") + "'"


class FilterModule(object):
    def filters(self):
        return {
            "dify_compose_plan": dify_compose_plan,
            "dify_compose_document": dify_compose_document,
            "dify_compose_env": dify_compose_env,
            "dify_compose_clients": dify_compose_clients,
            "dify_env_file": dify_env_file,
            "dify_redis_conf": dify_redis_conf,
            "dify_compose_unhealthy": dify_compose_unhealthy,
            "dify_redis_cli": dify_redis_cli,
        }
