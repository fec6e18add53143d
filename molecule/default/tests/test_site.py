"""The whole site on one host: each role that joins site.yml adds its checks here."""

import os

import testinfra.utils.ansible_runner

testinfra_hosts = testinfra.utils.ansible_runner.AnsibleRunner(
    os.environ["MOLECULE_INVENTORY_FILE"]
).get_hosts("all")


def test_docker_engine_serves(host):
    assert host.service("docker").is_running
    assert host.service("docker").is_enabled
    assert host.check_output("docker compose version --short").strip()


def test_host_nginx_terminates_tls_in_front_of_dify(host):
    # HTTP redirects to HTTPS; HTTPS answers with the role's certificate
    out = host.check_output("curl -s -o /dev/null -w '%{http_code} %{redirect_url}' http://127.0.0.1:17580/x")
    assert out.startswith("301 https://"), out
    cert = host.check_output(
        "echo | openssl s_client -connect 127.0.0.1:17543 -servername localhost 2>/dev/null | openssl x509 -noout -fingerprint"
    )
    local = host.check_output("openssl x509 -noout -fingerprint -in /etc/nginx/tls/dify.crt")
    assert cert == local


def test_model_servers_answer(host):
    import json

    chat = json.loads(host.check_output(
        "curl -sf http://127.0.0.1:17501/v1/chat/completions -H 'Content-Type: application/json' "
        "-d '{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"max_tokens\":4}'"))
    assert chat["choices"][0]["message"]
    emb = json.loads(host.check_output(
        "curl -sf http://127.0.0.1:17502/v1/embeddings -H 'Content-Type: application/json' -d '{\"input\":[\"hello\"]}'"))
    assert len(emb["data"][0]["embedding"]) == 384
    assert host.service("model-server-rerank").is_running


def test_dify_answers_through_the_host_nginx_and_is_bootstrapped(host):
    # host nginx (TLS) -> the stack's nginx -> the api (the Dify API stand-in in tests)
    import json

    setup = json.loads(host.check_output("curl -sfk https://127.0.0.1:17543/console/api/setup"))
    assert setup["step"] == "finished"
    env = host.file("/opt/dify/.env")
    assert env.mode == 0o600
    assert "difyai123456" not in env.content_string


# ------------------------------------------------------------------ check mode, contracts, playbooks alone
import json  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
from pathlib import Path  # noqa: E402

import yaml  # noqa: E402

PROJECT = Path(os.environ["MOLECULE_PROJECT_DIRECTORY"])
RUNS = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "site-changes.jsonl"

