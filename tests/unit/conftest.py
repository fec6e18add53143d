"""pytest setup for the unit tests.

* the collection dify_gpu.dify is importable (collections/ on sys.path): the modules import
  ``ansible_collections.dify_gpu.dify.plugins.module_utils.dify_client``, and
  ``ansible.module_utils.dify_client`` is the same module object (the tests' shorter name);
* ``dify_standin`` (tests/dify_standin, the Dify API stand-in) is importable;
* fixtures: ``standin`` (a stand-in server in a thread on a free port) and
  ``run_module`` (runs a plugins/modules/dify_* module in-process and returns
  its result dict, ``failed`` set when it called fail_json).
"""

import importlib.util
import os
import sys
import threading

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TESTS = os.path.join(ROOT, "tests")
MODULE_UTILS = os.path.join(ROOT, "plugins", "module_utils")
MODULES = os.path.join(ROOT, "plugins", "modules")

if TESTS not in sys.path:
    sys.path.insert(0, TESTS)

COLLECTIONS = os.path.join(ROOT, "collections")  # ansible_collections/dify_gpu/dify -> the repository
if COLLECTIONS not in sys.path:
    sys.path.insert(0, COLLECTIONS)

import importlib  # noqa: E402

import ansible.module_utils  # noqa: E402
from ansible.plugins.loader import init_plugin_loader  # noqa: E402

# Ansible's collection finder serves ansible_collections.* from collections/ (before anything imports
# it as a plain namespace package), so the roles' FQCN filters resolve in rendering tests too.
init_plugin_loader([COLLECTIONS])

# The modules import their module_utils as the collection dify_gpu.dify
# (ansible_collections.dify_gpu.dify.plugins.module_utils.*); the tests' older name
# ansible.module_utils.<name> is the SAME module object (one DifyError class, one patch target).
for _name in ("dify_client", "dify_knowledge", "dify_knowledge_api", "dify_resource"):
    _mod = importlib.import_module("ansible_collections.dify_gpu.dify.plugins.module_utils." + _name)
    sys.modules["ansible.module_utils." + _name] = _mod
    setattr(ansible.module_utils, _name, _mod)

from ansible.module_utils import basic  # noqa: E402
from ansible.module_utils.testing import patch_module_args  # noqa: E402
from dify_standin.server import make_server  # noqa: E402

ADMIN = {"admin_email": "admin@example.com", "admin_password": "Sup3rSecret"}


class ModuleExit(Exception):
    def __init__(self, result):
        Exception.__init__(self, result)
        self.result = result


def _exit_json(self, **kwargs):
    kwargs.setdefault("changed", False)
    raise ModuleExit(kwargs)


def _fail_json(self, msg, **kwargs):
    kwargs["failed"] = True
    kwargs["msg"] = msg
    raise ModuleExit(kwargs)


def load_filter(name):
    """plugins/filter/<name>.py as a Python module (its functions are plain functions)."""
    spec = importlib.util.spec_from_file_location("dify_test_filter_" + name,
                                                  os.path.join(ROOT, "plugins", "filter", name + ".py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def load_module(name):
    spec = importlib.util.spec_from_file_location("dify_test_" + name, os.path.join(MODULES, name + ".py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class StandinHandle(object):
    def __init__(self, srv):
        self.srv = srv
        self.state = srv.standin
        self.url = "http://127.0.0.1:%d" % srv.server_address[1]

    @property
    def requests(self):
        return self.state.requests

    def calls(self, since=0):
        """(method, path) of the requests seen, /health excluded."""
        return [(r["method"], r["path"]) for r in self.state.requests[since:] if r["path"] != "/health"]

    def mark(self):
        return len(self.state.requests)

    def args(self, **extra):
        base = dict(url=self.url, retry_delay=0.01, **ADMIN)
        base.update(extra)
        return base


def start_standin(**options):
    options.setdefault("task_seconds", 0.15)
    options.setdefault("index_seconds", 0.2)
    srv = make_server(("127.0.0.1", 0), **options)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    return StandinHandle(srv)


def stop_standin(handle):
    handle.srv.shutdown()
    handle.srv.server_close()


@pytest.fixture
def standin_factory():
    started = []

    def factory(**options):
        handle = start_standin(**options)
        started.append(handle)
        return handle

    yield factory
    for handle in started:
        stop_standin(handle)


@pytest.fixture
def standin(standin_factory):
    return standin_factory()


@pytest.fixture
def run_module(monkeypatch):
    monkeypatch.setattr(basic.AnsibleModule, "exit_json", _exit_json)
    monkeypatch.setattr(basic.AnsibleModule, "fail_json", _fail_json)
    cache = {}

    def run(name, args, check_mode=False, diff=True):
        if name not in cache:
            cache[name] = load_module(name)
        args = dict(args)
        if check_mode:
            args["_ansible_check_mode"] = True
        args["_ansible_diff"] = diff
        with patch_module_args(args):
            try:
                cache[name].main()
            except ModuleExit as exc:
                return exc.result
        raise AssertionError("module %s returned without exit_json/fail_json" % name)

    return run


@pytest.fixture
def ready(standin, run_module):
    """A stand-in that is set up and has the openai_api_compatible plugin."""
    res = run_module("dify_setup", standin.args())
    assert res["changed"], res
    res = run_module("dify_plugin", standin.args(plugin_id="langgenius/openai_api_compatible", poll_interval=0.05))
    assert res["changed"], res
    return standin
