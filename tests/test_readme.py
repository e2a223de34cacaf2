"""The README's configuration tables say what the code does."""

from __future__ import annotations

import pytest

from embedder_service.settings import EmbedderSettings
from gateway.settings import GatewaySettings
from imagesearch.settings import settings_table
from index_service.settings import IndexSettings
from tests.conftest import ROOT
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
    readme = (ROOT / "README.md").read_text()
    for env, default, help_text in settings_table(cls, prefix):
        row = f"| `{env}` | `{default}` | {help_text} |".replace("``", "(empty)")
        assert row in readme, f"README lacks or misstates {env}; run `make docs`"
