#!/usr/bin/python3
"""cloudflared-standin: a TEST DOUBLE of Cloudflare's cloudflared connector.

It is NOT cloudflared and never talks to Cloudflare. The edge Molecule scenario
installs it (as the package "cloudflared", description "cloudflared-standin")
because Cloudflare's repository cannot be reached from the test machines.
It mimics the parts of the command line the cloudflared role uses:

  cloudflared --version | version
  cloudflared [--config FILE] tunnel [flags] ingress validate
  cloudflared [--no-autoupdate] [--config FILE] tunnel [--metrics ADDR] [--loglevel L] run [--token T]

`tunnel run` checks its inputs as the real connector would (a token that decodes
to {"a", "t", "s"}; or a config with `tunnel`, a readable credentials file and
valid ingress rules), then stays in the foreground and serves GET /ready on the
metrics address: 200 {"status": 200, "readyConnections": 1, ...}.
"""
import base64
import http.server
import json
import os
import re
import signal
import sys

VERSION = "cloudflared version 2025.11.1-standin (cloudflared-standin, a test double)"


def fail(msg, code=1):
    sys.stderr.write("cloudflared-standin: " + msg + "\n")
    sys.exit(code)


def parse(argv):
    """Split argv into flags (name -> value) and positional words."""
    flags, words = {}, []
    valued = {"--config", "--metrics", "--loglevel", "--token", "--protocol", "--token-file", "--edge-ip-version"}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--"):
            if "=" in arg:
                name, value = arg.split("=", 1)
                flags[name] = value
            elif arg in valued:
                if i + 1 >= len(argv):
                    fail("flag needs an argument: " + arg)
                flags[arg] = argv[i + 1]
                i += 1
            else:
                flags[arg] = True
        else:
            words.append(arg)
        i += 1
    return flags, words


def read_config(path):
    """Very small reader for the config.yml the role writes (no PyYAML on minimal hosts)."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as err:
        fail("cannot read config %s: %s" % (path, err))
    top = {}
    rules = []
    in_ingress = False
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if not line.startswith(" "):
            in_ingress = line.startswith("ingress:")
            match = re.match(r"^([A-Za-z-]+):\s*(.*)$", line)
            if match:
                top[match.group(1)] = match.group(2).strip()
            continue
        if in_ingress:
            stripped = line.strip()
            if stripped.startswith("- "):
                rules.append({})
                stripped = stripped[2:]
            match = re.match(r"^(hostname|service|path):\s*(.*)$", stripped)
            if match and rules:
                rules[-1][match.group(1)] = match.group(2).strip().strip("'\"")
    return top, rules


def validate_ingress(rules):
    if not rules:
        fail("Validation failed: The config file doesn't contain any ingress rules")
    for index, rule in enumerate(rules):
        service = rule.get("service", "")
        if not service:
            fail("Validation failed: rule #%d has no service" % (index + 1))
        if not re.match(r"^(https?|tcp|ssh|rdp|unix|http_status):", service):
            fail("Validation failed: rule #%d: %r is not a valid service" % (index + 1, service))
    last = rules[-1]
    if last.get("hostname") not in (None, "", "*") or last.get("path"):
        fail("Validation failed: The last ingress rule must match all URLs (i.e. it should not have a hostname or path filter)")


def serve_ready(address, mode):
    host, _, port = address.rpartition(":")

    class Ready(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server API)
            if self.path != "/ready":
                self.send_error(404)
                return
            body = json.dumps({"status": 200, "readyConnections": 1, "connectorId": "standin",
                               "standin": True, "mode": mode}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer((host or "127.0.0.1", int(port)), Ready)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    sys.stdout.write("cloudflared-standin: tunnel running (%s mode), ready on %s/ready\n" % (mode, address))
    sys.stdout.flush()
    server.serve_forever()


def main(argv):
    flags, words = parse(argv)
    if "--version" in flags or "-v" in argv[:1] or words[:1] == ["version"]:
        print(VERSION)
        return 0
    if words[:1] != ["tunnel"]:
        fail("only 'tunnel', 'version' and '--version' are implemented by this stand-in")
    config = flags.get("--config")
    if words[1:3] == ["ingress", "validate"]:
        if not config:
            fail("ingress validate needs --config in this stand-in")
        _, rules = read_config(config)
        validate_ingress(rules)
        print("Validating rules from %s\nOK" % config)
        return 0
    if words[1:2] != ["run"]:
        fail("unsupported tunnel subcommand: %s" % " ".join(words[1:]))
    metrics = flags.get("--metrics", "127.0.0.1:20241")
    token = flags.get("--token") or os.environ.get("TUNNEL_TOKEN", "")
    if token:
        try:
            data = json.loads(base64.b64decode(token, validate=True))
            assert all(key in data for key in ("a", "t", "s"))
        except Exception:  # pylint: disable=broad-except
            fail("Provided Tunnel token is not valid.")
        serve_ready(metrics, "token")
        return 0
    if not config:
        fail("Cannot determine default configuration path. No file [config.yml config.yaml] in [~/.cloudflared]")
    top, rules = read_config(config)
    if not top.get("tunnel"):
        fail("no tunnel ID in %s" % config)
    credentials = top.get("credentials-file", "")
    try:
        with open(credentials, encoding="utf-8") as handle:
            creds = json.load(handle)
    except (OSError, ValueError) as err:
        fail("cannot read the tunnel credentials %s: %s" % (credentials, err))
    if creds.get("TunnelID") != top["tunnel"]:
        fail("credentials file is for tunnel %s, config names %s" % (creds.get("TunnelID"), top["tunnel"]))
    validate_ingress(rules)
    serve_ready(metrics, "local")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
