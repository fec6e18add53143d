# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin of dify_documents: progress in the Ansible output while Dify indexes.

A module cannot print while it runs; this plugin (on the controller) runs the module on the host
several times and prints between the runs:

1. phase ``sync`` in slices of ``submit_budget`` seconds (default 20): plan, then writes; a line
   ``submitting: N/M writes done`` after each slice;
2. phase ``status`` every ``poll_interval`` seconds (<= 30): read-only, one progress line each
   (documents done / total, segments done / total, documents/s, segments/s, ETA);
3. another ``sync`` when documents were busy in Dify (at most ``max_passes``);
4. phase ``verify``: the retrieval check;
5. a summary line, and the merged result (counts, lists, failed documents with Dify's error).

The loop itself is ``run_to_completion`` in plugins/module_utils/dify_knowledge.py, shared with
scripts/dify-knowledge-sync; it is loaded by path (module_utils are not importable on the
controller outside a collection).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import importlib.util
import os

from ansible.plugins.action import ActionBase
from ansible.utils.display import Display

display = Display()

MODULE = "dify_documents"
LIB_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "module_utils", "dify_knowledge.py")
DEFAULT_SUBMIT_BUDGET = 20
STATUS_FAILURES_MAX = 5


def load_lib():
    spec = importlib.util.spec_from_file_location("dify_knowledge_controller", os.path.abspath(LIB_PATH))
    lib = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lib)
    return lib


class ModuleFailed(Exception):
    def __init__(self, result):
        Exception.__init__(self, result.get("msg"))
        self.result = result


class ModuleBackend(object):
    """run_to_completion's backend: each step is one run of the module on the host."""

    def __init__(self, execute, submit_budget=DEFAULT_SUBMIT_BUDGET):
        self.execute = execute
        self.submit_budget = submit_budget
        self.dataset_id = None
        self.status_failures = 0
        self.first = None

    def _run(self, extra):
        if self.dataset_id:
            extra = dict(extra, dataset_id=self.dataset_id)
        res = self.execute(extra)
        if res.get("failed"):
            raise ModuleFailed(res)
        return res

    def sync(self):
        res = self._run({"phase": "sync", "submit_budget": self.submit_budget})
        self.dataset_id = res.get("dataset_id") or self.dataset_id
        if self.first is None:
            self.first = res
        return res

    def status(self, watch):
        try:
            res = self._run({"phase": "status", "watch": watch})
        except ModuleFailed as err:
            # a blip (Dify restarting, a timeout) must not end a long wait; five in a row do
            self.status_failures += 1
            display.warning("dify_documents: status poll failed (%d/%d): %s" % (
                self.status_failures, STATUS_FAILURES_MAX, err.result.get("msg")))
            if self.status_failures >= STATUS_FAILURES_MAX:
                raise
            return []
        self.status_failures = 0
        return res.get("documents") or []

    def verify(self, query):
        try:
            return self._run({"phase": "verify", "retrieval_query": query}).get("retrieval") or {}
        except ModuleFailed as err:
            return {"query": query, "error": err.result.get("msg")}


def drive(execute, args, check_mode, lib, say=None, clock=None, sleep=None):
    """The whole run for one task; ``execute(extra_args)`` runs the module. Returns the task result."""
    say = say or display.display
    label = "[%s]" % (args.get("dataset") or args.get("dataset_id") or "?")
    budget = args.get("submit_budget")
    backend = ModuleBackend(execute, DEFAULT_SUBMIT_BUDGET if budget in (None, 0, "0") else int(budget))
    kwargs = {}
    if clock is not None:
        kwargs["clock"] = clock
    if sleep is not None:
        kwargs["sleep"] = sleep
    try:
        final = lib.run_to_completion(
            backend, check_mode=check_mode, wait=_bool(args.get("wait", True)),
            wait_timeout=int(args.get("wait_timeout", 3600)), poll_interval=int(args.get("poll_interval", 15)),
            max_passes=int(args.get("max_passes", 3)), verify_query=args.get("retrieval_query") or None,
            verify_min_records=int(args.get("retrieval_min_records", 1)),
            tolerate_failures=_bool(args.get("tolerate_failures", False)),
            on_progress=lambda snap: say("dify_documents %s" % lib.format_progress(snap, label)),
            on_event=lambda msg: say("dify_documents %s" % msg), label=label, **kwargs)
    except ModuleFailed as err:
        res = dict(err.result)
        res["failed"] = True
        return res
    if not check_mode:  # in check mode the plan line said it all
        say("dify_documents %s" % final["msg"])
    for f in final["failed_documents"][:20]:
        say("dify_documents %s   failed: %s (%s): %s" % (label, f.get("name"), f.get("action"), f.get("error")))
    if len(final["failed_documents"]) > 20:
        say("dify_documents %s   ... and %d more failed documents (see the task result)" % (
            label, len(final["failed_documents"]) - 20))
    final["diff"] = {"prepared": "\n".join(final.pop("diff_lines", None) or backend.first.get("diff_lines") or [])}
    if final["diff"]["prepared"]:
        final["diff"]["prepared"] += "\n"
    if check_mode and backend.first:
        final["would"] = backend.first.get("would")
    final["failed"] = final.get("fatal", False)
    for key in ("fatal", "failed_run"):
        final.pop(key, None)
    return final


def _bool(value):
    if isinstance(value, str):
        return value.strip().lower() in ("1", "yes", "true", "on", "y")
    return bool(value)


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = True

    def run(self, tmp=None, task_vars=None):
        result = super(ActionModule, self).run(tmp, task_vars)
        del tmp
        args = dict(self._task.args)
        check_mode = bool(self._task.check_mode)

        def execute(extra):
            module_args = dict(args)
            module_args.update(extra)
            if "dataset_id" in extra:
                module_args.pop("dataset", None)
            return self._execute_module(module_name=MODULE, module_args=module_args, task_vars=task_vars)

        result.update(drive(execute, args, check_mode, load_lib()))
        return result
