"""Edge scenario: host nginx in front of the Dify upstream stand-in, and the cloudflared role
with the cloudflared stand-in package. Tests run in file order; the later ones re-run the
converge playbook (nested ansible-playbook) to prove drift repair, failure modes and no_log.

Ports (edge range): upstream stand-in 17401, nginx 17480 (HTTP) / 17443 (HTTPS),
cloudflared stand-in metrics 17420. Containers share the host network, so the controller
talks to 127.0.0.1 directly.
"""
import base64
import http.client
import json
import os
import re
import socket
import ssl
import subprocess
import time
from pathlib import Path

SCENARIO = Path(os.environ.get("MOLECULE_SCENARIO_DIRECTORY", Path(__file__).resolve().parents[1]))
HTTP_PORT, HTTPS_PORT, UPSTREAM_PORT, METRICS_PORT = 17480, 17443, 17401, 17420
LIMIT = 2 * 1024 * 1024  # dify_upload_file_size_limit_mb: 2 in vars/edge.yml
SITE = "/etc/nginx/sites-available/dify.conf"
CERT = "/etc/nginx/tls/dify.crt"
CF_DIR = "/etc/cloudflared"
TUNNEL_ID = "6f1c2a9e-0d3b-4c55-9a1e-5ad1e5ad1e00"
TUNNEL_SECRET = "c3RhbmRpbi10dW5uZWwtc2VjcmV0LWRvLW5vdC1sZWFr"


# ---------------------------------------------------------------- helpers

def insecure_context():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def https(method, path, body=None, headers=None, timeout=30):
    conn = http.client.HTTPSConnection("127.0.0.1", HTTPS_PORT, context=insecure_context(), timeout=timeout)
    conn.request(method, path, body=body, headers={"Host": "localhost", **(headers or {})})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp, data


def get_ready():
    conn = http.client.HTTPConnection("127.0.0.1", METRICS_PORT, timeout=5)
    conn.request("GET", "/ready")
    resp = conn.getresponse()
    return resp.status, json.loads(resp.read() or b"{}")


def wait_ready(mode, seconds=30):
    deadline = time.time() + seconds
    last = None
    while time.time() < deadline:
        try:
            status, body = get_ready()
            last = (status, body)
            if status == 200 and body.get("mode") == mode:
                return body
        except OSError as err:
            last = err
        time.sleep(0.5)
    raise AssertionError("cloudflared stand-in not ready in %s mode: %r" % (mode, last))


def run_play(*args, playbook="converge.yml"):
    """Run a playbook of this scenario against the Molecule instance; return (rc, output)."""
    inventory = str(Path(os.environ["MOLECULE_INVENTORY_FILE"]).parent)
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
    proc = subprocess.run(
        ["ansible-playbook", "-i", inventory, str(SCENARIO / playbook), *args],
        cwd=SCENARIO, env=env, capture_output=True, text=True, timeout=900, check=False,
    )
    return proc.returncode, proc.stdout + proc.stderr


def recap_changed(output):
    match = re.search(r"edge-debian13\s*:\s*ok=\d+\s+changed=(\d+)\s+unreachable=0\s+failed=(\d+)", output)
    assert match, output[-3000:]
    return int(match.group(1)), int(match.group(2))


def sha256(host, path):
    return host.check_output("sha256sum %s", path).split()[0]


def make_token(secret):
    payload = {"a": "standin-account-0002", "t": "0b5e7a31-8c2d-4f6e-b1a0-5ad1e5ad1e01", "s": secret}
    return base64.b64encode(json.dumps(payload).encode()).decode()


# ---------------------------------------------------------------- nginx

def test_upstream_standin_answers_directly(host):  # host: keeps file order (testinfra parametrizes)
    conn = http.client.HTTPConnection("127.0.0.1", UPSTREAM_PORT, timeout=5)
    conn.request("GET", "/")
    assert conn.getresponse().read() == b"dify-upstream-standin\n"


def test_nginx_service(host):
    nginx = host.service("nginx")
    assert nginx.is_running and nginx.is_enabled
    assert host.run("nginx -t").rc == 0
    assert not host.file("/etc/nginx/sites-enabled/default").exists
    assert host.file("/etc/nginx/sites-enabled/dify.conf").linked_to == SITE
    key = host.file("/etc/nginx/tls/dify.key")
    assert (key.user, key.group, key.mode) == ("root", "root", 0o600)


