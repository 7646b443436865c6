"""Generate the gRPC stubs in libs/proto/grainhouse_proto from proto/*.proto.

Owns: the generated `*_pb2.py`, `*_pb2.pyi` and `*_pb2_grpc.py` files (never committed,
never edited by hand) and `libs/proto/grainhouse_proto/.stamp` (a hash of the schemas).
Trusts: the .proto files in proto/.
Never: writes anywhere else.

`--check` exits 1 when the generated code is missing or older than the schemas.
"""

from __future__ import annotations

import hashlib
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "proto"
OUT = ROOT / "libs" / "proto" / "grainhouse_proto"
STAMP = OUT / ".stamp"


def schema_hash() -> str:
    digest = hashlib.sha256()
    for path in sorted(SRC.glob("*.proto")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    digest.update(Path(__file__).read_bytes())
    return digest.hexdigest()


def generate() -> None:
    from grpc_tools import protoc  # build-time only dependency

    for old in OUT.glob("*_pb2*.py*"):
        old.unlink()
    protos = sorted(str(p.relative_to(SRC)) for p in SRC.glob("*.proto"))
    include = str(Path(protoc.__file__).parent / "_proto")
    args = [
        "protoc",
        f"-I{SRC}",
        f"-I{include}",
        f"--python_out={OUT}",
        f"--pyi_out={OUT}",
        f"--grpc_python_out={OUT}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    # protoc writes `import common_pb2`; make the imports package-relative.
    local = {p.stem for p in SRC.glob("*.proto")}
    pattern = re.compile(r"^import (" + "|".join(map(re.escape, local)) + r")_pb2", re.M)
    for path in OUT.glob("*_pb2*.py*"):
        text = path.read_text(encoding="utf-8")
        fixed = pattern.sub(r"from grainhouse_proto import \1_pb2", text)
        if fixed != text:
            path.write_text(fixed, encoding="utf-8")
    STAMP.write_text(schema_hash() + "\n", encoding="utf-8")


def main() -> int:
    if "--check" in sys.argv:
        current = STAMP.read_text().strip() if STAMP.exists() else ""
        if current != schema_hash():
            print("generated gRPC code is out of date with proto/: run `make proto`")
            return 1
        return 0
    generate()
    print(f"generated {len(list(OUT.glob('*_pb2_grpc.py')))} gRPC modules into {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
