"""State and behaviour of the plugin daemon stand-in (what langgenius/dify-plugin-daemon 0.6.3 does).

The HTTP layer is server.py; this module is the daemon's logic, with its own vocabulary:

* a *package* is an uploaded .difypkg (bytes under ``<state>/packages``, declaration in the index);
* a *plugin* is a package installed as a runtime (``refers`` = how many tenants use it) -- one
  process per plugin unique identifier, shared by every tenant;
* an *installation* is a tenant's use of a plugin id (one version per plugin id and tenant);
* a *task* is an install or upgrade in progress: ``running`` at once, each plugin entry
  ``pending -> running -> success | failed`` with a message.

State (packages, plugins, installations, tasks) is kept in ``<state>/state.json`` so a restarted
stand-in knows what was installed; tasks that were running when it stopped are failed on start
(the daemon's RecycleTasks does the same).
"""

import datetime
import json
import os
import shutil
import signal
import subprocess
import threading
import time
import uuid

from . import envs, errors, tiktoken_cache
from .package import Package, PackageError, describe, parse_identifier
from .runtime import READY_TIMEOUT, PluginDead, PluginRuntime

TASK_TTL_AFTER_INSTALL = 60.0    # the daemon deletes a finished install task after 60 s ...
TASK_TTL_AFTER_SUCCESS = 120.0   # ... and any all-success task after 120 s


def now_iso():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def new_id():
    return str(uuid.uuid4())


def _safe(uid):
    return uid.replace("/", "+").replace(":", "-").replace("@", "_")


