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
