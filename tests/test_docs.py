"""The docs say what the code does: the configuration tables match the
settings classes, the README stays a front page whose links resolve, and the
pages made from the tree describe every module and RPC. (`make docs` builds
the whole site with --strict in CI: links and anchors between pages.)"""

from __future__ import annotations

import re

import pytest

from embedder_service.settings import EmbedderSettings
from gateway.settings import GatewaySettings
from imagesearch.settings import settings_table
from index_service.settings import IndexSettings
from tests.conftest import ROOT
from tools.docs_gen import layout, proto_reference
from web_service.settings import WebSettings


@pytest.mark.parametrize(
    "cls, prefix",
    [
        (EmbedderSettings, "EMBEDDER_"),
        (IndexSettings, "INDEX_"),
        (GatewaySettings, "GATEWAY_"),
        (WebSettings, "WEB_"),
    ],
)
def test_every_setting_is_documented_with_its_default(cls: type, prefix: str) -> None:
    page = (ROOT / "docs" / "configuration.md").read_text()
    for env, default, help_text in settings_table(cls, prefix):
        row = f"| `{env}` | `{default}` | {help_text} |".replace("``", "(empty)")
        assert row in page, (
            f"docs/configuration.md lacks or misstates {env}; run `make config-tables`"
        )


def test_the_readme_is_a_front_page_whose_links_resolve() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme)
    local = [link for link in links if "://" not in link]
    assert "docs/getting-started.md" in local
    missing = [link for link in local if not (ROOT / link).exists()]
    assert missing == []


def test_the_layout_page_names_every_module_from_its_docstring() -> None:
    tables, missing = layout()
    assert missing == []
    assert "| `index_service/row_cache.py` |" in tables
    assert "_pb2" not in tables  # generated stubs are not the layout


def test_the_grpc_reference_lists_every_rpc_of_the_protos() -> None:
    reference = proto_reference()
    for proto in (ROOT / "protos" / "imagesearch" / "v1").glob("*.proto"):
        for rpc in re.findall(r"^\s*rpc\s+(\w+)", proto.read_text(), flags=re.M):
            assert f"| `{rpc}` |" in reference, rpc
    assert "| `image_id` | `int64` | 2 |" in reference  # Query's oneof member, typed
