"""The dify role's compose file and .env for each vector store (rendered, not run).

molecule/dify runs pgvector for real; Weaviate cannot run on the test machines (no image can
be had), so this renders the role's own templates with Ansible's templar for both stores and
checks what compose and Dify will read.
"""

from pathlib import Path

import pytest
import yaml
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar, trust_as_template

ROOT = Path(__file__).resolve().parents[2]
ROLE = ROOT / "roles" / "dify"
LOADER = DataLoader()
SECRETS = {name: f"generated-{name}-0123456789" for name in (
    "secret_key", "db_password", "redis_password", "plugin_daemon_key", "plugin_dify_inner_api_key",
    "sandbox_api_key", "weaviate_api_key", "pgvector_password")}


def trusted(data):
    def walk(value):
        if isinstance(value, str):
            return trust_as_template(value)
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        return value
    return {k: walk(v) for k, v in data.items()}


def render(template, store):
    variables = {}
    variables.update(trusted(LOADER.load_from_file(str(ROLE / "defaults" / "main.yml"))))
    variables.update(trusted(LOADER.load_from_file(str(ROLE / "vars" / "main.yml"))))
    variables.update({
        "dify_vector_store": store,
        "ansible_managed": "Ansible managed",
        "ansible_facts": {"processor_vcpus": 8, "memtotal_mb": 32768},
        "__dify_secrets": SECRETS,
        # set by tasks/config.yml from the rendered nginx/squid configs
        "__dify_nginx_conf_sha1": "0" * 40,
        "__dify_squid_conf_sha1": "0" * 40,
    })
    templar = Templar(loader=LOADER, variables=variables)
    return templar.template(trust_as_template((ROLE / "templates" / template).read_text()))


def env_of(text):
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))


@pytest.mark.parametrize("store,absent", [("weaviate", "pgvector"), ("pgvector", "weaviate")])
def test_compose_runs_exactly_the_chosen_vector_store(store, absent):
    compose = yaml.safe_load(render("docker-compose.yaml.j2", store))
    services = compose["services"]
    assert store in services and absent not in services
    assert services[store]["profiles"] == [store]


def test_weaviate_requires_the_generated_key_and_persists_its_data():
    weaviate = yaml.safe_load(render("docker-compose.yaml.j2", "weaviate"))["services"]["weaviate"]
    env = weaviate["environment"]
    assert env["AUTHENTICATION_ANONYMOUS_ACCESS_ENABLED"] == "false"
    assert env["AUTHENTICATION_APIKEY_ALLOWED_KEYS"].startswith("${WEAVIATE_API_KEY:?")
    assert "./volumes/weaviate:/var/lib/weaviate" in weaviate["volumes"]


def test_env_points_dify_at_weaviate_with_the_generated_key():
    env = env_of(render("env.j2", "weaviate"))
    assert env["VECTOR_STORE"] == "weaviate"
    assert env["WEAVIATE_ENDPOINT"] == "http://weaviate:8080"
    assert env["WEAVIATE_API_KEY"] == SECRETS["weaviate_api_key"]
    assert env["COMPOSE_PROFILES"] == "weaviate,postgresql"
