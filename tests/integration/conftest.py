"""Integration tests against REAL Dify: its api and Celery worker from upstream source (tests/real_dify),
with the plugin daemon played by tests/plugin_daemon_standin running the real provider plugin code
against real llama.cpp servers. Started once per pytest session (``real_dify``), torn down at the end.

Roles and modules run through ansible-runner (connection local), exactly as ansible-playbook runs them.
"""

import copy
import json
import os
import sys

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TESTS = os.path.join(ROOT, "tests")
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)
MODULE_UTILS = os.path.join(ROOT, "plugins", "module_utils")

COLLECTIONS = os.path.join(ROOT, "collections")  # ansible_collections/dify_gpu/dify -> the repository
if COLLECTIONS not in sys.path:
    sys.path.insert(0, COLLECTIONS)

import importlib  # noqa: E402

import ansible.module_utils  # noqa: E402

# The modules import their module_utils as the collection dify_gpu.dify
# (ansible_collections.dify_gpu.dify.plugins.module_utils.*); the tests' older name
# ansible.module_utils.<name> is the SAME module object (one DifyError class, one patch target).
for _name in ("dify_client", "dify_knowledge", "dify_knowledge_api", "dify_resource"):
    _mod = importlib.import_module("ansible_collections.dify_gpu.dify.plugins.module_utils." + _name)
    sys.modules["ansible.module_utils." + _name] = _mod
    setattr(ansible.module_utils, _name, _mod)

from real_dify.harness import RealDify  # noqa: E402

OAC_ID = "langgenius/openai_api_compatible"
TEI_ID = "langgenius/huggingface_tei"
ADMIN_EMAIL = "admin@example.com"


@pytest.fixture(scope="session")
def real_dify():
    """Real Dify 1.15.0 (the version roles/dify deploys), fresh databases, for the whole session.

    ``DIFY_TEST_PORT_OFFSET`` (default 0) shifts every port of the harness (17610-17629) and gives it its
    own run directory, so a second run can go on beside one that holds the default ports."""
    harness = RealDify(port_offset=int(os.environ.get("DIFY_TEST_PORT_OFFSET") or 0))
    harness.start()
    try:
        yield harness
    finally:
        harness.stop()


def build_package(src, out_dir, version=None):
    """A .difypkg of a vendored provider plugin (optionally with another manifest version), the way an
    offline host gets one; returns its path."""
    from plugin_daemon_standin import difypkg

    path = os.path.join(out_dir, "%s-%s.difypkg" % (os.path.basename(src.rstrip("/")), version or "upstream"))
    difypkg.build(src, path, set_version=version, uv=os.path.join(os.path.dirname(sys.executable), "uv"))
    return path


@pytest.fixture(scope="session")
def plugin_packages(real_dify, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("difypkg"))
    models = os.path.join(real_dify.plugins_src, "models")
    return {
        OAC_ID: build_package(os.path.join(models, "openai_api_compatible"), out),
        TEI_ID: build_package(os.path.join(models, "huggingface_tei"), out),
        "_dir": out,
        "_models": models,
    }


class RoleRun(object):
    def __init__(self, result):
        self.result = result
        self.rc = result.rc
        self.stats = result.stats or {}
        self.events = list(result.events)
        self.stdout = result.stdout.read()

    @property
    def changed(self):
        return self.stats.get("changed", {})

    def failures(self):
        out = []
        for ev in self.events:
            if ev.get("event") in ("runner_on_failed", "runner_item_on_failed"):
                data = ev["event_data"]
                out.append((data.get("task"), data.get("res", {}).get("msg", "")))
        return out

    def changed_tasks(self):
        return sorted(set(ev["event_data"]["task"] for ev in self.events
                          if ev.get("event") in ("runner_on_ok", "runner_item_on_ok")
                          and ev["event_data"].get("res", {}).get("changed")))

    def results(self, task):
        """Module results of one task: one per loop item for a loop, else the task's own."""
        mine = [ev for ev in self.events if ev["event_data"].get("task") == task] if self.events else []
        items = [ev["event_data"]["res"] for ev in mine if ev.get("event") in ("runner_item_on_ok",
                                                                               "runner_item_on_failed")]
        return items or [ev["event_data"]["res"] for ev in mine
                         if ev.get("event") in ("runner_on_ok", "runner_on_failed")]


