"""The shape of the code, as anyone can check it: ``python -m tools.code_shape``
prints the longest functions, the largest files and any import circle among
the project's modules (imports at module level; one inside a function is
taken when it runs), and says which are over the limits. Exit 1 when a
function is over FUNCTION_LIMIT or modules import each other in a circle."""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FUNCTION_LIMIT = 100  # lines
FILE_LIMIT = 500  # lines, the services' own modules (a goal: reported, not enforced yet)
PACKAGES = (
    "imagesearch",
    "embedder_service",
    "index_service",
    "gateway",
    "web_service",
    "imgsearch",
    "training",
    "bench",
    "tools",
)
SERVICES = ("embedder_service", "index_service", "gateway", "web_service")


@dataclass(frozen=True)
class Function:
    where: str
    name: str
    lines: int


def sources() -> list[Path]:
    """The project's Python files, generated stubs aside."""
    return [
        p
        for package in PACKAGES
        for p in sorted((ROOT / package).rglob("*.py"))
        if not p.name.endswith(("_pb2.py", "_pb2_grpc.py")) and "node_modules" not in p.parts
    ]


def module_of(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def functions(paths: list[Path]) -> list[Function]:
    found = []
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                size = (node.end_lineno or node.lineno) - node.lineno + 1
                found.append(Function(f"{path.relative_to(ROOT)}:{node.lineno}", node.name, size))
    return sorted(found, key=lambda f: -f.lines)


def imports(paths: list[Path]) -> dict[str, set[str]]:
    """Each module's module-level imports of other project modules."""
    known = {module_of(p) for p in paths}
    graph: dict[str, set[str]] = {}
    for path in paths:
        here = module_of(path)
        targets: set[str] = set()
        for node in ast.parse(path.read_text(), str(path)).body:
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            targets |= {n for n in names if n in known and n != here}
        graph[here] = targets
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def main() -> int:
    paths = sources()
    longest = functions(paths)
    print(f"longest functions (limit {FUNCTION_LIMIT} lines):")
    for f in longest[:10]:
        print(f"  {f.lines:4d}  {f.where} {f.name}")
    sizes = sorted(((len(p.read_text().splitlines()), p) for p in paths), key=lambda x: -x[0])
    print(f"largest files (services' own: goal {FILE_LIMIT} lines):")
    for n, p in sizes[:10]:
        mark = " over" if n > FILE_LIMIT and p.relative_to(ROOT).parts[0] in SERVICES else ""
        print(f"  {n:5d}  {p.relative_to(ROOT)}{mark}")
    over = [f for f in longest if f.lines > FUNCTION_LIMIT]
    loops = circles(imports(paths))
    for group in loops:
        print("import circle: " + " -> ".join(group))
    for f in over:
        print(f"over the limit: {f.where} {f.name} ({f.lines} lines)")
    print("ok" if not over and not loops else "not ok")
    return 1 if over or loops else 0


if __name__ == "__main__":
    sys.exit(main())
