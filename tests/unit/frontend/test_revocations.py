"""Auth's JSON revocation events drop exactly the cached decisions they name (no network)."""

from __future__ import annotations

import asyncio
import time

from grainhouse_frontend import revocations
from grainhouse_frontend.identity import Identity
from grainhouse_frontend.origins import Decision, Origin, Origins
from grainhouse_proto import auth_pb2


def _origins() -> Origins:
    origins = Origins("*.localhost:6080")
    for oid, grain, cred, chain in (
        ("a" * 32, "g1", "ses_1", ["grt_1"]),
        ("b" * 32, "g1", "ses_2", ["grt_2"]),
        ("c" * 32, "g2", "ses_3", ["grt_3"]),
    ):
        o = origins.add(Origin(oid, grain, auth_pb2.Credential(session_secret="x"), tab_id="t"))
        o.decision = Decision([], None, chain, cred, time.monotonic() + 30)
    return origins


def _decided(origins: Origins) -> set[str]:
    return {oid for oid in ("a" * 32, "b" * 32, "c" * 32) if origins.get(oid).decision}  # type: ignore[union-attr]


def test_a_json_event_drops_only_what_it_names() -> None:
    origins, ident = _origins(), Identity(None)  # type: ignore[arg-type]
    event = {"grain_id": "g1", "grant_ids": ["grt_2"], "credential_ids": [], "account_id": ""}
    assert revocations.apply(event, ident, origins) == 1
    assert _decided(origins) == {"a" * 32, "c" * 32}


def test_an_account_event_drops_everything_and_garbage_is_ignored() -> None:
    origins, ident = _origins(), Identity(None)  # type: ignore[arg-type]
    on_event = revocations.handler(ident, origins)
    asyncio.run(on_event(revocations.SUBJECT, ["not", "an", "object"]))  # type: ignore[arg-type]
    assert len(_decided(origins)) == 3
    asyncio.run(on_event(revocations.SUBJECT, {"account_id": "acc_1", "grant_ids": "grt_1"}))
    assert _decided(origins) == set()
