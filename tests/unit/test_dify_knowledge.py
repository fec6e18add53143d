"""plugins/module_utils/dify_knowledge.py: the pure part of the knowledge sync (table-driven)."""

import json
import os

import pytest

from ansible.module_utils import dify_knowledge as k


# ------------------------------------------------------------------------------------- globs
@pytest.mark.parametrize("pattern,path,is_dir,expected", [
    ("**", "a/b/c.py", False, True),
    ("*.py", "a/b/c.py", False, True),          # no slash: any depth
    ("*.py", "c.py", False, True),
    ("*.py", "a/b/c.pyc", False, False),
    ("src/*.c", "src/a.c", False, True),         # with a slash: anchored
    ("src/*.c", "lib/src/a.c", False, False),
    ("src/*.c", "src/sub/a.c", False, False),    # * stays in one component
    ("src/**/*.c", "src/a.c", False, True),      # **/ is zero or more directories
    ("src/**/*.c", "src/x/y/a.c", False, True),
    ("/docs/**", "docs/a/b.md", False, True),    # leading slash: anchored too
    ("/docs/**", "x/docs/a.md", False, False),
    ("docs", "docs/a/b.md", False, True),        # a matching directory matches what is below it
    ("node_modules/", "web/node_modules/x/y.js", False, True),
    ("node_modules/", "web/node_modules", False, False),  # trailing slash: directories only
    ("node_modules/", "web/node_modules", True, True),
    ("file_?.go", "vendor/file_1.go", False, True),
    ("file_?.go", "vendor/file_12.go", False, False),
    ("*.[ch]", "x/y.h", False, True),
    ("*.[!ch]", "x/y.h", False, False),
    ("*.egg-info/", "pkg/foo.egg-info", True, True),
    ("a+b(c).md", "a+b(c).md", False, True),     # regex metacharacters are literal
])
def test_glob_table(pattern, path, is_dir, expected):
    assert k.Glob(pattern).matches(path, is_dir) is expected


@pytest.mark.parametrize("pattern", ["", "   ", "/", "//"])
def test_glob_rejects_empty_patterns(pattern):
    with pytest.raises(k.KnowledgeInputError):
        k.Glob(pattern)


# ------------------------------------------------------------------------------------- walk
def tree(tmp_path, files):
    for rel, data in files.items():
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return str(tmp_path)


SAMPLE = {
    "README.md": "# hi\n",
    "src/app.py": "print(1)\n",
    "src/lib/util.cpp": "int x;\n",
    ".git/HEAD": "ref: refs/heads/main\n",
    ".git/refs/heads/main": "0123456789abcdef0123456789abcdef01234567\n",
    ".git/objects/ab/cd": "x",
    "vendor/dep/a.go": "package a\n",
    "web/node_modules/m/index.js": "x\n",
    "web/node_modules/m/lib.js": "y\n",
    "build/out.txt": "gen\n",
    "web/app.min.js": "min\n",
    "web/package-lock.json": "{}\n",
    "docs/big.md": "x" * 5000,
    "tests/fixtures/skip.py": "skip\n",
}


def test_scan_skips_by_reason_and_counts_files(tmp_path):
    root = tree(tmp_path, SAMPLE)
    res = k.scan_source(root, exclude=["tests/fixtures/"], max_file_size=4000)
    assert [f[0] for f in res.files] == ["README.md", "src/app.py", "src/lib/util.cpp"]
    assert res.skipped == {"vcs": 1, "vendored": 3, "generated": 3, "too_large": 1, "excluded": 1}
    assert res.examples["vendored"] == ["vendor/", "web/node_modules/"]
    assert res.include_hits == {"**": 4}


def test_scan_include_globs_and_hits(tmp_path):
    root = tree(tmp_path, SAMPLE)
    res = k.scan_source(root, include=["*.py", "docs/**/*.md", "*.rs"])
    assert [f[0] for f in res.files] == ["docs/big.md", "src/app.py", "tests/fixtures/skip.py"]
    assert res.include_hits == {"*.py": 2, "docs/**/*.md": 1, "*.rs": 0}
    assert res.skipped["not_included"] == 2  # README.md, util.cpp