def test_https_serves_the_generated_certificate(host):
    pem = host.file(CERT).content_string
    with socket.create_connection(("127.0.0.1", HTTPS_PORT), timeout=10) as sock:
        with insecure_context().wrap_socket(sock, server_hostname="localhost") as tls:
            served = tls.getpeercert(binary_form=True)
    assert served == ssl.PEM_cert_to_DER_cert(pem)
    # The certificate is valid for the server name: trust it alone and check the host name.
    ctx = ssl.create_default_context(cadata=pem)
    with socket.create_connection(("127.0.0.1", HTTPS_PORT), timeout=10) as sock:
        with ctx.wrap_socket(sock, server_hostname="localhost") as tls:
            assert tls.version() in ("TLSv1.2", "TLSv1.3")


def test_http_redirects_to_https(host):  # host: keeps file order (testinfra parametrizes)
    conn = http.client.HTTPConnection("127.0.0.1", HTTP_PORT, timeout=10)
    conn.request("GET", "/apps?x=1", headers={"Host": "localhost:%d" % HTTP_PORT})
    resp = conn.getresponse()
    assert resp.status == 301
    assert resp.getheader("Location") == "https://localhost:%d/apps?x=1" % HTTPS_PORT


def test_proxy_and_security_headers(host):  # host: keeps file order (testinfra parametrizes)
    resp, data = https("GET", "/")
    assert resp.status == 200 and data == b"dify-upstream-standin\n"
    assert resp.getheader("X-Content-Type-Options") == "nosniff"
    assert resp.getheader("X-Frame-Options") == "SAMEORIGIN"
    assert resp.getheader("Referrer-Policy") == "strict-origin-when-cross-origin"
    assert resp.getheader("Strict-Transport-Security") is None  # self-signed: no HSTS
    assert resp.getheader("Server") == "nginx"  # server_tokens off


def test_body_just_under_the_limit_passes(host):  # host: keeps file order (testinfra parametrizes)
    size = LIMIT - 4096
    resp, data = https("POST", "/console/api/files/upload", body=b"x" * size,
                       headers={"Content-Type": "application/octet-stream"})
    assert resp.status == 200, data[:300]
    echo = json.loads(data)
    assert echo["received_bytes"] == size
    assert echo["http_version"] == "HTTP/1.1"
    assert echo["forwarded_proto"] == "https"


def test_body_just_over_the_limit_gets_413(host):  # host: keeps file order (testinfra parametrizes)
    size = LIMIT + 4096
    resp, data = https("POST", "/console/api/files/upload", body=b"x" * size,
                       headers={"Content-Type": "application/octet-stream"})
    assert resp.status == 413, data[:300]


def test_streamed_answer_arrives_incrementally(host):  # host: keeps file order (testinfra parametrizes)
    """Six events 0.6 s apart: each must reach the client before the upstream sends the next."""
    count, delay = 6, 0.6
    conn = http.client.HTTPSConnection("127.0.0.1", HTTPS_PORT, context=insecure_context(), timeout=30)
    start = time.time()
    conn.request("GET", "/sse?n=%d&delay=%s" % (count, delay), headers={"Host": "localhost"})
    resp = conn.getresponse()
    assert resp.status == 200
    assert resp.getheader("Content-Type", "").startswith("text/event-stream")
    arrivals = []
    while True:
        line = resp.fp.readline()
        if not line:
            break
        if line.startswith(b"data: "):
            arrivals.append((time.time(), json.loads(line[6:])))
        if len(arrivals) == count:
            break
    finished = time.time()
    conn.close()
    assert [event["index"] for _, event in arrivals] == list(range(count))
    # The whole stream takes about (count - 1) * delay; the first event came long before.
    assert finished - start >= (count - 1) * delay * 0.9
    assert arrivals[0][0] - start < delay * 2, "first event buffered: %.2fs" % (arrivals[0][0] - start)
    for received, event in arrivals:
        assert received - event["sent_at"] < delay, "event %d held back by the proxy" % event["index"]


# ---------------------------------------------------------------- cloudflared (stand-in package)

def test_cloudflared_standin_package_installed(host):
    pkg = host.package("cloudflared")
    assert pkg.is_installed and "standin" in pkg.version
    assert "cloudflared-standin" in host.check_output("dpkg-query -W -f='${Description}' cloudflared")


