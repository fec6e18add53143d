# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Knowledge as code: the pure part (no HTTP) of syncing source trees into a Dify knowledge base.

Used by plugins/modules/dify_documents.py (on the Dify host), plugins/action/dify_documents.py
(on the controller: the wait loop and progress) and scripts/dify-knowledge-sync (cron / CI).
Only the standard library: the action plugin loads this file by path.

* ``scan_source``     walk a tree with include / exclude globs and default excludes, every skipped
                      file counted by reason;
* ``load_text``       read a file as text (binary and non-UTF-8 files are refused with a reason);
* ``document_name``   the document name for a path (unique, <= 200 characters, deterministic);
* ``split_body``      split a text so that every request body stays under the size limit;
* ``build_documents`` the desired set: one document per file (or per part), with a content hash;
* ``make_plan``       add / update / retry / replace / remove / unchanged / busy, from the desired
                      set and what Dify holds;
* ``Progress`` and ``run_to_completion``: the submit / wait / re-sync / verify loop, independent of
                      how a step is executed (a module run or an in-process call).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib
import json
import os
import posixpath
import re
import time

# Dify 1.15.0 FileService.upload_text truncates the name of a text document to 200 characters
# (api/services/file_service.py:144) and create-by-text names the document after that file;
# update-by-text would keep up to 255 (Document.name). 200 keeps both paths identical.
NAME_MAX = 200
# Bumped when the document text layout changes, so every document is re-uploaded once.
HASH_VERSION = 1
# Metadata fields the sync keeps on every document (string fields, created once per dataset).
FIELD_HASH = "sync_sha256"
FIELD_PATH = "source_path"
FIELD_URL = "source_url"
FIELD_REVISION = "source_revision"
METADATA_FIELDS = (FIELD_HASH, FIELD_PATH, FIELD_URL, FIELD_REVISION)
# Dify 1.15.0 core/rag/index_processor/index_processor_base.py: custom segment length must be
# 50 .. INDEXING_MAX_SEGMENTATION_TOKENS_LENGTH (default 4000).
MAX_TOKENS_MIN = 50
MAX_TOKENS_MAX = 4000
# HitTestingPayload.query max_length (controllers/console/datasets/hit_testing_base.py)
QUERY_MAX = 250
SNIFF_BYTES = 8192

DEFAULT_CHUNKING = {
    "mode": "custom",
    # Dify splits on this separator first and keeps every piece that fits as one chunk (no merging);
    # larger pieces are split again on blank lines and merged up to max_tokens. Two blank lines
    # separate top-level definitions in Python (PEP 8) and sections in many docs; code without
    # them is cut on blank lines into chunks of up to max_tokens.
    "separator": "\n\n\n",
    # Dify 1.15.0 measures max_tokens and chunk_overlap in characters (fixed_text_splitter.py uses
    # a character length function). 800 characters of code are 200-400 tokens: a 512-token
    # embedding context takes them with room for the overlap.
    "max_tokens": 800,
    "chunk_overlap": 80,
    # remove_extra_spaces would collapse indentation, which carries meaning in code.
    "remove_extra_spaces": False,
    "remove_urls_emails": False,
    "parent_mode": "paragraph",
    "subchunk_separator": "\n",
    "subchunk_max_tokens": 256,
    "subchunk_overlap": 0,
}
CHUNK_MODES = ("custom", "automatic", "hierarchical")

# Directories skipped by default, by reason. A name matches at any depth.
DEFAULT_EXCLUDES = {
    "vcs": [".git/", ".hg/", ".svn/", ".bzr/"],
    "vendored": ["vendor/", "vendors/", "node_modules/", "third_party/", "third-party/", "thirdparty/",
                 "3rdparty/", "bower_components/", "jspm_packages/", "Pods/", "Carthage/", ".venv/", "venv/",
                 "site-packages/", ".bundle/"],
    "generated": ["build/", "_build/", "dist/", "target/", "generated/", "__generated__/", "__pycache__/",
                  ".pytest_cache/", ".mypy_cache/", ".ruff_cache/", ".tox/", ".nox/", ".gradle/", ".next/",
                  ".nuxt/", ".cache/", "htmlcov/", "*.egg-info/", ".eggs/", "CMakeFiles/",
                  "*.min.js", "*.min.css", "*.map", "*.pb.go", "*_pb2.py", "*_pb2_grpc.py", "*.pb.h",
                  "*.pb.cc", "package-lock.json", "yarn.lock", "pnpm-lock.yaml", "Cargo.lock", "poetry.lock",
                  "uv.lock", "Pipfile.lock", "composer.lock", "Gemfile.lock", "go.sum"],
}
# Extensions that are never text: skipped as binary without reading them.
BINARY_EXTENSIONS = frozenset((
    "png jpg jpeg gif bmp ico icns tif tiff webp psd xcf svgz heic avif "
    "mp3 mp4 m4a wav ogg oga flac aac mov avi mkv webm wmv "
    "zip gz tgz bz2 xz zst 7z rar tar lz4 jar war ear whl egg apk deb rpm dmg iso img "
    "exe dll so dylib a lib o obj ko pyc pyo pyd class dex wasm bin elf "
    "ttf otf woff woff2 eot pdf doc docx xls xlsx ppt pptx odt ods odp "
    "sqlite sqlite3 db mdb npy npz pkl pickle pt pth onnx h5 hdf5 parquet avro orc "
    "bag db3 mcap pcd ply stl glb fbx blend dae").split())

