"""EMBEDDER_DTYPE=int8: static post-training quantization of a trunk for x86
CPUs, through PyTorch's PT2E flow and the X86 Inductor quantizer (torchao).

Convolutions and linear layers get int8 weights (per channel) and int8
activations (per tensor), calibrated on the photos in ``calibration/``; once
compiled, Inductor runs them on oneDNN's int8 kernels, which use VNNI or AMX.
Whatever stays in floating point runs in bf16 where the CPU has it natively.

Calibration is deterministic: the even-numbered files of ``calibration/`` in
name order calibrate, the odd-numbered ones check. The check is the guard,
judged for each model on what it serves: the int8 vectors of the check
photos against the fp32 model's (cosine), and what retrieval sees, each check
photo's ten nearest neighbours among all the calibration photos in int8
against those in fp32. Below either floor the runner falls back to floating
point and says so."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from embedder_service.decode import Decoder
from imagesearch.cpus import cpu_flags

CALIBRATION_DIR = Path(__file__).with_name("calibration")
# The guard: cosine of int8 to fp32 vectors on the check photos.
MEDIAN_FLOOR = 0.98
P5_FLOOR = 0.95
# ... and the mean share of each check photo's 10 nearest calibration photos
# that int8 keeps (MobileNetV2 passed the cosine floors and still lost 0.013
# class P@10 on 400 held-out clothing photos; bench/RESULTS.md).
NEIGHBOURS = 10
OVERLAP_FLOOR = 0.9
# Instructions that execute int8 dot products (VNNI: 4 x int8 per lane; AMX: tiles).
INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def cpu_has_int8_dot(flags: set[str] | None = None) -> bool:
    """The CPU (``flags``: this one's) has VNNI or AMX: int8 dot products at
    twice the bf16 rate or more."""
    return bool((cpu_flags() if flags is None else flags) & set(INT8_FLAGS))


@dataclass(frozen=True)
class Agreement:
    """How close int8 vectors are to fp32 ones on the check photos."""

    median: float
    p5: float
    images: int
    overlap: float = 1.0  # mean top-10 neighbour overlap with fp32

    @property
    def holds(self) -> bool:
        return self.median >= MEDIAN_FLOOR and self.p5 >= P5_FLOOR and self.overlap >= OVERLAP_FLOOR

    def __str__(self) -> str:
        return (
            f"cosine to fp32 median {self.median:.4f}, p5 {self.p5:.4f} on {self.images} "
            f"photos; top-{NEIGHBOURS} neighbours kept {self.overlap:.3f}"
        )


@dataclass(frozen=True)
class Quantized:
    net: nn.Module  # runs eager (slowly: quantize/dequantize in float); compile it
    agreement: Agreement
    seconds: float  # export, calibration and the check


def calibration_photos() -> list[Path]:
    photos = sorted(CALIBRATION_DIR.glob("*.jpg"))
    if len(photos) < 4:
        raise FileNotFoundError(f"int8 calibration photos missing from {CALIBRATION_DIR}")
    return photos


def calibration_batches(decoder: Decoder, channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(calibrate, check): uint8 NCHW batches of the calibration photos,
    preprocessed by ``decoder`` as the embedder preprocesses what it serves."""
    pixels = [decoder.decode(p.read_bytes(), p.name).pixels for p in calibration_photos()]
    memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def batch(arrays: list[np.ndarray]) -> torch.Tensor:
        nchw = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
        return nchw.contiguous(memory_format=memory_format)

    return batch(pixels[0::2]), batch(pixels[1::2])


def _quantizer(depthwise: bool) -> Any:
    """The X86 Inductor quantizer with its default static recipe; with
    ``depthwise`` False, grouped (depthwise) convolutions stay in floating
    point. Imported here: importing it registers Inductor passes."""
    pytree = logging.getLogger("torch.utils._pytree")
    level = pytree.level
    pytree.setLevel(logging.ERROR)  # torchao 0.18 registers an Enum the old way, loudly
    try:
        import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as x86
    finally:
        pytree.setLevel(level)

    class Quantizer(x86.X86InductorQuantizer):
        def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
            model = super().annotate(model)
            if not depthwise:
                for node in model.graph.nodes:
                    if node.target == torch.ops.aten.conv2d.default and _groups(node) > 1:
                        node.meta.pop("quantization_annotation", None)
            return model

    quantizer = Quantizer()
    quantizer.set_global(x86.get_default_x86_inductor_quantization_config())
    return quantizer


def _groups(conv: torch.fx.Node) -> int:
    groups = conv.args[6] if len(conv.args) > 6 else conv.kwargs.get("groups", 1)
    return int(groups) if isinstance(groups, int) else 1


def quantize(
    net: nn.Module,
    calibrate: torch.Tensor,
    check: torch.Tensor,
    depthwise: bool,
    rest_dtype: torch.dtype,
) -> Quantized:
    """``net`` (uint8 NCHW -> vectors) with int8 convolutions and linear
    layers, calibrated on ``calibrate`` and checked against fp32 on ``check``;
    ``rest_dtype``: what the layers left in floating point run in."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    started = time.perf_counter()
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    with torch.no_grad():
        # Strict export records which module or function each node came
        # from, which the quantizer matches its patterns on.
        exported = torch.export.export(
            net, (calibrate[:2],), dynamic_shapes=({0: batch},), strict=True
        ).module()
        prepared = prepare_pt2e(exported, _quantizer(depthwise))
        for start in range(0, len(calibrate), 8):
            prepared(calibrate[start : start + 8])
        quantized = convert_pt2e(prepared)
        agreement = compare(net, quantized, calibrate, check, rest_dtype)
    return Quantized(quantized, agreement, time.perf_counter() - started)


def compare(
    reference: nn.Module,
    quantized: nn.Module,
    calibrate: torch.Tensor,
    check: torch.Tensor,
    rest_dtype: torch.dtype,
) -> Agreement:
    """The check photos' int8 vectors against fp32: cosine, and their top-10
    neighbours among all the calibration photos (each model's own space)."""
    images = torch.cat([check, calibrate])
    with torch.no_grad():
        want = nn.functional.normalize(reference(images).float(), dim=1)
        with torch.autocast("cpu", dtype=rest_dtype, enabled=rest_dtype != torch.float32):
            got = nn.functional.normalize(quantized(images).float(), dim=1)
    n = check.shape[0]
    cosines = (want[:n] * got[:n]).sum(dim=1)
    return Agreement(
        float(cosines.median()),
        float(torch.quantile(cosines, 0.05)),
        n,
        neighbour_overlap(want, got, n),
    )


def neighbour_overlap(want: torch.Tensor, got: torch.Tensor, queries: int) -> float:
    """Mean share of each of the first ``queries`` rows' NEIGHBOURS nearest
    other rows that ``got`` finds as ``want`` does."""
    k = min(NEIGHBOURS, want.shape[0] - 1)
    kept = []
    for vectors in (want, got):
        sims = vectors[:queries] @ vectors.T
        sims[torch.arange(queries), torch.arange(queries)] = -2.0  # not itself
        kept.append(sims.topk(k, dim=1).indices.tolist())
    shared = [len(set(a) & set(b)) / k for a, b in zip(*kept, strict=True)]
    return sum(shared) / len(shared)
