"""dify_setup against a second real Dify api started with INIT_PASSWORD and plain-http URLs
(its own database: a fresh, not-set-up Dify). Also covers the plain cookie names (no __Host- prefix)."""

import pytest

from ansible.module_utils.dify_client import DifyClient
from conftest import module_playbook

INIT = "Init-pass-42"
ADMIN = {"admin_email": "init-admin@example.com", "admin_password": "Init-admin-pw-7"}


@pytest.fixture(scope="module")
def init_dify(real_dify):
    port = real_dify.ports["api_init"]
    return real_dify.start_extra_api("init", port, "http://127.0.0.1:%d" % port, {"INIT_PASSWORD": INIT})


def setup(ansible_run, url, **extra):
    args = dict(ADMIN, url=url, **extra)
    return ansible_run(module_playbook("dify_setup", args))


def test_without_init_password_it_fails_before_any_write_and_names_the_variable(init_dify, ansible_run):
    assert DifyClient(init_dify).request("GET", "/console/api/init", auth=False) == {"status": "not_started"}
    run = setup(ansible_run, init_dify)
    assert run.rc != 0
    ((_task, msg),) = run.failures()
    assert "INIT_PASSWORD" in msg and "dify_bootstrap_init_password" in msg, msg
    assert DifyClient(init_dify).setup_status() == "not_started"


def test_a_wrong_init_password_is_named(init_dify, ansible_run):
    run = setup(ansible_run, init_dify, init_password="not-the-one")
    assert run.rc != 0
    ((_task, msg),) = run.failures()
    assert "init_password does not match" in msg, msg
    assert DifyClient(init_dify).setup_status() == "not_started"


def test_with_init_password_setup_then_noop(init_dify, ansible_run):
    run = setup(ansible_run, init_dify, init_password=INIT)
    assert run.rc == 0, run.failures()
    assert run.changed == {"localhost": 1}
    (res,) = run.results("run dify_setup")
    assert res["workspace_id"] and res["setup_step"] == "not_started"
    again = setup(ansible_run, init_dify, init_password=INIT)
    assert again.rc == 0 and again.changed == {}, again.failures()
    client = DifyClient(init_dify, **ADMIN)
    client.login()
    # plain-http URLs: cookies without the __Host- prefix
    assert {"access_token", "refresh_token", "csrf_token"} <= set(client.cookies)
    assert not any(name.startswith("__Host-") for name in client.cookies)


def test_get_workspaces_current_is_405(init_dify):
    """Dify 1.15.0 serves the current workspace to POST only (dify_setup uses POST)."""
    client = DifyClient(init_dify, **ADMIN)
    client.login()
    status, _, _ = client.raw("GET", "/console/api/workspaces/current", headers=client._auth_headers())
    assert status == 405
    assert client.request("POST", "/console/api/workspaces/current", safe=True)["id"]
