# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Knowledge as code: Dify's service API for documents (the HTTP part of the sync).

Built on ``DifyClient.raw()`` of the shared client, whose rule for what may be repeated it follows (its
``IDEMPOTENT_METHODS``; a document create is never repeated blindly) and whose reading of Dify's error
bodies it uses (``error_fields``). On top of that it waits out what Dify refused without processing:

* 429, and Dify's knowledge rate limit (a 403 "...knowledge base request rate limit..." in
  wraps.py's cloud_edition_billing_rate_limit_check), and the metadata lock ("Another document
  metadata operation is running") are waited out with a bounded exponential back-off honouring
  ``Retry-After`` (``backoff_max`` seconds per request), for every method: such a request was not
  processed;
* connection errors and 5xx are retried only for idempotent requests (GET, PUT, DELETE, and the
  metadata write and retrieval, which create nothing);
* "the document is busy" answers (400 ``document_indexing``; 400 ``Document is not available``
  from update-by-text) are not retried here: the sync defers that document and syncs it again
  once Dify has finished with it, so nothing is queued twice;
* one DifyClient per thread: ``concurrency`` requests in flight.

Every path and body shape below is read from Dify 1.15.0's source (api/controllers/service_api/
dataset/{document,metadata,dataset,hit_testing}.py, services/dataset_service.py,
services/metadata_service.py, fields/document_fields.py).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import threading
import time

from ansible_collections.dify_gpu.dify.plugins.module_utils.dify_client import CONSOLE, IDEMPOTENT_METHODS, DifyClient, DifyError, error_fields
from ansible_collections.dify_gpu.dify.plugins.module_utils.dify_knowledge import (
    FIELD_HASH, FIELD_PATH, FIELD_REVISION, FIELD_URL, METADATA_FIELDS, QUERY_MAX, TERMINAL,
    KnowledgeInputError, build_documents, doc_state, make_plan, request_envelope,
)

try:
    from concurrent.futures import ThreadPoolExecutor
except ImportError:  # pragma: no cover - Python 2
    ThreadPoolExecutor = None

PAGE = 100                # GET .../documents caps limit at 100 (DocumentListQuery, db.paginate max_per_page)
METADATA_BATCH = 50       # documents per POST .../documents/metadata
DIRECT_STATUS_MAX = 24    # watch lists this small are polled per batch, without listing the dataset
DETAIL_MAX = 200          # per-document status requests per poll (segment counts)


class KnowledgeApiError(Exception):
    """A service API call failed; ``str()`` names the call, HTTP status, Dify's code and message."""

    def __init__(self, method, path, status, code=None, message=None, busy=False):
        text = "%s %s failed: " % (method, path)
        text += "HTTP %s" % status if status is not None else "no answer"
        if code:
            text += " %s" % code
        if message:
            text += ": %s" % message
        Exception.__init__(self, text)
        self.msg = text
        self.method, self.path, self.status, self.code, self.message, self.busy = (
            method, path, status, code, message, busy)


def is_rate_limited(status, code, message):
    msg = (message or "").lower()
    return status == 429 or (status == 403 and "rate limit" in msg)


def is_locked(status, code, message):
    return status == 400 and "operation is running" in (message or "").lower()


def is_busy(status, code, message):
    return status == 400 and (code == "document_indexing" or "document is not available" in (message or "").lower())


def run_parallel(func, items, concurrency):
    """[func(item)] in order, ``concurrency`` at a time; an exception is returned in its slot."""
    items = list(items)

    def safe(item):
        try:
            return func(item)
        except Exception as exc:  # noqa: BLE001 - per-item failures are reported by the caller
            return exc

    if concurrency <= 1 or len(items) <= 1 or ThreadPoolExecutor is None:
        return [safe(i) for i in items]
    with ThreadPoolExecutor(max_workers=min(concurrency, len(items))) as pool:
        return list(pool.map(safe, items))


