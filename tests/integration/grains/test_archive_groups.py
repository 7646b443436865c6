"""ImportGrain with grouped parts (GrainArchiveParts): the same archive, the same rules.

A restore sends many small files as groups of parts, one gRPC message per group; grainmgr must
apply a group exactly as the same parts sent one by one, refuse what it would refuse alone,
and refuse an empty group.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from grainhouse_proto import grainmgr_pb2 as pb

from .conftest import Platform, create, get

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("grains-stack")]


def grouped(owner: str, groups: list[list[pb.GrainArchivePart]]) -> Iterator[pb.ImportGrainRequest]:
    yield pb.ImportGrainRequest(options=pb.ImportGrainOptions(owner_account_id=owner))
    for group in groups:
        yield pb.ImportGrainRequest(archive_parts=pb.GrainArchiveParts(parts=group))


def owned(platform: Platform, owner: str) -> int:
    return len(platform.stub.ListGrains(pb.ListGrainsRequest(owner_account_id=owner)).grains)


def test_grouped_parts_import_like_single_parts(platform: Platform) -> None:
    grain = create(platform, platform.probe, title="Grouped")
    get(platform, grain.grain_id, "/write?name=note&data=hello%20groups")
    get(platform, grain.grain_id, "/write?name=other&data=second%20file")
    parts = list(
        platform.stub.ExportGrain(pb.ExportGrainRequest(grain_id=grain.grain_id), timeout=60)
    )
    # Groups of two: the header shares a group with the first file; file entries and their
    # data land in different groups; the trailer closes the last one.
    groups = [parts[i : i + 2] for i in range(0, len(parts), 2)]
    assert len(groups) > 2
    copy = platform.stub.ImportGrain(grouped("owner-groups", groups), timeout=60)
    assert copy.grain_id != grain.grain_id and copy.title == "Grouped"
    assert get(platform, copy.grain_id, "/read?name=note").json()["data"] == "hello groups"
    assert get(platform, copy.grain_id, "/read?name=other").json()["data"] == "second file"


def test_grouped_parts_are_refused_as_single_parts_would_be(platform: Platform) -> None:
    grain = create(platform, platform.probe)
    get(platform, grain.grain_id, "/write?name=note&data=x")
    parts = list(
        platform.stub.ExportGrain(pb.ExportGrainRequest(grain_id=grain.grain_id), timeout=60)
    )
    header, trailer = parts[0], parts[-1]
    before = owned(platform, "owner-groups-bad")
    escape = [
        pb.GrainArchivePart(
            file=pb.FileEntry(path="../escape", type=pb.FILE_TYPE_REGULAR, size_bytes=1)
        ),
        pb.GrainArchivePart(data=b"x"),
    ]
    refused = {
        "empty group": [[header], [], parts[1:]],
        "hostile path in a group": [[header, *escape, trailer]],
        "no trailer": [parts[:-1]],
        "two headers in one group": [[header, header, *parts[1:]]],
    }
    for why, groups in refused.items():
        with pytest.raises(grpc.RpcError) as info:
            platform.stub.ImportGrain(grouped("owner-groups-bad", groups), timeout=60)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, why
    assert owned(platform, "owner-groups-bad") == before  # no refused import made a grain
