"""Rewrites the configuration tables in docs/configuration.md from the settings
classes (``make config-tables``); tests/test_docs.py fails when they disagree."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from embedder_service.settings import EmbedderSettings  # noqa: E402
from gateway.settings import GatewaySettings  # noqa: E402
from imagesearch.settings import settings_table  # noqa: E402
from index_service.settings import IndexSettings  # noqa: E402
from web_service.settings import WebSettings  # noqa: E402

SECTIONS = [
    ("Embedder (`python -m embedder_service`)", EmbedderSettings, "EMBEDDER_"),
    ("Index (`python -m index_service`)", IndexSettings, "INDEX_"),
    ("Gateway (`python -m gateway`)", GatewaySettings, "GATEWAY_"),
    ("Web face (`python -m web_service`)", WebSettings, "WEB_"),
]
START = "\n**Embedder (`python -m embedder_service`)**"
END = "\n## Pointing at a real Milvus"


def row(env: str, default: str, help_text: str) -> str:
    return f"| `{env}` | `{default}` | {help_text} |".replace("``", "(empty)")


def tables() -> str:
    out = []
    for title, cls, prefix in SECTIONS:
        out.append(f"\n**{title}**\n\n| variable | default | meaning |\n|---|---|---|")
        out += [row(*r) for r in settings_table(cls, prefix)]
    return "\n".join(out) + "\n"


def main() -> int:
    page = ROOT / "docs" / "configuration.md"
    text = page.read_text()
    start, end = text.index(START), text.index(END)
    page.write_text(text[:start] + tables() + text[end:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
