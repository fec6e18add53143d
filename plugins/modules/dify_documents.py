#!/usr/bin/python
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: dify_documents
short_description: Make a Dify knowledge base hold exactly the files of one or more source trees
description:
  - One document per text file of the O(sources) (a git checkout or any folder), named by its path, sent as
    text (C(create-by-text)) with a short header (path, language, source URL and revision). Files larger
    than O(max_request_size) become numbered parts.
  - Incremental. A content hash is kept with every document as Dify document metadata (field
    C(sync_sha256), beside C(source_path), C(source_url), C(source_revision)). An unchanged file makes no
    request, a changed file updates its document in place (C(update-by-text), same document id), a removed
    file removes its document (O(prune)). A renamed file is a removal plus an addition.
  - A document Dify is still indexing is never resubmitted. It is reported as busy and synced once Dify has
    finished with it.
  - The M(dify_gpu.dify.dify_documents) action plugin (plugins/action/dify_documents.py) runs this module several times.
    It plans and submits (phase C(sync), in time slices of O(submit_budget) seconds so the output moves), then
    short read-only C(status) runs that it turns into progress lines (documents and segments done,
    rate, ETA) until every document is C(completed) or C(error), or O(wait_timeout) passes. After that
    it runs a re-sync of the documents that were busy and the retrieval check (phase C(verify)).
  - Uses Dify's service API with a knowledge (dataset) API key. Without O(dataset_api_key) the module logs in
    to the console and uses the workspace's first knowledge key.
extends_documentation_fragment: [dify_gpu.dify.dify]
options:
  dataset:
    description: Name of the knowledge base. It must exist (see M(dify_gpu.dify.dify_dataset)).
    type: str
  dataset_id:
    description: Id of the knowledge base; when set, O(dataset) is not looked up.
    type: str
  dataset_api_key:
    description: A workspace knowledge API key (C(dataset-...)).
    type: str
  sources:
    description: The trees whose files become documents. Required in phase C(sync).
    type: list
    elements: dict
    suboptions:
      path:
        description: Folder on the host the module runs on (a git checkout or any folder).
        type: path
        required: true
      name:
        description:
          - Name of the source. It is the document name prefix when there are several sources.
          - Default is the folder's name.
        type: str
      prefix:
        description:
          - Prefix of every document name of this source, for example C(ros2/).
          - Default is empty with one source and C(<name>/) with several.
        type: str
      url:
        description: Where the source comes from, printed in each document's header and stored as C(source_url).
        type: str
      revision:
        description:
          - Revision printed in the headers and stored as C(source_revision).
          - Default is the commit checked out in O(sources[].path), read from C(.git).
        type: str
      include:
        description:
          - Globs of the files to index, relative to the source (gitignore-like, see docs/knowledge.md).
          - Each one must match at least one file.
        type: list
        elements: str
        default: ['**']
      exclude:
        description: Globs of files or directories to skip (reason C(excluded)).
        type: list
        elements: str
        default: []
      default_excludes:
        description: Skip VCS metadata, vendored trees (C(vendor/), C(node_modules/), C(third_party/), ...) and
          generated ones (C(build/), C(dist/), lock files, C(*.min.js), ...).
        type: bool
        default: true
  chunking:
    description:
      - How Dify cuts documents into chunks (its C(process_rule)). Keys are C(mode) (C(custom), C(automatic) or
        C(hierarchical)), C(separator), C(max_tokens), C(chunk_overlap), C(remove_extra_spaces) and
        C(remove_urls_emails). With C(hierarchical) there are also C(parent_mode), C(subchunk_separator),
        C(subchunk_max_tokens) and C(subchunk_overlap).
      - Defaults are C(custom), separator three newlines, 800, 80, spaces kept. Dify 1.15.0 counts
        C(max_tokens) in characters.
      - A change re-indexes every document, because the settings are part of the content hash.
    type: dict
    default: {}
  max_file_size:
    description: Files larger than this (bytes) are skipped (reason C(too_large)).
    type: int
    default: 4194304
  max_request_size:
    description:
      - Largest request body (bytes) sent to Dify. Files whose JSON-encoded text is larger become
        C(<path> [part N]) documents.
      - Keep it at or below every proxy's body limit (C(dify_upload_file_size_limit_mb)).
    type: int
    default: 1048576
  indexing_technique:
    description: Sent with new documents. Needed only for a knowledge base that has no indexing technique yet.
    type: str
    choices: [high_quality, economy]
  doc_language:
    description: Document language Dify is told (C(doc_language)).
    type: str
    default: English
  prune:
    description: Remove documents that no source declares (also documents added by hand).
    type: bool
    default: true
  allow_empty:
    description: Accept sources without a single file, which with O(prune) empties the knowledge base.
    type: bool
    default: false
  allow_missing_dataset:
    description:
      - Check mode only. When the knowledge base does not exist, or Dify does not answer yet, because an earlier part of
        the same run creates them (a C(site.yml --check) on a fresh host), every document is reported as an addition.
        Without this option, the task fails.
      - Outside check mode a missing knowledge base always fails.
    type: bool
    default: false
  retry_errors:
    description: Submit again documents whose earlier indexing ended in C(error), even when unchanged.
    type: bool
    default: true
  concurrency:
    description: Requests in flight (threads, 1 to 32).
    type: int
    default: 4
  backoff_max:
    description: Seconds a single request may spend waiting out HTTP 429, rate limits and metadata locks.
    type: int
    default: 300
  wait:
    description: Wait until every submitted document is indexed (action plugin).
    type: bool
    default: true
  wait_timeout:
    description: Seconds to wait for indexing before the task gives up waiting (action plugin). Dify keeps indexing.
    type: int
    default: 3600
  poll_interval:
    description: Seconds between status polls, each printed as a progress line (1 to 30; action plugin).
    type: int
    default: 15
  submit_budget:
    description:
      - Seconds one C(sync) run may spend writing before it returns, so the action plugin can print progress.
      - V(0) means no limit in the module; the action plugin uses 20 then.
    type: int
    default: 0
  max_passes:
    description: Sync passes (the re-syncs of documents that were busy in Dify); action plugin.
    type: int
    default: 3
  tolerate_failures:
    description: Do not fail the task when documents failed, timed out or stayed busy (action plugin).
    type: bool
    default: false
  retrieval_query:
    description:
      - After the sync, this query (up to 250 characters) must retrieve at least O(retrieval_min_records) chunks.
    type: str
  retrieval_min_records:
    description: Chunks the retrieval check must return at least.
    type: int
    default: 1
  phase:
    description:
      - What one run does. The action plugin sets it, so leave it alone.
      - C(sync) plans and submits. C(status) reads the states of O(watch) without writing.
      - C(verify) runs the retrieval check.
    type: str
    choices: [sync, status, verify]
    default: sync
  watch:
    description: Documents whose state C(status) reads (V([{id, batch}])); set by the action plugin.
    type: list
    elements: dict
    default: []
