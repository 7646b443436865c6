"""Field and enum numbers in proto/ are never reused or renumbered (checked against a lock file).

Owns: tests/unit/proto/proto_numbers.lock.json — every (message, number) → name and type ever
released, and every (enum, number) → name. Entries are only ever added.
Trusts: protoc's descriptors of the current files.
Never: removes an entry from the lock (a removed field must be `reserved` instead).

When you add a field or enum value, record it:
    GRAINHOUSE_UPDATE_PROTO_LOCK=1 .venv/bin/pytest tests/unit/proto/test_proto_numbers.py
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from google.protobuf import descriptor_pb2

if TYPE_CHECKING:  # test dirs are not packages: the type is only for readers and checkers
    from conftest import CompiledProtos

pytestmark = pytest.mark.unit

LOCK = Path(__file__).with_name("proto_numbers.lock.json")
UPDATE_ENV = "GRAINHOUSE_UPDATE_PROTO_LOCK"


def _type_of(field: descriptor_pb2.FieldDescriptorProto) -> str:
    label = "repeated " if field.label == field.LABEL_REPEATED else ""
    kind = field.type_name or descriptor_pb2.FieldDescriptorProto.Type.Name(field.type)
    return f"{label}{kind}"


def _numbers(compiled: CompiledProtos) -> Iterator[tuple[str, str, set[int], set[str]]]:
    """Yield (key, value, reserved numbers, reserved names) for every field and enum value."""

    def message(msg: descriptor_pb2.DescriptorProto, scope: str) -> Iterator:
        name = f"{scope}.{msg.name}"
        numbers = {n for r in msg.reserved_range for n in range(r.start, r.end)}
        names = set(msg.reserved_name)
        for field in msg.field:
            yield f"{name}#{field.number}", f"{field.name}:{_type_of(field)}", numbers, names
        for nested in msg.nested_type:
            yield from message(nested, name)
        for enum in msg.enum_type:
            yield from enum_values(enum, name)

    def enum_values(enum: descriptor_pb2.EnumDescriptorProto, scope: str) -> Iterator:
        name = f"{scope}.{enum.name}"
        # EnumReservedRange.end is inclusive, unlike messages'.
        numbers = {n for r in enum.reserved_range for n in range(r.start, r.end + 1)}
        names = set(enum.reserved_name)
        for value in enum.value:
            yield f"{name}#{value.number}", value.name, numbers, names

    for fd in compiled.descriptors.file:
        if fd.name.startswith("google/"):
            continue
        for msg in fd.message_type:
            yield from message(msg, fd.package)
        for enum in fd.enum_type:
            yield from enum_values(enum, fd.package)


def _reserved_in(compiled: CompiledProtos) -> dict[str, tuple[set[int], set[str]]]:
    """Reserved numbers and names per message/enum scope, for entries no longer present."""
    scopes: dict[str, tuple[set[int], set[str]]] = {}
    for key, _value, numbers, names in _numbers(compiled):
        scopes[key.split("#")[0]] = (numbers, names)
    return scopes


def test_numbers_are_never_reused(compiled_protos: CompiledProtos) -> None:
    current = {key: value for key, value, _n, _r in _numbers(compiled_protos)}
    locked: dict[str, str] = json.loads(LOCK.read_text()) if LOCK.exists() else {}

    changed = [
        f"{key}: was {old!r}, now {current[key]!r}"
        for key, old in locked.items()
        if key in current and current[key] != old
    ]
    assert changed == [], "numbers reused or fields retyped/renamed:\n" + "\n".join(changed)

    scopes = _reserved_in(compiled_protos)
    unreserved = []
    for key, old in locked.items():
        if key in current:
            continue
        scope, number = key.split("#")
        reserved_numbers, reserved_names = scopes.get(scope, (set(), set()))
        name = old.split(":")[0]
        # A message or enum removed as a whole takes its numbers with it: nothing left to reuse.
        if scope in scopes and (int(number) not in reserved_numbers or name not in reserved_names):
            unreserved.append(f'{key} ({name}) was removed without `reserved {number}; "{name}"`')
    assert unreserved == [], "\n".join(unreserved)

    new = sorted(set(current) - set(locked))
    if new and os.environ.get(UPDATE_ENV) == "1":
        locked.update({key: current[key] for key in new})
        LOCK.write_text(json.dumps(dict(sorted(locked.items())), indent=1) + "\n")
        new = []
    assert new == [], (
        f"{len(new)} new fields/enum values are not in {LOCK.name}; "
        f"record them with {UPDATE_ENV}=1 (first: {new[:3]})"
    )
