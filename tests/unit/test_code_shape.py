"""The project's own functions stay short enough to read in one screen or
two: none over 100 lines (benchmarks and tools included; tests and
generated stubs aside)."""

from __future__ import annotations

import ast

from tests.conftest import ROOT

LIMIT = 100
SKIP = {".venv", "tests", "node_modules", "build", "data"}


def test_no_function_is_over_100_lines() -> None:
    long = []
    files = [p for p in ROOT.rglob("*.py") if not SKIP & set(p.relative_to(ROOT).parts)]
    assert any(p.name == "servicer.py" for p in files)
    assert any(p.parts[-2:] == ("bench", "search.py") for p in files)
    for path in files:
        if path.name.endswith(("_pb2.py", "_pb2_grpc.py")):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                size = (node.end_lineno or node.lineno) - node.lineno + 1
                if size > LIMIT:
                    long.append(
                        f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({size} lines)"
                    )
    assert long == [], "split these along their phases"


def test_serving_never_imports_training() -> None:
    """Training (training/) ships in no image: no serving package imports it."""
    serving = ("imagesearch", "embedder_service", "index_service", "gateway", "web_service")
    found = []
    for package in serving:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names = (
                    [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else [node.module or ""]
                    if isinstance(node, ast.ImportFrom)
                    else []
                )
                found += [
                    f"{path.relative_to(ROOT)}: {n}" for n in names if n.startswith("training")
                ]
    assert found == []
