"""Every role follows the project's conventions (docs/development.md).

- meta/argument_specs.yml exists and documents every variable in defaults/main.yml;
- every default variable is prefixed with the role name;
- every documented option has a description;
- every default variable is named in the operator docs (docs/*.md).
"""

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
ROLES = sorted(p for p in (ROOT / "roles").iterdir() if (p / "tasks" / "main.yml").exists())


def load(path):
    return yaml.safe_load(path.read_text()) or {}


def test_there_are_roles():
    assert ROLES, "no roles found"


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_argument_specs_document_every_default(role):
    specs = role / "meta" / "argument_specs.yml"
    assert specs.exists(), f"{role.name}: meta/argument_specs.yml is missing"
    options = load(specs)["argument_specs"]["main"].get("options", {})
    defaults_file = role / "defaults" / "main.yml"
    defaults = load(defaults_file) if defaults_file.exists() else {}
    undocumented = sorted(set(defaults) - set(options))
    assert not undocumented, f"{role.name}: defaults without argument spec: {undocumented}"


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_variables_are_prefixed_with_the_role_name(role):
    defaults_file = role / "defaults" / "main.yml"
    defaults = load(defaults_file) if defaults_file.exists() else {}
    stray = sorted(v for v in defaults if not v.startswith(role.name + "_"))
    assert not stray, f"{role.name}: variables not prefixed '{role.name}_': {stray}"


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_every_option_is_described(role):
    specs = role / "meta" / "argument_specs.yml"
    options = load(specs)["argument_specs"]["main"].get("options", {}) if specs.exists() else {}
    bare = sorted(k for k, v in options.items() if not (v or {}).get("description"))
    assert not bare, f"{role.name}: options without description: {bare}"


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_every_default_is_documented_for_operators(role):
    docs = "\n".join(p.read_text() for p in (ROOT / "docs").glob("*.md"))
    defaults_file = role / "defaults" / "main.yml"
    defaults = load(defaults_file) if defaults_file.exists() else {}
    missing = sorted(v for v in defaults if not re.search(rf"\b{v}\b", docs))
    assert not missing, f"{role.name}: variables missing from docs/: {missing}"
