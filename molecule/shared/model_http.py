"""HTTP helpers the model server scenarios' testinfra tests share (molecule/model_servers*)."""

import json
import math
import urllib.request


def post(url, body, timeout=60):
    """POST a JSON body, return the decoded JSON answer."""
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - loopback test server
        return json.load(resp)


def get(url, timeout=60):
    """GET, return the decoded JSON answer."""
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - loopback test server
        return json.load(resp)


def metric(url, name):
    """The value of one Prometheus line NAME (e.g. 'x{path="/v1/embeddings"}') at URL; 0 when absent."""
    with urllib.request.urlopen(url, timeout=30) as resp:  # noqa: S310 - loopback test server
        for line in resp.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
    return 0.0


def cosine(a, b):
    """Cosine similarity of two vectors."""
    dot = sum(x * y for x, y in zip(a, b))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))
