#!/usr/bin/env python3
"""Generate a deterministic source repository to sync into a Dify knowledge base (tests, benchmark).

    make_fixture_repo.py DEST [--files N] [--size-mb M] [--body-limit BYTES] [--seed S] [--git]
    make_fixture_repo.py DEST --edit            # apply the edit set: 3 edited, 2 deleted, 1 renamed

The same arguments always give the same tree, byte for byte (and, with --git, the same commit id).
The default is 300 files and about 1 MB. The benchmark uses ``--files 2000 --size-mb 20``.

What the tree holds:
* code in several languages (Python, C++, Go, Rust, TypeScript, shell, CMake, YAML, ROS messages) and
  Markdown docs, in nested directories. Every file carries a unique token (``kfx_<n>``) and a
  sentence about a topic only it covers, so a retrieval can be traced to the file;
* ``docs/big/oversized_reference.md``: 1.5 x ``--body-limit`` bytes. With the sync's
  ``max_request_size`` at the same value it becomes 2 documents (``... [part 1]``, ``[part 2]``);
* skipped files, one per reason: a PNG (``binary``, by extension), a NUL-sniffed ``.dat``
  (``binary``), a Latin-1 text (``not_utf8``), an empty file (``empty``); a ``vendor/`` and a
  ``node_modules/`` tree (``vendored``); a ``build/`` tree and ``package-lock.json`` (``generated``);
* one path longer than Dify's 200-character document name limit.

The manifest, ``DEST.manifest.json`` beside the tree (``--manifest`` to move it), says what a sync
must find: the text files, the oversized one, the expected skips by reason, each file's token
and topic, the expected number of documents, and after ``--edit`` the exact changes
(``updated``: 3 paths, ``removed``: 2 deleted + the old name of the renamed file, ``added``: the
new name).
"""

import argparse
import json
import os
import random
import shutil
import subprocess
import sys

MANIFEST_SUFFIX = ".manifest.json"
WORDS = ("sensor planner lidar odometry camera buffer queue scheduler kernel tensor gripper motor "
         "battery map costmap trajectory filter kalman imu wheel encoder socket parser codec cache "
         "ledger invoice cluster shard replica token lexer compiler linker bridge relay firmware "
         "thermostat pump valve turbine router packet frame pixel shader texture mesh voxel").split()
VERBS = "calibrates merges throttles rebuilds validates smooths predicts compresses replays schedules".split()
ADJ = "adaptive quiet lazy greedy robust sparse bounded nested cached atomic".split()
LANGS = [  # (weight, directory, extension)
    (22, "src/python", "py"), (16, "src/cpp", "cpp"), (8, "src/cpp/include", "hpp"), (10, "src/go", "go"),
    (8, "src/rust", "rs"), (10, "web/src", "ts"), (4, "scripts", "sh"), (4, "config", "yaml"),
    (3, "msg", "msg"), (15, "docs", "md"),
]
SUBDIRS = ["core", "drivers", "nav", "perception", "util", "io", "control", "net"]


def topic(rng, n):
    return "the %s %s %s the %s (topic %d)" % (rng.choice(ADJ), rng.choice(WORDS), rng.choice(VERBS),
                                               rng.choice(WORDS), n)


