#!/usr/bin/env python3
"""Wait until every model server is healthy and serves its model name (model_servers role).

  check_servers.py SPEC.json TIMEOUT
SPEC: [{"name", "health": url, "models": url or null, "served_name"}, and for a TEI-compatible front
also "info": url, "model_type" (embedding | reranker), "max_client_batch_size"]: health must answer 200,
/v1/models list the served name, /info carry the model id, type and client batch huggingface_tei reads.
The API key, if any, comes from the MODEL_SERVERS_API_KEY environment variable. Prints one JSON line
per server and exits 1 if any server is not ready within TIMEOUT seconds.
"""

import json
import os
import sys
import time
import urllib.request


def get(url, key):
    headers = {"Authorization": "Bearer " + key} if key else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as resp:  # noqa: S310
        return resp.status, resp.read()


def check(server, key):
    status, _ = get(server["health"], None)
    if status != 200:
        return "health answered %s" % status
    if server.get("models"):
        status, body = get(server["models"], key)
        ids = [m.get("id") for m in json.loads(body).get("data", [])]
        if server["served_name"] not in ids:
            return "serves %s, not %s" % (ids, server["served_name"])
    if server.get("info"):
        status, body = get(server["info"], key)
        info = json.loads(body)
        got = (info.get("model_id"), sorted(info.get("model_type") or {}), info.get("max_client_batch_size"))
        want = (server["served_name"], [server["model_type"]], server["max_client_batch_size"])
        if got != want:
            return "/info answers model_id, model_type, max_client_batch_size = %s, not %s" % (got, want)
    return None


def main(argv):
    with open(argv[1], encoding="utf-8") as fh:
        servers = json.load(fh)
    deadline = time.time() + float(argv[2])
    key = os.environ.get("MODEL_SERVERS_API_KEY") or None
    pending = {s["name"]: s for s in servers}
    errors = {}
    while pending and time.time() < deadline:
        for name, server in list(pending.items()):
            try:
                errors[name] = check(server, key)
            except (OSError, ValueError) as exc:
                errors[name] = str(exc)
            if errors[name] is None:
                del pending[name]
                print(json.dumps({"name": name, "ready": True}), flush=True)
        if pending:
            time.sleep(2)
    for name in pending:
        print(json.dumps({"name": name, "ready": False, "error": errors.get(name)}), flush=True)
    return 1 if pending else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