class ServiceApi(object):
    """The /v1 service API with a dataset key, ``concurrency``-safe, with the retry policy above."""

    def __init__(self, url, api_key, timeout=60, validate_certs=True, retries=3, retry_delay=1.0,
                 backoff_max=300, sleep=time.sleep, clock=time.monotonic, opener=None):
        self.url = url
        self.api_key = api_key
        self.timeout = timeout
        self.validate_certs = validate_certs
        self.retries = max(0, int(retries))
        self.retry_delay = float(retry_delay)
        self.backoff_max = float(backoff_max)
        self.sleep = sleep
        self.clock = clock
        self.opener = opener
        self._local = threading.local()
        self._lock = threading.Lock()
        self.stats = {"requests": 0, "rate_limited": 0, "waited_seconds": 0.0, "retries": 0}
        self.log = []  # (method, path) of every request, for tests and debugging

    def client(self):
        c = getattr(self._local, "client", None)
        if c is None:
            c = DifyClient(self.url, timeout=self.timeout, retries=0, retry_delay=self.retry_delay,
                           validate_certs=self.validate_certs, sleep=self.sleep, opener=self.opener)
            self._local.client = c
        return c

    def _count(self, key, n=1):
        with self._lock:
            self.stats[key] += n

    def _delay(self, attempt, headers):
        delay = min(30.0, self.retry_delay * (2 ** min(attempt, 10)))
        after = headers.get("Retry-After") if headers is not None else None
        if after is not None and str(after).strip().isdigit():
            delay = min(60.0, float(after))
        return delay

    def call(self, method, path, body=None, query=None, idempotent=None):
        """One service API call; returns the parsed body ({} when empty) or raises KnowledgeApiError."""
        if idempotent is None:
            idempotent = method.upper() in IDEMPOTENT_METHODS
        attempt = waits = 0
        waited = 0.0
        while True:
            self._count("requests")
            with self._lock:
                self.log.append((method, path))
            try:
                status, headers, data = self.client().raw(
                    method, path, body=body, query=query, send_cookies=False, retry_statuses=(),
                    headers={"Authorization": "Bearer %s" % self.api_key})
            except DifyError as err:
                if idempotent and attempt < self.retries:
                    self._count("retries")
                    self.sleep(self._delay(attempt, None))
                    attempt += 1
                    continue
                raise KnowledgeApiError(method, path, None, message=err.msg)
            if 200 <= status < 300:
                return data if data is not None else {}
            code, message = error_fields(data)
            if is_rate_limited(status, code, message) or is_locked(status, code, message):
                delay = self._delay(waits, headers)
                if waited + delay <= self.backoff_max:
                    self._count("rate_limited")
                    self._count("waited_seconds", delay)
                    self.sleep(delay)
                    waited += delay
                    waits += 1
                    continue
                raise KnowledgeApiError(method, path, status, code, "%s (still refused after waiting %ds; "
                                        "backoff_max)" % (message, int(waited)))
            if status >= 500 and idempotent and attempt < self.retries:
                self._count("retries")
                self.sleep(self._delay(attempt, headers))
                attempt += 1
                continue
            raise KnowledgeApiError(method, path, status, code, message, busy=is_busy(status, code, message))

    # ---------------------------------------------------------------- datasets
    def find_dataset(self, name):
        """The dataset named exactly ``name`` (GET /v1/datasets?keyword= is a substring match)."""
        page = 1
        while True:
            data = self.call("GET", "/v1/datasets", query={"keyword": name, "page": page, "limit": PAGE})
            for item in data.get("data") or []:
                if item.get("name") == name:
                    return item
            if not data.get("has_more") or not data.get("data"):
                return None
            page += 1

    def get_dataset(self, dataset_id):
        return self.call("GET", "/v1/datasets/%s" % dataset_id)

    # --------------------------------------------------------------- documents
    def list_documents(self, dataset_id, concurrency=1):
        """Every document of the dataset (fields/document_fields.py DocumentResponse), all pages."""
        path = "/v1/datasets/%s/documents" % dataset_id
        first = self.call("GET", path, query={"page": 1, "limit": PAGE})
        docs = list(first.get("data") or [])
        total = int(first.get("total") or 0)
        pages = (total + PAGE - 1) // PAGE
        if first.get("has_more") and pages > 1:
            for res in run_parallel(lambda p: self.call("GET", path, query={"page": p, "limit": PAGE}),
                                    range(2, pages + 1), concurrency):
                if isinstance(res, Exception):
                    raise res
                docs.extend(res.get("data") or [])
        seen, out = set(), []
        for d in docs:
            if d.get("id") not in seen:
                seen.add(d.get("id"))
                out.append(d)
        return out

    def create_by_text(self, dataset_id, body):
        return self.call("POST", "/v1/datasets/%s/document/create-by-text" % dataset_id, body=body)

    def update_by_text(self, dataset_id, document_id, body):
        return self.call("POST", "/v1/datasets/%s/documents/%s/update-by-text" % (dataset_id, document_id), body=body)

    def delete_document(self, dataset_id, document_id):
        return self.call("DELETE", "/v1/datasets/%s/documents/%s" % (dataset_id, document_id))

    def indexing_status(self, dataset_id, batch):
        return self.call("GET", "/v1/datasets/%s/documents/%s/indexing-status" % (dataset_id, batch))

    def document_detail(self, dataset_id, document_id):
        return self.call("GET", "/v1/datasets/%s/documents/%s" % (dataset_id, document_id),
                         query={"metadata": "without"})

    # ---------------------------------------------------------------- metadata
    def metadata_fields(self, dataset_id):
        """{name: id} of the dataset's custom metadata fields (GET /v1/datasets/{id}/metadata)."""
        data = self.call("GET", "/v1/datasets/%s/metadata" % dataset_id)
        return dict((f.get("name"), f.get("id")) for f in data.get("doc_metadata") or [] if f.get("id") != "built-in")

    def create_metadata_field(self, dataset_id, name):
        data = self.call("POST", "/v1/datasets/%s/metadata" % dataset_id, body={"type": "string", "name": name})
        return data.get("id")

    def set_document_metadata(self, dataset_id, operations):
        return self.call("POST", "/v1/datasets/%s/documents/metadata" % dataset_id,
                         body={"operation_data": operations}, idempotent=True)

    # ---------------------------------------------------------------- retrieval
    def retrieve(self, dataset_id, query):
        return self.call("POST", "/v1/datasets/%s/retrieve" % dataset_id, body={"query": query}, idempotent=True)


