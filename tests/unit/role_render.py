"""Render a role's variables and templates with Ansible's templar, per distribution.

A test names the role, the host facts (one of PLATFORMS) and extra variables; the role's
defaults, vars/main.yml and the vars/<Distribution>.yml its preflight would include are
layered as Ansible layers them (defaults < role vars < include_vars < extra vars), and every
value stays lazy, exactly like in a play. The project's filter plugins are loaded too.
"""

from pathlib import Path

from ansible.parsing.dataloader import DataLoader
from ansible.plugins.loader import add_all_plugin_dirs, init_plugin_loader
from ansible.template import Templar, trust_as_template

ROOT = Path(__file__).resolve().parents[2]
LOADER = DataLoader()
# the roles call the project's filters by FQCN (dify_gpu.dify.*): collections/ holds the link back
init_plugin_loader([str(ROOT / "collections")])
add_all_plugin_dirs(str(ROOT / "plugins"))

# Host facts of the supported platforms (what gather_facts reports on them).
PLATFORMS = {
    "debian12": {"distribution": "Debian", "os_family": "Debian", "distribution_major_version": "12",
                 "distribution_version": "12.8", "distribution_release": "bookworm"},
    "debian13": {"distribution": "Debian", "os_family": "Debian", "distribution_major_version": "13",
                 "distribution_version": "13.1", "distribution_release": "trixie"},
    "ubuntu2204": {"distribution": "Ubuntu", "os_family": "Debian", "distribution_major_version": "22",
                   "distribution_version": "22.04", "distribution_release": "jammy"},
    "ubuntu2404": {"distribution": "Ubuntu", "os_family": "Debian", "distribution_major_version": "24",
                   "distribution_version": "24.04", "distribution_release": "noble"},
}


def _trusted(data):
    def walk(value):
        if isinstance(value, str):
            return trust_as_template(value)
        if isinstance(value, list):
            return [walk(v) for v in value]
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        return value
    return {k: walk(v) for k, v in (data or {}).items()}


class RoleRender(object):
    def __init__(self, role, platform, arch="x86_64", distro_vars=True, **extra):
        self.role = ROOT / "roles" / role
        facts = dict(PLATFORMS[platform], architecture=arch, kernel="6.1.0-28-amd64")
        variables = {}
        variables.update(_trusted(LOADER.load_from_file(str(self.role / "defaults" / "main.yml"))))
        variables.update(_trusted(LOADER.load_from_file(str(self.role / "vars" / "main.yml"))))
        if distro_vars:
            for name in ("%s.yml" % facts["distribution"], "%s.yml" % facts["os_family"]):
                path = self.role / "vars" / name
                if path.exists():
                    variables.update(_trusted(LOADER.load_from_file(str(path))))
                    break
        variables.update({"ansible_facts": facts, "ansible_managed": "Ansible managed",
                          "role_path": str(self.role), "inventory_hostname": "host.example"})
        variables.update(_trusted(extra))
        self.templar = Templar(loader=LOADER, variables=variables)

    def var(self, name):
        return self.templar.template(trust_as_template("{{ %s }}" % name))

    def expr(self, expression):
        return self.templar.template(trust_as_template("{{ %s }}" % expression))

    def template(self, name):
        return self.templar.template(trust_as_template((self.role / "templates" / name).read_text()))