LANGUAGES = {
    "py": "Python", "pyi": "Python", "pyx": "Cython", "c": "C", "h": "C/C++ header", "cc": "C++", "cpp": "C++",
    "cxx": "C++", "c++": "C++", "hh": "C++ header", "hpp": "C++ header", "hxx": "C++ header", "ipp": "C++",
    "cu": "CUDA", "cuh": "CUDA", "m": "Objective-C", "mm": "Objective-C++", "java": "Java", "kt": "Kotlin",
    "kts": "Kotlin", "scala": "Scala", "groovy": "Groovy", "gradle": "Gradle", "go": "Go", "rs": "Rust",
    "rb": "Ruby", "php": "PHP", "pl": "Perl", "pm": "Perl", "lua": "Lua", "r": "R", "jl": "Julia",
    "swift": "Swift", "cs": "C#", "fs": "F#", "vb": "Visual Basic", "dart": "Dart", "ex": "Elixir",
    "exs": "Elixir", "erl": "Erlang", "hs": "Haskell", "ml": "OCaml", "clj": "Clojure", "lisp": "Lisp",
    "el": "Emacs Lisp", "zig": "Zig", "nim": "Nim", "v": "Verilog", "sv": "SystemVerilog", "vhd": "VHDL",
    "js": "JavaScript", "mjs": "JavaScript", "cjs": "JavaScript", "jsx": "JavaScript (JSX)",
    "ts": "TypeScript", "tsx": "TypeScript (TSX)", "vue": "Vue", "svelte": "Svelte", "html": "HTML",
    "htm": "HTML", "css": "CSS", "scss": "SCSS", "sass": "Sass", "less": "Less", "sh": "Shell", "bash": "Shell",
    "zsh": "Shell", "fish": "Shell", "ps1": "PowerShell", "bat": "Batch", "cmd": "Batch", "sql": "SQL",
    "proto": "Protocol Buffers", "thrift": "Thrift", "graphql": "GraphQL", "gql": "GraphQL",
    "msg": "ROS message", "srv": "ROS service", "action": "ROS action", "launch": "ROS launch (XML)",
    "urdf": "URDF (XML)", "xacro": "Xacro (XML)", "sdf": "SDF (XML)", "xml": "XML", "xsd": "XML Schema",
    "json": "JSON", "jsonc": "JSON", "yaml": "YAML", "yml": "YAML", "toml": "TOML", "ini": "INI", "cfg": "INI",
    "conf": "Configuration", "properties": "Properties", "env": "dotenv", "tf": "Terraform", "hcl": "HCL",
    "nix": "Nix", "cmake": "CMake", "mk": "Makefile", "md": "Markdown", "markdown": "Markdown", "mdx": "MDX",
    "rst": "reStructuredText", "adoc": "AsciiDoc", "tex": "LaTeX", "txt": "Text", "csv": "CSV", "tsv": "TSV",
    "ipynb": "Jupyter notebook (JSON)", "j2": "Jinja2", "jinja": "Jinja2", "tmpl": "Template", "svg": "SVG (XML)",
    "dockerfile": "Dockerfile", "patch": "Diff", "diff": "Diff",
}
BASENAMES = {
    "makefile": "Makefile", "gnumakefile": "Makefile", "cmakelists.txt": "CMake", "dockerfile": "Dockerfile",
    "containerfile": "Dockerfile", "jenkinsfile": "Groovy", "vagrantfile": "Ruby", "rakefile": "Ruby",
    "gemfile": "Ruby", "package.xml": "ROS package manifest (XML)", "readme": "Text", "license": "Text",
    "copying": "Text", "changelog": "Text", "authors": "Text", "notice": "Text", "codeowners": "Text",
    ".gitignore": "gitignore", ".dockerignore": "dockerignore", ".editorconfig": "INI",
}


class KnowledgeInputError(ValueError):
    """Bad input found before any write; the message names the option at fault."""


