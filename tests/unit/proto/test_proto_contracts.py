"""The gRPC contracts in proto/ compile, import, keep their conventions, and document themselves.

Owns: nothing (reads proto/ and a temporary protoc output).
Trusts: grpc_tools.protoc and protobuf's descriptor messages.
Never: writes into the repository or imports the generated modules into this process (the
default descriptor pool is process-wide; a stale copy of libs/proto could clash with it).
"""

from __future__ import annotations

import json
import subprocess
import textwrap
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
from google.protobuf import descriptor_pb2

if TYPE_CHECKING:  # test dirs are not packages: the type is only for readers and checkers
    from conftest import CompiledProtos

pytestmark = pytest.mark.unit

# Field numbers of descriptor.proto used to address parts of a file in SourceCodeInfo paths.
_MESSAGE = 4  # FileDescriptorProto.message_type
_ENUM = 5  # FileDescriptorProto.enum_type
_SERVICE = 6  # FileDescriptorProto.service
_SYNTAX = 12  # FileDescriptorProto.syntax
_MSG_FIELD = 2  # DescriptorProto.field
_MSG_NESTED = 3  # DescriptorProto.nested_type
_MSG_ENUM = 4  # DescriptorProto.enum_type
_MSG_ONEOF = 8  # DescriptorProto.oneof_decl
_ENUM_VALUE = 2  # EnumDescriptorProto.value
_METHOD = 2  # ServiceDescriptorProto.method

# (client_streaming, server_streaming) of the RPCs that move large data or are otherwise pinned.
STREAMING = {
    ("GrainManager", "InstallPackage"): (True, False),
    ("GrainManager", "StreamLogs"): (False, True),
    ("GrainManager", "ExportGrain"): (False, True),
    ("GrainManager", "ImportGrain"): (True, False),
    ("Backup", "DownloadBackup"): (False, True),
    ("Backup", "RestoreBackup"): (True, False),
}

EXPECTED_RPCS = {
    "Auth": {
        "CreateAccount", "LoginPassword", "VerifyTotp", "StartEmailLogin", "FinishEmailLogin",
        "DevLogin", "StartOidcLogin", "FinishOidcLogin", "Logout", "GetSession",
        "ChangePassword", "EnrollTotp", "ConfirmTotp", "DisableTotp", "RegenerateRecoveryCodes",
        "CreateSetupLink", "RedeemSetupLink", "CreateInvitation", "ListAccounts",
        "IssueAdminToken", "CreateApiToken", "ListApiTokens", "RevokeApiToken",
        "AuthenticateToken", "CreateShareLink", "RedeemShareLink", "GrantAccess", "ListAccess",
        "RevokeGrant", "ChangeGrantRole", "CreateGrainApiToken", "Authorize", "RegisterGrain",
        "ForgetGrain",
        "SetAccountDisabled", "ListInvitations", "RevokeInvitation", "ListSharedGrains",
        "SetAccountVisitor", "CreateOrigin", "ResolveOrigin",
    },
    "GrainManager": {
        "InstallPackage", "ListPackages", "GetPackage", "UninstallPackage", "CreateGrain",
        "GetGrain", "ListGrains", "UpdateGrain", "OpenSession", "OpenStream", "StopGrain",
        "RestartGrain", "TrashGrain", "RestoreGrain", "DeleteGrain", "StreamLogs",
        "ExportGrain", "ImportGrain", "GetViewInfo",
    },
    "Backup": {
        "CreateBackup", "GetTask", "ListBackups", "GetBackup", "DownloadBackup", "DeleteBackup",
        "RestoreBackup", "CreateSchedule", "ListSchedules", "DeleteSchedule",
    },
}  # fmt: skip


def _files(compiled: CompiledProtos) -> dict[str, descriptor_pb2.FileDescriptorProto]:
    return {f.name: f for f in compiled.descriptors.file}


def _comment_index(fd: descriptor_pb2.FileDescriptorProto) -> dict[tuple[int, ...], str]:
    """Map each SourceCodeInfo path to the comment text attached to it (leading + trailing)."""
    index: dict[tuple[int, ...], str] = {}
    for loc in fd.source_code_info.location:
        text = (loc.leading_comments + loc.trailing_comments).strip()
        if text:
            index[tuple(loc.path)] = text
    return index


def _documentable(fd: descriptor_pb2.FileDescriptorProto) -> Iterator[tuple[tuple[int, ...], str]]:
    """Every service, RPC, message, field, oneof, enum and enum value, with its path and name."""

    def message(msg: descriptor_pb2.DescriptorProto, path: tuple[int, ...], prefix: str):
        name = f"{prefix}{msg.name}"
        yield path, name
        for i, field in enumerate(msg.field):
            yield (*path, _MSG_FIELD, i), f"{name}.{field.name}"
        for i, oneof in enumerate(msg.oneof_decl):
            # proto3 `optional` makes a synthetic oneof "_<field>": not something one documents.
            if not oneof.name.startswith("_"):
                yield (*path, _MSG_ONEOF, i), f"{name}.{oneof.name}"
        for i, nested in enumerate(msg.nested_type):
            yield from message(nested, (*path, _MSG_NESTED, i), f"{name}.")
        for i, enum in enumerate(msg.enum_type):
            yield from enum_values(enum, (*path, _MSG_ENUM, i), f"{name}.")

    def enum_values(enum: descriptor_pb2.EnumDescriptorProto, path: tuple[int, ...], prefix: str):
        yield path, f"{prefix}{enum.name}"
        for i, value in enumerate(enum.value):
            # The zero value is always the refused `..._UNSPECIFIED` (see common.proto).
            if not value.name.endswith("_UNSPECIFIED"):
                yield (*path, _ENUM_VALUE, i), f"{prefix}{enum.name}.{value.name}"

    for i, msg in enumerate(fd.message_type):
        yield from message(msg, (_MESSAGE, i), "")
    for i, enum in enumerate(fd.enum_type):
        yield from enum_values(enum, (_ENUM, i), "")
    for i, service in enumerate(fd.service):
        yield (_SERVICE, i), service.name
        for j, method in enumerate(service.method):
            yield (_SERVICE, i, _METHOD, j), f"{service.name}.{method.name}"


