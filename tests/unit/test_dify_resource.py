"""plugins/module_utils/dify_resource.py: the one flow every dify_* module follows (find / compare /
create / update / delete), table-driven against a recording resource -- no HTTP. The modules on it
are tested against the stand-in in test_dify_modules.py.
"""

import pytest

from ansible.module_utils import dify_resource as dr

from conftest import load_module

MODULES = ["dify_app", "dify_dataset", "dify_api_key", "dify_model", "dify_default_models", "dify_plugin",
           "dify_setup"]


class FakeModule(object):
    def __init__(self, check_mode=False, diff=False, **params):
        self.check_mode = check_mode
        self._diff = diff
        self.params = params


class Recorder(dr.DifyResource):
    """A resource whose Dify is a dict: records which hooks ran, in order."""

    def __init__(self, module, existing=None):
        dr.DifyResource.__init__(self, module, client=None)
        self.existing = existing
        self.log = []

    def find(self):
        self.log.append("find")
        return dict(self.existing) if self.existing is not None else None

    def details(self, found):
        self.log.append("details")
        return dict(found, detail=True)

    def wanted(self):
        return {"size": self.params["size"]}

    def view(self, found):
        return {"size": found["size"]}

    def create(self, want):
        self.log.append("create")
        return dict(want, id="new")

    def update(self, found, want, changes):
        self.log.append("update %s" % ",".join(changes))
        return dict(found, **want)

    def delete(self, found):
        self.log.append("delete")

    def returns(self, resource):
        return {"id": (resource or {}).get("id", "")}


EXISTING = {"id": "r1", "size": 1}

# state, what exists, wanted size -> hooks run (not in check mode), changed, diff, returned id
CASES = [
    ("present", None, 1, ["find", "create"], True, {"before": {}, "after": {"size": 1}}, "new"),
    ("present", EXISTING, 1, ["find", "details"], False, None, "r1"),
    ("present", EXISTING, 2, ["find", "details", "update size"], True,
     {"before": {"size": 1}, "after": {"size": 2}}, "r1"),
    ("absent", EXISTING, 1, ["find", "delete"], True, {"before": {"size": 1}, "after": {}}, ""),
    ("absent", None, 1, ["find"], False, None, ""),
]
IDS = ["create", "unchanged", "update", "delete", "absent"]


@pytest.mark.parametrize("state,existing,size,hooks,changed,diff,rid", CASES, ids=IDS)
def test_flow(state, existing, size, hooks, changed, diff, rid):
    res = Recorder(FakeModule(diff=True, size=size), existing)
    out = res.run(state)
    assert res.log == hooks
    assert out["changed"] is changed and out.get("diff") == diff and out["id"] == rid


@pytest.mark.parametrize("state,existing,size,hooks,changed,diff,rid", CASES, ids=IDS)
def test_check_mode_never_writes_and_predicts_changed(state, existing, size, hooks, changed, diff, rid):
    res = Recorder(FakeModule(check_mode=True, diff=True, size=size), existing)
    out = res.run(state)
    assert res.log == [h for h in hooks if h in ("find", "details")]
    assert out["changed"] is changed and out.get("diff") == diff
    # check mode returns what exists before the run: nothing for a create, the resource for a delete
    assert out["id"] == (existing or {}).get("id", "")


@pytest.mark.parametrize("state,existing,size,hooks,changed,diff,rid", CASES, ids=IDS)
def test_diff_only_with_diff_mode(state, existing, size, hooks, changed, diff, rid):
    for check_mode in (False, True):
        out = Recorder(FakeModule(check_mode=check_mode, diff=False, size=size), existing).run(state)
        assert "diff" not in out and out["changed"] is changed


def test_done_ends_the_run_with_its_values():
    class Early(Recorder):
        def find(self):
            self.log.append("find")
            self.done(changed=True, msg="cannot know more yet")

    res = Early(FakeModule(diff=True, size=1))
    assert res.run("present") == {"changed": True, "msg": "cannot know more yet"}
    assert res.log == ["find"]