def test_cloudflared_user_and_files(host):
    user = host.user("cloudflared")
    assert user.exists and user.shell == "/usr/sbin/nologin" and user.uid < 1000
    cfg_dir = host.file(CF_DIR)
    assert (cfg_dir.user, cfg_dir.group, cfg_dir.mode) == ("root", "cloudflared", 0o750)
    for name in ("config.yml", TUNNEL_ID + ".json"):
        f = host.file("%s/%s" % (CF_DIR, name))
        assert (f.user, f.group, f.mode) == ("cloudflared", "cloudflared", 0o600), name
    assert not host.file(CF_DIR + "/tunnel.env").exists
    creds = json.loads(host.file("%s/%s.json" % (CF_DIR, TUNNEL_ID)).content_string)
    assert creds["TunnelSecret"] == TUNNEL_SECRET


def test_cloudflared_config_ingress(host):
    config = host.file(CF_DIR + "/config.yml").content_string
    assert "tunnel: %s" % TUNNEL_ID in config
    assert "credentials-file: %s/%s.json" % (CF_DIR, TUNNEL_ID) in config
    assert "noTLSVerify: true" in config
    assert re.search(r"- hostname: localhost\n\s+service: https://127.0.0.1:17443", config), config
    assert config.rstrip().endswith("- service: http_status:404"), config
    assert host.run("cloudflared --config %s/config.yml tunnel ingress validate", CF_DIR).rc == 0


def test_cloudflared_unit_and_process(host):
    unit = host.file("/etc/systemd/system/cloudflared.service").content_string
    assert "User=cloudflared" in unit
    assert "--config /etc/cloudflared/config.yml tunnel --metrics 127.0.0.1:17420" in unit
    svc = host.service("cloudflared")
    assert svc.is_running and svc.is_enabled
    assert host.check_output("ps -o user= -C cloudflared").split()[0] == "cloudflared"
    assert wait_ready("local")["standin"] is True


# ---------------------------------------------------------------- nested runs

def test_bad_extra_config_fails_and_leaves_live_config(host):
    original = sha256(host, SITE)
    rc, out = run_play("-e", "nginx_site_extra_config='edge_standin_bogus_directive on;'", "--tags", "nginx")
    assert rc != 0
    assert "nginx -t rejected the candidate site configuration" in out, out[-3000:]
    assert "unknown directive" in out and "edge_standin_bogus_directive" in out
    assert sha256(host, SITE) == original
    assert "edge_standin_bogus_directive" not in host.file(SITE).content_string
    assert host.run("nginx -t").rc == 0
    assert host.service("nginx").is_running
    resp, data = https("GET", "/")
    assert resp.status == 200 and data == b"dify-upstream-standin\n"


def test_upload_limit_above_cloudflare_plan_fails_early(host):
    before = sha256(host, SITE)
    rc, out = run_play("-e", "dify_upload_file_size_limit_mb=150", "--tags", "cloudflared")
    assert rc != 0
    assert "dify_upload_file_size_limit_mb (150 MB) is larger than cloudflared_plan_body_limit_mb (100 MB)" in out, out[-3000:]
    assert re.search(r"edge-debian13\s*:\s*ok=\d+\s+changed=0\s", out), out[-2000:]
    assert sha256(host, SITE) == before


def test_token_mode_keeps_the_token_out_of_the_output(host):
    secret = "standin-secret-%d" % os.getpid()
    token = make_token(secret)
    # Also: raising cloudflared_plan_body_limit_mb lets a larger upload limit through.
    args = ("-e", "cloudflared_mode=token", "-e", "cloudflared_tunnel_token=" + token,
            "-e", "dify_upload_file_size_limit_mb=150", "-e", "cloudflared_plan_body_limit_mb=200",
            "--tags", "cloudflared", "-v", "--diff")
    rc, out = run_play(*args)
    assert rc == 0, out[-3000:]
    assert token not in out and secret not in out
    assert recap_changed(out)[0] >= 1
    env_file = host.file(CF_DIR + "/tunnel.env")
    assert (env_file.user, env_file.group, env_file.mode) == ("cloudflared", "cloudflared", 0o600)
    assert env_file.content_string == "TUNNEL_TOKEN=%s\n" % token
    assert not host.file(CF_DIR + "/config.yml").exists
    assert not host.file("%s/%s.json" % (CF_DIR, TUNNEL_ID)).exists
    unit = host.file("/etc/systemd/system/cloudflared.service").content_string
    assert "EnvironmentFile=/etc/cloudflared/tunnel.env" in unit and token not in unit
    assert wait_ready("token")["mode"] == "token"
    assert token not in host.check_output("ps -o args= -C cloudflared")