notes:
  - Check mode plans without any write (not even the metadata fields).
  - C(--diff) lists the document names with C(+) (add), C(~) (update), C(-) (remove) and C(?) (busy).
  - Runs on the host that holds the source folders and reaches O(url).
author: dify-gpu-ansible contributors (@dify-gpu-ansible)
"""

EXAMPLES = r"""
- name: The repository checkout becomes the Handbook knowledge base
  dify_documents:
    url: http://127.0.0.1:8080
    dataset_api_key: "{{ dataset_key }}"
    dataset: Handbook
    sources:
      - path: /opt/dify/knowledge-sources/handbook/docs
        url: https://git.example.com/org/handbook
        include: ["**/*.md", "**/*.py"]
        exclude: ["tests/fixtures/"]
    chunking: {max_tokens: 1000, chunk_overlap: 100}
    retrieval_query: How do I install it?
"""

RETURN = r"""
dataset_id:
  description: Id of the knowledge base.
  returned: always
  type: str
counts:
  description: Number of documents added, updated, removed, unchanged, still busy in Dify, failed; files skipped.
  returned: always
  type: dict
  sample: {added: 12, updated: 3, removed: 1, unchanged: 480, busy: 0, failed: 0, skipped: 57}
skipped_files:
  description:
    - Files skipped, by reason (vcs, vendored, generated, excluded, not_included, symlink, too_large, binary,
      not_utf8, empty, unreadable). A VCS directory counts once.
  returned: always
  type: dict
added:
  description: Names of the documents added.
  returned: always
  type: list
updated:
  description: Names of the documents updated (or re-submitted after an indexing error).
  returned: always
  type: list
removed:
  description: Names of the documents removed.
  returned: always
  type: list
failed_documents:
  description:
    - Documents that failed. Each has name, path, action, stage (submit, metadata, indexing), status, code and
      Dify's error.
  returned: always
  type: list
