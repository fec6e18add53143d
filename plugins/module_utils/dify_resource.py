# -*- coding: utf-8 -*-
# One resource pattern for the dify_* modules: find / compare / create / update / delete.
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The resource pattern every dify_* module follows (after OpenStack's ``StateMachine`` in
``module_utils/resource.py`` and the find/compare/create/update/delete flow of community.general's
keycloak modules).

A module describes its resource in a subclass of ``DifyResource`` and runs it with
``run_resource(module, TheResource)``. ``DifyResource.run(state)`` is the one flow:

=======================  ==========================================================================
``find()``               what exists (the resource as Dify answers it), or None
state=absent, found      ``diff_delete(found)``; ``delete(found)`` unless in check mode
state=absent, none       nothing
state=present, none      ``diff_create(wanted())``; ``create(want)`` unless in check mode
state=present, found     ``details(found)`` (reads what the comparison needs), then
                         ``compare(view(found), wanted())`` -> the keys that differ; when some do,
                         ``diff_update(...)`` and ``update(found, want, changes)`` unless in check mode
at the end               ``returns(resource)``: the module's return values for what exists after the
                         run (in check mode: what existed before; None when absent or not created)
=======================  ==========================================================================

What this gives every module alike:

* ``changed`` is set in one place, ``change()``: a planned create, update or delete, or a write
  that happened on the way (``change()`` without a diff, e.g. a dataset key minted to read datasets);
* check mode: ``create``/``update``/``delete`` are never called, so no write is sent; ``find`` and
  ``details`` only read;
* ``diff`` (``before``/``after``) is returned only when the task runs with ``--diff``
  (``module._diff``);
* ``done(**values)`` ends the run early with those return values (e.g. check mode cannot know more
  because what the resource depends on does not exist yet).

Retries are the shared client's (dify_client.py): idempotent requests (GET, PUT, DELETE) are retried
on connection errors, 429 and 5xx; a POST that creates nothing passes ``safe=True``; a creating POST
passes ``landed=`` (a lookup of what it would have created), so a 5xx or a lost answer is only
repeated after the lookup found nothing. ``create`` and ``update`` are where those POSTs are sent.

The modules on it: dify_app, dify_dataset, dify_model and dify_plugin use every hook;
dify_default_models is a setting that always exists (find and update only); dify_api_key's find
picks the key to return, create mints one (rotate: and deletes the others), delete deletes keys, there
is no update; dify_setup can only be created (find and create) and runs ``Setup.run()`` itself, not
through ``run_resource``, for its setup-specific error hints. dify_documents is not on it: a sync
engine (plan, batched writes, indexing status) in dify_knowledge*.py.

Also here: the few lookups several modules share (``iter_pages``, ``apps_named``).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.dify_gpu.dify.plugins.module_utils.dify_client import CONSOLE, run_module


class Finished(Exception):
    """Raised by ``DifyResource.done()``: the run ends here with the values given."""


def changed_keys(have, want):
    """The keys of ``want`` whose value differs in ``have``, in ``want``'s order."""
    have = have or {}
    return [k for k in want if have.get(k) != want[k]]


class DifyResource(object):
    """One Dify resource; subclass it and override the hooks (see the module docstring)."""

    def __init__(self, module, client):
        self.module = module
        self.client = client
        self.params = module.params
        self.check_mode = module.check_mode
        self.result = {"changed": False}
        self.found = None  # what find() returned
        self._diff = None

    # ------------------------------------------------------------- hooks (a module overrides)
    def find(self):
        """The resource as Dify answers it, or None when it does not exist. Only reads (a write it cannot
        avoid, e.g. minting the key it reads with, is reported with ``change()``)."""
        raise NotImplementedError

    def details(self, found):
        """state=present and found: read what ``view`` needs (e.g. GET by id). Only reads."""
        return found

    def wanted(self):
        """The wanted state, in the shape ``view`` gives what exists (state=present)."""
        return {}

    def view(self, found):
        """What exists, in the shape of ``wanted()``: the comparison and the diff use it."""
        return found

    def absent_view(self):
        """How "does not exist" shows in a diff."""
        return {}

    def compare(self, have, want):
        """The keys that differ (empty: nothing to update)."""
        return changed_keys(have, want)

    # The diff hooks run once for the planned change, in check mode too and before any write: also the
    # place for return values that describe the plan (e.g. dify_plugin's version_change).
    def diff_create(self, want):
        return self.absent_view(), want

    def diff_update(self, have, want, changes):
        return have, want

    def diff_delete(self, found):
        return self.view(found), self.absent_view()

    def create(self, want):
        """Send the creating requests (never in check mode); return the created resource."""
        raise NotImplementedError

    def update(self, found, want, changes):
        """Send the updating requests (never in check mode); return the resource after it (None: found)."""
        raise NotImplementedError

    def delete(self, found):
        """Send the deleting requests (never in check mode)."""
        raise NotImplementedError

    def returns(self, resource):
        """Return values for what exists after the run (see the module docstring); may read."""
        return {}

    # ------------------------------------------------------------ what every module shares
    def change(self, before=None, after=None):
        """Something is (or in check mode would be) changed; ``before``/``after`` are its diff."""
        self.result["changed"] = True
        if before is not None or after is not None:
            self._diff = {"before": before if before is not None else {},
                          "after": after if after is not None else {}}

    def done(self, **values):
        """End the run now with these return values."""
        self.result.update(values)
        raise Finished()

    def run(self, state="present"):
        """The one flow (see the module docstring); returns the module's result."""
        try:
            found = self.found = self.find()
            resource = self._absent(found) if state == "absent" else self._present(found)
            self.result.update(self.returns(resource))
        except Finished:
            pass
        return self.output()

    def output(self):
        out = dict(self.result)
        out["changed"] = bool(out.get("changed"))
        if self._diff is not None and out["changed"] and self.module._diff:
            out["diff"] = self._diff
        return out

    def _absent(self, found):
        if found is None:
            return None
        self.change(*self.diff_delete(found))
        if self.check_mode:
            return found
        self.delete(found)
        return None

    def _present(self, found):
        if found is None:
            want = self.wanted()
            self.change(*self.diff_create(want))
            if self.check_mode:
                return None
            return self.create(want)
        found = self.details(found)
        have, want = self.view(found), self.wanted()
        changes = self.compare(have, want)
        if not changes:
            return found
        self.change(*self.diff_update(have, want, changes))
        if self.check_mode:
            return found
        updated = self.update(found, want, changes)
        return found if updated is None else updated


def run_resource(module, resource_class):
    """Run the resource's flow for module.params["state"] (present when the module has none) and exit;
    Dify errors become fail_json (dify_client.run_module)."""
    state = module.params.get("state") or "present"
    run_module(module, lambda client: resource_class(module, client).run(state))


# ------------------------------------------------------------------ shared lookups
def iter_pages(fetch):
    """Items of a paged list: ``fetch(page)`` -> (items, more), pages from 1; lazy, so a caller that
    stops at its match reads no further page."""
    page = 1
    while True:
        items, more = fetch(page)
        yield from items
        if not more:
            return
        page += 1


def apps_named(client, name):
    """Every app named exactly ``name`` (``GET /console/api/apps?name=`` is a substring filter), all pages."""
    def fetch(page):
        data = client.request("GET", CONSOLE + "/apps", query={"page": page, "limit": 100, "name": name})
        return data.get("data") or [], bool(data.get("has_more"))

    return [a for a in iter_pages(fetch) if a.get("name") == name]
