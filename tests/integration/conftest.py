"""Integration tests: the dify_bootstrap role run by ansible-runner (connection local) against the
Dify API stand-in (tests/dify_standin, a test double -- not Dify) served from a thread of pytest.

Model servers are not called: the stand-in checks the credentials' shape only, unless started
with check_model_endpoints=True (then it calls them like Dify does).
"""

import os
import sys
import threading

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TESTS = os.path.join(ROOT, "tests")
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)

from dify_standin.server import make_server  # noqa: E402

P = "langgenius/openai_api_compatible/openai_api_compatible"
# model_servers_dify_endpoints as the model_servers role publishes it (contract 2)
ENDPOINTS = [
    {"name": "llm", "kind": "llm", "model_type": "llm", "plugin_id": "langgenius/openai_api_compatible",
     "provider": P, "model": "tiny-chat", "max_batch": 1,
     "credentials": {"endpoint_url": "http://host.docker.internal:17201/v1", "endpoint_model_name": "tiny-chat",
                     "mode": "chat", "context_size": 4096, "max_tokens_to_sample": 512}},
    {"name": "embed", "kind": "embedding", "model_type": "text-embedding",
     "plugin_id": "langgenius/openai_api_compatible", "provider": P, "model": "tiny-embed", "max_batch": 32,
     "credentials": {"endpoint_url": "http://host.docker.internal:17202/v1", "endpoint_model_name": "tiny-embed",
                     "context_size": 512, "max_chunks": 32}},
    {"name": "rerank", "kind": "rerank", "model_type": "rerank", "plugin_id": "langgenius/openai_api_compatible",
     "provider": P, "model": "tiny-rerank", "max_batch": 32,
     "credentials": {"endpoint_url": "http://host.docker.internal:17203/v1", "endpoint_model_name": "tiny-rerank",
                     "context_size": 512, "api_key": "sk-local-rerank-1"}},
]

PLAYBOOK = """- name: Bootstrap Dify (integration test against the stand-in)
  hosts: dify
  gather_facts: false
  roles:
    - role: dify_bootstrap
"""


class Standin(object):
    def __init__(self, **options):
        options.setdefault("task_seconds", 0.2)
        self.srv = make_server(("127.0.0.1", 0), **options)
        self.state = self.srv.standin
        self.url = "http://127.0.0.1:%d" % self.srv.server_address[1]
        self.thread = threading.Thread(target=self.srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def stop(self):
        self.srv.shutdown()
        self.srv.server_close()

    def mutations(self, since=0):
        """Requests that could change state (everything but GET/HEAD, logins and token refreshes)."""
        return [(r["method"], r["path"]) for r in self.state.requests[since:]
                if r["method"] not in ("GET", "HEAD")
                and r["path"] not in ("/console/api/login", "/console/api/refresh-token")]


@pytest.fixture
def endpoints():
    """A fresh copy of ENDPOINTS (contract 2 shape)."""
    import copy

    return copy.deepcopy(ENDPOINTS)


@pytest.fixture
def standin():
    s = Standin()
    yield s
    s.stop()


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


@pytest.fixture
def run_role(tmp_path):
    import ansible_runner

    counter = {"n": 0}

    def run(url, extravars=None, check=False, creds_dir=None, verbose=False):
        counter["n"] += 1
        pdd = tmp_path / ("runner%d" % counter["n"])
        (pdd / "project").mkdir(parents=True)
        (pdd / "inventory").mkdir()
        (pdd / "project" / "site.yml").write_text(PLAYBOOK)
        (pdd / "inventory" / "hosts").write_text(
            "[dify]\nlocalhost ansible_connection=local ansible_python_interpreter=%s\n" % sys.executable)
        variables = {
            "dify_bootstrap_url": url,
            "dify_bootstrap_public_url": "https://dify.example.test",
            "dify_bootstrap_credentials_dir": str(creds_dir or (tmp_path / "creds")),
            "dify_bootstrap_retries": 1,
            "model_servers_dify_endpoints": ENDPOINTS,
        }
        variables.update(extravars or {})
        bindir = os.path.dirname(sys.executable)
        envvars = {
            "ANSIBLE_ROLES_PATH": os.path.join(ROOT, "roles"),
            "ANSIBLE_LIBRARY": os.path.join(ROOT, "plugins", "modules"),
            "ANSIBLE_MODULE_UTILS": os.path.join(ROOT, "plugins", "module_utils"),
            "ANSIBLE_FILTER_PLUGINS": os.path.join(ROOT, "plugins", "filter"),
            "ANSIBLE_HOST_KEY_CHECKING": "False",
            "ANSIBLE_RETRY_FILES_ENABLED": "False",
            "ANSIBLE_PIPELINING": "True",
            "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-tmp"),
            "PATH": bindir + os.pathsep + os.environ.get("PATH", ""),
        }
        result = ansible_runner.run(private_data_dir=str(pdd), playbook="site.yml", extravars=variables,
                                    envvars=envvars, quiet=True, cmdline=("--check --diff" if check else "--diff") + (" -v" if verbose else ""),
                                    settings={"suppress_ansible_output": True})
        return RoleRun(result)

    return run