def test_every_proto_compiles_and_imports(
    compiled_protos: CompiledProtos, python_executable: str
) -> None:
    stems = [p.stem for p in compiled_protos.proto_files]
    # A fresh interpreter imports every generated module, as `make proto`'s users will.
    script = textwrap.dedent(
        """
        import importlib, json, sys
        out = {}
        for stem in sys.argv[1:]:
            pb2 = importlib.import_module(stem + "_pb2")
            importlib.import_module(stem + "_pb2_grpc")
            out[stem] = {
                "package": pb2.DESCRIPTOR.package,
                "services": {
                    s.name: sorted(m.name for m in s.methods)
                    for s in pb2.DESCRIPTOR.services_by_name.values()
                },
            }
        print(json.dumps(out))
        """
    )
    proc = subprocess.run(
        [python_executable, "-c", script, *stems],
        cwd=compiled_protos.out_dir,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    imported = json.loads(proc.stdout)
    assert set(imported) == set(stems)
    services = {name: set(m) for info in imported.values() for name, m in info["services"].items()}
    assert services == EXPECTED_RPCS
    for stem in stems:
        assert (compiled_protos.out_dir / f"{stem}_pb2.pyi").is_file()


def test_package_names_follow_grainhouse_svc_v1(compiled_protos: CompiledProtos) -> None:
    for name, fd in _files(compiled_protos).items():
        if name.startswith("google/"):
            continue
        stem = name.removesuffix(".proto")
        assert fd.package == f"grainhouse.{stem}.v1", name
        assert fd.syntax == "proto3", name


def test_imports_stay_simple(compiled_protos: CompiledProtos) -> None:
    # `make proto` rewrites `import common_pb2` into `grainhouse_proto.common_pb2`; that only
    # works when .proto files import each other by bare file name.
    for name, fd in _files(compiled_protos).items():
        for dep in fd.dependency:
            assert dep.startswith("google/protobuf/") or "/" not in dep, (name, dep)


def test_streaming_shapes(compiled_protos: CompiledProtos) -> None:
    seen: dict[tuple[str, str], tuple[bool, bool]] = {}
    for fd in compiled_protos.descriptors.file:
        for service in fd.service:
            for method in service.method:
                seen[(service.name, method.name)] = (
                    method.client_streaming,
                    method.server_streaming,
                )
    for key, shape in seen.items():
        assert shape == STREAMING.get(key, (False, False)), key


def test_every_element_is_documented(compiled_protos: CompiledProtos) -> None:
    missing = []
    for name, fd in _files(compiled_protos).items():
        if name.startswith("google/"):
            continue
        comments = _comment_index(fd)
        missing += [f"{name}: {what}" for path, what in _documentable(fd) if path not in comments]
    assert missing == [], "undocumented:\n" + "\n".join(missing)


def test_files_say_who_they_are_for_and_never_reuse_numbers(
    compiled_protos: CompiledProtos,
) -> None:
    for name, fd in _files(compiled_protos).items():
        if name.startswith("google/"):
            continue
        header = _comment_index(fd).get((_SYNTAX,), "")
        assert "Who this file is for" in header, name
        assert "never reused" in header.lower(), name


def test_enums_start_with_unspecified_zero(compiled_protos: CompiledProtos) -> None:
    def enums(
        fd: descriptor_pb2.FileDescriptorProto,
    ) -> Iterator[descriptor_pb2.EnumDescriptorProto]:
        yield from fd.enum_type
        stack = list(fd.message_type)
        while stack:
            msg = stack.pop()
            yield from msg.enum_type
            stack.extend(msg.nested_type)

    for name, fd in _files(compiled_protos).items():
        if name.startswith("google/"):
            continue
        for enum in enums(fd):
            first = enum.value[0]
            assert first.number == 0 and first.name.endswith("_UNSPECIFIED"), (name, enum.name)


def test_admin_token_contract_is_precise(compiled_protos: CompiledProtos) -> None:
    auth = _files(compiled_protos)["auth.proto"]
    messages = {m.name: {f.name: f for f in m.field} for m in auth.message_type}
    request = messages["IssueAdminTokenRequest"]
    assert set(request) == {"operator_key", "account_id", "name", "ttl_seconds"}
    assert request["operator_key"].type_name == ".grainhouse.auth.v1.OperatorKey"
    assert set(messages["OperatorKey"]) == {"key_secret"}
    assert set(messages["IssueAdminTokenResponse"]) == {"token_secret", "token"}
    assert set(messages["AuthenticateTokenRequest"]) == {"bearer_secret", "client_address"}
    assert "principal" in messages["AuthenticateTokenResponse"]