def test_scan_without_default_excludes_reads_vendored_trees(tmp_path):
    root = tree(tmp_path, SAMPLE)
    res = k.scan_source(root, default_excludes=False, exclude=[".git/"])
    names = [f[0] for f in res.files]
    assert "vendor/dep/a.go" in names and "web/node_modules/m/index.js" in names and "build/out.txt" in names
    assert res.skipped == {"excluded": 3}


def test_scan_skips_symlinks(tmp_path):
    root = tree(tmp_path, {"a.py": "x\n", "d/b.py": "y\n"})
    os.symlink(os.path.join(root, "a.py"), os.path.join(root, "link.py"))
    os.symlink(os.path.join(root, "d"), os.path.join(root, "dlink"))
    res = k.scan_source(root)
    assert [f[0] for f in res.files] == ["a.py", "d/b.py"]
    assert res.skipped == {"symlink": 2}


@pytest.mark.parametrize("name,data,text,reason", [
    ("a.py", b"print(1)\r\nprint(2)\r\n", "print(1)\nprint(2)\n", None),      # CRLF -> LF
    ("a.md", b"\xef\xbb\xbf# title\n", "# title\n", None),                      # BOM dropped
    ("a.md", "caf\u00e9 \u4e2d\u6587\n".encode("utf-8"), "caf\u00e9 \u4e2d\u6587\n", None),
    ("a.png", b"looks like text\n", None, "binary"),                              # by extension
    ("a.dat", b"ABC\x00DEF", None, "binary"),                                     # NUL sniff
    ("a.txt", "caf\xe9\n".encode("latin-1"), None, "not_utf8"),
    ("a.txt", b"  \n\n\t\n", None, "empty"),
    ("a.txt", b"", None, "empty"),
])
def test_load_text(tmp_path, name, data, text, reason):
    p = tmp_path / name
    p.write_bytes(data)
    assert k.load_text(str(p)) == (text, reason)


@pytest.mark.parametrize("path,language", [
    ("src/a.py", "Python"), ("x/y.hpp", "C++ header"), ("CMakeLists.txt", "CMake"), ("pkg/package.xml",
    "ROS package manifest (XML)"), ("Makefile", "Makefile"), ("Dockerfile.dev", "Dockerfile"), ("msg/Pose.msg",
    "ROS message"), ("LICENSE", "Text"), ("notes.unknownext", "Text"), (".bashrc", "Text"),
])
def test_guess_language(path, language):
    assert k.guess_language(path) == language


# ------------------------------------------------------------------------------------- names
def test_document_names_fit_dify_and_are_deterministic():
    short = "src/app.py"
    assert k.document_name(short) == short
    assert k.document_name(short, 2, 3) == "src/app.py [part 2]"
    long_path = "/".join("directory_%02d" % i for i in range(30)) + "/file.md"
    name = k.document_name(long_path)
    assert len(name) <= k.NAME_MAX and name == k.document_name(long_path)
    assert name.startswith(".../") and name.split(" ~")[0].endswith("/file.md")
    assert name.endswith(" ~" + k.short_hash(long_path))
    # the tail starts at a directory boundary, and another long path with the same tail differs
    assert name[4:].startswith("directory_")
    other = "other/" + long_path
    assert k.document_name(other) != name and len(k.document_name(other)) <= k.NAME_MAX
    part = k.document_name(long_path, 12, 20)
    assert len(part) <= k.NAME_MAX and part.endswith(" [part 12]")


# ------------------------------------------------------------------------------------- split
@pytest.mark.parametrize("text,budget,parts", [
    ("short\n", 100, ["short\n"]),
    ("a" * 40 + "\n" + "b" * 40 + "\n" + "c" * 40 + "\n", 100, ["a" * 40 + "\n" + "b" * 40 + "\n", "c" * 40 + "\n"]),
    ("x" * 250, 100, ["x" * 100, "x" * 100, "x" * 50]),                    # one long line: cut between characters
    ('"' * 60, 100, ['"' * 50, '"' * 10]),                                  # JSON escaping counts (\" = 2 bytes)
    ("\u4e2d" * 40, 100, ["\u4e2d" * 16, "\u4e2d" * 16, "\u4e2d" * 8]),     # \uXXXX = 6 bytes
])
def test_split_body_table(text, budget, parts):
    out = k.split_body(text, budget)
    assert out == parts
    assert "".join(out) == text
    assert all(k.json_len(p) <= budget for p in out)


