"""ExportGrain / ImportGrain: a consistent snapshot out, a validated new grain in."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from grainhouse_proto import grainmgr_pb2 as pb

from .conftest import Platform, create, get

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("grains-stack")]


def export(platform: Platform, grain_id: str) -> list[pb.GrainArchivePart]:
    return list(platform.stub.ExportGrain(pb.ExportGrainRequest(grain_id=grain_id), timeout=60))


def import_parts(
    owner: str, parts: list[pb.GrainArchivePart], **options: str
) -> Iterator[pb.ImportGrainRequest]:
    yield pb.ImportGrainRequest(options=pb.ImportGrainOptions(owner_account_id=owner, **options))
    for part in parts:
        yield pb.ImportGrainRequest(archive=part)


def test_export_of_running_grain_then_import_as_new_grain(platform: Platform) -> None:
    grain = create(platform, platform.probe, title="Original")
    get(platform, grain.grain_id, "/write?name=note&data=hello%20archive")
    parts = export(platform, grain.grain_id)
    kinds = [p.WhichOneof("part") for p in parts]
    assert kinds[0] == "header" and kinds[-1] == "trailer"
    assert parts[0].header.format_version == 1
    assert parts[0].header.app_id == platform.probe.app_id
    files = {p.file.path: p.file for p in parts if p.WhichOneof("part") == "file"}
    assert files["note"].size_bytes == len("hello archive")
    assert parts[-1].trailer.file_count == len(files)
    # The exported grain runs again afterwards and still has its data.
    assert get(platform, grain.grain_id, "/read?name=note").json()["data"] == "hello archive"

    copy = platform.stub.ImportGrain(import_parts("owner-2", parts), timeout=60)
    assert copy.grain_id != grain.grain_id
    assert copy.owner_account_id == "owner-2"
    assert copy.title == "Original"
    assert get(platform, copy.grain_id, "/read?name=note").json()["data"] == "hello archive"


def _code(platform: Platform, parts: list[pb.GrainArchivePart]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        platform.stub.ImportGrain(import_parts("owner-2", parts), timeout=60)
    return info.value.code()


def test_hostile_or_broken_archives_are_refused(platform: Platform) -> None:
    grain = create(platform, platform.probe)
    get(platform, grain.grain_id, "/write?name=note&data=x")
    parts = export(platform, grain.grain_id)
    header, trailer = parts[0], parts[-1]
    count_before = len(
        platform.stub.ListGrains(pb.ListGrainsRequest(owner_account_id="owner-2")).grains
    )

    def with_file(entry: pb.FileEntry, data: bytes = b"") -> list[pb.GrainArchivePart]:
        middle = [pb.GrainArchivePart(file=entry)]
        if data:
            middle.append(pb.GrainArchivePart(data=data))
        return [header, *middle, trailer]

    invalid = grpc.StatusCode.INVALID_ARGUMENT
    assert _code(platform, parts[:-1]) == invalid  # truncated: no trailer
    assert (
        _code(
            platform,
            with_file(
                pb.FileEntry(path="../escape", type=pb.FILE_TYPE_REGULAR, size_bytes=1), b"x"
            ),
        )
        == invalid
    )
    assert (
        _code(platform, with_file(pb.FileEntry(path="/abs", type=pb.FILE_TYPE_DIRECTORY)))
        == invalid
    )
    assert (
        _code(
            platform,
            with_file(
                pb.FileEntry(path="l", type=pb.FILE_TYPE_SYMLINK, symlink_target="../../etc")
            ),
        )
        == invalid
    )
    assert (
        _code(
            platform,
            with_file(
                pb.FileEntry(path="l", type=pb.FILE_TYPE_SYMLINK, symlink_target="/etc/passwd")
            ),
        )
        == invalid
    )
    assert (
        _code(
            platform,
            with_file(pb.FileEntry(path="d/f", type=pb.FILE_TYPE_REGULAR, size_bytes=1), b"x"),
        )
        == invalid
    )
    bad_sum = pb.GrainArchivePart(
        trailer=pb.GrainArchiveTrailer(
            file_count=trailer.trailer.file_count,
            total_bytes=trailer.trailer.total_bytes,
            data_sha256="0" * 64,
        )
    )
    assert _code(platform, [*parts[:-1], bad_sum]) == invalid
    assert _code(platform, [parts[1], *parts[1:]]) == invalid  # no header first
    newer = pb.GrainArchivePart(
        header=pb.GrainArchiveHeader(format_version=2, app_id=platform.probe.app_id)
    )
    assert _code(platform, [newer, *parts[1:]]) == grpc.StatusCode.FAILED_PRECONDITION
    too_new_app = pb.GrainArchivePart(
        header=pb.GrainArchiveHeader(format_version=1, app_id=platform.probe.app_id, app_version=99)
    )
    assert _code(platform, [too_new_app, *parts[1:]]) == grpc.StatusCode.FAILED_PRECONDITION
    after = len(platform.stub.ListGrains(pb.ListGrainsRequest(owner_account_id="owner-2")).grains)
    assert after == count_before  # nothing was created by any refused import
