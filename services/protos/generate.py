"""Generate the Python stubs of SigDL's gRPC contract: one script, run by `make protos`.

    python -m services.protos.generate              # rewrite the committed *_pb2*.py
    python -m services.protos.generate --out DIR    # write them under DIR instead (stale check)

The protos are compiled with the repository root as the import root, so the generated modules
import each other as ``services.protos.sigdl.v1.common_pb2``: our core package is also named
``sigdl``, and a bare ``from sigdl.v1 import ...`` would resolve to it.
"""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PROTO_DIR = Path("services/protos/sigdl/v1")  # relative to REPO, the import root


def proto_files() -> list[Path]:
    return sorted((REPO / PROTO_DIR).glob("*.proto"))


def generate(out: Path) -> list[Path]:
    """Compile every proto into `out` (the tree mirrors the repository); return the files."""
    from grpc_tools import protoc  # the dev extra's: only `make protos` needs it

    out.mkdir(parents=True, exist_ok=True)
    well_known = resources.files("grpc_tools") / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{REPO}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        *(str(p.relative_to(REPO)) for p in proto_files()),
    ]
    if protoc.main(args) != 0:
        raise SystemExit(f"protoc failed on {PROTO_DIR}")
    return sorted((out / PROTO_DIR).glob("*_pb2*.py"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO, help="root to write the tree under")
    args = parser.parse_args(argv)
    for path in generate(args.out.resolve()):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