def test_split_body_keeps_every_request_under_the_limit():
    text = "".join("line %05d: %s\n" % (i, "\u00e9\"\\" * (i % 7)) for i in range(3000))
    settings = k.sync_settings(max_request_size=16384)
    budget = k.text_budget("docs/x.md", 16384, settings["process_rule"], settings["doc_form"])
    parts = k.split_body(text, budget)
    assert len(parts) > 3 and "".join(parts) == text
    for i, part in enumerate(parts, 1):
        full = k.make_header("docs/x.md", "Markdown", "https://example.com/r", "a" * 40, i, len(parts)) + part
        body = k.request_envelope(k.document_name("docs/x.md", i, len(parts)), full, settings["process_rule"],
                                  settings["doc_form"], indexing_technique="high_quality")
        assert len(json.dumps(body)) <= 16384


def test_header():
    assert k.make_header("a/b.py", "Python", "https://git.example.com/r", "abc123") == (
        "File: a/b.py\nLanguage: Python\nSource: https://git.example.com/r at revision abc123\n\n")
    assert k.make_header("a/b.py", "Python", None, None, 2, 3) == "File: a/b.py (part 2 of 3)\nLanguage: Python\n\n"


# ------------------------------------------------------------------------------------- chunking
def test_process_rule_default_suits_code():
    rule = k.process_rule({})
    assert rule == {"mode": "custom", "rules": {
        "pre_processing_rules": [{"id": "remove_extra_spaces", "enabled": False},
                                 {"id": "remove_urls_emails", "enabled": False}],
        "segmentation": {"separator": "\n\n\n", "max_tokens": 800, "chunk_overlap": 80}}}
    assert k.doc_form({}) == "text_model"


def test_process_rule_modes():
    assert k.process_rule({"mode": "automatic"}) == {"mode": "automatic"}
    h = k.process_rule({"mode": "hierarchical", "subchunk_max_tokens": 200})
    assert h["rules"]["parent_mode"] == "paragraph"
    assert h["rules"]["subchunk_segmentation"] == {"separator": "\n", "max_tokens": 200, "chunk_overlap": 0}
    assert k.doc_form({"mode": "hierarchical"}) == "hierarchical_model"


@pytest.mark.parametrize("chunking,needle", [
    ({"mode": "semantic"}, "chunking.mode"),
    ({"max_tokens": 49}, "chunking.max_tokens"),
    ({"max_tokens": 4001}, "chunking.max_tokens"),
    ({"max_tokens": "many"}, "chunking.max_tokens"),
    ({"chunk_overlap": 800}, "chunking.chunk_overlap"),
    ({"separator": ""}, "chunking.separator"),
    ({"separator": "\u241e"}, "chunking.separator"),
    ({"remove_extra_spaces": "yes"}, "chunking.remove_extra_spaces"),
    ({"mode": "hierarchical", "parent_mode": "page"}, "chunking.parent_mode"),
    ({"mode": "hierarchical", "subchunk_max_tokens": 900}, "chunking.subchunk_max_tokens"),
    ({"size": 3}, "chunking.size"),
])
def test_chunking_validation_names_the_key(chunking, needle):
    with pytest.raises(k.KnowledgeInputError) as exc:
        k.chunking_settings(chunking)
    assert str(exc.value).startswith(needle)