# ------------------------------------------------------------------------------------- globs
def _glob_body(pattern):
    """Regex for a glob without anchoring: ** spans directories, * and ? stay in one."""
    out = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("/**", i) and i + 3 == n:
            out.append("(?:/.*)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[":
            j = pattern.find("]", i + 2 if pattern[i + 1:i + 2] in ("!", "^") else i + 1)
            if j < 0:
                out.append(re.escape(c))
                i += 1
                continue
            inner = pattern[i + 1:j]
            if inner[:1] in ("!", "^"):
                inner = "^" + inner[1:]
            out.append("[" + inner.replace("\\", "\\\\") + "]")
            i = j + 1
        else:
            out.append(re.escape(c))
            i += 1
    return "".join(out)


class Glob(object):
    """One include / exclude pattern, gitignore-like.

    * matched against paths relative to the source root, ``/``-separated;
    * without a ``/`` (a trailing one aside) it matches a file or directory name at any depth
      (``*.py``, ``node_modules/``); with one it is anchored at the root (``docs/**/*.md``);
    * ``*`` and ``?`` stay within one path component, ``**`` spans any number of them;
    * a trailing ``/`` matches directories only (and so everything below them);
    * a pattern that matches a directory matches every file below it.
    """

    def __init__(self, pattern):
        if not isinstance(pattern, str) or not pattern.strip():
            raise KnowledgeInputError("empty glob pattern")
        self.pattern = pattern
        pat = pattern.strip()
        self.dir_only = pat.endswith("/")
        pat = pat.rstrip("/")
        anchored = "/" in pat
        pat = pat.lstrip("/")
        if not pat:
            raise KnowledgeInputError("glob pattern %r matches nothing" % pattern)
        body = _glob_body(pat)
        self.regex = re.compile(("^" if anchored else "^(?:.*/)?") + body + "$", re.S)

    def matches(self, rel, is_dir=False):
        """Does the pattern match this path, or one of the directories above it?"""
        parts = rel.split("/")
        for i in range(1, len(parts) + 1):
            last = i == len(parts)
            if self.dir_only and last and not is_dir:
                continue
            if self.regex.match("/".join(parts[:i])):
                return True
        return False

    def __repr__(self):
        return "Glob(%r)" % self.pattern


def compile_globs(patterns, option):
    out = []
    for pat in patterns or []:
        try:
            out.append(Glob(pat))
        except KnowledgeInputError as err:
            raise KnowledgeInputError("%s: %s" % (option, err))
    return out


def default_exclude_globs():
    return [(reason, Glob(p)) for reason, pats in DEFAULT_EXCLUDES.items() for p in pats]


# ------------------------------------------------------------------------------------- walk
class ScanResult(object):
    def __init__(self):
        self.files = []          # (rel, abspath, size), sorted by rel
        self.skipped = {}        # reason -> count
        self.examples = {}       # reason -> first few paths
        self.include_hits = {}   # include pattern -> files it matched

    def skip(self, reason, rel, count=1):
        self.skipped[reason] = self.skipped.get(reason, 0) + count
        ex = self.examples.setdefault(reason, [])
        if len(ex) < 5:
            ex.append(rel)


def _count_files(path):
    n = 0
    for _root, _dirs, files in os.walk(path):
        n += len(files)
    return n


def scan_source(root, include=None, exclude=None, default_excludes=True, max_file_size=None):
    """Walk ``root``; return a ScanResult with the candidate files and every skip counted by reason.

    Reasons: ``vcs`` / ``vendored`` / ``generated`` (default excludes), ``excluded`` (an exclude
    glob), ``not_included`` (no include glob matches), ``symlink``, ``too_large`` (over
    ``max_file_size`` bytes). Files in a skipped directory count under that directory's reason;
    a VCS directory (``.git/``) counts once.
    Content checks (binary, not UTF-8, empty) happen in load_text().
    """
    includes = compile_globs(include if include is not None else ["**"], "include")
    excludes = compile_globs(exclude, "exclude")
    defaults = default_exclude_globs() if default_excludes else []
    res = ScanResult()
    for g in includes:
        res.include_hits[g.pattern] = 0

    def excluded(rel, is_dir):
        for g in excludes:
            if g.matches(rel, is_dir):
                return "excluded"
        for reason, g in defaults:
            if g.matches(rel, is_dir):
                return reason
        return None

    root = os.path.abspath(root)
    for dirpath, dirnames, filenames in os.walk(root, topdown=True, followlinks=False):
        rel_dir = os.path.relpath(dirpath, root).replace(os.sep, "/")
        rel_dir = "" if rel_dir == "." else rel_dir + "/"
        keep = []
        for d in sorted(dirnames):
            rel = rel_dir + d
            full = os.path.join(dirpath, d)
            if os.path.islink(full):
                res.skip("symlink", rel)
                continue
            reason = excluded(rel, True)
            if reason:
                # VCS metadata is not part of the source: counted once per directory, not walked
                res.skip(reason, rel + "/", 1 if reason == "vcs" else _count_files(full))
                continue
            keep.append(d)
        dirnames[:] = keep
        for f in sorted(filenames):
            rel = rel_dir + f
            full = os.path.join(dirpath, f)
            reason = excluded(rel, False)
            if reason:
                res.skip(reason, rel)
                continue
            hit = False
            for g in includes:
                if g.matches(rel):
                    res.include_hits[g.pattern] += 1
                    hit = True
            if not hit:
                res.skip("not_included", rel)
                continue
            if os.path.islink(full):
                res.skip("symlink", rel)
                continue
            try:
                size = os.stat(full).st_size
            except OSError:
                res.skip("unreadable", rel)
                continue
            if max_file_size is not None and size > max_file_size:
                res.skip("too_large", rel)
                continue
            res.files.append((rel, full, size))
    res.files.sort()
    return res


def load_text(path):
    """(text, None) or (None, reason): reason is binary / not_utf8 / empty / unreadable.

    Text is decoded as UTF-8 (a BOM is dropped) with CRLF and CR line ends turned into LF.
    """
    ext = path.rsplit(".", 1)[-1].lower() if "." in os.path.basename(path) else ""
    if ext in BINARY_EXTENSIONS:
        return None, "binary"
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except (IOError, OSError):
        return None, "unreadable"
    if b"\x00" in data[:SNIFF_BYTES]:
        return None, "binary"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None, "not_utf8"
    if text.startswith(u"\ufeff"):
        text = text[1:]
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.strip():
        return None, "empty"
    return text, None


def guess_language(rel):
    base = posixpath.basename(rel).lower()
    if base in BASENAMES:
        return BASENAMES[base]
    if base.startswith("dockerfile"):
        return "Dockerfile"
    if "." in base.lstrip("."):
        return LANGUAGES.get(base.rsplit(".", 1)[-1], "Text")
    return "Text"


# ------------------------------------------------------------------------------------- names
def short_hash(text, n=8):
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:n]


def shorten(name, limit=NAME_MAX):
    """``name`` if it fits, else ``.../<tail> ~<hash>``: the tail of the path (cut at a ``/`` when
    one is near), and a hash of the whole name, so it stays unique and the same on every run."""
    if len(name) <= limit:
        return name
    suffix = " ~" + short_hash(name)
    keep = limit - len(suffix) - len(".../")
    tail = name[-keep:]
    cut = tail.find("/")
    if 0 <= cut < keep // 2:
        tail = tail[cut + 1:]
    return ".../" + tail + suffix


def document_name(path, part=1, parts=1, limit=NAME_MAX):
    """The document name of a path (``prefix + relative path``); parts get `` [part N]``."""
    suffix = " [part %d]" % part if parts > 1 else ""
    return shorten(path, limit - len(suffix)) + suffix


# ------------------------------------------------------------------------------------- text
def json_len(text):
    """Bytes ``text`` takes inside a JSON string as json.dumps() writes it (ASCII-escaped)."""
    return len(json.dumps(text)) - 2


def _split_long_line(line, budget):
    out, cur, size = [], [], 0
    for ch in line:
        n = json_len(ch)
        if size + n > budget and cur:
            out.append("".join(cur))
            cur, size = [], 0
        cur.append(ch)
        size += n
    if cur:
        out.append("".join(cur))
    return out


def split_body(text, budget):
    """Split ``text`` at line ends into parts whose JSON-encoded size is at most ``budget`` bytes.

    Lines longer than the budget are cut between characters. Deterministic: the same text and
    budget give the same parts.
    """
    if budget < 64:
        raise KnowledgeInputError("max_request_size leaves no room for the text (budget %d bytes)" % budget)
    if json_len(text) <= budget:
        return [text]
    parts, cur, size = [], [], 0
    for line in text.splitlines(True):
        n = json_len(line)
        pieces = [line] if n <= budget else _split_long_line(line, budget)
        for piece in pieces:
            m = n if len(pieces) == 1 else json_len(piece)
            if size + m > budget and cur:
                parts.append("".join(cur))
                cur, size = [], 0
            cur.append(piece)
            size += m
    if cur:
        parts.append("".join(cur))
    return parts


def make_header(path, language, url=None, revision=None, part=1, parts=1):
    lines = ["File: %s" % path]
    if parts > 1:
        lines[0] += " (part %d of %d)" % (part, parts)
    lines.append("Language: %s" % language)
    if url or revision:
        src = url or ""
        if revision:
            src = (src + " " if src else "") + "at revision %s" % revision
        lines.append("Source: %s" % src)
    return "\n".join(lines) + "\n\n"


