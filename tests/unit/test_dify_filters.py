"""Unit tests of plugins/filter/dify_tuning.py (the dify role's tuned limits)."""

import importlib.util
import os

import pytest
from ansible.errors import AnsibleFilterError

_PATH = os.path.join(os.path.dirname(__file__), "..", "..", "plugins", "filter", "dify_tuning.py")
_spec = importlib.util.spec_from_file_location("dify_tuning", _PATH)
dify_tuning = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(dify_tuning)


def test_small_host_gets_one_of_each():
    limits = dify_tuning.dify_tuned_limits(1, 2048)
    assert limits["server_worker_amount"] == 1
    assert limits["celery_worker_amount"] == 1
    assert limits["postgres_shared_buffers_mb"] == 128
    assert limits["postgres_effective_cache_size_mb"] == 512
    assert limits["postgres_max_connections"] == 110


def test_cpu_bound_host():
    # 4 CPUs, 32 GiB: memory is plentiful, CPUs decide
    limits = dify_tuning.dify_tuned_limits(4, 32768)
    assert limits["server_worker_amount"] == 4
    assert limits["celery_worker_amount"] == 8
    assert limits["postgres_shared_buffers_mb"] == 2048
    assert limits["postgres_effective_cache_size_mb"] == 8192
    assert limits["postgres_max_connections"] == 30 * 12 + 50


def test_memory_bound_host():
    # 16 CPUs but 4 GiB: (4096-2048)//512 = 4 api workers, then 0 MiB left -> 1 Celery worker
    limits = dify_tuning.dify_tuned_limits(16, 4096)
    assert limits["server_worker_amount"] == 4
    assert limits["celery_worker_amount"] == 1


def test_big_host_is_capped():
    limits = dify_tuning.dify_tuned_limits(128, 1024 * 1024)
    assert limits["server_worker_amount"] == 8
    assert limits["celery_worker_amount"] == 16
    assert limits["postgres_shared_buffers_mb"] == 4096
    assert limits["postgres_effective_cache_size_mb"] == 16384


def test_strings_from_facts_are_accepted():
    assert dify_tuning.dify_tuned_limits("2", "8192") == dify_tuning.dify_tuned_limits(2, 8192)


@pytest.mark.parametrize("cpus,mem", [(0, 1024), (2, 0), ("x", 1024), (None, 1024)])
def test_bad_input_names_the_argument(cpus, mem):
    with pytest.raises(AnsibleFilterError) as err:
        dify_tuning.dify_tuned_limits(cpus, mem)
    assert "dify_tuned_limits" in str(err.value)


@pytest.mark.parametrize("url,origin,ws", [
    ("https://dify.example.com", "https://dify.example.com", "wss://dify.example.com"),
    ("https://Dify.Example.com/apps/", "https://dify.example.com", "wss://dify.example.com"),
    ("http://localhost:8080", "http://localhost:8080", "ws://localhost:8080"),
    ("http://127.0.0.1:17380/x?y=1", "http://127.0.0.1:17380", "ws://127.0.0.1:17380"),
])
def test_origin_and_ws(url, origin, ws):
    assert dify_tuning.dify_origin(url) == origin
    assert dify_tuning.dify_ws_url(url) == ws


@pytest.mark.parametrize("url", ["dify.example.com", "ftp://x", "https://", 42])
def test_bad_url(url):
    with pytest.raises(AnsibleFilterError):
        dify_tuning.dify_origin(url)


def test_filter_map():
    names = set(dify_tuning.FilterModule().filters())
    assert names == {"dify_tuned_limits", "dify_origin", "dify_ws_url", "dify_archives"}


def test_archives_normalised():
    assert dify_tuning.dify_archives(["/a.tar", {"path": "/b.tar", "remote": True}, {"path": "/c.tar"}]) == [
        {"path": "/a.tar", "remote": False},
        {"path": "/b.tar", "remote": True},
        {"path": "/c.tar", "remote": False},
    ]
    assert dify_tuning.dify_archives([]) == []


@pytest.mark.parametrize("items", ["/a.tar", [42], [{"remote": True}], [{"path": "/a", "where": "x"}]])
def test_archives_bad(items):
    with pytest.raises(AnsibleFilterError):
        dify_tuning.dify_archives(items)