# ------------------------------------------------------------------------------------- build
def test_build_documents(tmp_path):
    root = tree(tmp_path / "repo", dict(SAMPLE, **{"docs/huge.md": "".join("row %04d\n" % i for i in range(4000)),
                                                   "img.png": b"\x89PNG", "legacy.txt": b"\xe9t\xe9\n"}))
    settings = k.sync_settings(max_request_size=16384)
    d = k.build_documents([{"path": root, "url": "https://git.example.com/repo", "exclude": ["tests/"]}], settings)
    names = [doc.name for doc in d.docs]
    assert names == ["README.md", "docs/big.md", "docs/huge.md [part 1]", "docs/huge.md [part 2]",
                     "docs/huge.md [part 3]", "src/app.py", "src/lib/util.cpp"]
    assert d.skipped == {"vcs": 1, "vendored": 3, "generated": 3, "excluded": 1, "binary": 1, "not_utf8": 1}
    assert d.sources[0]["revision"] == "0123456789abcdef0123456789abcdef01234567"
    readme = d.by_name["README.md"]
    assert (readme.path, readme.language, readme.part, readme.parts) == ("README.md", "Markdown", 1, 1)
    # the hash is stable, and follows content, path, URL and chunking -- not the revision
    again = k.build_documents([{"path": root, "url": "https://git.example.com/repo", "exclude": ["tests/"],
                                "revision": "ffff"}], settings)
    assert [x.sha for x in again.docs] == [x.sha for x in d.docs]
    other = k.build_documents([{"path": root, "url": "https://git.example.com/repo", "exclude": ["tests/"]}],
                              k.sync_settings({"max_tokens": 900}, max_request_size=16384))
    assert all(a.sha != b.sha for a, b in zip(other.docs, d.docs))
    (tmp_path / "repo" / "src" / "app.py").write_text("print(2)\n")
    edited = k.build_documents([{"path": root, "url": "https://git.example.com/repo", "exclude": ["tests/"]}], settings)
    changed = [a.name for a, b in zip(edited.docs, d.docs) if a.sha != b.sha]
    assert changed == ["src/app.py"]
    # the full text: header + body, rebuilt from disk
    fd = edited.files["src/app.py"]
    [(doc, text)], reason = fd.build(settings)
    assert reason is None and doc.sha == edited.by_name["src/app.py"].sha
    assert text == ("File: src/app.py\nLanguage: Python\nSource: https://git.example.com/repo at revision "
                    "0123456789abcdef0123456789abcdef01234567\n\nprint(2)\n")


@pytest.mark.parametrize("sources,needle", [
    ([], "sources:"),
    ([{"path": "/nonexistent/folder"}], "sources[0].path"),
    ([{"path": "{root}", "include": ["*.rs"]}], "sources[0].include: '*.rs' matches no file"),
    ([{"path": "{root}", "include": ["vendor/**"]}], "set default_excludes: false"),
    ([{"path": "{root}", "include": [""]}], "include: empty glob"),
    ([{"path": "{root}"}, {"path": "{root}/src"}, {"path": "{root}"}], "sources: several sources share"),
])
def test_build_documents_bad_input_names_the_option(tmp_path, sources, needle):
    root = tree(tmp_path, SAMPLE)
    sources = [dict((key, v.replace("{root}", root) if isinstance(v, str) else v) for key, v in s.items())
               for s in sources]
    with pytest.raises(k.KnowledgeInputError) as exc:
        k.build_documents(sources, k.sync_settings())
    assert needle in str(exc.value)


def test_several_sources_get_prefixes(tmp_path):
    a = tree(tmp_path / "alpha", {"x.py": "a\n"})
    b = tree(tmp_path / "beta", {"x.py": "b\n"})
    d = k.build_documents([{"path": a}, {"path": b, "prefix": "B/"}], k.sync_settings())
    assert [x.name for x in d.docs] == ["B/x.py", "alpha/x.py"]


def test_colliding_names_fail(tmp_path):
    a = tree(tmp_path / "alpha", {"x.py": "a\n"})
    b = tree(tmp_path / "beta", {"alpha/x.py": "b\n"})
    with pytest.raises(k.KnowledgeInputError) as exc:
        k.build_documents([{"path": a, "prefix": "alpha/"}, {"path": b, "prefix": ""}], k.sync_settings())
    assert "would both be named 'alpha/x.py'" in str(exc.value)


def test_read_git_revision_packed_refs_and_detached(tmp_path):
    root = tree(tmp_path, {".git/HEAD": "ref: refs/heads/dev\n",
                           ".git/packed-refs": "# pack-refs\n%s refs/heads/dev\n" % ("b" * 40)})
    assert k.read_git_revision(root) == "b" * 40
    (tmp_path / ".git" / "HEAD").write_text("c" * 40 + "\n")
    assert k.read_git_revision(root) == "c" * 40
    assert k.read_git_revision(str(tmp_path / "nothing")) is None


