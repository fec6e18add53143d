"""A small fake of Dify 1.15.0's service API for knowledge documents (a test double -- not Dify).

Only what dify_documents talks to, with the shapes and rules read from Dify 1.15.0's source
(api/controllers/service_api/dataset/{document,metadata,dataset,hit_testing}.py,
services/dataset_service.py, services/metadata_service.py, services/file_service.py,
fields/document_fields.py):

* ``GET /v1/datasets`` (keyword substring), ``GET /v1/datasets/{id}``;
* ``GET /v1/datasets/{id}/documents`` -- newest first, ``has_more = len(page) == limit``, limit <= 100,
  ``doc_metadata`` = bound fields + built-in fields, only when the document has metadata;
* ``POST .../document/create-by-text`` -- the name is cut to 200 characters (upload_text); an enabled
  document with the same name is re-indexed in place (same id, new batch: the ``duplicate`` path);
  the first document needs a process_rule, a dataset without indexing technique needs one;
* ``POST .../documents/{doc}/update-by-text`` -- only ``available`` documents (else 400
  ``invalid_param`` "Document is not available"); the batch returned is the document's old one;
* ``DELETE .../documents/{doc}`` -- 204; 404; 403 for archived (1.15.0 does not refuse indexing docs);
* ``GET .../documents/{batch}/indexing-status``, ``GET .../documents/{doc}`` (segment_count);
* ``GET/POST .../metadata``, ``POST .../documents/metadata`` (partial_update);
* ``POST .../retrieve`` (query <= 250 characters): word overlap over completed segments.

Indexing is stepped by the test: ``tick()`` moves every unfinished document one state on
(waiting -> parsing -> cleaning -> splitting -> indexing -> completed); ``auto_ticks`` ticks on
each status read. A text containing ``FAKE_INDEX_ERROR`` ends in ``error``. Segments: one per
``max_tokens`` characters of the text (Dify 1.15.0 counts characters). Faults: ``fail(...)``.
"""

import json
import re
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

KEY = "dataset-fakekey0123456789"
STEPS = ["waiting", "parsing", "cleaning", "splitting", "indexing", "completed"]
BUILT_IN = ("document_name", "uploader", "upload_date", "last_update_date", "source")
UID = "([0-9a-f-]{36})"


class ApiError(Exception):
    def __init__(self, status, code, message):
        Exception.__init__(self, message)
        self.status, self.code, self.message = status, code, message


def bad(message):
    return ApiError(400, "invalid_param", message)