def _envvars(tmp):
    bindir = os.path.dirname(sys.executable)
    return {
        "ANSIBLE_ROLES_PATH": os.path.join(ROOT, "roles"),
        "ANSIBLE_LIBRARY": os.path.join(ROOT, "plugins", "modules"),
        "ANSIBLE_MODULE_UTILS": os.path.join(ROOT, "plugins", "module_utils"),
        "ANSIBLE_FILTER_PLUGINS": os.path.join(ROOT, "plugins", "filter"),
        "ANSIBLE_ACTION_PLUGINS": os.path.join(ROOT, "plugins", "action"),
        "ANSIBLE_COLLECTIONS_PATH": os.path.join(ROOT, "collections"),
        "ANSIBLE_HOST_KEY_CHECKING": "False",
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        "ANSIBLE_PIPELINING": "True",
        "ANSIBLE_LOCAL_TEMP": os.path.join(tmp, "ansible-tmp"),
        "PATH": bindir + os.pathsep + os.environ.get("PATH", ""),
    }


@pytest.fixture(scope="session")
def ansible_run(tmp_path_factory):
    """ansible_run(playbook_text, extravars, check=False) -> RoleRun (ansible-runner, connection local)."""
    import ansible_runner

    base = tmp_path_factory.mktemp("runner")
    counter = {"n": 0}

    def run(playbook, extravars=None, check=False, verbose=False):
        counter["n"] += 1
        pdd = base / ("run%d" % counter["n"])
        (pdd / "project").mkdir(parents=True)
        (pdd / "inventory").mkdir()
        (pdd / "project" / "site.yml").write_text(playbook)
        (pdd / "inventory" / "hosts").write_text(
            "[dify]\nlocalhost ansible_connection=local ansible_python_interpreter=%s\n" % sys.executable)
        cmdline = ("--check --diff" if check else "--diff") + (" -v" if verbose else "")
        result = ansible_runner.run(private_data_dir=str(pdd), playbook="site.yml", extravars=extravars or {},
                                    envvars=_envvars(str(base)), quiet=True, cmdline=cmdline,
                                    settings={"suppress_ansible_output": True})
        return RoleRun(result)

    return run


BOOTSTRAP_PLAYBOOK = """- name: Bootstrap Dify (integration test against real Dify)
  hosts: dify
  gather_facts: false
  roles:
    - role: dify_bootstrap
"""


@pytest.fixture(scope="session")
def bootstrap_vars(real_dify, plugin_packages, tmp_path_factory):
    """Role variables of a bootstrap against the harness's Dify: its model servers, offline plugin packages."""
    host_dir = str(tmp_path_factory.mktemp("dify-host"))
    creds = os.path.join(host_dir, "bootstrap-credentials.yml")
    return {
        "dify_bootstrap_url": real_dify.url,
        "dify_bootstrap_public_url": real_dify.public_url,
        "dify_bootstrap_credentials_file": creds,
        "dify_bootstrap_facts_dir": os.path.join(host_dir, "facts.d"),
        "dify_bootstrap_import_credentials_dir": "",
        "dify_bootstrap_plugin_packages": {OAC_ID: plugin_packages[OAC_ID], TEI_ID: plugin_packages[TEI_ID]},
        "dify_bootstrap_plugin_wait_timeout": 600,
        "dify_bootstrap_wait_timeout": 60,
        "model_servers_dify_endpoints": real_dify.model_endpoints(),
    }


@pytest.fixture(scope="session")
def run_bootstrap(ansible_run, bootstrap_vars):
    def run(extravars=None, check=False, verbose=False):
        variables = copy.deepcopy(bootstrap_vars)
        variables.update(extravars or {})
        return ansible_run(BOOTSTRAP_PLAYBOOK, variables, check=check, verbose=verbose)

    return run


def module_playbook(module, args, register=True):
    """A one-task playbook running ``module`` with ``args`` (JSON is valid YAML)."""
    return ("- hosts: dify\n  gather_facts: false\n  tasks:\n    - name: run %s\n      %s: %s\n"
            % (module, module, json.dumps(args)))


def stored_credentials(path):
    """The bootstrap's credentials file (YAML) as a dict."""
    import yaml

    with open(path) as fh:
        return yaml.safe_load(fh)