# Tasks whose change a --check run on the fresh host cannot see or cannot avoid, each with its reason.
# Everything else that the real converge changes, the check run must have reported as changed, and
# nothing more.
# Measured on this scenario's fresh host (2026-12-01); keep it short: a new entry needs its reason.
CHECK_ONLY = {
    "dify : Create the local facts directory":
        "the real run created it already in model_servers (the same host); the check created nothing",
    "dify_bootstrap : Create the local facts directory":
        "the real run created it already in model_servers (the same host); the check created nothing",
    "model_pool : Create the local facts directory":
        "the real run created it already in model_servers (the same host); the check created nothing",
    "dify_bootstrap : Make the directory of the credentials file when it is missing":
        "the real run's dify role created /opt/dify already; the check created nothing",
}
RUN_ONLY = {
    "dify : Bring the stack up and wait until it is healthy":
        "check mode on a fresh host: Docker is not installed, so nothing runs that needs the engine",
    "dify : Load the image archives":
        "check mode on a fresh host: Docker is not installed, so nothing runs that needs the engine",
    "dify : Record the deployed version":
        "check mode on a fresh host: Docker is not installed, so nothing runs that needs the engine (written once the stack is up)",
    "dify : Render .env (all settings and secrets, upstream variable names)":
        "check mode on a fresh host: /opt/dify does not exist, so the dify role stops after creating it (deploy.yml) and renders nothing into it",
    "dify : Render the compose file (validated with docker compose config)":
        "check mode on a fresh host: /opt/dify does not exist, so the dify role stops after creating it (deploy.yml) and renders nothing into it",
    "dify : Render the in-stack nginx configuration":
        "check mode on a fresh host: /opt/dify does not exist, so the dify role stops after creating it (deploy.yml) and renders nothing into it",
    "dify : Render the ssrf_proxy (squid) configuration":
        "check mode on a fresh host: /opt/dify does not exist, so the dify role stops after creating it (deploy.yml) and renders nothing into it",
    "dify : Store the secrets on the host (0600)":
        "check mode on a fresh host: /opt/dify does not exist, so the dify role stops after creating it (deploy.yml) and renders nothing into it",
    "dify : Write the Redis configuration (its password)":
        "check mode on a fresh host: /opt/dify does not exist, so the dify role stops after creating it (deploy.yml) and renders nothing into it",
    "dify_bootstrap : Create the chat apps":
        "check mode: no Dify answers yet, so the bootstrap only checks its inputs (wait.yml)",
    "dify_bootstrap : Create the first admin account":
        "check mode: no Dify answers yet, so the bootstrap only checks its inputs (wait.yml)",
    "dify_bootstrap : Create the knowledge bases":
        "check mode: no Dify answers yet, so the bootstrap only checks its inputs (wait.yml)",
    "dify_bootstrap : Install the provider plugins":
        "check mode: no Dify answers yet, so the bootstrap only checks its inputs (wait.yml)",
    "dify_bootstrap : Keep one API key per app":
        "check mode: no Dify answers yet, so the bootstrap only checks its inputs (wait.yml)",
    "dify_bootstrap : Keep the workspace's knowledge (dataset) API key":
        "check mode: no Dify answers yet, so the bootstrap only checks its inputs (wait.yml)",
    "dify_bootstrap : Register the model endpoints":
        "check mode: no Dify answers yet, so the bootstrap only checks its inputs (wait.yml)",
    "dify_bootstrap : Set the workspace default models":
        "check mode: no Dify answers yet, so the bootstrap only checks its inputs (wait.yml)",
    "docker : Restart docker service":
        "a handler notified by a change the check reported; handlers do not run in check mode",
    "model_servers : Enable and start the units":
        "check mode on a fresh host: the unit files do not exist yet (systemd cannot be asked about them)",
    "model_servers : Install llama.cpp's server (xllamacpp) into its venv":
        "check mode on a fresh host: the venv (and its pip) does not exist yet",
    "model_servers : Install the readiness checker":
        "the verify phase, which runs only when not in check mode (main.yml)",
    "model_servers : Restart the units whose unit file, configuration, model or software changed":
        "check mode: nothing is restarted (the units are not installed yet)",
    "model_servers : Write the list of servers to check":
        "the verify phase, which runs only when not in check mode (main.yml)",
    "nginx : Generate the private key":
        "check mode on a fresh host: the TLS directory does not exist yet (tls.yml)",
    "nginx : Self-sign the certificate":
        "check mode on a fresh host: no private key to sign with yet (tls.yml)",
    "nginx : Reload nginx":
        "a handler notified by a change the check reported; handlers do not run in check mode",
    "nginx : Remove the distribution's default site":
        "check mode on a fresh host: nginx is not installed, so its default site does not exist yet",
    "nginx : Start and enable nginx":
        "check mode on a fresh host: nginx is not installed, so systemd knows no nginx unit yet",
}


def converge_runs():
    return [json.loads(line) for line in RUNS.read_text().splitlines() if line.strip()]


def changed_set(run):
    return {tuple(item) for item in run["changed"]}


def test_check_on_the_fresh_host_runs_to_the_end_and_names_what_the_run_changes():
    runs = converge_runs()
    assert [r["check"] for r in runs][:2] == [True, False], runs   # check, then the real converge
    check, real = runs[0], runs[1]
    assert check["diff"], "the check run is site.yml --check --diff"
    assert check["failed"] == [] and real["failed"] == []
    assert check["report"], "the check run reached the end-of-run report"
    only_check = {t for t in changed_set(check) - changed_set(real) if t[1] not in CHECK_ONLY}
    only_run = {t for t in changed_set(real) - changed_set(check) if t[1] not in RUN_ONLY}
    assert not only_check, "reported as changed by --check, but the run did not change them: %s" % sorted(only_check)
    assert not only_run, "changed by the run, but --check did not say so: %s" % sorted(only_run)


def run_playbook(playbook, *args):
    """A playbook of the project in an ansible-playbook run of its own against this scenario's host."""
    inventory = str(Path(os.environ["MOLECULE_INVENTORY_FILE"]).parent)
    env = dict(os.environ, ANSIBLE_CONFIG=str(PROJECT / "ansible.cfg"), ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
    proc = subprocess.run(
        ["ansible-playbook", "-i", inventory, str(PROJECT / "playbooks" / playbook),
         "-e", "@" + str(PROJECT / "molecule" / "shared" / "docker_test_options.yml"),
         "-e", "site_test_root=" + str(PROJECT), *args],
        cwd=str(PROJECT), env=env, capture_output=True, text=True, timeout=1200, check=False)
    return proc.returncode, proc.stdout + proc.stderr


def recap_changed(output):
    match = re.search(r"site-debian13\s*:\s*ok=\d+\s+changed=(\d+)\s+unreachable=0\s+failed=0", output)
    assert match, output[-4000:]
    return int(match.group(1))


def secrets_on(host):
    """Every secret the site keeps on the host: the stack's generated secrets, the bootstrap's credentials."""
    found = []

    def walk(value, key=""):
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, str(k))
        elif isinstance(value, list):
            for v in value:
                walk(v, key)
        # the admin account's e-mail and URLs are named in the report on purpose: not secrets
        elif isinstance(value, str) and len(value) >= 8 and "email" not in key and not re.match(
                r"^(https?://|[^@\s]+@[^@\s]+$)", value):
            found.append(value)
    for path in ("/opt/dify/secrets.yml", "/opt/dify/bootstrap-credentials.yml"):
        walk(yaml.safe_load(host.check_output("cat %s", path)))
    assert found
    return found


