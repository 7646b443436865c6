"""Fixtures for the contract tests: the repository's proto/ directory and a fresh compilation of it.

Owns: a temporary output directory per test session (generated modules, a descriptor set).
Trusts: grpc_tools.protoc from the venv; the files in proto/.
Never: writes into the repository (the real stubs are built by `make proto` into libs/proto).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

PROTO_DIR = Path(__file__).resolve().parents[3] / "proto"


@dataclass(frozen=True)
class CompiledProtos:
    """What one protoc run over proto/*.proto produced."""

    out_dir: Path
    proto_files: tuple[Path, ...]
    # The files as protoc understood them, with comments (SourceCodeInfo) kept.
    descriptors: descriptor_pb2.FileDescriptorSet


def run_protoc(args: list[str]) -> int:
    """Run protoc in-process, the way `make proto` runs it as `python -m grpc_tools.protoc`."""
    # Imported here so collecting other tests never pays for grpc_tools.
    import grpc_tools
    from grpc_tools import protoc

    # protoc needs the well-known types (google/protobuf/timestamp.proto) that grpc_tools ships.
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    return int(protoc.main(["protoc", f"-I{PROTO_DIR}", f"-I{well_known}", *args]))


@pytest.fixture(scope="session")
def proto_dir() -> Path:
    return PROTO_DIR


@pytest.fixture(scope="session")
def compiled_protos(tmp_path_factory: pytest.TempPathFactory) -> CompiledProtos:
    out_dir = tmp_path_factory.mktemp("proto_out")
    files = tuple(sorted(PROTO_DIR.glob("*.proto")))
    assert files, f"no .proto files in {PROTO_DIR}"
    descriptor_file = out_dir / "descriptors.pb"
    rc = run_protoc(
        [
            f"--python_out={out_dir}",
            f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            f"--descriptor_set_out={descriptor_file}",
            "--include_source_info",
            *(str(f) for f in files),
        ]
    )
    assert rc == 0, "protoc failed; its messages are in the captured stderr above"
    descriptors = descriptor_pb2.FileDescriptorSet()
    descriptors.ParseFromString(descriptor_file.read_bytes())
    return CompiledProtos(out_dir=out_dir, proto_files=files, descriptors=descriptors)


@pytest.fixture(scope="session")
def python_executable() -> str:
    return sys.executable
