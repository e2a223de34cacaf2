"""Generates the Python stubs in imagesearch/v1 from protos/ (``make proto``).

``python -m imagesearch.protogen`` writes them; ``--check`` only reports
whether the checked-in files differ from freshly generated ones.
"""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "protos"
PACKAGE_DIR = ROOT / "imagesearch" / "v1"


def proto_files() -> list[Path]:
    return sorted((PROTO_DIR / "imagesearch" / "v1").glob("*.proto"))


def generate(out_dir: Path) -> list[Path]:
    """Runs protoc into out_dir; returns the generated files (relative paths)."""
    import grpc_tools
    from grpc_tools import protoc  # dev dependency, only needed here

    include = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_DIR}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--pyi_out={out_dir}",
        *[str(p.relative_to(PROTO_DIR)) for p in proto_files()],
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed; see the messages above")
    gen = out_dir / "imagesearch" / "v1"
    return sorted(p.relative_to(gen) for p in gen.iterdir() if p.is_file())


def stale_files() -> list[str]:
    """Names of stub files that are missing, extra or differ from protos/."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        gen = Path(tmp) / "imagesearch" / "v1"
        stale = [
            str(rel)
            for rel in fresh
            if not (PACKAGE_DIR / rel).exists()
            or not filecmp.cmp(gen / rel, PACKAGE_DIR / rel, shallow=False)
        ]
        fresh_names = {str(rel) for rel in fresh}
        stale += [
            p.name
            for p in PACKAGE_DIR.iterdir()
            if p.name.endswith(("_pb2.py", "_pb2_grpc.py", "_pb2.pyi"))
            and p.name not in fresh_names
        ]
        return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="only report stale stubs")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files()
        if stale:
            print("stale generated stubs (run `make proto`): " + ", ".join(stale))
            return 1
        print("generated stubs are up to date")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        files = generate(Path(tmp))
        for old in PACKAGE_DIR.glob("*_pb2*.py*"):
            old.unlink()
        for rel in files:
            src = Path(tmp) / "imagesearch" / "v1" / rel
            (PACKAGE_DIR / rel).write_bytes(src.read_bytes())
    print(f"wrote {len(files)} files to {PACKAGE_DIR.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