def test_contracts_are_persisted_on_the_host(host):
    dify = host.file("/etc/ansible/facts.d/dify.fact")
    assert dify.mode == 0o644
    contract = json.loads(dify.content_string)
    assert contract["upload_file_size_limit_mb"] == 2 and contract["expose_http_port"] == 17590
    assert contract["public_url"] == "https://localhost:17543"
    assert contract["secrets_file"] == "/opt/dify/secrets.yml"
    models = host.file("/etc/ansible/facts.d/model_servers.fact")
    assert models.mode == 0o644   # no model_servers_api_key in this profile
    contract = json.loads(models.content_string)
    assert sorted(e["model"] for e in contract["dify_endpoints"]) == ["all-minilm-l6-v2", "tiny-llama", "tiny-reranker"]
    assert contract["knowledge_chunk_chars"] == 250
    assert {h["name"] for h in contract["health"]} >= {"llm", "embedding", "rerank"}


def test_dify_playbook_alone_finds_the_model_endpoints():
    """playbooks/dify.yml in a run of its own (its bootstrap part): nothing of model_servers is in memory;
    the endpoints come from the model servers' contract, the bootstrap validates them and finds Dify as it
    left it: the run succeeds and changes nothing."""
    rc, out = run_playbook("dify.yml", "--tags", "dify_bootstrap")
    assert rc == 0, out[-4000:]
    assert recap_changed(out) == 0, out[-4000:]
    assert "TASK [dify_bootstrap : Check the model endpoints and default models]" in out
    registered = re.search(r"TASK \[dify_bootstrap : Register the model endpoints\][^\n]*\n(.*?)\n\n", out, re.S)
    assert registered and "ok: [site-debian13] => (item=" in registered.group(1), out[-4000:]
    for model in ("tiny-llama", "all-minilm-l6-v2", "tiny-reranker"):
        assert model in registered.group(1), (model, registered.group(1))


def test_edge_playbook_alone_keeps_difys_port_and_upload_limit(host):
    """playbooks/edge.yml in a run of its own: Dify's port (17590) and upload limit (2 MB) reach nginx from
    the dify role's local fact, so nothing changes (the role's own defaults would be 8080 and 100 MB)."""
    rc, out = run_playbook("edge.yml")
    assert rc == 0, out[-4000:]
    assert recap_changed(out) == 0, out[-4000:]
    site = host.file("/etc/nginx/sites-available/dify.conf").content_string
    assert "client_max_body_size 2m;" in site and "server 127.0.0.1:17590;" in site


def test_report_of_the_site_run_says_where_everything_is_and_no_secret(host):
    real = converge_runs()[1]
    text = "\n".join(real["report"])
    assert "Open Dify: https://localhost:17543" in text, text
    assert re.search(r"Chatbot 'Assistant' \(shareable\): https://localhost:17543/\S+", text), text
    for path in ("/opt/dify/secrets.yml", "/opt/dify/.env", "/opt/dify/bootstrap-credentials.yml",
                 "/etc/nginx/tls/dify.key"):
        assert "site-debian13: %s" % path in text, (path, text)
    assert "health llm http://127.0.0.1:17501/health: healthy" in text, text
    assert "playbooks/backup.yml" in text and "playbooks/upgrade.yml" in text
    for secret in secrets_on(host):
        assert secret not in text


def test_report_playbook_alone_reads_the_local_facts(host):
    rc, out = run_playbook("report.yml")
    assert rc == 0, out[-4000:]
    assert recap_changed(out) == 0
    assert "Open Dify: https://localhost:17543" in out
    # the chatbots' URLs from dify_bootstrap.fact: no bootstrap ran in this run (the debug output is
    # YAML: its quotes are doubled)
    assert re.search(r"Chatbot '{1,2}Assistant'{1,2} \(shareable\): https://localhost:17543/chat/\w+", out), out[-4000:]
    assert "tiny-llama" in out and ": healthy" in out
    for secret in secrets_on(host):
        assert secret not in out
