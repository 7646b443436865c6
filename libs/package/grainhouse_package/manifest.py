"""The app manifest: a typed model and the strict validation of its JSON form.

Owns: the manifest schema (field names, types, lengths, counts) and its canonical JSON encoding.
Trusts: nothing: every byte of a manifest may come from a hostile package.
Never: touches the filesystem; accepts an unknown field, a wrong type or an oversized value.

Every refusal is a `PackageError("invalid", ...)` (or "too_large" for the whole document)
whose message names the offending field, e.g. ``manifest.roles[1].title: must be a string``.
The field-by-field meaning is documented in docs/package-format.md.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from grainhouse_package.errors import PackageError

FORMAT_VERSION = 1
MAX_MANIFEST_BYTES = 64 * 1024
MAX_VERSION = 2**32 - 1
MAX_TITLE = 100
MAX_DESCRIPTION = 4000
MAX_SHORT = 200
MAX_ARGS = 64
MAX_ARG = 4096
MAX_ACTIONS = 16
MAX_ROLES = 16
MAX_PERMISSIONS = 32
MAX_ENV = 64
MAX_PATH = 1024
#: sun_path is 108 bytes; leave room for the terminating NUL.
MAX_SOCKET_PATH = 100
ICON_KINDS = ("app", "grain", "market")

_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
_ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
# The platform sets these itself inside a grain; an app must not shadow them.
_RESERVED_ENV_PREFIXES = ("GRAINHOUSE_",)


@dataclass(frozen=True)
class Action:
    """A "New <noun>" entry of the app's menu: running `command` creates a new grain."""

    noun: str
    command: tuple[str, ...]
    description: str = ""


@dataclass(frozen=True)
class Listen:
    """Where the app listens inside its grain: exactly one of a loopback TCP port or a socket."""

    port: int | None = None
    unix_socket: str | None = None


@dataclass(frozen=True)
class Permission:
    """One permission the app understands; its name travels in X-Sandstorm-Permissions."""

    name: str
    title: str


@dataclass(frozen=True)
class Role:
    """A named bundle of permissions offered when a grain is shared."""

    name: str
    title: str
    permissions: tuple[str, ...]