def test_change_without_diff_marks_changed_only():
    class MintsAKey(Recorder):
        def find(self):
            self.change()  # e.g. a key created on the way to read the resource
            return Recorder.find(self)

    out = MintsAKey(FakeModule(diff=True, size=1), EXISTING).run("present")
    assert out["changed"] is True and "diff" not in out


def test_update_returning_none_keeps_the_resource():
    class Quiet(Recorder):
        def update(self, found, want, changes):
            Recorder.update(self, found, want, changes)
            return None

    res = Quiet(FakeModule(size=2), EXISTING)
    assert res.run("present")["id"] == "r1" and res.found == EXISTING


def test_an_empty_find_result_is_a_resource_not_absence():
    """find() returning {} (e.g. no default model listed) exists: only None means absent."""
    class Settings(Recorder):
        def wanted(self):
            return {}

        def view(self, found):
            return {}

    res = Settings(FakeModule(size=1), {})
    assert res.run("present")["changed"] is False and res.log == ["find", "details"]


def test_changed_keys_in_wanted_order():
    assert dr.changed_keys({"a": 1, "b": 2}, {"b": 3, "a": 1, "c": None}) == ["b"]
    assert dr.changed_keys(None, {"b": 1, "a": 2}) == ["b", "a"]


def test_iter_pages_is_lazy():
    fetched = []

    def fetch(page):
        fetched.append(page)
        return [page * 10, page * 10 + 1], page < 3

    assert list(dr.iter_pages(fetch)) == [10, 11, 20, 21, 30, 31] and fetched == [1, 2, 3]
    fetched[:] = []
    assert next(i for i in dr.iter_pages(fetch) if i == 20) == 20 and fetched == [1, 2]


class FakeClient(object):
    def __init__(self, pages):
        self.pages = pages
        self.calls = []

    def request(self, method, path, query=None, **kw):
        self.calls.append((method, path, query))
        page = query["page"]
        return {"data": self.pages[page - 1], "has_more": page < len(self.pages)}


def test_apps_named_reads_every_page_and_matches_exactly():
    client = FakeClient([[{"id": "1", "name": "Assistant 2"}], [{"id": "2", "name": "Assistant"}]])
    assert dr.apps_named(client, "Assistant") == [{"id": "2", "name": "Assistant"}]
    assert client.calls == [("GET", "/console/api/apps", {"page": 1, "limit": 100, "name": "Assistant"}),
                            ("GET", "/console/api/apps", {"page": 2, "limit": 100, "name": "Assistant"})]


@pytest.mark.parametrize("name", MODULES)
def test_every_module_describes_its_resource_with_the_pattern(name):
    mod = load_module(name)
    assert [c for c in vars(mod).values() if isinstance(c, type) and issubclass(c, dr.DifyResource)
            and c is not dr.DifyResource], name


# ----------------------------------------------- the shared client's error reading (dify_knowledge_api uses it)
@pytest.mark.parametrize("body,code,message", [
    ({"code": "invalid_param", "message": "Model x not exist.", "status": 400}, "invalid_param", "Model x not exist."),
    ({"error": {"type": "unauthorized", "message": "Unauthorized", "status": 401}}, "unauthorized", "Unauthorized"),
    ({"error": {"code": "not_setup"}}, "not_setup", None),
    ({"result": "fail"}, "fail", None),
    ({"error": "text"}, None, "text"),
    ({"message": {"field": "bad"}}, None, "{'field': 'bad'}"),
    ({"message": ""}, None, None),
    ("<html>502 Bad Gateway</html>", None, "<html>502 Bad Gateway</html>"),
    ("x" * 400, None, "x" * 300),
    (None, None, None),
    ({}, None, None),
])
def test_error_fields_read_bodies_as_the_client_errors_do(body, code, message):
    from ansible.module_utils import dify_client as dc
    assert dc.error_fields(body) == (code, message)
    err = dc._error_from("POST", "/v1/x", 400, body)
    assert err.code == code
    text = "POST /v1/x failed: HTTP 400" + (" %s" % code if code else "") + (": %s" % message if message else "")
    assert err.msg == text
