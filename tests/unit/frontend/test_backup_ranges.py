"""The Range rules of archive downloads (backup_downloads.parse_range): one range, RFC 9110."""

from __future__ import annotations

import pytest

from grainhouse_frontend.backup_downloads import parse_range
from grainhouse_frontend.rest_backups import refusal_name
from grainhouse_proto import backup_pb2 as bpb


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        ("bytes=0-99", 1000, (0, 99)),
        ("bytes=500-", 1000, (500, 999)),
        ("bytes=900-5000", 1000, (900, 999)),  # past the end: shortened
        ("bytes=-100", 1000, (900, 999)),
        ("bytes=-5000", 1000, (0, 999)),
        ("bytes=999-999", 1000, (999, 999)),
        ("bytes=1000-", 1000, "416"),
        ("bytes=1000-2000", 1000, "416"),
        ("bytes=-0", 1000, "416"),
        ("bytes=0-", 0, "416"),  # nothing to range over
        ("bytes=0-1,5-9", 1000, None),  # several ranges: ignored, the whole file
        ("bytes=9-5", 1000, None),  # invalid: ignored
        ("items=0-5", 1000, None),
        ("bytes=-", 1000, None),
        ("garbage", 1000, None),
    ],
)
def test_parse_range(header: str, size: int, expected: object) -> None:
    assert parse_range(header, size) == expected


def test_every_refusal_reason_has_a_name() -> None:
    names = {refusal_name(v) for v in bpb.ArchiveRefusalReason.values() if v}
    assert {"zip_slip", "ratio_bomb", "app_too_old"} <= names
    assert all(n and n == n.lower() and " " not in n for n in names)