# ------------------------------------------------------------------------------------- chunking
def chunking_settings(chunking=None):
    """Defaults merged with ``chunking``; raises KnowledgeInputError naming the bad key."""
    out = dict(DEFAULT_CHUNKING)
    for key, value in (chunking or {}).items():
        if key not in DEFAULT_CHUNKING:
            raise KnowledgeInputError("chunking.%s: unknown key (known: %s)"
                                      % (key, ", ".join(sorted(DEFAULT_CHUNKING))))
        if value is not None:
            out[key] = value
    if out["mode"] not in CHUNK_MODES:
        raise KnowledgeInputError("chunking.mode: must be one of %s, got %r" % (", ".join(CHUNK_MODES), out["mode"]))
    for key in ("max_tokens", "chunk_overlap", "subchunk_max_tokens", "subchunk_overlap"):
        try:
            out[key] = int(out[key])
        except (TypeError, ValueError):
            raise KnowledgeInputError("chunking.%s: must be an integer, got %r" % (key, out[key]))
    for key in ("remove_extra_spaces", "remove_urls_emails"):
        if not isinstance(out[key], bool):
            raise KnowledgeInputError("chunking.%s: must be true or false" % key)
    if out["mode"] != "automatic":
        if not MAX_TOKENS_MIN <= out["max_tokens"] <= MAX_TOKENS_MAX:
            raise KnowledgeInputError("chunking.max_tokens: Dify accepts %d to %d (INDEXING_MAX_SEGMENTATION_TOKENS_"
                                      "LENGTH), got %d" % (MAX_TOKENS_MIN, MAX_TOKENS_MAX, out["max_tokens"]))
        if not 0 <= out["chunk_overlap"] < out["max_tokens"]:
            raise KnowledgeInputError("chunking.chunk_overlap: must be 0 or more and below max_tokens (%d), got %d"
                                      % (out["max_tokens"], out["chunk_overlap"]))
        for key in ("separator", "subchunk_separator"):
            sep = out[key]
            if not isinstance(sep, str) or not sep:
                raise KnowledgeInputError("chunking.%s: must be a non-empty string" % key)
            try:
                sep.encode("ascii")
            except UnicodeEncodeError:
                raise KnowledgeInputError("chunking.%s: must be ASCII (Dify decodes it with unicode_escape, which "
                                          "mangles other characters)" % key)
    if out["mode"] == "hierarchical":
        if out["parent_mode"] not in ("paragraph", "full-doc"):
            raise KnowledgeInputError("chunking.parent_mode: paragraph or full-doc, got %r" % out["parent_mode"])
        if not MAX_TOKENS_MIN <= out["subchunk_max_tokens"] <= out["max_tokens"]:
            raise KnowledgeInputError("chunking.subchunk_max_tokens: %d to max_tokens (%d), got %d"
                                      % (MAX_TOKENS_MIN, out["max_tokens"], out["subchunk_max_tokens"]))
        if not 0 <= out["subchunk_overlap"] < out["subchunk_max_tokens"]:
            raise KnowledgeInputError("chunking.subchunk_overlap: must be below subchunk_max_tokens")
    return out


def process_rule(chunking):
    """Dify's ``process_rule`` (services/entities/knowledge_entities: ProcessRule / Rule / Segmentation)."""
    c = chunking_settings(chunking)
    if c["mode"] == "automatic":
        return {"mode": "automatic"}
    rules = {
        "pre_processing_rules": [{"id": "remove_extra_spaces", "enabled": c["remove_extra_spaces"]},
                                 {"id": "remove_urls_emails", "enabled": c["remove_urls_emails"]}],
        "segmentation": {"separator": c["separator"], "max_tokens": c["max_tokens"],
                         "chunk_overlap": c["chunk_overlap"]},
    }
    if c["mode"] == "hierarchical":
        rules["parent_mode"] = c["parent_mode"]
        rules["subchunk_segmentation"] = {"separator": c["subchunk_separator"], "max_tokens": c["subchunk_max_tokens"],
                                          "chunk_overlap": c["subchunk_overlap"]}
    return {"mode": c["mode"], "rules": rules}


def doc_form(chunking):
    return "hierarchical_model" if chunking_settings(chunking)["mode"] == "hierarchical" else "text_model"


# ------------------------------------------------------------------------------------- sources
def read_git_revision(root):
    """The commit checked out in ``root`` (a git work tree), read from .git without running git."""
    gitdir = os.path.join(root, ".git")
    try:
        if os.path.isfile(gitdir):  # worktree / submodule: "gitdir: <path>"
            with open(gitdir) as fh:
                line = fh.read().strip()
            if line.startswith("gitdir:"):
                gitdir = os.path.join(root, line.split(":", 1)[1].strip())
        with open(os.path.join(gitdir, "HEAD")) as fh:
            head = fh.read().strip()
        if not head.startswith("ref:"):
            return head if re.match(r"^[0-9a-f]{40,64}$", head) else None
        ref = head.split(":", 1)[1].strip()
        ref_file = os.path.join(gitdir, *ref.split("/"))
        if os.path.isfile(ref_file):
            with open(ref_file) as fh:
                return fh.read().strip() or None
        packed = os.path.join(gitdir, "packed-refs")
        if os.path.isfile(packed):
            with open(packed) as fh:
                for line in fh:
                    parts = line.strip().split(" ")
                    if len(parts) == 2 and parts[1] == ref:
                        return parts[0]
    except (IOError, OSError):
        return None
    return None


def normalize_sources(sources):
    """Validate the ``sources`` option; fill name / prefix / revision. Raises KnowledgeInputError."""
    if not sources:
        raise KnowledgeInputError("sources: at least one source is needed")
    out = []
    for i, src in enumerate(sources):
        opt = "sources[%d]" % i
        if not isinstance(src, dict) or not src.get("path"):
            raise KnowledgeInputError("%s.path: every source needs the path of a folder" % opt)
        path = os.path.abspath(os.path.expanduser(src["path"]))
        if not os.path.isdir(path):
            raise KnowledgeInputError("%s.path: %s is not a readable folder" % (opt, src["path"]))
        s = dict(src)
        s["path"] = path
        s["name"] = src.get("name") or os.path.basename(path.rstrip("/")) or "source"
        s["include"] = list(src.get("include") or ["**"])
        s["exclude"] = list(src.get("exclude") or [])
        s["default_excludes"] = src.get("default_excludes", True) is not False
        s["revision"] = src.get("revision") or read_git_revision(path)
        s["url"] = src.get("url") or ""
        s["option"] = opt
        out.append(s)
    for s in out:
        if s.get("prefix") is None:
            s["prefix"] = "" if len(out) == 1 else s["name"].strip("/") + "/"
    prefixes = [s["prefix"] for s in out]
    if len(set(prefixes)) != len(prefixes):
        raise KnowledgeInputError("sources: several sources share the document name prefix %r; give each a "
                                  "distinct name or prefix" % sorted(p for p in prefixes if prefixes.count(p) > 1)[0])
    return out


