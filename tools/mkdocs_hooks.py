"""MkDocs hooks (mkdocs.yml ``hooks:``): fill the generated pages from the
tree, and fail a strict build when a module has no docstring."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools.docs_gen import layout, proto_reference

log = logging.getLogger("mkdocs.hooks.imagesearch")


def on_page_markdown(markdown: str, **_: Any) -> str:
    if "<!-- generated: layout -->" in markdown:
        tables, missing = layout()
        for module in missing:
            log.warning("%s has no module docstring: the layout page cannot say what it is", module)
        markdown = markdown.replace("<!-- generated: layout -->", tables)
    if "<!-- generated: protos -->" in markdown:
        markdown = markdown.replace("<!-- generated: protos -->", proto_reference())
    return markdown
