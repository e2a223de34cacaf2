"""The model registry: what each family declares is what its network does,
settings and runners read it, and a new family is one entry away."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from embedder_service import int8
from embedder_service.families import FAMILIES, Family, bundled_image_models, open_model
from embedder_service.model import ComposingRunner, ModelRunner, make_runner, pick_dtype, wants_int8
from embedder_service.settings import EmbedderSettings
from embedder_service.weights import Weights
from imagesearch.cpus import cpu_flags
from imagesearch.settings import SettingsError


def settings(model: str, **overrides: Any) -> EmbedderSettings:
    return EmbedderSettings(
        model=model, weights="random", device="cpu", compile="false", **overrides
    )


@pytest.mark.parametrize("name", list(FAMILIES))
def test_each_family_gives_the_vectors_it_declares(name: str) -> None:
    family = FAMILIES[name]
    runner = make_runner(settings(name))
    assert runner.info.model == name and runner.info.dim == family.dim
    assert isinstance(runner, ComposingRunner) == family.composes == runner.info.composes
    assert runner.info.whole == (family.input_size > 0)
    size = family.input_size or 224
    vectors = runner.embed(np.zeros((2, size, size, 3), dtype=np.uint8))
    assert vectors.shape == (2, family.dim)


def test_the_policies_read_the_registry() -> None:
    assert bundled_image_models() == ["mobilenet_v2", "efficientnet_lite0"]
    # bf16 only where the family stays accurate in it (measured in test_accuracy).
    cpu = torch.device("cpu")
    assert pick_dtype("auto", cpu, bf16_safe=False) == torch.float32
    assert pick_dtype("auto", torch.device("cuda"), bf16_safe=False) == torch.float16
    with pytest.raises(SettingsError, match="efficientnet_lite0 needs a multiple of 32"):
        settings("efficientnet_lite0", image_size=240).validate()
    settings("resnet18", image_size=240).validate()  # no rule for ResNet
    with pytest.raises(SettingsError, match="use one of resnet50, resnet18"):
        settings("resnet101").validate()
    with pytest.raises(ValueError, match="does not compose"):
        make_runner(settings("resnet18")).embed(np.zeros((1, 224, 224, 3), np.uint8), ["red"])


def _tiny(weights: Weights) -> tuple[nn.Module, nn.Module | None]:
    body = nn.Sequential(nn.Conv2d(3, 8, 3, stride=4), nn.BatchNorm2d(8), nn.ReLU())
    if weights.state_dict is not None:
        body.load_state_dict(weights.state_dict)
    return body, None


def test_a_new_family_is_one_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registered, a family is a valid EMBEDDER_MODEL, gets its own model id
    and serves through the same runner, with its declared size rule."""
    tiny = Family("tiny", "a test family, 8-d", 8, _tiny, size_multiple=16, bf16_safe=False)
    monkeypatch.setitem(FAMILIES, "tiny", tiny)
    config = settings("tiny", pooling="gem")
    config.validate()
    runner = make_runner(config)
    assert runner.info.model_id.startswith("tiny/gem/") and runner.info.dim == 8
    assert runner.dtype == torch.float32
    vectors = runner.embed(np.full((3, 224, 224, 3), 100, dtype=np.uint8))
    assert vectors.shape == (3, 8) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0)
    with pytest.raises(SettingsError, match="tiny needs a multiple of 16"):
        settings("tiny", image_size=232).validate()


def test_auto_tries_int8_only_on_cpus_with_vnni_or_amx() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert wants_int8("auto", cpu, True, {"avx2", "avx512f", "avx512_vnni"})
    assert wants_int8("auto", cpu, True, {"avx2", "amx_bf16", "amx_int8", "amx_tile"})
    assert wants_int8("auto", cpu, True, {"avx2", "avx_vnni"})
    assert not wants_int8("auto", cpu, True, {"avx2", "avx512f", "avx512_bf16"})
    assert not wants_int8("auto", cpu, False, {"avx512_vnni"})  # uncompiled: int8 is slow
    assert not wants_int8("auto", cuda, True, {"avx512_vnni"})
    assert not wants_int8("bfloat16", cpu, True, {"amx_int8"})
    assert wants_int8("int8", cpu, True, set())
    # This machine's answer comes from its own flags.
    flags = cpu_flags()
    assert flags, "no CPU flags read from /proc/cpuinfo"
    assert int8.cpu_has_int8_dot() == bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})


def test_int8_settings_refuse_what_cannot_run_int8() -> None:
    base: dict[str, Any] = {"weights": "random", "dtype": "int8"}
    with pytest.raises(SettingsError, match="needs EMBEDDER_COMPILE auto or true"):
        EmbedderSettings(model="resnet50", compile="false", **base).validate()
    with pytest.raises(SettingsError, match="tirg_css does not run in int8"):
        EmbedderSettings(model="tirg_css", **base).validate()
    with pytest.raises(SettingsError, match="use float16 on CUDA"):
        EmbedderSettings(model="resnet50", device="cuda", **base).validate()
    EmbedderSettings(model="resnet50", **base).validate()
    with pytest.raises(SettingsError, match="or int8"):
        EmbedderSettings(model="resnet50", dtype="int4").validate()


@pytest.mark.slow
def test_the_int8_guard_falls_back_where_int8_strays(caplog: pytest.LogCaptureFixture) -> None:
    """MobileNetV2 with its depthwise convolutions in int8 too strays from fp32
    (median cosine ~0.96 on the calibration check photos): the runner says so
    and serves float32, the precision its family keeps on the CPU. As
    registered (depthwise kept in floating point) its cosine passes but it
    keeps too few of its neighbours (0.87): refused too. EfficientNet-Lite0's
    int8 passes both and runs."""
    family, loaded = open_model("mobilenet_v2", "bundled", "none")
    straying = dataclasses.replace(family, int8_depthwise=True)
    runner = ModelRunner(settings("mobilenet_v2", dtype="int8"), straying, loaded)
    assert runner.info.dtype == "float32" and runner.precision == ""
    refused = [r for r in caplog.records if r.getMessage() == "model.int8_refused"]
    assert refused and "loses too much in int8" in str(getattr(refused[0], "fields", {}))
    registered = ModelRunner(settings("mobilenet_v2", dtype="int8"), family, loaded)
    assert registered.info.dtype == "float32"
    refusals = [r for r in caplog.records if r.getMessage() == "model.int8_refused"]
    assert "neighbours kept 0.8" in str(getattr(refusals[-1], "fields", {}))
    lite, lite_loaded = open_model("efficientnet_lite0", "bundled", "none")
    kept = ModelRunner(settings("efficientnet_lite0", dtype="int8"), lite, lite_loaded)
    assert kept.info.dtype == "int8"
    vectors = kept.embed(np.zeros((2, 224, 224, 3), dtype=np.uint8))
    assert vectors.shape == (2, 1280) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-3)
