"""Stream mode: the confined validator hands on the metadata and content it checked, and its
verdict comes last, so a refusal found late still arrives before anything may be committed."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from pathlib import Path

import pytest

from grainhouse_backup import archive, frames, validation
from grainhouse_backup import verdicts as v
from tests.unit.backup.conftest import GOOD, Hostile, Raw, write_good, write_hostile

pytestmark = pytest.mark.unit


async def run(path: Path, empty: Path) -> tuple[bytes | v.Verdict, dict[str, bytes], v.Verdict]:
    """Drive a `Checked` as a restore does: metadata, each regular file's content, verdict."""
    checked = await validation.Checked.start(str(path), v.Limits(), str(empty))
    content: dict[str, bytes] = {}
    try:
        raw = await checked.metadata()
        if isinstance(raw, v.Verdict):
            return raw, content, raw
        for record in archive.parse_metadata(raw).files:
            if record.type != archive.REGULAR:
                continue
            got = b""
            while len(got) < record.size:
                chunk = await checked.data(record.size - len(got))
                if isinstance(chunk, v.Verdict):
                    return raw, content, chunk
                got += chunk
            content[record.path] = got
        return raw, content, await checked.verdict()
    finally:
        await checked.close()


def test_a_good_archive_streams_every_file_then_ok(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    meta = write_good(tmp_path / "g.zip")
    raw, content, verdict = asyncio.run(run(tmp_path / "g.zip", tmp_path / "empty"))
    assert isinstance(raw, bytes)
    assert [r.path for r in archive.parse_metadata(raw).files] == [r.path for r in meta.files]
    assert content == GOOD
    assert verdict.ok, verdict
    assert "rlimits" in verdict.confinement


def test_a_late_checksum_mismatch_comes_after_the_content(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    good, bad = b"a" * 5000, b"b" * 5000
    listed = hashlib.sha256(good).hexdigest()  # right for "a", wrong for "z"
    records = [
        archive.FileRecord(name, archive.REGULAR, 0o644, 1.7e9, 5000, listed) for name in "az"
    ]
    metadata = archive.Metadata(archive.GrainHeader("g", "t", "o", "app", 1, ""), records)
    spec = Hostile([Raw("data/a", good), Raw("data/z", bad)], metadata=metadata.to_json())
    write_hostile(tmp_path / "h.zip", spec).close()
    raw, content, verdict = asyncio.run(run(tmp_path / "h.zip", tmp_path / "empty"))
    assert isinstance(raw, bytes)  # the checks before content passed
    assert content == {"a": good, "z": bad}  # handed on, unvalidated until the verdict
    assert (verdict.ok, verdict.reason, verdict.entry) == (False, v.CHECKSUM_MISMATCH, "data/z")


def test_an_early_refusal_sends_no_metadata(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    write_hostile(tmp_path / "h.zip", Hostile([Raw("data/../../x", b"1")])).close()
    raw, content, verdict = asyncio.run(run(tmp_path / "h.zip", tmp_path / "empty"))
    assert isinstance(raw, v.Verdict) and not content
    assert (verdict.ok, verdict.reason) == (False, v.ZIP_SLIP)


def test_a_dead_validator_is_a_refusal(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    write_good(tmp_path / "g.zip")

    async def killed() -> bytes | v.Verdict:
        checked = await validation.Checked.start(
            str(tmp_path / "g.zip"), v.Limits(), str(tmp_path / "empty")
        )
        checked.proc.kill()
        try:
            raw = await checked.metadata()
            return raw if isinstance(raw, v.Verdict) else await checked.verdict()
        finally:
            await checked.close()

    verdict = asyncio.run(killed())
    assert isinstance(verdict, v.Verdict)
    assert (verdict.ok, verdict.reason) == (False, v.TRUNCATED_OR_CORRUPT)
    assert json.dumps(verdict.message)  # a message a task can carry


@pytest.mark.parametrize(
    ("frame", "step"),
    [
        (frames.FRAME.pack(frames.METADATA_FRAME, archive.MAX_METADATA_BYTES + 1), "metadata"),
        (frames.FRAME.pack(frames.DATA_FRAME, 11), "data"),  # more than the file lacks
        (frames.FRAME.pack(frames.DATA_FRAME, archive.CHUNK + 1), "big data"),
        (frames.FRAME.pack(frames.VERDICT_FRAME, 3 << 30), "verdict"),
        (frames.FRAME.pack(b"X", 1), "verdict"),  # an unknown kind
    ],
)
def test_an_oversized_or_unknown_frame_is_a_refusal_and_is_not_read(
    frame: bytes, step: str
) -> None:
    """A validator that lost its mind (a hostile archive broke it) cannot make the parent hold
    gigabytes: a frame larger than its kind allows is refused from its header alone."""

    async def drive() -> bytes | v.Verdict:
        read_end, write_end = os.pipe()
        os.write(write_end, frame + b"x" * 64)  # far less than announced: never waited for
        proc = await asyncio.create_subprocess_exec("sleep", "60")
        checked = validation.Checked(proc, frames.PipeReader(read_end))
        try:
            if step == "metadata":
                return await checked.metadata()
            if step == "verdict":
                return await checked.verdict()
            return await checked.data(10 if step == "data" else 50 * archive.CHUNK)
        finally:
            os.close(write_end)
            await checked.close()

    got = asyncio.run(asyncio.wait_for(drive(), 30))
    assert isinstance(got, v.Verdict)
    assert (got.ok, got.reason) == (False, v.TRUNCATED_OR_CORRUPT)