def test_drift_is_repaired_and_local_mode_restored(host):
    """Back from token mode to the scenario's local mode, with drift on both roles: the site
    file edited by hand and the tunnel stopped. Run with -v --diff: the secret stays out."""
    original = sha256(host, SITE)  # the token-mode run (--tags cloudflared) left nginx alone
    host.run_expect([0], "sed -i 's/proxy_buffering off;/proxy_buffering on;/' %s", SITE)
    host.run_expect([0], "systemctl stop cloudflared")
    assert sha256(host, SITE) != original
    rc, out = run_play("-v", "--diff")
    assert rc == 0, out[-3000:]
    assert TUNNEL_SECRET not in out
    assert recap_changed(out)[0] >= 3
    assert sha256(host, SITE) == original
    assert "proxy_buffering off;" in host.file(SITE).content_string
    assert host.service("cloudflared").is_running
    assert not host.file(CF_DIR + "/tunnel.env").exists
    assert host.file("%s/%s.json" % (CF_DIR, TUNNEL_ID)).mode == 0o600
    wait_ready("local")


def served_certificate_der():
    with socket.create_connection(("127.0.0.1", HTTPS_PORT), timeout=10) as sock:
        with insecure_context().wrap_socket(sock, server_hostname="localhost") as tls:
            return tls.getpeercert(binary_form=True)


def test_provided_certificate_mode_serves_the_given_pair(host):
    """TLS mode `provided`: a certificate and key the operator brings (here made on the host,
    nginx_tls_src_remote) replace the self-signed pair; switching back regenerates one."""
    host.run_expect([0], "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
                         "-subj /CN=localhost -addext subjectAltName=DNS:localhost -days 2 "
                         "-keyout /root/provided.key -out /root/provided.crt")
    rc, out = run_play("-e", "nginx_tls_mode=provided", "-e", "nginx_tls_cert_src=/root/provided.crt",
                       "-e", "nginx_tls_key_src=/root/provided.key", "-e", "nginx_tls_src_remote=true",
                       "--tags", "nginx", "--diff")
    assert rc == 0, out[-3000:]
    provided_key = host.file("/root/provided.key").content_string
    assert provided_key.strip().splitlines()[1] not in out  # the key never reaches the output
    provided = host.file("/root/provided.crt").content_string
    assert served_certificate_der() == ssl.PEM_cert_to_DER_cert(provided)
    key = host.file("/etc/nginx/tls/dify.key")
    assert (key.mode, key.content_string) == (0o600, provided_key)

    rc, out = run_play("--tags", "nginx")
    assert rc == 0, out[-3000:]
    regenerated = host.file(CERT).content_string
    assert regenerated != provided
    assert served_certificate_der() == ssl.PEM_cert_to_DER_cert(regenerated)


def test_repo_definition_renders(host):
    """Cloudflare's repository cannot be reached here: render the deb822 source and keyring only."""
    try:
        rc, out = run_play(playbook="render_repo.yml")
        assert rc == 0, out[-3000:]
        sources = host.file("/etc/apt/sources.list.d/cloudflared.sources")
        assert sources.exists
        content = sources.content_string
        for line in ("Types: deb", "URIs: https://pkg.cloudflare.com/cloudflared", "Suites: any",
                     "Components: main", "Signed-By: /etc/apt/keyrings/cloudflare-main.gpg"):
            assert line in content.splitlines(), content
        keyring = host.file("/etc/apt/keyrings/cloudflare-main.gpg")
        assert (keyring.user, keyring.mode) == ("root", 0o644)
        assert "edge-standin-key" in keyring.content_string
    finally:
        host.run("rm -f /etc/apt/sources.list.d/cloudflared.sources /etc/apt/keyrings/cloudflare-main.gpg")


def test_everything_still_serves_at_the_end(host):
    assert host.service("nginx").is_running and host.service("cloudflared").is_running
    resp, data = https("GET", "/")
    assert resp.status == 200 and data == b"dify-upstream-standin\n"
