"""Role argument specs: the dify role's six entry points state one option set once (YAML anchors),
Ansible's own validation reads it for every entry point, and docs/roles/ is generated from the specs."""
import importlib.util
import os

import pytest
import yaml
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DIFY_SPEC = os.path.join(ROOT, "roles", "dify", "meta", "argument_specs.yml")
ENTRY_POINTS = ["main", "backup", "restore", "upgrade", "reset_password", "reset_encrypt_key_pair"]


def _specs():
    with open(DIFY_SPEC) as f:
        return yaml.safe_load(f)["argument_specs"]


def test_dify_entry_points_share_one_option_set():
    specs = _specs()
    assert sorted(specs) == sorted(ENTRY_POINTS)
    main = specs["main"]["options"]
    assert len(main) > 20
    for entry in ENTRY_POINTS:
        assert specs[entry]["options"] == main, entry
    with open(DIFY_SPEC) as f:
        assert f.read().count("options: *dify_options") == len(ENTRY_POINTS) - 1


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_every_dify_entry_point_validates_strictly(entry):
    """As the role's validation task does: a wrong type and an unknown choice fail on every entry point."""
    options = _specs()[entry]["options"]
    validator = ArgumentSpecValidator(options)

    def errors_about(params, name):
        return [str(e) for e in validator.validate(params).errors if name in str(e)]

    assert not errors_about({"dify_backup_keep": 3}, "dify_backup_keep")
    assert errors_about({"dify_backup_keep": "many"}, "dify_backup_keep")
    with_choices = [name for name, opt in options.items() if opt.get("choices") and opt.get("type", "str") == "str"]
    assert with_choices
    assert errors_about({with_choices[0]: "surely-not-a-choice"}, with_choices[0])


def test_role_docs_are_generated_from_the_specs():
    spec = importlib.util.spec_from_file_location("role_docs", os.path.join(ROOT, "scripts", "role-docs.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for name, content in mod.generate().items():
        with open(os.path.join(ROOT, "docs", "roles", name)) as f:
            assert f.read() == content, "docs/roles/%s is stale: run scripts/role-docs.py" % name