class FakeDify(object):
    def __init__(self, auto_ticks=0):
        self.lock = threading.RLock()
        self.datasets = {}
        self.docs = {}          # id -> doc
        self.fields = {}        # dataset id -> [{id, name, type}]
        self.requests = []
        self.faults = []
        self.auto_ticks = auto_ticks
        self.clock = 1_700_000_000

    # ------------------------------------------------------------ test hooks
    def add_dataset(self, name, indexing_technique="high_quality"):
        ds_id = str(uuid.uuid4())
        self.datasets[ds_id] = {"id": ds_id, "name": name, "indexing_technique": indexing_technique,
                                "doc_form": None, "process_rule": None}
        self.fields[ds_id] = []
        return ds_id

    def fail(self, method, pattern, status, code="internal_server_error", message="fake fault", count=1,
             headers=None):
        """Answer the next ``count`` requests matching ``method`` and the path regex with an error."""
        self.faults.append({"method": method, "re": re.compile(pattern), "status": status, "code": code,
                            "message": message, "count": count, "headers": headers or {}})

    def tick(self, n=1):
        with self.lock:
            for _ in range(n):
                for d in self.docs.values():
                    if d["indexing_status"] in ("completed", "error") or d.get("paused"):
                        continue
                    nxt = STEPS[STEPS.index(d["indexing_status"]) + 1]
                    if nxt == "indexing" and "FAKE_INDEX_ERROR" in d["text"]:
                        d["indexing_status"] = "error"
                        d["error"] = "fake embedding server: input too long"
                        continue
                    d["indexing_status"] = nxt
                    if nxt in ("indexing", "completed"):
                        half = d["total_segments"] // 2
                        d["completed_segments"] = d["total_segments"] if nxt == "completed" else half

    def finish(self):
        self.tick(len(STEPS))

    def docs_of(self, ds_id):
        return sorted((d for d in self.docs.values() if d["dataset_id"] == ds_id),
                      key=lambda d: (-d["created_at"], -d["position"]))

    def by_name(self, ds_id):
        return dict((d["name"], d) for d in self.docs_of(ds_id))

    def writes(self):
        return [(r["method"], r["path"]) for r in self.requests if r["method"] != "GET"
                and not r["path"].endswith("/retrieve")]

    def calls(self, since=0):
        return [(r["method"], r["path"]) for r in self.requests[since:]]

    # --------------------------------------------------------------- helpers
    def _now(self):
        self.clock += 1
        return self.clock

    def _ds(self, ds_id):
        ds = self.datasets.get(ds_id)
        if not ds:
            raise ApiError(404, "not_found", "Dataset not found.")
        return ds

    def _doc(self, ds_id, doc_id):
        d = self.docs.get(doc_id)
        if not d or d["dataset_id"] != ds_id:
            raise ApiError(404, "not_found", "Document not found.")
        return d

    @staticmethod
    def display_status(d):
        s = d["indexing_status"]
        if s == "waiting":
            return "queuing"
        if d.get("paused") and s not in ("completed", "error"):
            return "paused"
        if s in ("parsing", "cleaning", "splitting", "indexing"):
            return "indexing"
        if s == "error":
            return "error"
        if d.get("archived"):
            return "archived"
        return "available" if d.get("enabled", True) else "disabled"

    def _metadata_details(self, d):
        if not d["doc_metadata"]:
            return []
        out = []
        for f in self.fields.get(d["dataset_id"], []):
            if f["id"] in d["bindings"]:
                out.append({"id": f["id"], "name": f["name"], "type": f["type"],
                            "value": d["doc_metadata"].get(f["name"])})
        for name in BUILT_IN:
            out.append({"id": "built-in", "name": name, "type": "string", "value": d["name"] if name == "document_name"
                        else "x"})
        return out

    def _public(self, d):
        return {"id": d["id"], "position": d["position"], "data_source_type": "upload_file",
                "data_source_info": {"upload_file_id": d["file_id"]}, "dataset_process_rule_id": d["rule_id"],
                "name": d["name"], "created_from": "api", "created_by": "owner", "created_at": d["created_at"],
                "tokens": 0, "indexing_status": d["indexing_status"], "error": d.get("error"),
                "enabled": d.get("enabled", True), "disabled_at": None, "disabled_by": None,
                "archived": d.get("archived", False), "display_status": self.display_status(d),
                "word_count": len(d["text"]), "hit_count": 0, "doc_form": "text_model",
                "doc_metadata": self._metadata_details(d), "summary_index_status": None, "need_summary": False}

    @staticmethod
    def _check_rule(rule):
        """services/dataset_service.py process_rule_args_validate (the parts a client can get wrong)."""
        if rule is None:
            return
        if rule.get("mode") not in ("automatic", "custom", "hierarchical"):
            raise bad("Process rule mode is invalid")
        if rule["mode"] == "automatic":
            return
        rules = rule.get("rules") or {}
        if not rules:
            raise bad("Process rule rules is required")
        if rules.get("pre_processing_rules") is None:
            raise bad("Process rule pre_processing_rules is required")
        seg = rules.get("segmentation") or {}
        if not seg:
            raise bad("Process rule segmentation is required")
        if not seg.get("separator"):
            raise bad("Process rule segmentation separator is required")
        if not isinstance(seg.get("max_tokens"), int):
            raise bad("Process rule segmentation max_tokens is required")

    def _segments(self, text, rule):
        size = 500
        if rule and rule.get("mode") != "automatic":
            size = rule["rules"]["segmentation"]["max_tokens"]
        return max(1, (len(text) + size - 1) // size)

    # --------------------------------------------------------------- routes
    def handle(self, method, path, query, body):
        for f in self.faults:
            if f["count"] > 0 and f["method"] == method and f["re"].search(path):
                f["count"] -= 1
                return f["status"], {"code": f["code"], "message": f["message"], "status": f["status"]}, f["headers"]
        routes = [
            ("GET", r"/v1/datasets", self.ds_list),
            ("GET", r"/v1/datasets/%s" % UID, self.ds_get),
            ("GET", r"/v1/datasets/%s/documents" % UID, self.doc_list),
            ("POST", r"/v1/datasets/%s/document/create-by-text" % UID, self.create_by_text),
            ("POST", r"/v1/datasets/%s/documents/%s/update-by-text" % (UID, UID), self.update_by_text),
            ("DELETE", r"/v1/datasets/%s/documents/%s" % (UID, UID), self.doc_delete),
            ("GET", r"/v1/datasets/%s/documents/%s" % (UID, UID), self.doc_get),
            ("GET", r"/v1/datasets/%s/documents/([^/]+)/indexing-status" % UID, self.indexing_status),
            ("GET", r"/v1/datasets/%s/metadata" % UID, self.md_list),
            ("POST", r"/v1/datasets/%s/metadata" % UID, self.md_create),
            ("POST", r"/v1/datasets/%s/documents/metadata" % UID, self.md_documents),
            ("POST", r"/v1/datasets/%s/retrieve" % UID, self.retrieve),
        ]
        for m, pattern, func in routes:
            match = re.match("^" + pattern + "$", path)
            if match and m == method:
                with self.lock:
                    return func(query, body, *match.groups())
        raise ApiError(404, "not_found", "The requested URL was not found on the server.")

    def ds_list(self, query, body):
        keyword = query.get("keyword")
        page, limit = int(query.get("page", 1)), int(query.get("limit", 20))
        items = [d for d in self.datasets.values() if not keyword or keyword in d["name"]]
        chunk = items[(page - 1) * limit:page * limit]
        return 200, {"data": chunk, "has_more": len(chunk) == limit, "limit": limit, "total": len(items),
                     "page": page}

    def ds_get(self, query, body, ds_id):
        return 200, self._ds(ds_id)

    def doc_list(self, query, body, ds_id):
        self._ds(ds_id)
        if self.auto_ticks:
            self.tick(self.auto_ticks)
        page, limit = int(query.get("page", 1)), min(100, int(query.get("limit", 20)))
        docs = self.docs_of(ds_id)
        if query.get("keyword"):
            docs = [d for d in docs if query["keyword"] in d["name"]]
        chunk = docs[(page - 1) * limit:page * limit]
        return 200, {"data": [self._public(d) for d in chunk], "has_more": len(chunk) == limit, "limit": limit,
                     "total": len(docs), "page": page}

    def _new_batch(self):
        return time.strftime("%Y%m%d%H%M%S") + str(100000 + len(self.requests))

    def create_by_text(self, query, body, ds_id):
        ds = self._ds(ds_id)
        for key in ("name", "text"):
            if not isinstance(body.get(key), str):
                raise bad("%s: Field required" % key)
        if not body.get("indexing_technique"):
            # as Dify 1.15.0 (measured on real Dify): KnowledgeConfig requires the field on every create
            raise bad("1 validation error for KnowledgeConfig\nindexing_technique\n  Field required [type=missing]")
        rule = body.get("process_rule")
        self._check_rule(rule)
        if rule is None and ds["process_rule"] is None:
            rule = {"mode": "automatic"}
        if rule is not None:
            ds["process_rule"] = rule
        ds["indexing_technique"] = ds["indexing_technique"] or body.get("indexing_technique")
        name = body["name"][:200]
        batch = self._new_batch()
        same = [d for d in self.docs_of(ds_id) if d["name"] == name and d.get("enabled", True)]
        if same:
            d = same[0]
            d.update(text=body["text"], batch=batch, indexing_status="waiting", error=None, file_id=str(uuid.uuid4()),
                     completed_segments=0, total_segments=self._segments(body["text"], ds["process_rule"]))
        else:
            d = {"id": str(uuid.uuid4()), "dataset_id": ds_id, "name": name, "text": body["text"], "batch": batch,
                 "position": len(self.docs_of(ds_id)) + 1, "created_at": self._now(), "indexing_status": "waiting",
                 "file_id": str(uuid.uuid4()), "rule_id": str(uuid.uuid4()), "doc_metadata": {}, "bindings": set(),
                 "completed_segments": 0, "total_segments": self._segments(body["text"], ds["process_rule"])}
            self.docs[d["id"]] = d
        return 200, {"document": self._public(d), "batch": batch}

    def update_by_text(self, query, body, ds_id, doc_id):
        ds = self._ds(ds_id)
        if body.get("text") is not None and body.get("name") is None:
            raise bad("name is required when text is provided")
        self._check_rule(body.get("process_rule"))
        d = self._doc(ds_id, doc_id)
        if self.display_status(d) != "available":
            raise bad("Document is not available")
        if body.get("process_rule"):
            ds["process_rule"] = body["process_rule"]
        if body.get("text"):
            d["text"] = body["text"]
            d["name"] = body["name"][:200]
        d.update(indexing_status="waiting", error=None, completed_segments=0,
                 total_segments=self._segments(d["text"], ds["process_rule"]))
        return 200, {"document": self._public(d), "batch": d["batch"]}

    def doc_delete(self, query, body, ds_id, doc_id):
        self._ds(ds_id)
        d = self.docs.get(doc_id)
        if not d or d["dataset_id"] != ds_id:
            raise ApiError(404, "not_found", "Document Not Exists.")
        if d.get("archived"):
            raise ApiError(403, "archived_document_immutable", "The archived document is not editable.")
        del self.docs[doc_id]
        return 204, None

    def doc_get(self, query, body, ds_id, doc_id):
        d = self._doc(ds_id, doc_id)
        out = self._public(d)
        out["segment_count"] = d["total_segments"] if d["indexing_status"] == "completed" else d["completed_segments"]
        if query.get("metadata") == "without":
            out.pop("doc_metadata", None)
        return 200, out

    def indexing_status(self, query, body, ds_id, batch):
        self._ds(ds_id)
        if self.auto_ticks:
            self.tick(self.auto_ticks)
        docs = [d for d in self.docs_of(ds_id) if d["batch"] == batch]
        if not docs:
            raise ApiError(404, "not_found", "Documents not found.")
        out = []
        for d in docs:
            split = d["indexing_status"] not in ("waiting", "parsing", "cleaning")
            out.append({"id": d["id"], "indexing_status": "paused" if d.get("paused") else d["indexing_status"],
                        "processing_started_at": None, "parsing_completed_at": None, "cleaning_completed_at": None,
                        "splitting_completed_at": None, "completed_at": None, "paused_at": None,
                        "error": d.get("error"), "stopped_at": None,
                        "completed_segments": d["completed_segments"] if split else 0,
                        "total_segments": d["total_segments"] if split else 0})
        return 200, {"data": out}

    def md_list(self, query, body, ds_id):
        self._ds(ds_id)
        out = []
        for f in self.fields[ds_id]:
            count = sum(1 for d in self.docs.values() if f["id"] in d["bindings"])
            out.append(dict(f, count=count))
        return 200, {"doc_metadata": out, "built_in_field_enabled": False}

    def md_create(self, query, body, ds_id):
        self._ds(ds_id)
        if body.get("type") not in ("string", "number", "time") or not body.get("name"):
            raise bad("type and name are required")
        if any(f["name"] == body["name"] for f in self.fields[ds_id]) or body["name"] in BUILT_IN:
            raise bad("Metadata name already exists.")
        f = {"id": str(uuid.uuid4()), "name": body["name"], "type": body["type"]}
        self.fields[ds_id].append(f)
        return 201, f

    def md_documents(self, query, body, ds_id):
        self._ds(ds_id)
        for op in body.get("operation_data") or []:
            d = self.docs.get(op.get("document_id"))
            if not d or d["dataset_id"] != ds_id:
                raise bad("Document not found.")
            meta = dict(d["doc_metadata"]) if op.get("partial_update") else {}
            if not op.get("partial_update"):
                d["bindings"] = set()
            for item in op.get("metadata_list") or []:
                if item["id"] not in [f["id"] for f in self.fields[ds_id]]:
                    raise bad("Metadata not found.")
                meta[item["name"]] = item.get("value")
                d["bindings"].add(item["id"])
            d["doc_metadata"] = meta
        return 200, {"result": "success"}

    def retrieve(self, query, body, ds_id):
        self._ds(ds_id)
        q = body.get("query") or ""
        if not q or len(q) > 250:
            raise bad("query: String should have at most 250 characters")
        words = set(re.findall(r"\w+", q.lower()))
        records = []
        for d in self.docs_of(ds_id):
            if d["indexing_status"] != "completed":
                continue
            score = len(words & set(re.findall(r"\w+", d["text"].lower()))) / float(len(words) or 1)
            if score > 0:
                records.append({"segment": {"id": str(uuid.uuid4()), "content": d["text"][:200], "document_id": d["id"],
                                            "document": {"id": d["id"], "name": d["name"], "data_source_type":
                                                         "upload_file", "doc_type": None,
                                                         "doc_metadata": d["doc_metadata"]}},
                                "score": score, "child_chunks": [], "files": []})
        records.sort(key=lambda r: -r["score"])
        return 200, {"query": {"content": q}, "records": records[:4]}


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, fmt, *args):
        pass

    def _serve(self):
        fake = self.server.fake
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        query = dict((k, v[0]) for k, v in parse_qs(parts.query).items())
        body = json.loads(raw.decode("utf-8")) if raw else {}
        entry = {"method": self.command, "path": parts.path, "query": query, "json": body, "bytes": len(raw),
                 "auth": self.headers.get("Authorization")}
        headers = {}
        with fake.lock:
            fake.requests.append(entry)
        if self.headers.get("Authorization") != "Bearer " + KEY:
            status, data = 401, {"code": "unauthorized", "message": "Access token is invalid", "status": 401}
        else:
            try:
                status, data, *rest = fake.handle(self.command, parts.path, query, body)
                headers = rest[0] if rest else {}
            except ApiError as err:
                status, data = err.status, {"code": err.code, "message": err.message, "status": err.status}
        entry["status"] = status
        payload = b"" if status == 204 or data is None else json.dumps(data).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_DELETE = do_PATCH = _serve


class FakeServer(object):
    def __init__(self, **kw):
        self.fake = FakeDify(**kw)
        self.srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.srv.daemon_threads = True
        self.srv.fake = self.fake
        self.url = "http://127.0.0.1:%d" % self.srv.server_address[1]
        self.thread = threading.Thread(target=self.srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def stop(self):
        self.srv.shutdown()
        self.srv.server_close()