def dataset_api_key(client, check_mode=False):
    """The workspace's first knowledge key through the console, or a new one (None in check mode)."""
    keys = client.request("GET", CONSOLE + "/datasets/api-keys").get("data") or []
    if keys:
        return keys[0]["token"], False
    if check_mode:
        return None, False
    return client.request("POST", CONSOLE + "/datasets/api-keys")["token"], True


def _short(err):
    return getattr(err, "msg", None) or str(err)


class KnowledgeSync(object):
    """One knowledge base and its sources: plan, submit, status, verify."""

    def __init__(self, api, dataset_id, sources, settings, prune=True, retry_errors=True, allow_empty=False,
                 concurrency=4, check_mode=False, submit_budget=0, clock=time.monotonic, on_write=None,
                 on_plan=None):
        self.api = api
        self.dataset_id = dataset_id
        self.sources = sources
        self.settings = settings
        self.prune = prune
        self.retry_errors = retry_errors
        self.allow_empty = allow_empty
        self.concurrency = max(1, int(concurrency))
        self.check_mode = check_mode
        self.submit_budget = float(submit_budget or 0)
        self.clock = clock
        self.on_write = on_write
        self.on_plan = on_plan
        self.desired = None

    # ------------------------------------------------------------------ scan
    def scan(self):
        desired = build_documents(self.sources, self.settings)
        if not desired.docs and not self.allow_empty:
            raise KnowledgeInputError(
                "sources: no file to sync (skipped: %s); refusing to empty the knowledge base (set allow_empty "
                "to sync an empty set)" % (", ".join("%s %d" % kv for kv in sorted(desired.skipped.items())) or "none"))
        self.desired = desired
        return desired

    # ------------------------------------------------------------------ sync
    def sync(self):
        """Plan, then (unless check mode) write; the module's phase ``sync`` result."""
        started = self.clock()
        desired = self.desired or self.scan()
        fields = self.api.metadata_fields(self.dataset_id)
        existing = self.api.list_documents(self.dataset_id, self.concurrency)
        plan = make_plan(desired.docs, existing, prune=self.prune, retry_errors=self.retry_errors)
        if self.on_plan:
            self.on_plan(plan)
        result = {
            "changed": plan.changed, "dataset_id": self.dataset_id, "documents": len(desired.docs),
            "plan": plan.counts(), "writes_planned": plan.writes, "diff_lines": plan.diff_lines(),
            "skipped_files": dict(desired.skipped), "skipped_examples": dict(desired.examples),
            "added": [], "updated": [], "removed": [], "failed_documents": [], "watch": [], "more": False,
            "busy": [{"name": (d.name if d else e.get("name")), "id": e.get("id"), "state": doc_state(e),
                      "action": "update" if d else "remove"} for d, e in plan.busy],
            "blocked": [{"name": (d.name if d else e.get("name")), "id": e.get("id"), "reason": reason,
                         "action": "update" if d else "remove"} for d, e, reason in plan.blocked],
            "warnings": [],
        }
        if self.check_mode:
            result["would"] = {"add": [d.name for d, _state in plan.add],
                               "update": [d.name for d, _state in plan.update + plan.retry + plan.replace],
                               "remove": [e.get("name") for e in plan.remove]}
            return result
        for e in plan.pending:
            result["watch"].append({"id": e["id"], "name": e.get("name"), "batch": "", "action": "unchanged",
                                    "chars": e.get("word_count") or 0, "state": doc_state(e)})
        for b in result["busy"]:
            result["watch"].append({"id": b["id"], "name": b["name"], "batch": "", "action": "busy", "chars": 0,
                                    "state": b["state"]})
        if plan.writes == 0:
            result["changed"] = False
            result["elapsed"] = round(self.clock() - started, 2)
            return result
        missing = [f for f in METADATA_FIELDS if f not in fields]
        for name in missing:
            fields[name] = self.api.create_metadata_field(self.dataset_id, name)
        if plan.add or plan.retry or plan.replace:
            if not self.settings.get("indexing_technique"):
                # Dify 1.15.0's create-by-text refuses a body without indexing_technique (KnowledgeConfig
                # requires it): send the knowledge base's own
                technique = self.api.get_dataset(self.dataset_id).get("indexing_technique")
                self.settings = dict(self.settings, indexing_technique=technique or "high_quality")
        written, aborted = self._write(plan, result, started)
        self._store_metadata(written, fields, result)
        if aborted is not None:
            raise aborted
        for key in ("added", "updated", "removed"):
            result[key].sort()
        for key in ("failed_documents", "busy", "watch"):
            result[key].sort(key=lambda item: item.get("name") or "")
        result["changed"] = bool(missing) or bool(result["added"] or result["updated"] or result["removed"])
        result["elapsed"] = round(self.clock() - started, 2)
        result["requests"] = dict(self.api.stats)
        return result

    def _over_budget(self, started):
        return self.submit_budget > 0 and self.clock() - started > self.submit_budget

    def _write(self, plan, result, started):
        """Run the plan's writes: files first (adds, updates), removals last."""
        ds = self.dataset_id
        s = self.settings
        by_file = {}
        order = []
        for action, pairs in (("add", plan.add), ("update", plan.update), ("retry", plan.retry),
                              ("replace", plan.replace)):
            for d, e in pairs:
                fd = self.desired.files[d.name]
                key = (fd.source["option"], fd.rel)
                if key not in by_file:
                    by_file[key] = (fd, [])
                    order.append(key)
                by_file[key][1].append((action, d, e))
        lock = threading.Lock()
        written = []       # (document id, DesiredDoc, FileDocs)
        state = {"aborted": None, "unanswered": 0, "stopped": False}

        def stop_here():
            """The time budget is spent (or a fatal error was seen): leave the rest for the next run."""
            with lock:
                if not state["stopped"] and (state["aborted"] is not None or self._over_budget(started)):
                    state["stopped"] = True
                if state["stopped"]:
                    result["more"] = state["aborted"] is None
                return state["stopped"]

        def record(kind, item):
            with lock:
                result[kind].append(item)
                if self.on_write:
                    self.on_write(kind, item)

        def fail(action, name, path, err, stage="submit"):
            record("failed_documents", {"name": name, "path": path, "action": action, "stage": stage,
                                        "status": getattr(err, "status", None), "code": getattr(err, "code", None),
                                        "error": _short(err)})

        def defer(action, name, doc_id, err):
            with lock:
                result["busy"].append({"name": name, "id": doc_id, "state": "busy", "action": action,
                                       "error": _short(err)})
                result["watch"].append({"id": doc_id, "name": name, "batch": "", "action": "busy", "chars": 0,
                                        "state": "indexing"})

        def watch(doc_id, batch, d, action):
            with lock:
                result["watch"].append({"id": doc_id, "name": d.name, "batch": batch or "", "action": action,
                                        "chars": d.chars, "state": "waiting"})

        def fatal(err):
            """A bad key, the dataset gone, or Dify not answering: every further write would fail alike."""
            status = getattr(err, "status", None)
            with lock:
                state["unanswered"] = state["unanswered"] + 1 if status is None else 0
                if state["unanswered"] >= 5:
                    return True
            return status == 401 or (status == 404 and "/document/create-by-text" in (getattr(err, "path", "") or ""))

        def do_file(key):
            if stop_here():
                return
            fd, items = by_file[key]
            built, reason = fd.build(s, with_text=True)
            texts = dict((doc.name, (doc, text)) for doc, text in built)
            for action, d, e in items:
                if d.name not in texts:
                    fail(action, d.name, fd.path, "file changed during the sync (%s); the next run syncs it" %
                         (reason or "its parts changed"), stage="read")
                    continue
                doc, text = texts[d.name]
                body = request_envelope(doc.name, text, s["process_rule"], s["doc_form"], s["doc_language"],
                                        s.get("indexing_technique") if action in ("add", "replace", "retry") else None)
                try:
                    if action == "update":
                        body.pop("indexing_technique", None)
                        res = self.api.update_by_text(ds, e["id"], body)
                    else:
                        if action == "replace":
                            self.api.delete_document(ds, e["id"])
                        res = self.api.create_by_text(ds, body)
                except KnowledgeApiError as err:
                    if err.busy:
                        defer("update", d.name, e["id"] if e else None, err)
                    else:
                        fail(action, d.name, fd.path, err)
                        if fatal(err):
                            state["aborted"] = err
                    continue
                document = res.get("document") or {}
                doc_id = document.get("id") or (e or {}).get("id")
                if action == "retry" and e and doc_id != e["id"]:
                    try:
                        self.api.delete_document(ds, e["id"])
                    except KnowledgeApiError as err:
                        result["warnings"].append("%s: the failed document %s was not deleted: %s" % (
                            d.name, e["id"], _short(err)))
                with lock:
                    written.append((doc_id, doc, fd))
                watch(doc_id, res.get("batch"), doc, action)
                record("added" if action == "add" else "updated", d.name)

        for key, res in zip(order, run_parallel(do_file, order, self.concurrency)):
            if isinstance(res, Exception):  # not an API error: a bug or the file system; reported per document
                fd, items = by_file[key]
                for action, d, _e in items:
                    if d.name not in result["added"] + result["updated"]:
                        fail(action, d.name, fd.path, "%s: %s" % (type(res).__name__, res))
        if state["aborted"] is not None:
            return written, state["aborted"]

        def do_remove(e):
            if stop_here():
                return
            try:
                self.api.delete_document(ds, e["id"])
            except KnowledgeApiError as err:
                if err.busy:
                    defer("remove", e.get("name"), e["id"], err)
                elif err.status == 404:
                    record("removed", e.get("name"))  # gone already
                else:
                    fail("remove", e.get("name"), None, err)
                return
            record("removed", e.get("name"))

        if not result["more"]:
            for e, res in zip(plan.remove, run_parallel(do_remove, plan.remove, self.concurrency)):
                if isinstance(res, Exception):
                    fail("remove", e.get("name"), None, "%s: %s" % (type(res).__name__, res))
        return written, None

    def _store_metadata(self, written, fields, result):
        """Keep the content hash (and the path, URL, revision) with each written document."""
        def op(item):
            doc_id, doc, fd = item
            values = {FIELD_HASH: doc.sha, FIELD_PATH: fd.path, FIELD_URL: fd.source.get("url") or "",
                      FIELD_REVISION: fd.source.get("revision") or ""}
            return {"document_id": doc_id, "partial_update": True,
                    "metadata_list": [{"id": fields[k], "name": k, "value": v} for k, v in values.items()]}

        batches = [written[i:i + METADATA_BATCH] for i in range(0, len(written), METADATA_BATCH)]

        def send(batch):
            try:
                self.api.set_document_metadata(self.dataset_id, [op(i) for i in batch])
                return []
            except KnowledgeApiError:
                if len(batch) == 1:
                    raise
            failed = []  # one document of the batch failed: find it, keep the others
            for item in batch:
                try:
                    self.api.set_document_metadata(self.dataset_id, [op(item)])
                except KnowledgeApiError as err:
                    failed.append((item, err))
            return failed

        for batch, res in zip(batches, run_parallel(send, batches, self.concurrency)):
            if isinstance(res, Exception):
                res = [(batch[0], res)]
            for (doc_id, doc, fd), err in res:
                result["failed_documents"].append({"name": doc.name, "path": fd.path, "action": "metadata",
                                                   "stage": "metadata",
                                                   "status": getattr(err, "status", None), "code": getattr(err, "code", None),
                                                   "error": "content written, but its hash was not stored (the next run "
                                                            "uploads it again): %s" % _short(err)})

    # ---------------------------------------------------------------- status
    def status(self, watch):
        """States of the watched documents: [{id, state, error, completed_segments, total_segments,
        segments_known}]; GET requests only."""
        ds = self.dataset_id
        watch = list(watch or [])
        if not watch:
            return []

        def from_batch(w):
            try:
                data = self.api.indexing_status(ds, w["batch"])
            except KnowledgeApiError as err:
                if err.status == 404:
                    return {"id": w["id"], "state": "error", "error": "the document is no longer in Dify",
                            "segments_known": True}
                raise
            for item in data.get("data") or []:
                if item.get("id") == w["id"]:
                    return {"id": w["id"], "state": doc_state(item), "error": item.get("error"),
                            "completed_segments": item.get("completed_segments"),
                            "total_segments": item.get("total_segments"), "segments_known": True}
            return {"id": w["id"], "state": "error", "error": "the document is no longer in its indexing batch",
                    "segments_known": True}

        def from_detail(w):
            try:
                d = self.api.document_detail(ds, w["id"])
            except KnowledgeApiError as err:
                if err.status == 404:
                    return {"id": w["id"], "state": "error", "error": "the document is no longer in Dify",
                            "segments_known": True}
                raise
            n = d.get("segment_count")
            return {"id": w["id"], "state": doc_state(d), "error": d.get("error"), "completed_segments": n,
                    "total_segments": n, "segments_known": True}

        if len(watch) <= DIRECT_STATUS_MAX and all(w.get("batch") for w in watch):
            out = run_parallel(from_batch, watch, self.concurrency)
        else:
            docs = dict((d.get("id"), d) for d in self.api.list_documents(ds, self.concurrency))
            out, detail = [], []
            missing = [w for w in watch if w["id"] not in docs]
            found = dict((w["id"], r) for w, r in zip(missing, run_parallel(from_detail, missing, self.concurrency)))
            for w in watch:
                d = docs.get(w["id"])
                if d is None:  # not on the pages read (documents created meanwhile shift them), or deleted
                    res = found.get(w["id"])
                    out.append(res if isinstance(res, dict) else {
                        "id": w["id"], "state": w.get("state") or "waiting", "segments_known": False,
                        "poll_error": _short(res)})
                    continue
                st = {"id": w["id"], "state": doc_state(d), "error": d.get("error"), "segments_known": False}
                out.append(st)
                if st["state"] != "waiting":
                    detail.append((st["state"] in TERMINAL, w, st))
            detail.sort(key=lambda t: t[0])  # in progress first: they show live progress
            picked = detail[:DETAIL_MAX]
            fetched = run_parallel(lambda t: from_batch(t[1]) if t[1].get("batch") else (
                from_detail(t[1]) if t[0] else None), picked, self.concurrency)
            by_id = dict((o["id"], o) for o in out)
            for (_doc, w, st), res in zip(picked, fetched):
                if isinstance(res, Exception) or res is None:
                    continue
                by_id[w["id"]].update(res)
            out = [by_id[w["id"]] for w in watch if w["id"] in by_id]
        for i, res in enumerate(out):
            if isinstance(res, Exception):
                out[i] = {"id": watch[i]["id"], "state": watch[i].get("state") or "waiting", "segments_known": False,
                          "poll_error": _short(res)}
        return out

    # ---------------------------------------------------------------- verify
    def verify(self, query):
        if not query or len(query) > QUERY_MAX:
            return {"query": query, "error": "the query must be 1 to %d characters" % QUERY_MAX}
        try:
            data = self.api.retrieve(self.dataset_id, query)
        except KnowledgeApiError as err:
            return {"query": query, "error": _short(err)}
        records = data.get("records") or []
        top = []
        for r in records[:5]:
            seg = r.get("segment") or {}
            top.append({"document": (seg.get("document") or {}).get("name"), "score": r.get("score")})
        return {"query": query, "records": len(records), "top": top}
