"""Plugin packages (.difypkg) as the plugin daemon reads them -- plugin daemon stand-in.

A ``.difypkg`` is a zip of the plugin's source directory (see ``difypkg.py``). This module does
what langgenius/dify-plugin-daemon 0.6.3 does with one (``pkg/plugin_packager/decoder``):

* the checksum: sha256 over the sorted entries, each ``sha256(path) + sha256(content)``;
* the unique identifier ``author/name:version@checksum``;
* the declaration: ``manifest.yaml`` with the provider yaml of ``plugins.models`` and the model
  yamls its ``models.<type>.predefined`` globs name expanded, re-encoded the way the daemon's Go
  types encode it (``json`` field names, ``null`` / ``[]`` defaults, ``model.description`` taken
  from the plugin's description when absent);
* the assets (``_assets/``): icon file names in the declaration are replaced by asset ids
  ``sha256(content + name) + ext``;
* the readmes (``README.md`` = en_US, ``readme/README_<lang>.md``).

It does not verify signatures: every package is reported unverified (``verified: false``,
``verification: null``), as the daemon reports an unsigned one.

Needs PyYAML (both the project's venv and Dify's have it).
"""

import hashlib
import io
import json
import posixpath
import re
import zipfile

try:
    import yaml
except ImportError:  # pragma: no cover - reported when a package is decoded
    yaml = None

IDENTIFIER_RE = re.compile(
    r"^(?:([a-z0-9_-]{1,64})\/)?([a-z0-9_-]{1,255}):([0-9]{1,4})(\.[0-9]{1,4}){1,3}(-\w{1,16})?@[a-f0-9]{32,64}$")
PLUGIN_NAME_RE = re.compile(r"^[a-z0-9_-]{1,128}$")
AUTHOR_RE = re.compile(r"^[a-z0-9_-]{1,64}$")
VERSION_RE = re.compile(r"^\d{1,4}(\.\d{1,4}){1,3}(-\w{1,16})?$")
README_RE = re.compile(r"^README_([a-z]{2}_[A-Za-z]{2,})\.md$")
LANGS = ("en_US", "ja_JP", "zh_Hans", "pt_BR")
MODEL_TYPES = ("llm", "text-embedding", "rerank", "speech2text", "moderation", "tts")
# keys of the provider yaml's ``models:`` mapping the daemon reads (others are ignored)
MODEL_FILE_TYPES = ("llm", "text_embedding", "tts", "speech2text", "moderation", "rerank")
CONFIGURATE_METHODS = ("predefined-model", "customizable-model")
FORM_TYPES = ("text-input", "secret-input", "select", "radio", "switch")
DEFAULT_MAX_PACKAGE_SIZE = 52428800  # MAX_PLUGIN_PACKAGE_SIZE of the daemon
# ``use_template`` names of parameter rules and what they default to (label, type, default, min, max, precision)
PARAMETER_TEMPLATES = {
    "temperature": ("Temperature", "float", 0.0, 0.0, 1.0, 2),
    "top_p": ("Top P", "float", 1.0, 0.0, 1.0, 2),
    "top_k": ("Top K", "int", 50, 1.0, 100.0, 0),
    "presence_penalty": ("Presence Penalty", "float", 0.0, 0.0, 1.0, 2),
    "frequency_penalty": ("Frequency Penalty", "float", 0.0, 0.0, 1.0, 2),
    "max_tokens": ("Max Tokens", "int", 64, 1.0, 2048.0, 0),
    "response_format": ("Response Format", "string", None, None, None, None),
    "json_schema": ("JSON Schema", "string", None, None, None, None),
}


class PackageError(ValueError):
    """The package cannot be decoded (the daemon answers these as PluginDaemonBadRequestError)."""