# ------------------------------------------------------------------------------------- plan
def desired(name, sha="h1"):
    return k.DesiredDoc(name=name, path=name, sha=sha, chars=10, part=1, parts=1)


def existing(name, sha="h1", status="completed", enabled=True, archived=False, display=None, created=1, doc_id=None):
    meta = [{"id": "f1", "name": k.FIELD_HASH, "type": "string", "value": sha},
            {"id": "built-in", "name": "document_name", "type": "string", "value": name}] if sha else []
    return {"id": doc_id or "id-" + name, "name": name, "indexing_status": status, "enabled": enabled,
            "archived": archived, "display_status": display, "doc_metadata": meta, "created_at": created}


def names(pairs):
    return sorted((d or e).name if hasattr(d or e, "name") else e["name"] for d, e in pairs)


def test_plan_table():
    want = [desired("new.py"), desired("same.py"), desired("changed.py", "h2"), desired("nohash.py"),
            desired("indexing-same.py"), desired("indexing-changed.py", "h2"), desired("error-same.py"),
            desired("disabled-changed.py", "h2"), desired("disabled-same.py"), desired("archived-changed.py", "h2"),
            desired("paused-same.py")]
    have = [existing("same.py"), existing("changed.py"), existing("nohash.py", sha=None),
            existing("indexing-same.py", status="indexing"), existing("indexing-changed.py", status="splitting"),
            existing("error-same.py", status="error"), existing("disabled-changed.py", enabled=False),
            existing("disabled-same.py", enabled=False), existing("archived-changed.py", archived=True),
            existing("paused-same.py", status="indexing", display="paused"),
            existing("gone.py"), existing("gone-indexing.py", status="waiting"),
            existing("gone-archived.py", archived=True)]
    plan = k.make_plan(want, have)
    assert [d.name for d, _ in plan.add] == ["new.py"]
    assert sorted(d.name for d, _ in plan.update) == ["changed.py", "nohash.py"]
    assert [d.name for d, _ in plan.retry] == ["error-same.py"]
    assert [d.name for d, _ in plan.replace] == ["disabled-changed.py"]
    assert [e["name"] for e in plan.remove] == ["gone.py"]
    assert sorted(d.name for d, _ in plan.unchanged) == ["disabled-same.py", "indexing-same.py", "paused-same.py",
                                                         "same.py"]
    assert sorted(e["name"] for e in plan.pending) == ["indexing-same.py", "paused-same.py"]
    assert sorted((d.name if d else e["name"]) for d, e in plan.busy) == ["gone-indexing.py", "indexing-changed.py"]
    assert sorted((d.name if d else e["name"]) for d, e, _ in plan.blocked) == ["archived-changed.py",
                                                                                "gone-archived.py"]
    assert plan.counts() == {"add": 1, "update": 4, "remove": 1, "unchanged": 4, "busy": 2, "blocked": 2}
    assert plan.diff_lines() == [
        "~ changed.py", "~ disabled-changed.py", "~ error-same.py", "? gone-indexing.py (still indexing in Dify: "
        "waits, then syncs)", "- gone.py", "? indexing-changed.py (still indexing in Dify: waits, then syncs)",
        "+ new.py", "~ nohash.py"]


def test_plan_no_prune_and_no_retry():
    plan = k.make_plan([desired("error.py")], [existing("error.py", status="error"), existing("other.py")],
                       prune=False, retry_errors=False)
    assert plan.remove == [] and plan.retry == [] and [d.name for d, _ in plan.unchanged] == ["error.py"]
    assert not plan.changed


def test_plan_unchanged_means_no_writes():
    want = [desired("a.py"), desired("b.py")]
    plan = k.make_plan(want, [existing("a.py"), existing("b.py")])
    assert plan.writes == 0 and not plan.changed and plan.diff_lines() == []


def test_plan_duplicate_names_keep_the_matching_one():
    plan = k.make_plan([desired("a.py", "h2")], [existing("a.py", "h1", created=5, doc_id="old"),
                                                 existing("a.py", "h2", created=1, doc_id="match")])
    assert [e["id"] for _, e in plan.unchanged] == ["match"] and [e["id"] for e in plan.remove] == ["old"]


