"""Filters of the dify role: tuned limits derived from the host, URL helpers.

Pure functions (no I/O); unit tests: tests/unit/test_dify_filters.py.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from urllib.parse import urlsplit

from ansible.errors import AnsibleFilterError

DOCUMENTATION = """
name: dify_tuning
short_description: tuned limits and URL helpers for the dify role
description:
  - C(dify_tuned_limits) derives worker counts and PostgreSQL memory settings from CPUs and memory.
  - C(dify_origin) reduces a public URL to its origin (scheme://host[:port]).
  - C(dify_ws_url) turns a public URL into the WebSocket URL of the same origin.
  - C(dify_archives) normalises the items of dify_image_archives to {path, remote}.
"""

# Memory the rest of the stack needs before api/worker processes are counted (MiB):
# PostgreSQL, Redis, nginx, squid, web, plugin daemon, sandbox.
STACK_RESERVE_MB = 2048
API_WORKER_MB = 512      # one gunicorn/gevent api worker
CELERY_WORKER_MB = 384   # one Celery worker process
MAX_API_WORKERS = 8
MAX_CELERY_WORKERS = 16


def _positive_int(value, name):
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise AnsibleFilterError("dify_tuned_limits: %s must be an integer, got %r" % (name, value))
    if number < 1:
        raise AnsibleFilterError("dify_tuned_limits: %s must be >= 1, got %r" % (name, value))
    return number


def dify_tuned_limits(cpus, memory_mb):
    """Worker counts and database memory for a host with `cpus` and `memory_mb`.

    - api workers (gevent, SERVER_WORKER_AMOUNT): one per CPU, bounded by the memory
      left after the stack's reserve (512 MiB each), 1..8;
    - Celery workers (CELERY_WORKER_AMOUNT): two per CPU (indexing waits on the
      embedding server), bounded by the memory left after the api workers
      (384 MiB each), 1..16;
    - PostgreSQL shared_buffers = memory/16 (128..4096 MiB) and
      effective_cache_size = memory/4 (512..16384 MiB): the host also runs model
      servers, so the database takes a modest share;
    - max_connections: enough for every api/Celery worker's pool plus the plugin daemon.
    """
    cpus = _positive_int(cpus, "cpus")
    memory_mb = _positive_int(memory_mb, "memory_mb")
    free = max(0, memory_mb - STACK_RESERVE_MB)
    api = max(1, min(cpus, free // API_WORKER_MB, MAX_API_WORKERS))
    free_after_api = max(0, free - api * API_WORKER_MB)
    celery = max(1, min(cpus * 2, free_after_api // CELERY_WORKER_MB, MAX_CELERY_WORKERS))
    shared_buffers = max(128, min(memory_mb // 16, 4096))
    effective_cache = max(512, min(memory_mb // 4, 16384))
    max_connections = max(100, 30 * (api + celery) + 50)
    return {
        "server_worker_amount": api,
        "celery_worker_amount": celery,
        "postgres_shared_buffers_mb": shared_buffers,
        "postgres_effective_cache_size_mb": effective_cache,
        "postgres_max_connections": max_connections,
    }


def _split(url, who):
    if not isinstance(url, str):
        raise AnsibleFilterError("%s: expected a URL string, got %r" % (who, url))
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise AnsibleFilterError("%s: %r is not an http(s) URL with a host" % (who, url))
    return parts


def dify_origin(url):
    """'https://dify.example.com/some/path' -> 'https://dify.example.com' (port kept)."""
    parts = _split(url, "dify_origin")
    return "%s://%s" % (parts.scheme, parts.netloc.split("@")[-1].lower())


def dify_ws_url(url):
    """'https://dify.example.com' -> 'wss://dify.example.com'; http -> ws."""
    parts = _split(url, "dify_ws_url")
    scheme = "wss" if parts.scheme == "https" else "ws"
    return "%s://%s" % (scheme, parts.netloc.split("@")[-1].lower())


def dify_archives(items):
    """Normalise dify_image_archives: 'a.tar' -> {'path': 'a.tar', 'remote': False};
    {'path': 'b.tar', 'remote': True} is kept (remote = the path is on the managed host)."""
    if not isinstance(items, (list, tuple)):
        raise AnsibleFilterError("dify_image_archives must be a list, got %r" % (items,))
    out = []
    for item in items:
        if isinstance(item, str):
            out.append({"path": item, "remote": False})
        elif isinstance(item, dict) and isinstance(item.get("path"), str) and set(item) <= {"path", "remote"}:
            out.append({"path": item["path"], "remote": bool(item.get("remote", False))})
        else:
            raise AnsibleFilterError("dify_image_archives: each item is a path or {path, remote}, got %r" % (item,))
    return out


class FilterModule(object):
    def filters(self):
        return {
            "dify_tuned_limits": dify_tuned_limits,
            "dify_origin": dify_origin,
            "dify_ws_url": dify_ws_url,
            "dify_archives": dify_archives,
        }