def code_block(ext, rng, n, idx):
    name = "kfx_%d_%s_%d" % (n, rng.choice(WORDS), idx)
    word = rng.choice(WORDS)
    if ext == "py":
        return ("def %s(value, limit=%d):\n    \"\"\"Return the %s %s for value.\"\"\"\n    total = 0\n"
                "    for i in range(limit):\n        total += (value * i) %% %d\n    return total\n\n\n"
                % (name, rng.randint(2, 99), rng.choice(ADJ), word, rng.randint(3, 97)))
    if ext in ("cpp", "hpp"):
        return ("// %s: %s %s\nint %s(int value) {\n  int total = 0;\n  for (int i = 0; i < %d; ++i) {\n"
                "    total += (value * i) %% %d;\n  }\n  return total;\n}\n\n"
                % (name, rng.choice(ADJ), word, name, rng.randint(2, 99), rng.randint(3, 97)))
    if ext == "go":
        return ("// %s computes the %s %s.\nfunc %s(value int) int {\n\ttotal := 0\n\tfor i := 0; i < %d; i++ {\n"
                "\t\ttotal += (value * i) %% %d\n\t}\n\treturn total\n}\n\n"
                % (name, rng.choice(ADJ), word, name, rng.randint(2, 99), rng.randint(3, 97)))
    if ext == "rs":
        return ("/// %s: the %s %s\npub fn %s(value: i64) -> i64 {\n    (0..%d).map(|i| (value * i) %% %d).sum()\n}\n\n"
                % (name, rng.choice(ADJ), word, name, rng.randint(2, 99), rng.randint(3, 97)))
    if ext == "ts":
        return ("/** %s: the %s %s */\nexport function %s(value: number): number {\n  let total = 0;\n"
                "  for (let i = 0; i < %d; i++) {\n    total += (value * i) %% %d;\n  }\n  return total;\n}\n\n"
                % (name, rng.choice(ADJ), word, name, rng.randint(2, 99), rng.randint(3, 97)))
    if ext == "sh":
        return ("%s() {\n  # the %s %s\n  local total=0\n"
                "  for i in $(seq %d); do total=$(( (total + $1 * i) %% %d )); done\n"
                "  echo \"$total\"\n}\n\n" % (name, rng.choice(ADJ), word, rng.randint(2, 99), rng.randint(3, 97)))
    if ext == "yaml":
        return "%s:\n  kind: %s\n  limit: %d\n  modulo: %d\n\n" % (name, word, rng.randint(2, 99), rng.randint(3, 97))
    if ext == "msg":
        return "# %s: the %s %s\nint32 %s_%d\nfloat64 %s_scale\n" % (name, rng.choice(ADJ), word, word, idx, word)
    return ("## %s\n\nThe %s %s keeps %d entries and rounds modulo %d. See `%s` for the details of the %s.\n\n"
            % (name, rng.choice(ADJ), word, rng.randint(2, 99), rng.randint(3, 97), name, rng.choice(WORDS)))


def comment(ext, text):
    if ext in ("py", "sh", "yaml", "msg"):
        return "# %s\n" % text
    if ext == "md":
        return "%s\n\n" % text
    return "// %s\n" % text


def make_file(ext, rng, n, size):
    tok = "kfx_%d" % n
    about = topic(rng, n)
    head = ("# Module %s\n\n" % tok) if ext == "md" else ""
    head += comment(ext, "%s: this file describes how %s." % (tok, about))
    parts, length, idx = [head], len(head), 0
    while length < size:
        block = code_block(ext, rng, n, idx)
        parts.append(block)
        length += len(block)
        idx += 1
    return "".join(parts), tok, about


def pick_paths(rng, files):
    total = sum(w for w, _, _ in LANGS)
    paths, seen = [], set()
    n = 0
    while len(paths) < files:
        r = rng.uniform(0, total)
        for w, base, ext in LANGS:
            r -= w
            if r <= 0:
                break
        depth = rng.randint(0, 3)
        dirs = [base] + [rng.choice(SUBDIRS) for _ in range(depth)]
        path = "/".join(dirs) + "/%s_%s_%d.%s" % (rng.choice(WORDS), rng.choice(WORDS), n, ext)
        n += 1
        if path not in seen:
            seen.add(path)
            paths.append((path, ext))
    return paths


def write(dest, rel, data):
    full = os.path.join(dest, rel)
    os.makedirs(os.path.dirname(full), exist_ok=True)
    with open(full, "wb") as fh:
        fh.write(data if isinstance(data, bytes) else data.encode("utf-8"))