# ------------------------------------------------------------------------------------- progress and the loop
class Clock(object):
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t

    def sleep(self, s):
        self.t += s


def test_progress_rates_and_eta():
    clock = Clock()
    p = k.Progress(clock=clock)
    p.add([{"id": "a", "name": "a", "chars": 100, "batch": "b1"}, {"id": "b", "name": "b", "chars": 300, "batch": "b2"}])
    snap = p.update([{"id": "a", "state": "indexing", "completed_segments": 1, "total_segments": 4}])
    assert (snap["documents_done"], snap["documents_total"], snap["segments_done"], snap["segments_total"]) == (0, 2, 1, 4)
    clock.sleep(10)
    snap = p.update([{"id": "a", "state": "completed", "completed_segments": 4, "total_segments": 4}])
    assert snap["documents_done"] == 1 and snap["segments_done"] == 4
    assert snap["documents_per_second"] == 0.1 and snap["segments_per_second"] == 0.3
    assert snap["eta_seconds"] == 30.0  # 300 characters left at 10 characters/s
    line = k.format_progress(snap, "[KB]")
    assert line == ("[KB] indexing: 1/2 documents done, 1 queued, 4/4+ segments, 0.10 documents/s, 0.3 segments/s, "
                    "ETA 30s (elapsed 10s)")
    clock.sleep(5)
    snap = p.update([{"id": "b", "state": "error", "error": "boom", "segments_known": True}])
    assert snap["documents_done"] == 2 and snap["eta_seconds"] == 0.0 and not p.pending
    assert p.errors() == [{"name": "b", "id": "b", "action": "index", "stage": "indexing", "error": "boom"}]


def test_progress_does_not_wait_for_segment_counts():
    clock = Clock()
    p = k.Progress(clock=clock)
    p.add([{"id": "a", "name": "a", "chars": 1, "batch": "b1"}, {"id": "b", "name": "b", "chars": 1, "batch": "b2"}])
    snap = p.update([{"id": "a", "state": "completed", "segments_known": False},
                     {"id": "b", "state": "indexing", "segments_known": False}])
    assert snap["documents_done"] == 1 and [d["id"] for d in p.pending] == ["b"]
    assert [w["id"] for w in p.watch()] == ["b", "a"] and [w["id"] for w in p.backfill()] == ["a"]
    assert k.format_progress(snap).startswith("indexing: 1/2 documents done, 0/0+ segments")
    snap = p.update([{"id": "a", "state": "completed", "completed_segments": 7, "total_segments": 7},
                     {"id": "b", "state": "completed", "completed_segments": 2, "total_segments": 2}])
    assert not p.pending and p.backfill() == [] and (snap["segments_done"], snap["segments_total"]) == (9, 9)
    assert "9/9 segments" in k.format_progress(snap)


class FakeBackend(object):
    """Plays a Dify that indexes one document per status poll."""

    def __init__(self, syncs, polls_needed=2, records=3):
        self.syncs = list(syncs)
        self.polls = {}
        self.polls_needed = polls_needed
        self.records = records
        self.calls = []

    def sync(self):
        self.calls.append("sync")
        return self.syncs.pop(0)

    def status(self, watch):
        self.calls.append("status")
        out = []
        for w in watch:
            n = self.polls[w["id"]] = self.polls.get(w["id"], 0) + 1
            state = "completed" if n >= self.polls_needed else "indexing"
            if w["id"].startswith("bad") and state == "completed":
                state = "error"
            out.append({"id": w["id"], "state": state, "error": "bad input" if state == "error" else None,
                        "completed_segments": n, "total_segments": self.polls_needed})
        return out

    def verify(self, query):
        self.calls.append("verify")
        return {"query": query, "records": self.records, "top": []}


def sync_result(added=(), updated=(), watch=(), busy=(), more=False, unchanged=0, documents=None, failed=()):
    return {"changed": bool(added or updated), "dataset_id": "ds", "added": list(added), "updated": list(updated),
            "removed": [], "failed_documents": list(failed), "busy": list(busy), "blocked": [], "more": more,
            "watch": [{"id": w, "name": w, "batch": "b-" + w, "chars": 10} for w in watch], "skipped_files": {"binary": 1},
            "plan": {"add": len(added), "update": len(updated), "remove": 0, "unchanged": unchanged,
                     "busy": len(busy)}, "writes_planned": len(added) + len(updated),
            "documents": documents if documents is not None else len(added) + len(updated) + unchanged,
            "diff_lines": ["+ %s" % a for a in added]}


