"""InstallPackage / ListPackages / GetPackage / UninstallPackage against a real grainmgr."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import grpc
import pytest

from grainhouse_package import generate_key, pack_directory
from grainhouse_proto import grainmgr_pb2 as pb

from .conftest import HERE, Platform, create, install, upload_requests

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("grains-stack")]


def code_of(call: object) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()  # type: ignore[operator]
    return info.value.code()


def test_installed_package_is_listed_and_described(platform: Platform) -> None:
    got = platform.stub.GetPackage(pb.GetPackageRequest(package_id=platform.probe.package_id))
    assert got.title == "Probe"
    assert got.version == 1
    assert [a.name for a in got.actions] == ["probe"]
    assert [r.name for r in got.view_info.roles] == ["viewer", "editor"]
    assert [r.is_default for r in got.view_info.roles] == [True, False]
    assert got.is_current
    assert got.size_bytes > 0
    listed = platform.stub.ListPackages(pb.ListPackagesRequest()).packages
    assert {p.package_id for p in listed} >= {platform.probe.package_id, platform.static.package_id}


def test_same_bytes_again_is_already_installed(platform: Platform) -> None:
    again = install(platform.stub, platform.packages / "probe.pkg")
    assert again.already_installed
    assert again.package_id == platform.probe.package_id
    assert (
        again.package_id
        == hashlib.sha256((platform.packages / "probe.pkg").read_bytes()).hexdigest()
    )


def test_corrupted_upload_is_invalid(platform: Platform) -> None:
    data = (platform.packages / "probe.pkg").read_bytes()
    code = code_of(lambda: platform.stub.InstallPackage(upload_requests(data, sha256="0" * 64)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


def test_short_upload_is_invalid(platform: Platform) -> None:
    data = (platform.packages / "probe.pkg").read_bytes()
    code = code_of(
        lambda: platform.stub.InstallPackage(
            upload_requests(data, size_bytes=len(data) + 5, sha256="")
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT


def test_oversized_declaration_is_resource_exhausted(platform: Platform) -> None:
    code = code_of(
        lambda: platform.stub.InstallPackage(upload_requests(b"x", size_bytes=1 << 40, sha256=""))
    )
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_garbage_and_tampered_packages_are_invalid(platform: Platform) -> None:
    assert code_of(
        lambda: platform.stub.InstallPackage(upload_requests(b"not a package" * 100))
    ) == (grpc.StatusCode.INVALID_ARGUMENT)
    data = bytearray((platform.packages / "probe.pkg").read_bytes())
    data[-10] ^= 0xFF  # one flipped payload bit breaks the signature
    with pytest.raises(grpc.RpcError) as info:
        platform.stub.InstallPackage(upload_requests(bytes(data)))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details()


def test_bad_stream_shapes_are_invalid(platform: Platform) -> None:
    assert (
        code_of(lambda: platform.stub.InstallPackage(iter([]))) == grpc.StatusCode.INVALID_ARGUMENT
    )
    chunk_first = iter([pb.InstallPackageRequest(chunk=b"abc")])
    assert code_of(lambda: platform.stub.InstallPackage(chunk_first)) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    meta = pb.InstallPackageRequest(metadata=pb.InstallPackageMetadata(size_bytes=3))
    twice = iter([meta, meta])
    assert code_of(lambda: platform.stub.InstallPackage(twice)) == grpc.StatusCode.INVALID_ARGUMENT


def _app_version(tmp_path: Path, key: object, version: int, name: str) -> Path:
    src = tmp_path / f"src{version}"
    shutil.copytree(HERE / "testapp", src)
    manifest = json.loads((src / "grainhouse.json").read_text())
    manifest["version"] = version
    manifest["title"] = name
    (src / "grainhouse.json").write_text(json.dumps(manifest))
    out = tmp_path / f"v{version}.pkg"
    pack_directory(src, out, key, level=0)  # type: ignore[arg-type]
    return out


def test_upgrade_downgrade_and_uninstall(platform: Platform, tmp_path: Path) -> None:
    key = generate_key()
    v2 = install(platform.stub, _app_version(tmp_path, key, 2, "Versioned"))
    v3 = install(platform.stub, _app_version(tmp_path, key, 3, "Versioned"))
    assert not v2.upgraded and v3.upgraded and v3.app_id == v2.app_id
    v1 = _app_version(tmp_path, key, 1, "Versioned")
    assert code_of(lambda: install(platform.stub, v1)) == grpc.StatusCode.FAILED_PRECONDITION
    old = install(platform.stub, v1, allow_downgrade=True)
    assert not old.package.is_current

    only_current = platform.stub.ListPackages(pb.ListPackagesRequest(app_id=v2.app_id))
    assert [p.version for p in only_current.packages] == [3]
    every = platform.stub.ListPackages(
        pb.ListPackagesRequest(app_id=v2.app_id, include_old_versions=True)
    )
    assert [p.version for p in every.packages] == [3, 2, 1]

    grain = create(platform, v3)
    assert grain.app_version == 3
    refuse = lambda: platform.stub.UninstallPackage(  # noqa: E731
        pb.UninstallPackageRequest(package_id=v3.package_id)
    )
    assert code_of(refuse) == grpc.StatusCode.FAILED_PRECONDITION
    forced = platform.stub.UninstallPackage(
        pb.UninstallPackageRequest(package_id=v3.package_id, force=True)
    )
    assert forced.orphaned_grains == 1
    assert code_of(refuse) == grpc.StatusCode.NOT_FOUND
    orphan = platform.stub.GetGrain(pb.GetGrainRequest(grain_id=grain.grain_id))
    assert orphan.package_id == ""
    platform.stub.UninstallPackage(pb.UninstallPackageRequest(package_id=v2.package_id))
    missing = lambda: platform.stub.GetPackage(  # noqa: E731
        pb.GetPackageRequest(package_id=v2.package_id)
    )
    assert code_of(missing) == grpc.StatusCode.NOT_FOUND