def generate(dest, files=300, size_mb=1.0, body_limit=65536, seed=11, git=False, manifest_path=None):
    if os.path.exists(dest) and os.listdir(dest):
        raise SystemExit("%s exists and is not empty" % dest)
    os.makedirs(dest, exist_ok=True)
    rng = random.Random(seed)
    regular = max(10, files - 3)  # + the long path, the oversized file and README.md
    avg = max(400, int(size_mb * 1024 * 1024 / max(1, files)))
    manifest = {"seed": seed, "files": files, "size_mb": size_mb, "body_limit": body_limit, "text_files": {},
                "oversized": None, "long_path": None, "skipped": {}, "skipped_files": {}, "edits": None}
    for n, (path, ext) in enumerate(pick_paths(rng, regular)):
        size = max(200, int(rng.lognormvariate(0, 0.6) * avg * 0.85))
        text, tok, about = make_file(ext, rng, n, size)
        write(dest, path, text)
        manifest["text_files"][path] = {"token": tok, "topic": about}
    # a path longer than Dify's 200-character document name limit
    long_rel = "/".join(["docs", "archive"] + ["very_long_directory_name_number_%02d" % i for i in range(6)]
                        + ["the_final_document_with_a_long_name.md"])
    text, tok, about = make_file("md", rng, 900001, 600)
    write(dest, long_rel, text)
    manifest["text_files"][long_rel] = {"token": tok, "topic": about}
    manifest["long_path"] = long_rel
    # one file over the request body limit: 2 parts with max_request_size = body_limit
    big_rel = "docs/big/oversized_reference.md"
    lines, length, i = ["# Oversized reference kfx_900002\n\n"], 0, 0
    while length < int(body_limit * 1.5):
        line = "Entry %06d of the oversized reference: the %s %s.\n" % (i, WORDS[i % len(WORDS)], VERBS[i % len(VERBS)])
        lines.append(line)
        length += len(line)
        i += 1
    write(dest, big_rel, "".join(lines))
    manifest["text_files"][big_rel] = {"token": "kfx_900002", "topic": "the oversized reference"}
    manifest["oversized"] = big_rel
    # files every sync must skip, one or more per reason
    skipped = {
        "binary": {"assets/logo.png": b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4,
                   "data/calibration.dat": b"CALIB\x00\x01\x02" + bytes(rng.randrange(256) for _ in range(2048))},
        "not_utf8": {"docs/legacy_latin1.txt": "Caf\xe9 cr\xe8me br\xfbl\xe9e, kfx_legacy\n".encode("latin-1")},
        "empty": {"src/python/__init__.py": b"", "docs/blank.md": b"\n\n  \n"},
        "vendored": dict(("vendor/github.com/acme/lib/file_%d.go" % k, "package lib\n// vendored %d\n" % k)
                         for k in range(4)),
        "generated": {"build/output/report.txt": "generated\n", "build/CMakeCache.txt": "CMAKE=1\n",
                      "web/package-lock.json": json.dumps({"lockfileVersion": 3}) + "\n"},
    }
    skipped["vendored"].update(dict(("web/node_modules/leftpad/index_%d.js" % k, "module.exports = %d;\n" % k)
                                    for k in range(3)))
    for reason, entries in skipped.items():
        for rel, data in entries.items():
            write(dest, rel, data)
        manifest["skipped"][reason] = len(entries)
        manifest["skipped_files"][reason] = sorted(entries)
    write(dest, "README.md", "# Fixture repository kfx_0readme\n\nGenerated by tests/knowledge/make_fixture_repo.py "
                             "(seed %d). Every file names one topic; ask about it.\n" % seed)
    manifest["text_files"]["README.md"] = {"token": "kfx_0readme", "topic": "the fixture repository"}
    manifest["documents"] = len(manifest["text_files"]) + 1  # the oversized file is 2 documents
    save_manifest(dest, manifest, manifest_path)
    if git:
        git_commit(dest, "fixture: generated (seed %d)" % seed)
    return manifest


def manifest_file(dest, path=None):
    return path or os.path.abspath(dest).rstrip("/") + MANIFEST_SUFFIX


