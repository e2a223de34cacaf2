"""The project's own functions stay short enough to read in one screen or
two: none over 100 lines (benchmarks and tools included; tests and
generated stubs aside)."""

from __future__ import annotations

import ast

from tests.conftest import ROOT


def test_no_function_is_over_the_limit_and_no_import_circle() -> None:
    """What ``python -m tools.code_shape`` checks: tests and generated code
    aside, no function over 100 lines; no modules importing each other."""
    from tools.code_shape import FUNCTION_LIMIT, circles, functions, imports, sources

    paths = sources()
    assert any(p.name == "servicer.py" for p in paths)
    assert any(p.parts[-2:] == ("bench", "search.py") for p in paths)
    long = [
        f"{f.where} {f.name} ({f.lines} lines)"
        for f in functions(paths)
        if f.lines > FUNCTION_LIMIT
    ]
    assert long == [], "split these along their phases"
    assert circles(imports(paths)) == []
    # The circle finder finds one.
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


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
