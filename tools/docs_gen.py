"""Pages of the docs site made from the tree at build time (tools/mkdocs_hooks.py):
the layout, from each module's docstring, and the gRPC reference, from the
protos' comments. Neither can go stale: they are read afresh on every
``make docs``."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = (
    "imagesearch",
    "imgsearch",
    "embedder_service",
    "index_service",
    "gateway",
    "web_service",
    "training",
    "bench",
    "tools",
)
SKIP_DIRS = {"__pycache__", "node_modules", "static", "calibration"}


def first_paragraph(text: str) -> str:
    """The docstring's first paragraph, on one line (markdown-table safe)."""
    return " ".join(text.split("\n\n")[0].split()).replace("|", "\\|")


def module_summary(path: Path) -> str | None:
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
    return first_paragraph(doc) if doc else None


def modules(package: Path) -> Iterator[Path]:
    """The package's hand-written modules, depth first, generated stubs left out."""
    for path in sorted(package.iterdir()):
        if path.is_dir() and path.name not in SKIP_DIRS and (path / "__init__.py").exists():
            yield from modules(path)
        elif path.suffix == ".py" and "_pb2" not in path.name:
            yield path


def layout(root: Path = ROOT) -> tuple[str, list[str]]:
    """The layout page's tables, and the modules that have no docstring."""
    out: list[str] = []
    missing: list[str] = []
    for name in PACKAGES:
        package = root / name
        init = package / "__init__.py"
        title = module_summary(init) if init.exists() else None
        out += [f"## `{name}/`", "", title or "", "", "| module | what it is |", "|---|---|"]
        for path in modules(package):
            rel = path.relative_to(root).as_posix()
            summary = module_summary(path)
            if summary is None:
                missing.append(rel)
            if path.name == "__init__.py" and path.parent == package:
                continue
            out.append(f"| `{rel}` | {summary or '**(no docstring)**'} |")
        out.append("")
    return "\n".join(out), missing


# --- the protos -------------------------------------------------------------

RPC = re.compile(
    r"rpc\s+(\w+)\s*\(\s*(stream\s+)?(\w+)\s*\)\s*returns\s*\(\s*(stream\s+)?(\w+)\s*\)"
)
FIELD = re.compile(r"^(repeated |optional )?([\w.]+)\s+(\w+)\s*=\s*(\d+)")
ENUM_VALUE = re.compile(r"^(\w+)\s*=\s*(\d+)")
BLOCK = re.compile(r"^(service|message|enum|oneof)\s+(\w+)\s*\{")


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def proto_file(path: Path) -> str:
    """One proto file as markdown: its header comment, services, messages and enums."""
    out: list[str] = []
    comment: list[str] = []
    header: list[str] = []
    stack: list[tuple[str, str]] = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line.startswith("//"):
            comment.append(line[2:].strip())
            continue
        if not stack and line.startswith("syntax"):
            header, comment = comment, []
            continue
        code, _, trailing = line.partition("//")
        code = code.strip()
        note = _cell(" ".join([*comment, trailing.strip()]))
        comment = []
        if match := BLOCK.match(code):
            kind, name = match.groups()
            if kind != "oneof" and not any(k == "message" for k, _ in stack):
                heading = "###" if kind == "service" else "####"
                out += ["", f"{heading} {kind} `{name}`", *(["", note] if note else [])]
                out += {
                    "service": ["", "| RPC | request → response | |", "|---|---|---|"],
                    "message": ["", "| field | type | # | |", "|---|---|---|---|"],
                    "enum": ["", "| value | # | |", "|---|---|---|"],
                }[kind]
            stack.append((kind, name))
        elif code.startswith("}"):
            stack.pop() if stack else None
        elif stack and (rpc := RPC.search(code)):
            name, s_in, req, s_out, resp = rpc.groups()
            arrow = f"{'stream ' if s_in else ''}`{req}` → {'stream ' if s_out else ''}`{resp}`"
            out.append(f"| `{name}` | {arrow} | {note} |")
        elif stack and stack[-1][0] == "enum" and (value := ENUM_VALUE.match(code)):
            out.append(f"| `{value.group(1)}` | {value.group(2)} | {note} |")
        elif stack and (field := FIELD.match(code)):
            label, type_, name, number = field.groups()
            oneof = f" (oneof `{stack[-1][1]}`)" if stack[-1][0] == "oneof" else ""
            out.append(f"| `{name}` | {label or ''}`{type_}` | {number} | {note}{oneof} |")
    title = f"## `{path.relative_to(ROOT).as_posix()}`"
    return "\n".join([title, "", _cell(" ".join(header)), *out, ""])


def proto_reference(root: Path = ROOT) -> str:
    files = sorted((root / "protos" / "imagesearch" / "v1").glob("*.proto"))
    order = {"gateway.proto": 0, "common.proto": 1, "embedder.proto": 2, "index.proto": 3}
    return "\n".join(proto_file(p) for p in sorted(files, key=lambda p: order.get(p.name, 9)))
