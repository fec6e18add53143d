"""The dify role's version table lists only versions whose upstream compose the role matches.

Every row of dify_versions must be in SUPPORTED, which says what was compared for it. When
Dify's own source of that version is at hand (../shared/upstream, see its README: the 1.15.0
api/docker archive with content hashes), the comparison is redone here: the services of
upstream's docker/docker-compose.yaml against the role's rendered template, and the images of
the version row and of dify_infra_images against upstream's.
"""

import tarfile
from pathlib import Path

import pytest
import yaml

from role_render import RoleRender
from real_dify.upstream import SHARED_UPSTREAM  # ../shared/upstream, or REAL_DIFY_UPSTREAM_DIR

ROOT = Path(__file__).resolve().parents[2]
UPSTREAM = Path(SHARED_UPSTREAM)
DEFAULTS = yaml.safe_load((ROOT / "roles" / "dify" / "defaults" / "main.yml").read_text())

# version -> what was compared with the role's templates/docker-compose.yaml.j2 and .env
SUPPORTED = {
    "1.15.0": ("langgenius/dify tag 1.15.0 docker/docker-compose.yaml (../shared/upstream/"
               "dify-1.15.0-api-docker.tar.gz): every service without a profile but init_permissions "
               "(the role owns volumes/app/storage instead), and the profiles the role uses "
               "(collaboration, postgresql, weaviate, pgvector), with the same images; the real api "
               "and worker of this version run in the tests (tests/real_dify)"),
}
# versions known NOT to match, and why (never add them to the table without the services)
NOT_SUPPORTED = {
    "1.16.0": "adds agent_backend, local_sandbox and agent_ssrf_proxy with their secrets",
    "1.16.1": "adds agent_backend, local_sandbox and agent_ssrf_proxy with their secrets "
              "(BorisPolonsky/dify-helm 0.38.0-rc2, appVersion 1.16.1: agentBackend, localSandbox)",
}
ROLE_PROFILES = {"collaboration", "postgresql", "weaviate", "pgvector"}
ROLE_OMITS = {"init_permissions": "the role chowns volumes/app/storage itself"}
SECRETS = {name: "generated-%s-0123456789" % name for name in (
    "secret_key", "db_password", "redis_password", "plugin_daemon_key", "plugin_dify_inner_api_key",
    "sandbox_api_key", "weaviate_api_key", "pgvector_password")}


def test_every_row_is_a_supported_version():
    rows = set(DEFAULTS["dify_versions"])
    assert rows <= set(SUPPORTED), "rows without a compose comparison: %s" % sorted(rows - set(SUPPORTED))
    assert not rows & set(NOT_SUPPORTED), sorted(rows & set(NOT_SUPPORTED))


def test_default_version_is_the_one_tested_against_real_dify():
    assert DEFAULTS["dify_version"] == "1.15.0"
    assert DEFAULTS["dify_version"] in DEFAULTS["dify_versions"]


def rendered_services(store, collaboration=True):
    r = RoleRender("dify", "debian13", distro_vars=False, dify_vector_store=store,
                   dify_collaboration_enabled=collaboration, __dify_secrets=SECRETS,
                   __dify_nginx_conf_sha1="0" * 40, __dify_squid_conf_sha1="0" * 40,
                   ansible_facts={"processor_vcpus": 8, "memtotal_mb": 32768})
    return yaml.safe_load(r.template("docker-compose.yaml.j2"))["services"]


def upstream_compose(version):
    archive = UPSTREAM / ("dify-%s-api-docker.tar.gz" % version)
    if not archive.exists():
        pytest.skip("%s is not here (../shared/upstream)" % archive.name)
    with tarfile.open(archive) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("/docker/docker-compose.yaml"))
        return yaml.safe_load(tar.extractfile(member).read())["services"]


@pytest.mark.parametrize("version", sorted(SUPPORTED))
def test_template_services_match_upstream(version):
    upstream = upstream_compose(version)
    core = {name for name, svc in upstream.items() if not svc.get("profiles")} - set(ROLE_OMITS)
    profiled = {name for name, svc in upstream.items() if set(svc.get("profiles") or []) & ROLE_PROFILES}
    role = set(rendered_services("weaviate")) | set(rendered_services("pgvector"))
    assert core <= role, "upstream services the template lacks: %s" % sorted(core - role)
    assert role <= set(upstream), "template services upstream does not have: %s" % sorted(role - set(upstream))
    assert profiled <= role, sorted(profiled - role)
    # the services 1.16 adds are absent, so 1.16 cannot be served by this template
    assert not {"agent_backend", "local_sandbox", "agent_ssrf_proxy"} & role


@pytest.mark.parametrize("version", sorted(SUPPORTED))
def test_version_row_and_infra_images_are_upstreams(version):
    upstream = upstream_compose(version)
    row = DEFAULTS["dify_versions"][version]
    assert row["api"] == upstream["api"]["image"] == upstream["worker"]["image"]
    assert row["web"] == upstream["web"]["image"]
    assert row["plugin_daemon"] == upstream["plugin_daemon"]["image"]
    assert row["sandbox"] == upstream["sandbox"]["image"]
    for key, image in DEFAULTS["dify_infra_images"].items():
        assert image == upstream[key]["image"], key