# ------------------------------------------------------------------ YAML like Go's yaml.v3
if yaml is not None:
    class _Loader(yaml.SafeLoader):
        """YAML 1.2 scalars as yaml.v3 reads them: only true/false are booleans, dates stay strings."""

    _Loader.yaml_implicit_resolvers = {
        key: [(tag, rx) for tag, rx in resolvers
              if tag not in ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:timestamp")]
        for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
    _Loader.add_implicit_resolver(
        "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def load_yaml(data, what):
    if yaml is None:
        raise PackageError("the plugin daemon stand-in needs PyYAML to read %s" % what)
    try:
        return yaml.load(data, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise PackageError("failed to unmarshal %s: %s" % (what, exc))


# ------------------------------------------------------------------ zip access
class Package(object):
    """A decoded .difypkg (bytes in memory)."""

    def __init__(self, data, max_size=DEFAULT_MAX_PACKAGE_SIZE):
        self.data = data
        try:
            self.zip = zipfile.ZipFile(io.BytesIO(data))
        except zipfile.BadZipFile as exc:
            raise PackageError(str(exc).replace("zip", "difypkg"))
        total = 0
        for info in self.zip.infolist():
            total += info.file_size
            if total > max_size:
                raise PackageError("plugin package size is too large, please ensure the uncompressed size is "
                                   "less than %d bytes" % max_size)
        self.files = {}
        for info in self.zip.infolist():
            if not info.is_dir():
                self.files[info.filename] = info
        self._manifest = None
        self._checksum = None
        self.comment = self.zip.comment

    def names(self):
        """Entry names in the zip's order (directories left out), as the daemon walks them."""
        return [i.filename for i in self.zip.infolist() if not i.is_dir()]

    def read(self, name):
        name = posixpath.normpath(name).lstrip("/")
        info = self.files.get(name)
        if info is None:
            raise PackageError("open %s: file does not exist" % name)
        return self.zip.read(info)

    def exists(self, name):
        return posixpath.normpath(name) in self.files

    def list_dir(self, dirname):
        prefix = dirname.rstrip("/") + "/"
        return [n for n in self.names() if n.startswith(prefix)]

    # ---------------------------------------------------------------- identity
    @property
    def checksum(self):
        if self._checksum is None:
            self._checksum = package_checksum(self)
        return self._checksum

    @property
    def manifest(self):
        if self._manifest is None:
            self._manifest = decode_declaration(self)
        return self._manifest

    @property
    def unique_identifier(self):
        m = self.manifest
        identity = "%s:%s" % (m["name"], m["version"]) if not m["author"] else "%s/%s:%s" % (
            m["author"], m["name"], m["version"])
        uid = "%s@%s" % (identity, self.checksum)
        if not IDENTIFIER_RE.match(uid):
            raise PackageError("plugin_unique_identifier is not valid: " + uid)
        return uid

    def assets(self):
        """{name under _assets/: bytes}"""
        return {n[len("_assets/"):]: self.read(n) for n in self.list_dir("_assets")}

    def readmes(self):
        """{language: text}; empty when README.md is missing (the daemon then has no readme)."""
        if not self.exists("README.md"):
            return {}
        out = {"en_US": self.read("README.md").decode("utf-8", "replace")}
        for name in self.list_dir("readme"):
            m = README_RE.match(name[len("readme/"):])
            if m:
                out[m.group(1)] = self.read(name).decode("utf-8", "replace")
        return out

    def extract_to(self, dest):
        import os

        for name in self.names():
            target = os.path.normpath(os.path.join(dest, name))
            if not target.startswith(os.path.normpath(dest) + os.sep):
                raise PackageError("illegal path in package: %s" % name)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "wb") as fh:
                fh.write(self.read(name))


def package_checksum(pkg):
    entries = {}
    for name in pkg.names():
        directory, filename = name.rsplit("/", 1) if "/" in name else ("", name)
        key = posixpath.normpath(posixpath.join(directory, filename))
        entries[key] = hashlib.sha256(pkg.read(name)).digest()
    data = b"".join(hashlib.sha256(k.encode("utf-8")).digest() + entries[k] for k in sorted(entries))
    return hashlib.sha256(data).hexdigest()


def parse_identifier(uid):
    """(plugin_id, version, checksum) of ``author/name:version@checksum``; PackageError when malformed."""
    if not isinstance(uid, str) or not IDENTIFIER_RE.match(uid):
        raise PackageError("plugin_unique_identifier is not valid: %s" % (uid,))
    head, checksum = uid.split("@", 1)
    plugin_id, version = head.split(":", 1)
    return plugin_id, version, checksum


def asset_id(name, content):
    ext = posixpath.splitext(name)[1]
    return hashlib.sha256(content + name.encode("utf-8")).hexdigest() + ext


# ------------------------------------------------------------------ Go-shaped encoding
def _s(value):
    """A scalar decoded into a Go string field (yaml.v3 accepts any scalar there)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else str(value)


def _opt_s(value):
    return None if value is None else _s(value)


def i18n(value, default_en=None):
    if isinstance(value, str):
        value = {"en_US": value}
    value = value or {}
    out = {"en_US": _s(value.get("en_US")) or (default_en or "")}
    for lang in LANGS[1:]:
        if value.get(lang):
            out[lang] = _s(value[lang])
    return out


def _opt_i18n(value):
    return None if value is None else i18n(value)


def _list(value):
    """A Go slice: nil (null) when absent."""
    if value is None:
        return None
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _show_on(items):
    return [{"variable": _s(i.get("variable")), "value": _s(i.get("value"))} for i in (items or [])]


def _form_schema(item):
    options = [{"label": i18n(o.get("label")), "value": _s(o.get("value")), "show_on": _show_on(o.get("show_on"))}
               for o in (item.get("options") or [])]
    ftype = _s(item.get("type"))
    if ftype not in FORM_TYPES:
        raise PackageError("credential form %r: type %r is not one of %s" % (item.get("variable"), ftype, FORM_TYPES))
    return {
        "variable": _s(item.get("variable")),
        "label": i18n(item.get("label")),
        "type": ftype,
        "required": bool(item.get("required", False)),
        "default": _opt_s(item.get("default")),
        "options": options,
        "placeholder": _opt_i18n(item.get("placeholder")),
        "max_length": int(item.get("max_length") or 0),
        "show_on": _show_on(item.get("show_on")),
    }


def _parameter_rule(rule):
    out = {
        "name": _s(rule.get("name")),
        "use_template": _opt_s(rule.get("use_template")),
        "label": _opt_i18n(rule.get("label")),
        "type": _opt_s(rule.get("type")),
        "help": _opt_i18n(rule.get("help")),
        "required": bool(rule.get("required", False)),
        "default": rule.get("default"),
        "min": rule.get("min"),
        "max": rule.get("max"),
        "precision": rule.get("precision"),
        "options": _list(rule.get("options")),
    }
    if out["label"] is None or not out["label"]["en_US"]:
        out["label"] = {"en_US": out["name"]}
    template = PARAMETER_TEMPLATES.get(out["use_template"] or "")
    if out["use_template"] and template is None:
        raise PackageError("use_template %s not found" % out["use_template"])
    if template:
        label, ptype, default, pmin, pmax, precision = template
        for key, value in (("type", ptype), ("default", default), ("min", pmin), ("max", pmax),
                           ("precision", precision)):
            if out[key] is None:
                out[key] = value
        if out["options"] is None and out["use_template"] == "response_format":
            out["options"] = ["JSON", "XML"]
    if out["options"] is None:
        out["options"] = []
    return out


def _pricing(value):
    if value is None:
        return None
    return {"input": _s(value.get("input", "0")), "output": _opt_s(value.get("output")),
            "unit": _s(value.get("unit", "0")), "currency": _s(value.get("currency"))}


def model_declaration(doc, where):
    if not isinstance(doc, dict):
        raise PackageError("failed to unmarshal model file: %s" % where)
    mtype = _s(doc.get("model_type"))
    if mtype not in MODEL_TYPES:
        raise PackageError("model file %s: model_type %r is not one of %s" % (where, mtype, MODEL_TYPES))
    model = _s(doc.get("model"))
    return {
        "model": model,
        "label": i18n(doc.get("label"), default_en=model),
        "model_type": mtype,
        "features": _list(doc.get("features")),
        "fetch_from": _s(doc.get("fetch_from")) or "predefined-model",
        "model_properties": doc.get("model_properties"),
        "deprecated": bool(doc.get("deprecated", False)),
        "parameter_rules": [_parameter_rule(r) for r in (doc.get("parameter_rules") or [])],
        "pricing": _pricing(doc.get("pricing")),
    }


def _go_match(pattern, name):
    """Go's path/filepath.Match: ``*`` and ``?`` do not cross ``/``; ``[...]`` classes."""
    rx, i = "", 0
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            rx += "[^/]*"
        elif c == "?":
            rx += "[^/]"
        elif c == "[":
            j = pattern.find("]", i + 1)
            if j < 0:
                raise PackageError("syntax error in pattern %r" % pattern)
            body = pattern[i + 1:j]
            negate = body[:1] in ("^", "!")
            body = body[1:] if negate else body
            rx += "[" + ("^" if negate else "") + body.replace("\\", "\\\\").replace("[", "\\[") + "]"
            i = j
        elif c == "\\" and i + 1 < len(pattern):
            i += 1
            rx += re.escape(pattern[i])
        else:
            rx += re.escape(c)
        i += 1
    return re.fullmatch(rx, name) is not None


def provider_declaration(pkg, path, plugin_description):
    doc = load_yaml(pkg.read(path), "plugin file: %s" % path)
    if not isinstance(doc, dict):
        raise PackageError("failed to unmarshal plugin file: %s" % path)
    model_files, position_files, models = [], {}, []
    section = doc.get("models")
    if isinstance(section, dict):
        for key in MODEL_FILE_TYPES:
            value = section.get(key)
            if isinstance(value, dict):
                if value.get("position") is not None:
                    position_files[key] = _s(value["position"])
                model_files.extend(_s(f) for f in (value.get("predefined") or []))
    elif isinstance(section, list):
        models = [model_declaration(m, path) for m in section]
    position = None
    if position_files:
        position = {}
        for key, name in position_files.items():
            position[key] = [_s(x) for x in (load_yaml(pkg.read(name), "position file: %s" % name) or [])]
    for name in pkg.names():
        if name.endswith("_position.yaml"):
            continue
        for pattern in model_files:
            if _go_match(pattern, name):
                models.append(model_declaration(load_yaml(pkg.read(name), "model file: %s" % name), name))
    mtypes = [_s(t) for t in (doc.get("supported_model_types") or [])]
    for t in mtypes:
        if t not in MODEL_TYPES:
            raise PackageError("provider %s: supported model type %r is not one of %s" % (path, t, MODEL_TYPES))
    methods = [_s(m) for m in (doc.get("configurate_methods") or [])]
    for m in methods:
        if m not in CONFIGURATE_METHODS:
            raise PackageError("provider %s: configurate method %r is not one of %s" % (path, m, CONFIGURATE_METHODS))
    pcs = doc.get("provider_credential_schema")
    mcs = doc.get("model_credential_schema")
    help_ = doc.get("help")
    out = {
        "provider": _s(doc.get("provider")),
        "label": i18n(doc.get("label")),
        "description": _opt_i18n(doc.get("description")) or dict(plugin_description),
        "icon_small": _opt_i18n(doc.get("icon_small")),
        "icon_large": _opt_i18n(doc.get("icon_large")),
        "icon_small_dark": _opt_i18n(doc.get("icon_small_dark")),
        "icon_large_dark": _opt_i18n(doc.get("icon_large_dark")),
        "background": _opt_s(doc.get("background")),
        "help": None if help_ is None else {"title": i18n(help_.get("title")), "url": i18n(help_.get("url"))},
        "supported_model_types": mtypes,
        "configurate_methods": methods,
        "provider_credential_schema": None if pcs is None else {
            "credential_form_schemas": [_form_schema(f) for f in (pcs.get("credential_form_schemas") or [])]},
        "model_credential_schema": None if mcs is None else {
            "model": {"label": i18n((mcs.get("model") or {}).get("label")),
                      "placeholder": _opt_i18n((mcs.get("model") or {}).get("placeholder"))},
            "credential_form_schemas": [_form_schema(f) for f in (mcs.get("credential_form_schemas") or [])]},
        "models": models,
    }
    if not out["provider"]:
        raise PackageError("provider %s: provider is required" % path)
    if position is not None:
        out["position"] = position
    return out


def _permission(value):
    if not isinstance(value, dict):
        return None
    out = {}
    for key in ("tool", "node", "endpoint", "app"):
        if isinstance(value.get(key), dict):
            out[key] = {"enabled": bool(value[key].get("enabled", False))}
    if isinstance(value.get("model"), dict):
        m = value["model"]
        out["model"] = {k: bool(m.get(k, False)) for k in (
            "enabled", "llm", "text_embedding", "rerank", "tts", "speech2text", "moderation")}
    if isinstance(value.get("storage"), dict):
        out["storage"] = {"enabled": bool(value["storage"].get("enabled", False)),
                          "size": int(value["storage"].get("size") or 0)}
    return out


def decode_declaration(pkg):
    """The PluginDeclaration the daemon builds from a package (icons not yet remapped)."""
    doc = load_yaml(pkg.read("manifest.yaml"), "manifest.yaml")
    if not isinstance(doc, dict):
        raise PackageError("failed to unmarshal manifest.yaml")
    missing = [k for k in ("version", "type", "name", "label", "description", "icon", "resource", "plugins",
                           "meta", "created_at") if doc.get(k) in (None, "", {})]
    if missing:
        raise PackageError("manifest.yaml: missing %s" % ", ".join(missing))
    version = _s(doc.get("version"))
    if not VERSION_RE.match(version):
        raise PackageError("manifest.yaml: version %r is not valid" % version)
    if _s(doc.get("type")) != "plugin":
        raise PackageError("manifest.yaml: type must be plugin")
    author, name = _s(doc.get("author")), _s(doc.get("name"))
    if not AUTHOR_RE.match(author):
        raise PackageError("author must be alphanumeric and less than 64 characters: ^[a-z0-9_-]{1,64}$")
    if not PLUGIN_NAME_RE.match(name):
        raise PackageError("plugin name must be alphanumeric and less than 128 characters: ^[a-z0-9_-]{1,128}$")
    meta = doc.get("meta") or {}
    runner = meta.get("runner") or {}
    plugins = doc.get("plugins") or {}
    resource = doc.get("resource") or {}
    description = i18n(doc.get("description"))
    decl = {
        "version": version,
        "type": "plugin",
        "author": author,
        "name": name,
        "label": i18n(doc.get("label")),
        "description": description,
        "icon": _s(doc.get("icon")),
        "icon_dark": _s(doc.get("icon_dark")),
        "resource": {"memory": int(resource.get("memory") or 0)},
        "plugins": {key: _list(plugins.get(key)) for key in (
            "tools", "models", "endpoints", "agent_strategies", "datasources", "triggers")},
        "meta": {
            "version": _s(meta.get("version")),
            "arch": [_s(a) for a in (meta.get("arch") or [])],
            "runner": {"language": _s(runner.get("language")), "version": _s(runner.get("version")),
                       "entrypoint": _s(runner.get("entrypoint"))},
            "minimum_dify_version": _opt_s(meta.get("minimum_dify_version")),
        },
        "tags": [_s(t) for t in (doc.get("tags") or [])],
        "created_at": _s(doc.get("created_at")),
        "verified": False,
    }
    permission = _permission(resource.get("permission"))
    if permission is not None:
        decl["resource"]["permission"] = permission
    for key in ("privacy", "repo"):
        if doc.get(key):
            decl[key] = _s(doc[key])
    for kind in ("tools", "endpoints", "agent_strategies", "datasources", "triggers"):
        if decl["plugins"][kind]:
            raise PackageError("the plugin daemon stand-in plays model plugins only; %s declares plugins.%s"
                               % (name, kind))
    model_files = decl["plugins"]["models"] or []
    for path in model_files:
        decl["model"] = provider_declaration(pkg, _s(path), description)
    if "model" not in decl:
        raise PackageError("at least one of endpoint, model, tool, agent_strategy, trigger, or datasource "
                           "must be provided")
    if decl["meta"]["runner"]["language"] != "python":
        raise PackageError("unsupported language: %s" % decl["meta"]["runner"]["language"])
    return decl


def remap_assets(decl, assets):
    """Replace icon file names by asset ids (in place); {asset id: bytes} to store."""
    stored = {}

    def remap(name):
        if name not in assets:
            raise PackageError("file not found: %s" % name)
        aid = asset_id(name, assets[name])
        stored[aid] = assets[name]
        return aid

    model = decl.get("model")
    if model:
        for field in ("icon_small", "icon_large", "icon_small_dark", "icon_large_dark"):
            icon = model.get(field)
            if icon:
                for lang in LANGS:
                    if icon.get(lang):
                        icon[lang] = remap(icon[lang])
    for field in ("icon", "icon_dark"):
        if decl.get(field):
            decl[field] = remap(decl[field])
    return stored


def describe(pkg):
    """(unique identifier, declaration with remapped icons, {asset id: bytes}) of a package."""
    decl = json.loads(json.dumps(pkg.manifest))
    stored = remap_assets(decl, pkg.assets())
    return pkg.unique_identifier, decl, stored
