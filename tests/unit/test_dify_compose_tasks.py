"""The dify role's task files keep the shape docs/dify.md describes.

- the deploy phases (install, secrets, config, service, verify) are listed once, in deploy.yml,
  which the site run, restore.yml and upgrade.yml run;
- compose operations go through community.docker modules: the only `docker compose` command
  left in the role is `config` (no module validates a project);
- day-2 tasks only read the secrets;
- every task that hands a password to a container (the one-off clients) or renders one is no_log.
"""

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
TASKS = ROOT / "roles" / "dify" / "tasks"
PHASES = ("install.yml", "secrets.yml", "config.yml", "service.yml", "verify.yml")
INCLUDES = ("ansible.builtin.import_tasks", "ansible.builtin.include_tasks")


def tasks_of(path):
    """Every task of a file, blocks flattened."""
    def walk(items):
        for task in items or []:
            yield task
            for key in ("block", "rescue", "always"):
                if key in task:
                    for sub in walk(task[key]):
                        yield sub
    return list(walk(yaml.safe_load(path.read_text())))


def included(path):
    out = []
    for task in tasks_of(path):
        for key in INCLUDES:
            if key in task:
                target = task[key]
                out.extend(task.get("loop", []) if "{{" in str(target) else [target])
    return out


def test_the_deploy_phases_are_listed_once_in_deploy_yml():
    users = {}
    for path in sorted(TASKS.glob("*.yml")):
        for name in included(path):
            users.setdefault(name, []).append(path.name)
    for phase in PHASES:
        assert users.get(phase) == ["deploy.yml"], (phase, users.get(phase))
    assert sorted(users["deploy.yml"]) == ["main.yml", "restore.yml", "upgrade.yml"]
    assert [n for n in included(TASKS / "deploy.yml")] == [
        "install.yml", "secrets.yml", "config.yml", "restore_data.yml", "service.yml", "verify.yml"]


def test_restore_and_upgrade_reach_the_phases_only_through_deploy_yml():
    for name in ("restore.yml", "upgrade.yml"):
        assert not set(included(TASKS / name)) & set(PHASES), name


def test_compose_operations_use_the_community_docker_modules():
    commands = []
    for path in sorted(TASKS.glob("*.yml")):
        for task in tasks_of(path):
            for key in ("ansible.builtin.command", "ansible.builtin.shell"):
                if key not in task:
                    continue
                body = task[key]
                text = str(body.get("argv", body.get("cmd", "")) if isinstance(body, dict) else body)
                if "compose" in text:
                    commands.append((path.name, task["name"], text))
    # `config` (validation) and `version` (the preflight's compose >= 2.24): no module offers them
    assert [(f, t) for f, t, text in commands] == [("config.yml", "Validate the whole project before any container is recreated"),
                                                   ("preflight.yml", "Check Docker Compose v2 (>= 2.24)")]
    assert "'config', '--quiet'" in commands[0][2] and commands[1][2] == "docker compose version --short"


def test_day_two_tasks_only_read_the_secrets():
    for name in ("backup.yml", "reset_password.yml"):
        names = included(TASKS / name)
        assert "secrets_read.yml" in names and "secrets.yml" not in names, name
    writes = [t["name"] for t in tasks_of(TASKS / "secrets_read.yml")
              if "ansible.builtin.copy" in t or "ansible.builtin.set_fact" in t and "lookup('ansible.builtin.password'" in str(t)]
    assert writes == []


def test_tasks_carrying_passwords_are_no_log():
    risky = []
    for path in sorted(TASKS.glob("*.yml")):
        for task in tasks_of(path):
            text = yaml.safe_dump(task)
            carries = ("community.docker.docker_container" in task or re.search(r"__dify_secrets\b(?!_)", text)
                       or "dify_reset_password_new" in text or "__dify_redis_conf" in text or "src: env.j2" in text)
            if carries and not task.get("no_log") and _module(task) not in ("include_tasks", "import_tasks"):
                risky.append((path.name, task.get("name")))
    assert risky == []


def _module(task):
    for key in task:
        if key.startswith("ansible.builtin.") or key.startswith("community."):
            return key.split(".")[-1]
    return ""


@pytest.mark.parametrize("name", ["backup.yml", "restore.yml", "upgrade.yml", "reset_password.yml",
                                  "reset_encrypt_key_pair.yml"])
def test_day_two_entry_points_have_argument_specs(name):
    specs = yaml.safe_load((ROOT / "roles" / "dify" / "meta" / "argument_specs.yml").read_text())["argument_specs"]
    assert specs[name[:-4]]["options"] == specs["main"]["options"]


def _task_vars(file_name, task_prefix):
    task = next(t for t in tasks_of(TASKS / file_name) if t.get("name", "").startswith(task_prefix))
    return task["vars"]


def _fake_bin(tmp_path, names, fail_on=None):
    log = tmp_path / "calls.log"
    for name in names:
        script = tmp_path / name
        script.write_text('#!/bin/sh\necho "%s $* umask=$(umask)" >> "%s"\n%s' % (
            name, log, 'case "$*" in *%s*) exit 7;; esac\n' % fail_on if fail_on else ""))
        script.chmod(0o755)
    return log


@pytest.mark.parametrize("fail_on,rc,calls", [
    (None, 0, ["pg_dump -Fc -f /backup/dify.dump dify umask=0077",
               "pg_dump -Fc -f /backup/dify_plugin.dump dify_plugin umask=0077"]),
    ("dify.dump", 1, ["pg_dump -Fc -f /backup/dify.dump dify umask=0077"]),
])
def test_the_dump_script_dumps_every_database_of_its_client_and_stops_on_a_failure(tmp_path, fail_on, rc, calls):
    import subprocess
    log = _fake_bin(tmp_path, ["pg_dump"], fail_on)
    script = _task_vars("backup.yml", "Dump the databases")["__dify_dump_script"]
    out = subprocess.run(["sh", "-c", script, "pg_dump", "dify", "dify.dump", "dify_plugin", "dify_plugin.dump"],
                         env={"PATH": "%s:/usr/bin:/bin" % tmp_path}, capture_output=True, text=True)
    assert out.returncode == rc
    assert log.read_text().splitlines() == calls


def test_the_restore_script_drops_creates_and_restores_every_database(tmp_path):
    import subprocess
    log = _fake_bin(tmp_path, ["dropdb", "createdb", "pg_restore"])
    script = _task_vars("restore_data.yml", "Recreate the databases")["__dify_restore_script"]
    out = subprocess.run(["sh", "-c", script, "pg_restore", "dify", "dify.dump", "dify_plugin", "dify_plugin.dump"],
                         env={"PATH": "%s:/usr/bin:/bin" % tmp_path}, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    calls = [c.rsplit(" umask=", 1)[0] for c in log.read_text().splitlines()]
    assert calls == [
        "dropdb --maintenance-db=postgres --if-exists --force dify", "createdb --maintenance-db=postgres dify",
        "pg_restore --no-owner --dbname=dify /backup/dify.dump",
        "dropdb --maintenance-db=postgres --if-exists --force dify_plugin", "createdb --maintenance-db=postgres dify_plugin",
        "pg_restore --no-owner --dbname=dify_plugin /backup/dify_plugin.dump"]