busy:
  description: Documents that needed a write while Dify was still indexing them (not resubmitted).
  returned: always
  type: list
progress:
  description: Last progress snapshot (documents and segments done and total, rates, ETA, elapsed seconds).
  returned: when waited
  type: dict
retrieval:
  description: Result of the retrieval check (query, number of records, top documents).
  returned: when retrieval_query is set
  type: dict
watch:
  description: (phase sync) documents submitted or still indexing, to poll.
  returned: phase sync
  type: list
documents:
  description: (phase status) state of each watched document.
  returned: phase status
  type: list
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.dify_gpu.dify.plugins.module_utils.dify_client import DifyClient, DifyError, dify_argument_spec
from ansible_collections.dify_gpu.dify.plugins.module_utils.dify_knowledge import QUERY_MAX, KnowledgeInputError, sync_settings
from ansible_collections.dify_gpu.dify.plugins.module_utils.dify_knowledge_api import KnowledgeApiError, KnowledgeSync, ServiceApi, dataset_api_key

SOURCE_SPEC = dict(
    path=dict(type="path", required=True),
    name=dict(type="str"),
    prefix=dict(type="str"),
    url=dict(type="str"),
    revision=dict(type="str"),
    include=dict(type="list", elements="str", default=["**"]),
    exclude=dict(type="list", elements="str", default=[]),
    default_excludes=dict(type="bool", default=True),
)


def argument_spec():
    spec = dify_argument_spec()
    spec.update(
        dataset=dict(type="str"),
        dataset_id=dict(type="str"),
        dataset_api_key=dict(type="str", no_log=True),
        sources=dict(type="list", elements="dict", options=SOURCE_SPEC),
        chunking=dict(type="dict", default={}),
        max_file_size=dict(type="int", default=4 * 1024 * 1024),
        max_request_size=dict(type="int", default=1024 * 1024),
        indexing_technique=dict(type="str", choices=["high_quality", "economy"]),
        doc_language=dict(type="str", default="English"),
        prune=dict(type="bool", default=True),
        allow_empty=dict(type="bool", default=False),
        allow_missing_dataset=dict(type="bool", default=False),
        retry_errors=dict(type="bool", default=True),
        concurrency=dict(type="int", default=4),
        backoff_max=dict(type="int", default=300),
        wait=dict(type="bool", default=True),
        wait_timeout=dict(type="int", default=3600),
        poll_interval=dict(type="int", default=15),
        submit_budget=dict(type="int", default=0),
        max_passes=dict(type="int", default=3, no_log=False),
        tolerate_failures=dict(type="bool", default=False),
        retrieval_query=dict(type="str"),
        retrieval_min_records=dict(type="int", default=1),
        phase=dict(type="str", choices=["sync", "status", "verify"], default="sync"),
        watch=dict(type="list", elements="dict", default=[]),
    )
    return spec


def validate(p):
    """Input checks before any HTTP call; the message starts with the option's name."""
    if not 1 <= p["concurrency"] <= 32:
        raise KnowledgeInputError("concurrency: 1 to 32, got %d" % p["concurrency"])
    if not 1 <= p["poll_interval"] <= 30:
        raise KnowledgeInputError("poll_interval: 1 to 30 seconds (progress is shown at every poll), got %d"
                                  % p["poll_interval"])
    for key in ("wait_timeout", "backoff_max", "submit_budget"):
        if p[key] < 0:
            raise KnowledgeInputError("%s: must be 0 or more" % key)
    if p["max_passes"] < 1:
        raise KnowledgeInputError("max_passes: at least 1")
    if p["retrieval_query"] is not None and not 1 <= len(p["retrieval_query"]) <= QUERY_MAX:
        raise KnowledgeInputError("retrieval_query: 1 to %d characters (Dify's limit), got %d"
                                  % (QUERY_MAX, len(p["retrieval_query"])))
    if p["retrieval_min_records"] < 1:
        raise KnowledgeInputError("retrieval_min_records: at least 1")
    if p["phase"] == "sync" and not p["sources"]:
        raise KnowledgeInputError("sources: at least one source is needed")
    if not p["dataset"] and not p["dataset_id"]:
        raise KnowledgeInputError("dataset: the knowledge base's name (or dataset_id) is required")
    if not (p["dataset_api_key"] or p["admin_password"] or p["admin_api_key"]):
        raise KnowledgeInputError("dataset_api_key: give a knowledge API key, or admin_email + admin_password "
                                  "(or admin_api_key) to read one")
    return sync_settings(p["chunking"], p["max_file_size"], p["max_request_size"], p["doc_language"],
                         p["indexing_technique"])