class DesiredDoc(object):
    __slots__ = ("name", "path", "source", "rel", "part", "parts", "sha", "chars", "language")

    def __init__(self, **kw):
        for k in self.__slots__:
            setattr(self, k, kw.get(k))

    def as_dict(self):
        return dict((k, getattr(self, k)) for k in self.__slots__)


def content_hash(doc_path, part, parts, language, url, body, rule, form):
    payload = json.dumps([HASH_VERSION, doc_path, part, parts, language, url or "", rule, form, body],
                         sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def request_envelope(name, text, rule, form, doc_language="English", indexing_technique=None):
    body = {"name": name, "text": text, "process_rule": rule, "doc_form": form, "doc_language": doc_language}
    if indexing_technique:
        body["indexing_technique"] = indexing_technique
    return body


def text_budget(doc_path, max_request_size, rule, form, doc_language="English", url=""):
    """Bytes left for the file's text in one create/update request (the rest is name, header, rule).

    Independent of the actual revision (a 64-character one is assumed), so that a new commit does not
    move part boundaries -- and with them the content hashes -- of files that did not change."""
    worst_name = document_name(doc_path, 99999, 99999)
    header = make_header(doc_path, "X" * 40, url, "r" * 64, 99999, 99999)
    envelope = request_envelope(worst_name, header, rule, form, doc_language, "high_quality")
    return max_request_size - len(json.dumps(envelope)) - 256


class FileDocs(object):
    """The documents of one file: built from disk on demand (uploads), hashed at scan time."""

    def __init__(self, source, rel, abspath):
        self.source = source
        self.rel = rel
        self.abspath = abspath

    @property
    def path(self):
        return self.source["prefix"] + self.rel

    def build(self, settings, with_text=True):
        """([(DesiredDoc, full text or None)], skip reason or None) for this file."""
        text, reason = load_text(self.abspath)
        if reason:
            return [], reason
        rule = settings["process_rule"]
        form = settings["doc_form"]
        src = self.source
        language = guess_language(self.rel)
        budget = text_budget(self.path, settings["max_request_size"], rule, form,
                             settings.get("doc_language", "English"), src.get("url"))
        bodies = split_body(text, budget)
        out = []
        for i, body in enumerate(bodies, 1):
            n = len(bodies)
            doc = DesiredDoc(name=document_name(self.path, i, n), path=self.path, source=src["option"], rel=self.rel,
                             part=i, parts=n, language=language, chars=len(body),
                             sha=content_hash(self.path, i, n, language, src.get("url"), body, rule, form))
            full = None
            if with_text:
                full = make_header(self.path, language, src.get("url"), src.get("revision"), i, n) + body
            out.append((doc, full))
        return out, None


class Desired(object):
    def __init__(self):
        self.docs = []         # DesiredDoc, sorted by name
        self.files = {}        # doc name -> FileDocs
        self.skipped = {}      # reason -> count
        self.examples = {}     # reason -> paths
        self.sources = []

    @property
    def by_name(self):
        return dict((d.name, d) for d in self.docs)


def build_documents(sources, settings):
    """Scan every source and hash every document. Raises KnowledgeInputError (names the option) for a
    missing folder, a glob that matches nothing, or two files that would get the same name."""
    desired = Desired()
    desired.sources = normalize_sources(sources)
    for src in desired.sources:
        scan = scan_source(src["path"], src["include"], src["exclude"], src["default_excludes"],
                           settings.get("max_file_size"))
        for pat, hits in scan.include_hits.items():
            if hits == 0:
                hint = ""
                if src["default_excludes"]:
                    hint = (" (default excludes skip VCS, vendored and generated trees such as vendor/, node_modules/, "
                            "build/; set default_excludes: false to index them)")
                raise KnowledgeInputError("%s.include: %r matches no file under %s%s"
                                          % (src["option"], pat, src["path"], hint))
        for reason, n in scan.skipped.items():
            desired.skipped[reason] = desired.skipped.get(reason, 0) + n
            desired.examples.setdefault(reason, [])
            desired.examples[reason] = (desired.examples[reason] + scan.examples.get(reason, []))[:5]
        for rel, full, _size in scan.files:
            fd = FileDocs(src, rel, full)
            docs, reason = fd.build(settings, with_text=False)
            if reason:
                desired.skipped[reason] = desired.skipped.get(reason, 0) + 1
                ex = desired.examples.setdefault(reason, [])
                if len(ex) < 5:
                    ex.append(fd.path)
                continue
            for doc, _state in docs:
                if doc.name in desired.files:
                    raise KnowledgeInputError("%s: %s and %s would both be named %r in Dify" % (
                        src["option"], desired.files[doc.name].path, fd.path, doc.name))
                desired.files[doc.name] = fd
                desired.docs.append(doc)
    desired.docs.sort(key=lambda d: d.name)
    return desired


def sync_settings(chunking=None, max_file_size=4 * 1024 * 1024, max_request_size=1024 * 1024, doc_language="English",
                  indexing_technique=None):
    if max_request_size < 16 * 1024:
        raise KnowledgeInputError("max_request_size: at least 16384 bytes, got %d" % max_request_size)
    if max_file_size is not None and max_file_size < 1:
        raise KnowledgeInputError("max_file_size: must be positive")
    return {"chunking": chunking_settings(chunking), "process_rule": process_rule(chunking),
            "doc_form": doc_form(chunking), "max_file_size": max_file_size, "max_request_size": max_request_size,
            "doc_language": doc_language or "English", "indexing_technique": indexing_technique}


# ------------------------------------------------------------------------------------- plan
TERMINAL = ("completed", "error")
BUSY = ("waiting", "parsing", "cleaning", "splitting", "indexing", "paused")


def doc_state(doc):
    """Normalised state of a document as Dify lists it: waiting / indexing / paused / completed / error."""
    status = doc.get("indexing_status") or ""
    if doc.get("display_status") == "paused" or status == "paused":
        return "paused"
    if status == "waiting":
        return "waiting"
    if status in ("parsing", "cleaning", "splitting", "indexing"):
        return "indexing"
    if status in TERMINAL:
        return status
    return status or "unknown"


def metadata_value(doc, field):
    for item in doc.get("doc_metadata") or []:
        if isinstance(item, dict) and item.get("name") == field and item.get("id") != "built-in":
            return item.get("value")
    return None


class Plan(object):
    """What a sync will do. Lists of (DesiredDoc, existing doc dict or None) / existing docs."""

    def __init__(self):
        self.add = []        # (desired, None)
        self.update = []     # (desired, existing)  available: update-by-text in place
        self.retry = []      # (desired, existing)  indexing failed before: create-by-text with its name re-indexes it
        self.replace = []    # (desired, existing)  disabled: deleted, then created again
        self.remove = []     # existing
        self.unchanged = []  # (desired, existing)
        self.busy = []       # (desired or None, existing): needs a write but Dify is still indexing it
        self.blocked = []    # (desired, existing, reason): cannot be written (archived)
        self.pending = []    # existing docs this run should wait for (unchanged but not finished)

    @property
    def writes(self):
        return len(self.add) + len(self.update) + len(self.retry) + len(self.replace) + len(self.remove)

    @property
    def changed(self):
        return self.writes > 0

    def counts(self):
        return {"add": len(self.add), "update": len(self.update) + len(self.retry) + len(self.replace),
                "remove": len(self.remove), "unchanged": len(self.unchanged), "busy": len(self.busy),
                "blocked": len(self.blocked)}

    def diff_lines(self):
        lines = []
        for d, _state in self.add:
            lines.append("+ %s" % d.name)
        for d, _state in self.update + self.retry + self.replace:
            lines.append("~ %s" % d.name)
        for e in self.remove:
            lines.append("- %s" % e.get("name"))
        for d, e in self.busy:
            lines.append("? %s (still indexing in Dify: waits, then syncs)" % (d.name if d else e.get("name")))
        return sorted(lines, key=lambda s: (s[2:], s[0]))


def make_plan(desired_docs, existing, prune=True, retry_errors=True):
    """Compare the desired documents with what Dify holds (its document list)."""
    plan = Plan()
    by_name = {}
    for e in existing:
        by_name.setdefault(e.get("name"), []).append(e)
    seen = set()
    for d in desired_docs:
        seen.add(d.name)
        cands = by_name.get(d.name) or []
        if not cands:
            plan.add.append((d, None))
            continue
        # one document per name: keep the one holding this content (else the newest), prune the others
        cands = sorted(cands, key=lambda e: (metadata_value(e, FIELD_HASH) != d.sha, -(e.get("created_at") or 0)))
        e = cands[0]
        for extra in cands[1:]:
            _plan_removal(plan, extra, prune)
        state = doc_state(e)
        same = metadata_value(e, FIELD_HASH) == d.sha
        if e.get("archived"):
            if same:
                plan.unchanged.append((d, e))
            else:
                plan.blocked.append((d, e, "archived in Dify: un-archive it so it can be updated"))
            continue
        if state in ("waiting", "indexing", "paused"):
            if same:
                plan.unchanged.append((d, e))
                plan.pending.append(e)
            else:
                plan.busy.append((d, e))
            continue
        if state == "error":
            if same and not retry_errors:
                plan.unchanged.append((d, e))
            else:
                plan.retry.append((d, e))
            continue
        if same:
            plan.unchanged.append((d, e))
        elif e.get("enabled") is False:
            plan.replace.append((d, e))
        else:
            plan.update.append((d, e))
    for name, cands in by_name.items():
        if name not in seen:
            for e in cands:
                _plan_removal(plan, e, prune)
    return plan


def _plan_removal(plan, e, prune):
    if not prune:
        return
    if e.get("archived"):
        plan.blocked.append((None, e, "archived in Dify: archived documents cannot be deleted"))
    elif doc_state(e) in ("waiting", "indexing", "paused"):
        plan.busy.append((None, e))
    else:
        plan.remove.append(e)


# ------------------------------------------------------------------------------------- progress
def fmt_duration(seconds):
    if seconds is None:
        return "--"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    if h:
        return "%dh%02dm" % (h, m)
    if m:
        return "%dm%02ds" % (m, s)
    return "%ds" % s


SEGMENT_BACKFILL = 200  # finished documents whose segment counts a poll may still fetch


class Progress(object):
    """Indexing progress of the watched documents: done / total, segments, rate, ETA.

    A document is done when Dify says completed or error; its segment count may arrive later
    (polls fetch them for a bounded number of documents each), so counting never delays the end.
    """

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.docs = {}       # id -> watch entry + state
        self.started = None
        self.base = (0, 0, 0)  # documents, segments, characters done at the first poll
        self.last = None

    def add(self, watch):
        for w in watch or []:
            cur = self.docs.get(w["id"])
            if cur is None or cur.get("final"):
                entry = dict(w)
                entry.update(state=w.get("state") or "waiting", final=False, segments_done=0, segments_total=0,
                             error=None, segments_known=False)
                self.docs[w["id"]] = entry
            elif w.get("batch") and not cur.get("batch"):
                cur["batch"] = w["batch"]

    def watch(self):
        """Documents to poll: the unfinished ones, and finished ones whose segment count is missing."""
        out = [{"id": d["id"], "batch": d.get("batch") or "", "state": d["state"]}
               for d in self.docs.values() if not d["final"]]
        return out + self.backfill()

    def backfill(self, limit=SEGMENT_BACKFILL):
        return [{"id": d["id"], "batch": d.get("batch") or "", "state": d["state"]}
                for d in self.docs.values() if d["final"] and not d["segments_known"]][:limit]

    @property
    def pending(self):
        return [d for d in self.docs.values() if not d["final"]]

    def _totals(self):
        done = sum(1 for d in self.docs.values() if d["state"] in TERMINAL)
        segs = sum(d["segments_done"] for d in self.docs.values())
        chars = sum(d.get("chars") or 0 for d in self.docs.values() if d["state"] in TERMINAL)
        return done, segs, chars

    def update(self, statuses):
        """Apply one poll: [{id, state, error, completed_segments, total_segments, segments_known}]."""
        for st in statuses or []:
            d = self.docs.get(st.get("id"))
            if d is None:
                continue
            state = st.get("state") or doc_state(st)
            d["state"] = state
            if st.get("completed_segments") is not None:
                d["segments_done"] = int(st.get("completed_segments") or 0)
            if st.get("total_segments") is not None:
                d["segments_total"] = int(st.get("total_segments") or 0)
            if state == "error":
                d["error"] = st.get("error") or "indexing failed (Dify gave no message)"
            if state in TERMINAL:
                d["final"] = True
                d["segments_known"] = d["segments_known"] or st.get("segments_known", True) or state == "error"
                if state == "completed" and d["segments_done"] < d["segments_total"]:
                    d["segments_done"] = d["segments_total"]
        if self.started is None:
            self.started = self.clock()
            self.base = self._totals()
        self.last = self.snapshot()
        return self.last

    def snapshot(self):
        elapsed = (self.clock() - self.started) if self.started is not None else 0.0
        total = len(self.docs)
        done, seg_done, chars_done = self._totals()
        failed = sum(1 for d in self.docs.values() if d["state"] == "error")
        seg_total = sum(d["segments_total"] for d in self.docs.values())
        chars_total = sum(d.get("chars") or 0 for d in self.docs.values())
        docs_rate = seg_rate = eta = None
        if done >= total:
            eta = 0.0
        if elapsed >= 0.5:  # no rate from the first poll alone
            docs_rate = max(0, done - self.base[0]) / elapsed
            seg_rate = max(0, seg_done - self.base[1]) / elapsed
            chars_rate = max(0, chars_done - self.base[2]) / elapsed
            if done < total:
                if chars_rate > 0:
                    eta = (chars_total - chars_done) / chars_rate
                elif docs_rate > 0:
                    eta = (total - done) / docs_rate
        states = {}
        for d in self.docs.values():
            states[d["state"]] = states.get(d["state"], 0) + 1
        return {"elapsed": round(elapsed, 1), "documents_done": done, "documents_total": total,
                "documents_failed": failed, "segments_done": seg_done, "segments_total": seg_total,
                "documents_per_second": round(docs_rate, 3) if docs_rate is not None else None,
                "segments_per_second": round(seg_rate, 2) if seg_rate is not None else None,
                "eta_seconds": round(eta, 1) if eta is not None else None, "states": states,
                "segments_pending": sum(1 for d in self.docs.values()
                                        if (not d["final"] and not d["segments_total"])
                                        or (d["final"] and not d["segments_known"]))}

    def errors(self):
        return [{"name": d.get("name") or d["id"], "id": d["id"], "action": d.get("action") or "index",
                 "stage": "indexing", "error": d["error"]}
                for d in self.docs.values() if d["state"] == "error"]


def format_progress(snap, label=""):
    rate = ""
    if snap.get("documents_per_second") is not None:
        rate = ", %.2f documents/s, %.1f segments/s" % (snap["documents_per_second"], snap["segments_per_second"] or 0)
    waiting = snap.get("states", {}).get("waiting", 0)
    paused = snap.get("states", {}).get("paused", 0)
    extra = ""
    if waiting:
        extra += ", %d queued" % waiting
    if paused:
        extra += ", %d paused" % paused
    if snap.get("documents_failed"):
        extra += ", %d failed" % snap["documents_failed"]
    # "+": documents not split yet will add segments to the total
    more = "+" if snap.get("segments_pending") else ""
    return ("%sindexing: %d/%d documents done%s, %d/%d%s segments%s, ETA %s (elapsed %s)" % (
        (label + " ") if label else "", snap["documents_done"], snap["documents_total"], extra, snap["segments_done"],
        snap["segments_total"], more, rate, fmt_duration(snap.get("eta_seconds")), fmt_duration(snap.get("elapsed"))))


def format_summary(result, label="", check_mode=False):
    c = result.get("counts", {})
    skipped = result.get("skipped_files") or {}
    sk = ", ".join("%s %d" % (k, v) for k, v in sorted(skipped.items()))
    verbs = ("would add", "update", "remove") if check_mode else ("added", "updated", "removed")
    line = "%s%s %d, %s %d, %s %d, unchanged %d, skipped %d%s, failed %d" % (
        (label + " ") if label else "", verbs[0], c.get("added", 0), verbs[1], c.get("updated", 0), verbs[2],
        c.get("removed", 0), c.get("unchanged", 0), sum(skipped.values()), " (%s)" % sk if sk else "",
        c.get("failed", 0))
    if c.get("busy"):
        line += ", still busy in Dify %d" % c["busy"]
    return line


# ------------------------------------------------------------------------------------- the loop
class Summary(object):
    """Merges the results of several sync calls (time-budgeted submits, re-sync passes)."""

    def __init__(self):
        self.added, self.updated, self.removed = {}, {}, {}
        self.failed = {}
        self.busy = []
        self.blocked = []
        self.skipped = {}
        self.examples = {}
        self.diff_lines = []
        self.documents = 0
        self.changed = False
        self.dataset_id = None
        self.calls = 0
        self.warnings = []
        self.plan = {}

    def merge(self, r):
        self.calls += 1
        self.changed = self.changed or bool(r.get("changed"))
        self.dataset_id = r.get("dataset_id") or self.dataset_id
        for key, store in (("added", self.added), ("updated", self.updated), ("removed", self.removed)):
            for name in r.get(key) or []:
                store[name] = True
                self.failed.pop(name, None)
        for f in r.get("failed_documents") or []:
            self.failed[f.get("name")] = f
        self.busy = list(r.get("busy") or [])
        self.blocked = list(r.get("blocked") or [])
        self.skipped = dict(r.get("skipped_files") or {})
        self.examples = dict(r.get("skipped_examples") or {})
        self.documents = r.get("documents", self.documents)
        if self.calls == 1:
            self.diff_lines = list(r.get("diff_lines") or [])
            self.plan = dict(r.get("plan") or {})
        for w in r.get("warnings") or []:
            if w not in self.warnings:
                self.warnings.append(w)

    def result(self):
        touched = set(self.added) | set(self.updated)
        touched |= set(n for n, f in self.failed.items() if f.get("action") != "remove")
        touched |= set(b.get("name") for b in self.busy + self.blocked if b.get("action") != "remove")
        return {
            "changed": self.changed, "dataset_id": self.dataset_id,
            "added": sorted(self.added), "updated": sorted(self.updated), "removed": sorted(self.removed),
            "busy": self.busy, "failed_documents": sorted(self.failed.values(), key=lambda f: f.get("name") or ""),
            "blocked": self.blocked, "skipped_files": self.skipped, "skipped_examples": self.examples,
            "documents": self.documents, "plan": self.plan, "diff_lines": self.diff_lines,
            "counts": {"added": len(self.added), "updated": len(self.updated), "removed": len(self.removed),
                       "unchanged": max(0, self.documents - len(touched)), "busy": len(self.busy),
                       "skipped": sum(self.skipped.values()), "failed": len(self.failed)},
            "warnings": self.warnings,
        }


def run_to_completion(backend, check_mode=False, wait=True, wait_timeout=3600, poll_interval=15, max_passes=3,
                      verify_query=None, verify_min_records=1, tolerate_failures=False, on_progress=None,
                      on_event=None, clock=time.monotonic, sleep=time.sleep, label=""):
    """Submit, wait, re-sync what was busy, verify: the whole run, driving ``backend``.

    ``backend.sync()`` -> a sync result (module phase ``sync``; ``more`` is true when its time budget
    ran out with writes left); ``backend.status(watch)`` -> list of document states (phase
    ``status``); ``backend.verify(query)`` -> retrieval result (phase ``verify``). Returns the
    final result: the merged counts and lists, ``progress``, ``failed_run`` (something failed)
    and ``fatal`` (the task should fail), ``msg``.
    """
    started = clock()
    deadline = started + max(0, wait_timeout)
    summary = Summary()
    progress = Progress(clock=clock)
    log = []
    emit = on_event or (lambda msg: None)
    pfx = (label + " ") if label else ""

    def do_sync():
        res = backend.sync()
        summary.merge(res)
        progress.add(res.get("watch"))
        return res

    r = do_sync()
    pc = r.get("plan") or {}
    emit("%splan: add %d, update %d, remove %d, unchanged %d, busy %d, skipped %d%s" % (
        pfx, pc.get("add", 0), pc.get("update", 0), pc.get("remove", 0), pc.get("unchanged", 0), pc.get("busy", 0),
        sum((r.get("skipped_files") or {}).values()), " (plan only, nothing written)" if check_mode else ""))
    timed_out = False
    passes = 1
    if not check_mode:
        to_write = r.get("writes_planned", 0)
        while r.get("more"):
            done = len(summary.added) + len(summary.updated) + len(summary.removed) + len(summary.failed)
            emit("%ssubmitting: %d/%d writes done (%s)" % (pfx, done, to_write, fmt_duration(clock() - started)))
            if clock() >= deadline:
                timed_out = True
                break
            r = do_sync()
        first = True
        while wait and not timed_out:
            while progress.pending and clock() < deadline:
                if not first:
                    sleep(max(0.0, min(poll_interval, deadline - clock())))
                first = False
                snap = progress.update(backend.status(progress.watch()))
                log.append(snap)
                if on_progress:
                    on_progress(snap)
            if progress.pending:
                timed_out = True
                break
            for _attempt in range(3):  # segment counts of documents that finished between polls
                todo = progress.backfill()
                if not todo:
                    break
                snap = progress.update(backend.status(todo))
                log.append(snap)
                if on_progress:
                    on_progress(snap)
            if summary.busy and passes < max_passes:
                passes += 1
                emit("%sre-sync: %d document(s) were busy in Dify; they have settled" % (pfx, len(summary.busy)))
                r = do_sync()
                while r.get("more") and clock() < deadline:
                    r = do_sync()
                first = True
                continue
            break
    result = summary.result()
    if check_mode:  # what the run would do, by the plan
        pc = summary.plan
        result["counts"].update(added=pc.get("add", 0), updated=pc.get("update", 0), removed=pc.get("remove", 0),
                                unchanged=pc.get("unchanged", 0))
    known = set(f.get("name") for f in result["failed_documents"])
    for err in progress.errors():
        if err["name"] not in known:
            result["failed_documents"].append(err)
    result["failed_documents"].sort(key=lambda f: f.get("name") or "")
    result["counts"]["failed"] = len(result["failed_documents"])
    result["passes"] = passes
    if timed_out:
        result["still_indexing"] = sorted(d.get("name") or d["id"] for d in progress.pending)
    result["progress"] = progress.last or progress.snapshot()
    result["progress_log"] = log[-50:]
    result["elapsed"] = round(clock() - started, 1)
    if verify_query and not check_mode:
        if not timed_out and (wait or not progress.pending):
            result["retrieval"] = backend.verify(verify_query)
        else:
            result["retrieval"] = {"query": verify_query, "not_run": "documents are still indexing"}
    soft, hard = [], []
    if result["failed_documents"]:
        soft.append("%d document(s) failed" % len(result["failed_documents"]))
    if timed_out:
        soft.append("%d document(s) still indexing after wait_timeout=%ss (Dify keeps indexing them; a re-run waits "
                    "again and resubmits nothing)" % (len(result["still_indexing"]), wait_timeout))
    if result["busy"] and wait and not check_mode:
        soft.append("%d document(s) still busy in Dify after %d pass(es), not resubmitted" % (len(result["busy"]),
                                                                                              passes))
    if result["blocked"]:
        soft.append("%d document(s) blocked: %s" % (len(result["blocked"]), "; ".join(
            "%s (%s)" % (b.get("name"), b.get("reason")) for b in result["blocked"][:5])))
    ret = result.get("retrieval") or {}
    if ret.get("error"):
        hard.append("retrieval check failed: %s" % ret["error"])
    elif ret.get("records") is not None and ret["records"] < verify_min_records:
        hard.append("retrieval check: query %r returned %d chunk(s), at least %d wanted" % (
            verify_query, ret["records"], verify_min_records))
    problems = soft + hard
    result["msg"] = format_summary(result, label, check_mode) + ("; " + "; ".join(problems) if problems else "")
    result["failed_run"] = bool(problems)
    result["fatal"] = bool(hard) or (bool(soft) and not tolerate_failures)
    return result