@dataclass(frozen=True)
class Manifest:
    """Everything the platform needs to know about an app besides its files."""

    title: str
    version: int
    marketing_version: str
    actions: tuple[Action, ...]
    continue_command: tuple[str, ...]
    listen: Listen
    min_upgradable_version: int = 0
    permissions: tuple[Permission, ...] = ()
    roles: tuple[Role, ...] = ()
    default_share_role: str | None = None
    api_path: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    icons: Mapping[str, str] = field(default_factory=dict)
    description: str = ""
    license: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready form; `parse_manifest(to_json(m)) == m`."""
        out: dict[str, Any] = {
            "format": FORMAT_VERSION,
            "title": self.title,
            "version": self.version,
            "marketing_version": self.marketing_version,
            "min_upgradable_version": self.min_upgradable_version,
            "actions": [
                {"noun": a.noun, "command": list(a.command), "description": a.description}
                for a in self.actions
            ],
            "continue_command": list(self.continue_command),
            "listen": (
                {"port": self.listen.port}
                if self.listen.port is not None
                else {"unix_socket": self.listen.unix_socket}
            ),
            "permissions": [{"name": p.name, "title": p.title} for p in self.permissions],
            "roles": [
                {"name": r.name, "title": r.title, "permissions": list(r.permissions)}
                for r in self.roles
            ],
            "env": dict(sorted(self.env.items())),
            "icons": dict(sorted(self.icons.items())),
            "description": self.description,
            "license": self.license,
        }
        if self.default_share_role is not None:
            out["default_share_role"] = self.default_share_role
        if self.api_path is not None:
            out["api_path"] = self.api_path
        return out


def to_json(manifest: Manifest) -> bytes:
    """Canonical bytes: sorted keys, UTF-8, so equal manifests pack to equal packages."""
    text = json.dumps(manifest.to_dict(), sort_keys=True, ensure_ascii=False, indent=2)
    return text.encode("utf-8") + b"\n"


def parse_manifest(data: bytes, max_bytes: int = MAX_MANIFEST_BYTES) -> Manifest:
    """Decode and validate manifest bytes; raises `PackageError` naming the first bad field."""
    if len(data) > max_bytes:
        raise PackageError("too_large", f"manifest is {len(data)} bytes; the cap is {max_bytes}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PackageError("invalid", "manifest is not valid UTF-8") from exc
    try:
        doc = json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constant)
    except ValueError as exc:
        raise PackageError("invalid", f"manifest is not valid JSON: {exc}") from exc
    return manifest_from_dict(doc)


def manifest_from_dict(doc: object) -> Manifest:
    """Validate an already-decoded manifest document (e.g. from the stack tool)."""
    obj = _Obj(doc, "manifest")
    fmt = obj.integer("format", 1, 1, required=False, default=FORMAT_VERSION)
    del fmt  # only version 1 exists; the range check above is the whole point
    listen_obj = obj.object("listen")
    listen = _listen(listen_obj)
    permissions = tuple(
        _permission(p) for p in obj.objects("permissions", MAX_PERMISSIONS, required=False)
    )
    perm_names = [p.name for p in permissions]
    _unique(perm_names, "manifest.permissions", "permission name")
    roles = tuple(
        _role(r, set(perm_names)) for r in obj.objects("roles", MAX_ROLES, required=False)
    )
    _unique([r.name for r in roles], "manifest.roles", "role name")
    default_share_role = obj.optional_name("default_share_role")
    if default_share_role is not None and default_share_role not in {r.name for r in roles}:
        raise PackageError(
            "invalid", f"manifest.default_share_role: {default_share_role!r} is not a declared role"
        )
    if roles and default_share_role is None:
        raise PackageError("invalid", "manifest.default_share_role: required when roles are set")
    actions = tuple(_action(a) for a in obj.objects("actions", MAX_ACTIONS))
    if not actions:
        raise PackageError("invalid", "manifest.actions: at least one action is required")
    version = obj.integer("version", 0, MAX_VERSION)
    min_upgradable = obj.integer(
        "min_upgradable_version", 0, MAX_VERSION, required=False, default=0
    )
    if min_upgradable > version:
        raise PackageError(
            "invalid",
            f"manifest.min_upgradable_version: {min_upgradable} is above version {version}",
        )
    api_path = obj.optional_text("api_path", MAX_PATH)
    if api_path is not None and (not api_path.startswith("/") or ".." in api_path.split("/")):
        raise PackageError("invalid", "manifest.api_path: must start with '/' and contain no '..'")
    manifest = Manifest(
        title=obj.text("title", MAX_TITLE, allow_empty=False),
        version=version,
        marketing_version=obj.text("marketing_version", MAX_SHORT, allow_empty=False),
        min_upgradable_version=min_upgradable,
        actions=actions,
        continue_command=obj.command("continue_command"),
        listen=listen,
        permissions=permissions,
        roles=roles,
        default_share_role=default_share_role,
        api_path=api_path,
        env=_env(obj.string_map("env", MAX_ENV)),
        icons=_icons(obj.string_map("icons", len(ICON_KINDS))),
        description=obj.text("description", MAX_DESCRIPTION, required=False),
        license=obj.text("license", MAX_SHORT, required=False),
    )
    obj.refuse_unknown()
    return manifest


def _permission(obj: _Obj) -> Permission:
    permission = Permission(name=obj.name("name"), title=obj.text("title", MAX_TITLE))
    obj.refuse_unknown()
    return permission


def _action(obj: _Obj) -> Action:
    action = Action(
        noun=obj.text("noun", MAX_TITLE, allow_empty=False),
        command=obj.command("command"),
        description=obj.text("description", MAX_DESCRIPTION, required=False),
    )
    obj.refuse_unknown()
    return action


def _listen(obj: _Obj) -> Listen:
    port = obj.optional_int("port", 1024, 65535)
    sock = obj.optional_text("unix_socket", MAX_SOCKET_PATH)
    obj.refuse_unknown()
    if (port is None) == (sock is None):
        raise PackageError("invalid", "manifest.listen: set exactly one of port, unix_socket")
    if sock is not None:
        parts = sock.split("/")
        # Inside a grain /tmp and /var are the only writable places; these are grain paths.
        writable = sock.startswith(("/tmp/", "/var/"))  # noqa: S108 - grain paths, not ours
        if not writable or ".." in parts or "" in parts[1:]:
            raise PackageError(
                "invalid", "manifest.listen.unix_socket: must be a clean path under /tmp/ or /var/"
            )
    return Listen(port=port, unix_socket=sock)


def _role(obj: _Obj, known_permissions: set[str]) -> Role:
    perms = obj.names("permissions", MAX_PERMISSIONS)
    for p in perms:
        if p not in known_permissions:
            raise PackageError(
                "invalid", f"{obj.path}.permissions: {p!r} is not a declared permission"
            )
    _unique(list(perms), f"{obj.path}.permissions", "permission")
    role = Role(name=obj.name("name"), title=obj.text("title", MAX_TITLE), permissions=perms)
    obj.refuse_unknown()
    return role


def _env(env: dict[str, str]) -> dict[str, str]:
    for name, value in env.items():
        if not _ENV_RE.match(name):
            raise PackageError("invalid", f"manifest.env: {name[:64]!r} is not a variable name")
        if name.startswith(_RESERVED_ENV_PREFIXES):
            raise PackageError("invalid", f"manifest.env.{name}: the platform reserves this name")
        if len(value) > MAX_ARG or "\0" in value:
            raise PackageError("invalid", f"manifest.env.{name}: too long or contains NUL")
    return env


def _icons(icons: dict[str, str]) -> dict[str, str]:
    for kind, path in icons.items():
        if kind not in ICON_KINDS:
            raise PackageError("invalid", f"manifest.icons: unknown icon kind {kind[:64]!r}")
        if not is_clean_relative_path(path):
            raise PackageError(
                "invalid", f"manifest.icons.{kind}: must be a clean relative path in the package"
            )
    return icons


def is_clean_relative_path(path: str) -> bool:
    """True for 'a/b.txt'-style paths: no '..', '.', empty parts, leading '/', or controls."""
    if not path or len(path.encode("utf-8", "surrogatepass")) > MAX_PATH or path.startswith("/"):
        return False
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in path):
        return False
    return all(part not in ("", ".", "..") for part in path.split("/"))


def _unique(values: Sequence[str], where: str, what: str) -> None:
    seen: set[str] = set()
    for v in values:
        if v in seen:
            raise PackageError("invalid", f"{where}: duplicate {what} {v!r}")
        seen.add(v)


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            # JSON parsers disagree on which duplicate wins; refusing removes the ambiguity.
            raise PackageError("invalid", f"manifest: duplicate key {key[:64]!r}")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise PackageError("invalid", f"manifest: {name} is not allowed in JSON")


_T = TypeVar("_T")


class _Obj:
    """A JSON object being validated; remembers which keys were read to refuse the rest."""

    def __init__(self, value: object, path: str) -> None:
        if not isinstance(value, dict):
            raise PackageError("invalid", f"{path}: must be an object")
        self.value: dict[str, Any] = value
        self.path = path
        self.seen: set[str] = set()

    def _get(self, key: str, required: bool) -> Any:
        self.seen.add(key)
        if key not in self.value:
            if required:
                raise PackageError("invalid", f"{self.path}.{key}: required field is missing")
            return None
        return self.value[key]

    def refuse_unknown(self) -> None:
        for key in self.value:
            if key not in self.seen:
                raise PackageError("invalid", f"{self.path}.{key[:64]}: unknown field")

    def _typed(self, key: str, kind: type[_T], label: str, required: bool) -> _T | None:
        value = self._get(key, required)
        if value is None:
            if key in self.value:
                raise PackageError("invalid", f"{self.path}.{key}: must be {label}, not null")
            return None
        # bool is a subclass of int; `"version": true` must not pass as 1.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise PackageError("invalid", f"{self.path}.{key}: must be {label}")
        return value

    def text(
        self, key: str, max_len: int, *, required: bool = True, allow_empty: bool = True
    ) -> str:
        value = self._typed(key, str, "a string", required)
        if value is None:
            return ""
        return self._check_text(key, value, max_len, allow_empty)

    def _check_text(self, key: str, value: str, max_len: int, allow_empty: bool) -> str:
        if len(value) > max_len:
            raise PackageError("invalid", f"{self.path}.{key}: longer than {max_len} characters")
        if not allow_empty and not value.strip():
            raise PackageError("invalid", f"{self.path}.{key}: must not be empty")
        if "\0" in value:
            raise PackageError("invalid", f"{self.path}.{key}: contains NUL")
        return value

    def optional_text(self, key: str, max_len: int) -> str | None:
        value = self._typed(key, str, "a string", False)
        return None if value is None else self._check_text(key, value, max_len, False)

    def integer(
        self, key: str, lo: int, hi: int, *, required: bool = True, default: int = 0
    ) -> int:
        value = self._typed(key, int, "an integer", required)
        if value is None:
            return default
        return self._check_int(key, value, lo, hi)

    def optional_int(self, key: str, lo: int, hi: int) -> int | None:
        value = self._typed(key, int, "an integer", False)
        return None if value is None else self._check_int(key, value, lo, hi)

    def _check_int(self, key: str, value: int, lo: int, hi: int) -> int:
        if not lo <= value <= hi:
            raise PackageError("invalid", f"{self.path}.{key}: must be between {lo} and {hi}")
        return value

    def name(self, key: str) -> str:
        value = self.text(key, 32)
        return self._check_name(key, value)

    def optional_name(self, key: str) -> str | None:
        value = self.optional_text(key, 32)
        return None if value is None else self._check_name(key, value)

    def _check_name(self, key: str, value: str) -> str:
        if not _NAME_RE.match(value):
            raise PackageError(
                "invalid",
                f"{self.path}.{key}: {value!r} must match [a-z][a-z0-9_-]* (at most 32)",
            )
        return value

    def object(self, key: str) -> _Obj:
        return _Obj(self._get(key, True), f"{self.path}.{key}")

    def _list(self, key: str, max_count: int, required: bool) -> list[Any]:
        value = self._typed(key, list, "a list", required)
        if value is None:
            return []
        if len(value) > max_count:
            raise PackageError("invalid", f"{self.path}.{key}: more than {max_count} entries")
        return value

    def objects(self, key: str, max_count: int, *, required: bool = True) -> list[_Obj]:
        items = self._list(key, max_count, required)
        return [_Obj(v, f"{self.path}.{key}[{i}]") for i, v in enumerate(items)]

    def names(self, key: str, max_count: int) -> tuple[str, ...]:
        items = self._list(key, max_count, True)
        holder = _Obj({str(i): v for i, v in enumerate(items)}, f"{self.path}.{key}")
        return tuple(holder.name(str(i)) for i in range(len(items)))

    def command(self, key: str) -> tuple[str, ...]:
        items = self._list(key, MAX_ARGS, True)
        where = f"{self.path}.{key}"
        if not items:
            raise PackageError("invalid", f"{where}: must not be empty")
        for i, arg in enumerate(items):
            if not isinstance(arg, str):
                raise PackageError("invalid", f"{where}[{i}]: must be a string")
            if len(arg) > MAX_ARG or "\0" in arg:
                raise PackageError("invalid", f"{where}[{i}]: too long or contains NUL")
        if not items[0].startswith("/"):
            # No PATH search inside a grain: the environment is empty unless the app sets it.
            raise PackageError("invalid", f"{where}[0]: must be an absolute path")
        return tuple(items)

    def string_map(self, key: str, max_count: int) -> dict[str, str]:
        value = self._typed(key, dict, "an object", False)
        if value is None:
            return {}
        if len(value) > max_count:
            raise PackageError("invalid", f"{self.path}.{key}: more than {max_count} entries")
        for k, v in value.items():
            if not isinstance(v, str):
                raise PackageError("invalid", f"{self.path}.{key}.{k[:64]}: must be a string")
        return dict(value)