def connect(module):
    """(ServiceApi, dataset_id); raises DifyError / KnowledgeApiError / KnowledgeInputError."""
    p = module.params
    key = p["dataset_api_key"]
    if not key:
        key, _created = dataset_api_key(DifyClient.from_module(module), module.check_mode)
        if key is None:
            raise KnowledgeInputError("dataset_api_key: the workspace has no knowledge API key yet (one is created "
                                      "outside check mode)")
    api = ServiceApi(p["url"], key, timeout=p["timeout"], validate_certs=p["validate_certs"], retries=p["retries"],
                     retry_delay=p["retry_delay"], backoff_max=p["backoff_max"])
    dataset_id = p["dataset_id"]
    if not dataset_id:
        found = api.find_dataset(p["dataset"])
        if not found:
            raise KnowledgeInputError("dataset: Dify has no knowledge base named %r (create it first, e.g. with "
                                      "dify_dataset or dify_bootstrap_datasets)" % p["dataset"])
        dataset_id = found["id"]
    return api, dataset_id


def not_there_yet(engine, module, why):
    """Check mode before the knowledge base exists: every document would be added."""
    desired = engine.desired
    names = [d.name for d in desired.docs]
    result = dict(changed=True, dataset_id="", documents=len(names), would={"add": names, "update": [], "remove": []},
                  plan={"add": len(names), "update": 0, "remove": 0, "unchanged": 0, "busy": 0, "blocked": 0},
                  writes_planned=len(names), diff_lines=["+ %s" % n for n in names], skipped_files=dict(desired.skipped),
                  skipped_examples=dict(desired.examples), added=[], updated=[], removed=[], failed_documents=[],
                  busy=[], blocked=[], watch=[], more=False,
                  warnings=["the knowledge base is not there yet (%s); planned as empty" % why])
    if module._diff:
        result["diff"] = {"prepared": "".join(line + "\n" for line in result["diff_lines"])}
    result["counts"] = {"added": 0, "updated": 0, "removed": 0, "unchanged": 0, "busy": 0, "failed": 0,
                        "skipped": sum(desired.skipped.values())}
    return result


def run(module):
    p = module.params
    settings = validate(p)
    sources = [dict((k, v) for k, v in s.items() if v is not None) for s in (p["sources"] or [])]
    engine = KnowledgeSync(None, None, sources, settings, prune=p["prune"], retry_errors=p["retry_errors"],
                           allow_empty=p["allow_empty"], concurrency=p["concurrency"], check_mode=module.check_mode,
                           submit_budget=p["submit_budget"])
    if p["phase"] == "sync":
        engine.scan()  # local: a missing folder or a glob that matches nothing fails before any HTTP call
    try:
        api, dataset_id = connect(module)
    except (KnowledgeInputError, KnowledgeApiError, DifyError) as err:
        if not (module.check_mode and p["phase"] == "sync" and p["allow_missing_dataset"]):
            raise
        return not_there_yet(engine, module, getattr(err, "msg", None) or str(err))
    engine.api, engine.dataset_id = api, dataset_id
    if p["phase"] == "status":
        return dict(changed=False, dataset_id=dataset_id, documents=engine.status(p["watch"]))
    if p["phase"] == "verify":
        return dict(changed=False, dataset_id=dataset_id, retrieval=engine.verify(p["retrieval_query"]))
    result = engine.sync()
    if module._diff:
        result["diff"] = {"prepared": "\n".join(result["diff_lines"]) + ("\n" if result["diff_lines"] else "")}
    result["counts"] = {"added": len(result["added"]), "updated": len(result["updated"]),
                        "removed": len(result["removed"]), "unchanged": result["plan"]["unchanged"],
                        "busy": len(result["busy"]), "failed": len(result["failed_documents"]),
                        "skipped": sum(result["skipped_files"].values())}
    return result


def main():
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True,
                           required_together=[("admin_email", "admin_password"), ("admin_api_key", "workspace_id")])
    try:
        result = run(module)
    except KnowledgeInputError as err:
        module.fail_json(msg=str(err))
    except KnowledgeApiError as err:
        module.fail_json(msg=err.msg, status=err.status, code=err.code)
    except DifyError as err:
        module.fail_json(msg=err.msg, status=err.status, code=err.code)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