class Daemon(object):
    def __init__(self, state_dir, cache_dir, python=None, uv=None, force_verifying_signature=True,
                 max_package_size=52428800, env_init_timeout=600.0, max_execution_timeout=600.0,
                 plugin_env=None, tiktoken=True, log=None):
        self.state_dir = os.path.abspath(state_dir)
        self.cache_dir = os.path.abspath(cache_dir)
        self.python = python
        self.uv = uv
        self.force_verifying_signature = force_verifying_signature
        self.max_package_size = max_package_size
        self.env_init_timeout = env_init_timeout
        self.max_execution_timeout = max_execution_timeout
        self.plugin_env = dict(plugin_env or {})
        self.tiktoken = tiktoken and "TIKTOKEN_CACHE_DIR" not in self.plugin_env and \
            "TIKTOKEN_CACHE_DIR" not in os.environ
        self.tiktoken_dir = None
        self.tiktoken_lock = threading.Lock()
        self.log = log or (lambda msg: None)
        for sub in ("packages", "media", "cwd"):
            os.makedirs(os.path.join(self.state_dir, sub), exist_ok=True)
        os.makedirs(self.cache_dir, exist_ok=True)
        self.lock = threading.RLock()
        self.runtimes = {}          # uid -> PluginRuntime
        self.starting = set()       # runtimes waiting for their first heartbeat
        self.children = set()       # uv processes building environments
        self.runtime_locks = {}     # uid -> Lock (one launcher at a time)
        self.timings = {}           # uid -> {env_seconds, env_cached, ready_seconds, first_call_seconds, ...}
        self.stopped = False
        self.state = {"packages": {}, "plugins": {}, "installations": {}, "tasks": {}}
        self._load()
        threading.Thread(target=self._monitor, name="runtime-monitor", daemon=True).start()

    # ---------------------------------------------------------------- persistence
    @property
    def state_file(self):
        return os.path.join(self.state_dir, "state.json")

    def _load(self):
        if os.path.isfile(self.state_file):
            with open(self.state_file, encoding="utf-8") as fh:
                self.state.update(json.load(fh))
        changed = False
        for task in self.state["tasks"].values():
            if task["status"] == "running":
                task["status"] = "failed"
                for p in task["plugins"]:
                    if p["status"] in ("pending", "running"):
                        p["status"] = "failed"
                        p["message"] = "the plugin daemon stand-in was restarted during the installation"
                changed = True
        if changed:
            self._save()

    def _save(self):
        with self.lock:
            tmp = self.state_file + ".tmp"
            with open(tmp, "w", encoding="utf-8") as fh:
                json.dump(self.state, fh)
            os.replace(tmp, self.state_file)

    def package_path(self, uid):
        return os.path.join(self.state_dir, "packages", _safe(uid) + ".difypkg")

    # ---------------------------------------------------------------- packages
    def upload_package(self, tenant_id, data, verify_signature):
        if len(data) > self.max_package_size:
            raise errors.bad_request("file size exceeds the maximum limit")
        try:
            pkg = Package(data, self.max_package_size)
            uid, decl, assets = describe(pkg)
        except PackageError as exc:
            raise errors.bad_request(str(exc))
        if self.force_verifying_signature or verify_signature:
            # the stand-in verifies no signature: every package counts as unsigned
            raise errors.bad_request("plugin verification has been enabled, and the plugin you want to install has a "
                                     "bad signature (the plugin daemon stand-in treats every package as unsigned: "
                                     "start it with --force-verifying-signature false and have Dify send "
                                     "verify_signature=false)")
        with self.lock:
            for aid, content in assets.items():
                path = os.path.join(self.state_dir, "media", aid)
                if not os.path.isfile(path):
                    with open(path, "wb") as fh:
                        fh.write(content)
            with open(self.package_path(uid) + ".tmp", "wb") as fh:
                fh.write(data)
            os.replace(self.package_path(uid) + ".tmp", self.package_path(uid))
            if uid not in self.state["packages"]:
                self.state["packages"][uid] = {"declaration": decl, "uploaded_at": now_iso()}
                self._save()
            decl = self.state["packages"][uid]["declaration"]
        self.log("package %s uploaded by tenant %s (unsigned, verification off)" % (uid, tenant_id))
        return {"unique_identifier": uid, "manifest": decl, "verification": None}

    def declaration(self, uid):
        """The stored declaration of a package; None when unknown (the daemon's ErrPluginNotFound)."""
        with self.lock:
            entry = self.state["packages"].get(uid)
            return entry["declaration"] if entry else None

    def read_package(self, uid):
        try:
            with open(self.package_path(uid), "rb") as fh:
                return fh.read()
        except OSError:
            raise errors.bad_request("plugin package not found, please upload it firstly")

    def decode_from_identifier(self, uid):
        pkg_bytes = self.read_package(uid)
        try:
            _, decl, _ = describe(Package(pkg_bytes, self.max_package_size))
        except PackageError as exc:
            raise errors.bad_request(str(exc))
        return {"unique_identifier": uid, "manifest": decl, "verification": None}

    def asset(self, asset_id):
        path = os.path.join(self.state_dir, "media", os.path.basename(asset_id))
        try:
            with open(path, "rb") as fh:
                return fh.read()
        except OSError:
            return None

    def extract_asset(self, uid, file_path):
        pkg = Package(self.read_package(uid), self.max_package_size)
        try:
            return pkg.read(file_path)
        except PackageError as exc:
            raise errors.internal(str(exc))

    def readme(self, uid, language):
        try:
            readmes = Package(self.read_package(uid), self.max_package_size).readmes()
        except errors.DaemonError as exc:
            raise errors.internal("failed to get readme from database: %s" % exc.message)
        if not readmes:
            raise errors.not_found("no readme content available for this plugin")
        if language in readmes:
            return {"content": readmes[language], "language": language}
        if "en_US" in readmes:
            return {"content": readmes["en_US"], "language": "en_US"}
        lang = sorted(readmes)[0]
        return {"content": readmes[lang], "language": lang}

    # ---------------------------------------------------------------- installations
    def installations(self, tenant_id):
        with self.lock:
            return self.state["installations"].setdefault(tenant_id, {})

    def installation_entity(self, tenant_id, inst):
        uid = inst["plugin_unique_identifier"]
        decl = self.declaration(uid)
        plugin_id, version, checksum = parse_identifier(uid)
        return {
            "id": inst["id"], "name": decl["name"] if decl else plugin_id.split("/")[-1], "plugin_id": plugin_id,
            "tenant_id": tenant_id, "plugin_unique_identifier": uid,
            "endpoints_active": inst.get("endpoints_active", 0), "endpoints_setups": inst.get("endpoints_setups", 0),
            "installation_id": inst["id"], "declaration": decl, "runtime_type": inst["runtime_type"],
            "version": decl["version"] if decl else version, "created_at": inst["created_at"],
            "updated_at": inst["updated_at"], "source": inst["source"], "checksum": checksum, "meta": inst["meta"],
        }

    def list_plugins(self, tenant_id, page, page_size):
        with self.lock:
            items = sorted(self.installations(tenant_id).values(), key=lambda i: i["created_at"])
            total = len(items)
            chunk = items[(page - 1) * page_size:page * page_size]
            return {"list": [self.installation_entity(tenant_id, i) for i in chunk], "total": total}

    def list_plugins_by_category(self, tenant_id, category, page, page_size):
        if category not in ("tool", "model", "extension", "agent-strategy", "datasource", "trigger"):
            raise errors.bad_request("invalid plugin category")
        with self.lock:
            items = sorted(self.installations(tenant_id).values(), key=lambda i: i["created_at"])
            matched = [i for i in items if category == "model" and self.declaration(i["plugin_unique_identifier"])]
            chunk = matched[(page - 1) * page_size:page * page_size + 1]
            return {"list": [self.installation_entity(tenant_id, i) for i in chunk[:page_size]],
                    "has_more": len(chunk) > page_size}

    def fetch_installations(self, tenant_id, plugin_ids):
        out = []
        with self.lock:
            for inst in self.installations(tenant_id).values():
                if inst["plugin_id"] in plugin_ids:
                    uid = inst["plugin_unique_identifier"]
                    _, version, checksum = parse_identifier(uid)
                    row = {"id": inst["id"], "created_at": inst["created_at"], "updated_at": inst["updated_at"],
                           "tenant_id": tenant_id, "plugin_id": inst["plugin_id"], "plugin_unique_identifier": uid,
                           "runtime_type": inst["runtime_type"], "endpoints_setups": inst.get("endpoints_setups", 0),
                           "endpoints_active": inst.get("endpoints_active", 0), "source": inst["source"],
                           "meta": inst["meta"], "version": version, "checksum": checksum,
                           "declaration": self.declaration(uid)}
                    out.append(row)
        return out

    def missing(self, tenant_id, uids):
        out = []
        with self.lock:
            installed = self.installations(tenant_id)
            for uid in uids:
                plugin_id = parse_identifier(uid)[0]
                inst = installed.get(plugin_id)
                if inst is None:
                    out.append({"plugin_unique_identifier": uid, "current_identifier": ""})
                elif inst["plugin_unique_identifier"] != uid:
                    out.append({"plugin_unique_identifier": uid,
                                "current_identifier": inst["plugin_unique_identifier"]})
        return out

    def list_models(self, tenant_id, page, page_size):
        with self.lock:
            items = []
            for inst in sorted(self.installations(tenant_id).values(), key=lambda i: i["created_at"]):
                mi = inst.get("model_installation")
                if not mi:
                    continue
                decl = self.declaration(inst["plugin_unique_identifier"])
                items.append({"id": mi["id"], "created_at": mi["created_at"], "updated_at": mi["updated_at"],
                              "provider": mi["provider"], "tenant_id": tenant_id,
                              "plugin_unique_identifier": inst["plugin_unique_identifier"],
                              "plugin_id": inst["plugin_id"], "declaration": decl.get("model") if decl else None})
            return items[(page - 1) * page_size:page * page_size]

    def _save_installation(self, tenant_id, uid, source, meta):
        """curd.InstallPlugin; returns False when the tenant already has this plugin id (the daemon's
        ErrPluginAlreadyInstalled, which its install job ignores)."""
        plugin_id = parse_identifier(uid)[0]
        with self.lock:
            installed = self.installations(tenant_id)
            if plugin_id in installed:
                current = installed[plugin_id]["plugin_unique_identifier"]
                self.log("plugin already installed: tenant %s has %s; %s is not installed for it (daemon 0.6.3 "
                         "ignores this and reports success -- a version change is an upgrade)" % (
                             tenant_id, current, uid))
                return False
            plugin = self.state["plugins"].setdefault(uid, {"refers": 0, "install_type": "local", "source": source,
                                                             "created_at": now_iso()})
            plugin["refers"] += 1
            decl = self.declaration(uid) or {}
            ts = now_iso()
            inst = {"id": new_id(), "plugin_id": plugin_id, "plugin_unique_identifier": uid,
                    "runtime_type": "local", "source": source, "meta": meta or {}, "created_at": ts,
                    "updated_at": ts, "endpoints_setups": 0, "endpoints_active": 0}
            if decl.get("model"):
                inst["model_installation"] = {"id": new_id(), "created_at": ts, "updated_at": ts,
                                              "provider": decl["model"]["provider"]}
            installed[plugin_id] = inst
            self._save()
            return True

    def _drop_plugin_ref(self, uid):
        """Decrease refers; at 0 the plugin record and the declaration go, and its process stops."""
        with self.lock:
            plugin = self.state["plugins"].get(uid)
            if plugin is None:
                return
            plugin["refers"] -= 1
            if plugin["refers"] > 0:
                self._save()
                return
            del self.state["plugins"][uid]
            self.state["packages"].pop(uid, None)
            self._save()
        self.stop_runtime(uid)

    def uninstall(self, tenant_id, installation_id):
        with self.lock:
            installed = self.installations(tenant_id)
            found = [pid for pid, inst in installed.items() if inst["id"] == installation_id]
            if not found:
                return True
            inst = installed.pop(found[0])
            self._save()
        self.log("tenant %s uninstalled %s" % (tenant_id, inst["plugin_unique_identifier"]))
        self._drop_plugin_ref(inst["plugin_unique_identifier"])
        return True

    # ---------------------------------------------------------------- tasks
    def _new_task(self, tenant_id, entries, source):
        ts = now_iso()
        task = {"id": new_id(), "created_at": ts, "updated_at": ts, "status": "running", "tenant_id": tenant_id,
                "total_plugins": len(entries), "completed_plugins": 0, "plugins": []}
        for uid, decl in entries:
            decl = decl or {}
            task["plugins"].append({"plugin_unique_identifier": uid, "labels": decl.get("label") or {"en_US": ""},
                                    "icon": decl.get("icon", ""), "icon_dark": decl.get("icon_dark", ""),
                                    "plugin_id": parse_identifier(uid)[0], "status": "pending", "message": "",
                                    "source": source})
        with self.lock:
            self.state["tasks"][task["id"]] = task
            self._save()
        return task["id"]

    def _set_task(self, task_id, uid, status=None, message=None):
        with self.lock:
            task = self.state["tasks"].get(task_id)
            if task is None:
                return
            for p in task["plugins"]:
                if p["plugin_unique_identifier"] != uid:
                    continue
                previous = p["status"]
                if message is not None:
                    p["message"] = message if len(message) <= 1024 else message[:512] + "..." + message[-512:]
                if status is not None:
                    p["status"] = status
                    if status == "success" and previous != "success":
                        task["completed_plugins"] += 1
                    if status == "failed":
                        task["status"] = "failed"
                        if previous == "success" and task["completed_plugins"] > 0:
                            task["completed_plugins"] -= 1
            if task["plugins"] and all(p["status"] == "success" for p in task["plugins"]):
                task["status"] = "success"
                self._delete_task_later(task_id, TASK_TTL_AFTER_SUCCESS)
            task["updated_at"] = now_iso()
            self._save()

    def _delete_task_later(self, task_id, seconds):
        timer = threading.Timer(seconds, self.delete_task, args=(None, task_id))
        timer.daemon = True
        timer.start()

    def task(self, tenant_id, task_id):
        with self.lock:
            task = self.state["tasks"].get(task_id)
            if task is None or task["tenant_id"] != tenant_id:
                raise errors.internal("record not found")
            return json.loads(json.dumps(task))

    def tasks(self, tenant_id, page, page_size):
        with self.lock:
            items = sorted((t for t in self.state["tasks"].values() if t["tenant_id"] == tenant_id),
                           key=lambda t: t["created_at"])
            return json.loads(json.dumps(items[(page - 1) * page_size:page * page_size]))

    def delete_task(self, tenant_id, task_id):
        with self.lock:
            task = self.state["tasks"].get(task_id)
            if task is not None and (tenant_id is None or task["tenant_id"] == tenant_id):
                del self.state["tasks"][task_id]
                self._save()
        return True

    def delete_all_tasks(self, tenant_id):
        with self.lock:
            for tid in [t for t, task in self.state["tasks"].items() if task["tenant_id"] == tenant_id]:
                del self.state["tasks"][tid]
            self._save()
        return True

    def delete_task_item(self, tenant_id, task_id, uid):
        with self.lock:
            task = self.state["tasks"].get(task_id)
            if task is None or task["tenant_id"] != tenant_id:
                return True
            task["plugins"] = [p for p in task["plugins"] if p["plugin_unique_identifier"] != uid]
            if all(p["status"] == "success" for p in task["plugins"]):
                del self.state["tasks"][task_id]
            self._save()
        return True

    # ---------------------------------------------------------------- install / upgrade
    def install(self, tenant_id, uids, source, metas):
        if len(metas) != len(uids):
            raise errors.bad_request("the number of metas must be equal to the number of plugin unique identifiers")
        jobs = []
        for uid, meta in zip(uids, metas, strict=True):
            decl = self.declaration(uid)
            if decl is None:
                raise errors.internal("plugin not found\nfailed to get plugin declaration")
            with self.lock:
                needs_runtime = uid not in self.state["plugins"]
            jobs.append((uid, decl, meta or {}, needs_runtime))
        if not any(j[3] for j in jobs):
            for uid, _decl, meta, _ in jobs:
                self._save_installation(tenant_id, uid, source, meta)
            return {"all_installed": True, "task_id": ""}
        task_id = self._new_task(tenant_id, [(j[0], j[1]) for j in jobs], source)
        for job in jobs:
            threading.Thread(target=self._install_job, args=(task_id, tenant_id, source) + job,
                             name="install-%s" % job[0][:40], daemon=True).start()
        return {"all_installed": False, "task_id": task_id}

    def _install_job(self, task_id, tenant_id, source, uid, decl, meta, needs_runtime):
        try:
            if not needs_runtime:
                self._save_installation(tenant_id, uid, source, meta)
                self._set_task(task_id, uid, "success", "installed")
                return
            self._set_task(task_id, uid, "running", "starting")
            self._install_runtime(uid, lambda msg: self._set_task(task_id, uid, message=msg))
            if not self._save_installation(tenant_id, uid, source, meta):
                # the daemon leaves the new version's runtime running; nobody refers to it here
                with self.lock:
                    referred = uid in self.state["plugins"]
                if not referred:
                    self.stop_runtime(uid)
            self._set_task(task_id, uid, "success", "installed")
            self._delete_task_later(task_id, TASK_TTL_AFTER_INSTALL)
        except Exception as exc:  # noqa: BLE001 - reported in the task, as the daemon does
            self.log("install of %s failed: %s" % (uid, exc))
            self._set_task(task_id, uid, "failed", str(exc))

    def upgrade(self, tenant_id, original, new, source, meta):
        if original == new:
            raise errors.bad_request("original and new plugin unique identifier are the same")
        if parse_identifier(original)[0] != parse_identifier(new)[0]:
            raise errors.bad_request("original and new plugin id are different")
        with self.lock:
            inst = self.installations(tenant_id).get(parse_identifier(original)[0])
            if inst is None or inst["plugin_unique_identifier"] != original:
                raise errors.not_found("plugin installation not found for this tenant")
            if self.declaration(original) is None:
                raise errors.internal("plugin not found")
            new_runtime_exists = new in self.state["plugins"]
        if new_runtime_exists:
            if self.declaration(new) is None:
                raise errors.internal("plugin not found")
            self._upgrade_installation(tenant_id, original, new, source, meta)
            return {"all_installed": True, "task_id": ""}
        task_id = self._new_task(tenant_id, [(new, {})], source)
        threading.Thread(target=self._upgrade_job, args=(task_id, tenant_id, original, new, source, meta),
                         name="upgrade-%s" % new[:40], daemon=True).start()
        return {"all_installed": False, "task_id": task_id}

    def _upgrade_job(self, task_id, tenant_id, original, new, source, meta):
        try:
            self._set_task(task_id, new, "running", "starting")
            self._install_runtime(new, lambda msg: self._set_task(task_id, new, message=msg))
            if self.declaration(new) is None:
                raise RuntimeError("failed to get new plugin declaration after install: plugin not found")
            self._upgrade_installation(tenant_id, original, new, source, meta)
            self._set_task(task_id, new, "success", "upgraded")
        except Exception as exc:  # noqa: BLE001 - reported in the task
            self.log("upgrade %s -> %s failed: %s" % (original, new, exc))
            self._set_task(task_id, new, "failed", str(exc))

    def _upgrade_installation(self, tenant_id, original, new, source, meta):
        """curd.UpgradePlugin: the installation keeps its id and now points at ``new``."""
        with self.lock:
            inst = self.installations(tenant_id).get(parse_identifier(original)[0])
            if inst is None or inst["plugin_unique_identifier"] != original:
                raise RuntimeError("plugin has not been installed")
            ts = now_iso()
            inst["plugin_unique_identifier"] = new
            inst["meta"] = meta or {}
            inst["updated_at"] = ts
            decl = self.declaration(new) or {}
            inst.pop("model_installation", None)
            if decl.get("model"):
                inst["model_installation"] = {"id": new_id(), "created_at": ts, "updated_at": ts,
                                              "provider": decl["model"]["provider"]}
            plugin = self.state["plugins"].setdefault(new, {"refers": 0, "install_type": "local", "source": source,
                                                             "created_at": ts})
            plugin["refers"] += 1
            self._save()
        self.log("tenant %s upgraded %s -> %s" % (tenant_id, original, new))
        self._drop_plugin_ref(original)

    # ---------------------------------------------------------------- runtimes
    def _runtime_lock(self, uid):
        with self.lock:
            return self.runtime_locks.setdefault(uid, threading.Lock())

    def workdir(self, uid):
        return os.path.join(self.state_dir, "cwd", _safe(uid))

    def _install_runtime(self, uid, progress):
        """Unpack, build the environment, start the process and wait until it is ready."""
        progress("installing")
        runtime = self.get_runtime(uid, progress=progress, timeout=self.env_init_timeout)
        if runtime is None:
            raise RuntimeError("failed to launch plugin: runtime did not start")

    def get_runtime(self, uid, progress=None, timeout=None):
        """The running process of a plugin, started (or restarted) when needed; PluginDead on failure."""
        progress = progress or (lambda msg: None)
        with self._runtime_lock(uid):
            runtime = self.runtimes.get(uid)
            if runtime is not None and runtime.alive():
                return runtime
            if self.stopped:
                raise PluginDead("the plugin daemon stand-in is stopping")
            if runtime is not None:
                self.log("plugin %s: restarting (was: %s)" % (uid, runtime.dead_reason))
            timing = self.timings.setdefault(uid, {})
            workdir = self.workdir(uid)
            try:
                pkg = Package(self.read_package(uid), self.max_package_size)
                decl = pkg.manifest
            except (errors.DaemonError, PackageError) as exc:
                raise PluginDead("failed to move plugin to installed bucket: %s" % exc)
            if not os.path.isfile(os.path.join(workdir, "manifest.yaml")):
                shutil.rmtree(workdir, ignore_errors=True)
                pkg.extract_to(workdir + ".tmp")
                os.replace(workdir + ".tmp", workdir)
            runner = decl["meta"]["runner"]
            started = time.time()
            try:
                # one interpreter for every plugin when given (as the daemon's PYTHON_INTERPRETER_PATH)
                python = self.python or envs.find_python(runner["version"] or "3.12", uv=self.uv)
                progress("preparing the python environment")
                venv_python = envs.build_env(workdir, python, self.uv, self.cache_dir, log=self.log,
                                             timeout=timeout or self.env_init_timeout, children=self.children)
            except (envs.PythonNotFound, envs.EnvBuildError) as exc:
                raise PluginDead("failed to launch plugin: failed to init environment: %s" % exc)
            timing["env_seconds"] = round(time.time() - started, 3)
            timing.setdefault("env_seconds_first", timing["env_seconds"])
            progress("installing heartbeat, waiting for plugin to be ready...")
            env = dict(self.plugin_env)
            tiktoken_dir = self._tiktoken_dir(python)
            if tiktoken_dir:
                env["TIKTOKEN_CACHE_DIR"] = tiktoken_dir
            runtime = PluginRuntime(uid, workdir, venv_python, entrypoint=runner["entrypoint"] or "main",
                                    env=env, log=self.log)
            with self.lock:
                self.starting.add(runtime)
            try:
                runtime.start(timeout=min(READY_TIMEOUT, timeout or READY_TIMEOUT))
            except PluginDead as exc:
                raise PluginDead("failed to launch plugin: %s" % exc)
            finally:
                with self.lock:
                    self.starting.discard(runtime)
            if self.stopped:
                runtime.stop()
                raise PluginDead("the plugin daemon stand-in is stopping")
            timing["ready_seconds"] = round(runtime.ready_seconds, 3)
            timing.setdefault("ready_seconds_first", timing["ready_seconds"])
            timing["starts"] = timing.get("starts", 0) + 1
            self.runtimes[uid] = runtime
            return runtime

    def _tiktoken_dir(self, python):
        """TIKTOKEN_CACHE_DIR with GPT-2's files for the plugins (the daemon image's preload); None if off."""
        if not self.tiktoken:
            return None
        with self.tiktoken_lock:
            if self.tiktoken_dir is None:
                try:
                    self.tiktoken_dir = tiktoken_cache.ensure_gpt2(self.cache_dir, envs.find_uv(self.uv), python,
                                                                   self.log)
                except (OSError, RuntimeError, ValueError, subprocess.SubprocessError) as exc:
                    self.log("WARNING: no tiktoken GPT-2 files for the plugins (token counting will try the "
                             "internet): %s" % exc)
                    self.tiktoken = False
            return self.tiktoken_dir

    def stop_runtime(self, uid):
        with self._runtime_lock(uid):
            runtime = self.runtimes.pop(uid, None)
        if runtime is not None:
            runtime.stop()
            self.log("plugin %s: stopped" % uid)
        shutil.rmtree(self.workdir(uid), ignore_errors=True)

    def start_installed(self):
        """Launch every installed plugin in the background, as the daemon does when it starts."""
        with self.lock:
            uids = list(self.state["plugins"])

        def launch(uid):
            try:
                self.get_runtime(uid)
            except PluginDead as exc:
                self.log(str(exc))

        for uid in uids:
            threading.Thread(target=launch, args=(uid,), name="launch-%s" % uid[:40], daemon=True).start()

    def _monitor(self):
        while not self.stopped:
            time.sleep(5)
            for runtime in list(self.runtimes.values()):
                runtime.alive()

    def stop_all(self):
        self.stopped = True
        with self.lock:
            runtimes = list(self.runtimes.values()) + list(self.starting)
        self.runtimes.clear()
        for proc in list(self.children):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        threads = [threading.Thread(target=r.stop) for r in runtimes]
        for t in threads:
            t.start()
        for t in threads:
            t.join(15)

    def status(self):
        with self.lock:
            return {
                "standin": "plugin daemon stand-in",
                "runtimes": {uid: {"pid": r.proc.pid if r.proc else None, "alive": r.alive(),
                                   "open_sessions": r.open_sessions(), "dead_reason": r.dead_reason}
                             for uid, r in self.runtimes.items()},
                "timings": json.loads(json.dumps(self.timings)),
                "plugins": json.loads(json.dumps(self.state["plugins"])),
            }