def save_manifest(dest, manifest, path=None):
    with open(manifest_file(dest, path), "w") as fh:
        json.dump(manifest, fh, indent=1, sort_keys=True)


def load_manifest(dest, path=None):
    with open(manifest_file(dest, path)) as fh:
        return json.load(fh)


def apply_edits(dest, git=None, manifest_path=None):
    """3 files edited, 2 deleted, 1 renamed; records the expected changes in the manifest."""
    m = load_manifest(dest, manifest_path)
    if m.get("edits"):
        raise SystemExit("the edit set was applied already")
    special = {m["oversized"], m["long_path"], "README.md"}
    candidates = sorted(p for p in m["text_files"] if p not in special and p.endswith((".py", ".md", ".go", ".cpp")))
    rng = random.Random(m["seed"] * 7 + 1)
    chosen = rng.sample(candidates, 6)
    edited, deleted, (renamed,) = sorted(chosen[:3]), sorted(chosen[3:5]), chosen[5:]
    for rel in edited:
        with open(os.path.join(dest, rel), "a") as fh:
            fh.write("\n%s\n" % comment(rel.rsplit(".", 1)[1], "edited: kfx_edit_%s" % m["text_files"][rel]["token"]))
    for rel in deleted:
        os.remove(os.path.join(dest, rel))
        del m["text_files"][rel]
    new_rel = renamed.rsplit("/", 1)[0] + "/renamed_" + renamed.rsplit("/", 1)[1]
    os.rename(os.path.join(dest, renamed), os.path.join(dest, new_rel))
    m["text_files"][new_rel] = m["text_files"].pop(renamed)
    m["edits"] = {"updated": edited, "removed": sorted(deleted + [renamed]), "added": [new_rel],
                  "deleted": deleted, "renamed": {renamed: new_rel}}
    m["documents"] = len(m["text_files"]) + 1
    save_manifest(dest, m, manifest_path)
    if git if git is not None else os.path.isdir(os.path.join(dest, ".git")):
        git_commit(dest, "fixture: edit set (3 edited, 2 deleted, 1 renamed)")
    return m


def git_commit(dest, message):
    if not shutil.which("git"):
        raise SystemExit("--git needs git on PATH")
    env = dict(os.environ, GIT_AUTHOR_NAME="Fixture", GIT_AUTHOR_EMAIL="fixture@example.com",
               GIT_COMMITTER_NAME="Fixture", GIT_COMMITTER_EMAIL="fixture@example.com",
               GIT_AUTHOR_DATE="2026-01-01T00:00:00Z", GIT_COMMITTER_DATE="2026-01-01T00:00:00Z")
    if not os.path.isdir(os.path.join(dest, ".git")):
        subprocess.run(["git", "init", "-q", "-b", "main", dest], check=True, env=env)
    subprocess.run(["git", "-C", dest, "add", "-A"], check=True, env=env)
    subprocess.run(["git", "-C", dest, "-c", "commit.gpgsign=false", "commit", "-q", "-m", message], check=True,
                   env=env)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dest")
    ap.add_argument("--files", type=int, default=300, help="number of files (default 300)")
    ap.add_argument("--size-mb", type=float, default=1.0, help="approximate total size in MB (default 1)")
    ap.add_argument("--body-limit", type=int, default=65536,
                    help="request body limit the oversized file is 1.5x of (default 65536)")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--git", action="store_true", help="make it a git repository with one commit")
    ap.add_argument("--edit", action="store_true", help="apply the edit set to an existing fixture")
    ap.add_argument("--manifest", help="where the manifest is (default DEST.manifest.json)")
    a = ap.parse_args(argv)
    if a.edit:
        m = apply_edits(a.dest, manifest_path=a.manifest)
        print(json.dumps(m["edits"], indent=1))
    else:
        m = generate(a.dest, a.files, a.size_mb, a.body_limit, a.seed, a.git, a.manifest)
        print("%s: %d text files (%d documents), skipped by reason %s" % (a.dest, len(m["text_files"]),
                                                                         m["documents"], m["skipped"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