def test_run_to_completion_submits_in_slices_waits_and_verifies():
    clock = Clock()
    backend = FakeBackend([sync_result(added=["a"], watch=["a"], more=True, documents=3, unchanged=2),
                           sync_result(added=["b"], watch=["b"], documents=3, unchanged=2)])
    lines, snaps = [], []
    res = k.run_to_completion(backend, poll_interval=10, verify_query="what", on_event=lines.append,
                              on_progress=snaps.append, clock=clock, sleep=clock.sleep, label="[KB]")
    assert backend.calls == ["sync", "sync", "status", "status", "verify"]
    assert res["added"] == ["a", "b"] and res["counts"]["unchanged"] == 1 and res["counts"]["added"] == 2
    assert lines[0].startswith("[KB] plan: add 1") and lines[1] == "[KB] submitting: 1/1 writes done (0s)"
    assert [s["documents_done"] for s in snaps] == [0, 2] and clock.t == 1010.0
    assert res["retrieval"]["records"] == 3 and not res["fatal"] and not res["failed_run"]
    assert res["msg"] == "[KB] added 2, updated 0, removed 0, unchanged 1, skipped 1 (binary 1), failed 0"


def test_run_to_completion_resyncs_busy_documents_after_they_settle():
    clock = Clock()
    busy = [{"name": "x", "id": "x", "state": "indexing", "action": "update"}]
    first = sync_result(watch=["x"], busy=busy, documents=1)
    backend = FakeBackend([first, sync_result(updated=["x"], watch=["x2"], documents=1)])
    res = k.run_to_completion(backend, poll_interval=5, clock=clock, sleep=clock.sleep)
    assert backend.calls == ["sync", "status", "status", "sync", "status", "status"]
    assert res["updated"] == ["x"] and res["busy"] == [] and res["passes"] == 2 and not res["fatal"]


def test_run_to_completion_failures_timeout_and_tolerance():
    clock = Clock()
    backend = FakeBackend([sync_result(added=["ok", "bad1"], watch=["ok", "bad1"])])
    res = k.run_to_completion(backend, poll_interval=1, clock=clock, sleep=clock.sleep)
    assert [f["name"] for f in res["failed_documents"]] == ["bad1"] and res["failed_documents"][0]["error"] == "bad input"
    assert res["fatal"] and "1 document(s) failed" in res["msg"]
    backend = FakeBackend([sync_result(added=["ok", "bad1"], watch=["ok", "bad1"])])
    assert not k.run_to_completion(backend, poll_interval=1, tolerate_failures=True, clock=clock,
                                   sleep=clock.sleep)["fatal"]
    # a wait that runs out: reported, not hidden; the retrieval check is skipped
    backend = FakeBackend([sync_result(added=["slow"], watch=["slow"])], polls_needed=100)
    res = k.run_to_completion(backend, poll_interval=10, wait_timeout=35, verify_query="q", clock=clock,
                              sleep=clock.sleep)
    assert res["still_indexing"] == ["slow"] and res["fatal"] and "still indexing after wait_timeout=35s" in res["msg"]
    assert res["retrieval"]["not_run"] and "verify" not in backend.calls


def test_run_to_completion_retrieval_check_is_fatal_even_when_tolerating():
    clock = Clock()
    backend = FakeBackend([sync_result(added=["a"], watch=["a"])], records=0)
    res = k.run_to_completion(backend, poll_interval=1, verify_query="q", tolerate_failures=True, clock=clock,
                              sleep=clock.sleep)
    assert res["fatal"] and "returned 0 chunk(s), at least 1 wanted" in res["msg"]


def test_run_to_completion_check_mode_only_plans():
    backend = FakeBackend([sync_result(added=["a"], watch=[])])
    res = k.run_to_completion(backend, check_mode=True, verify_query="q")
    assert backend.calls == ["sync"] and res["changed"] and "retrieval" not in res
