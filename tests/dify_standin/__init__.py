"""Dify API stand-in: a test double of Dify's HTTP API (NOT Dify itself).

See README.md and :func:`dify_standin.server.make_server`.
"""

__all__ = ["make_server"]


def make_server(*args, **kwargs):
    from .server import make_server as _make

    return _make(*args, **kwargs)
