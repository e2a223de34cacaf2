"""The CNN trunk that turns preprocessed images into L2-normalised vectors,
and the runner that owns its device, precision and memory format."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch import nn
from torch.fx.experimental.optimization import fuse

from embedder_service.lite import MEAN as lite_mean
from embedder_service.lite import STD as lite_std
from embedder_service.lite import EfficientNetLite0
from embedder_service.settings import COMPOSED_MODELS, EmbedderSettings
from embedder_service.tirg import checkpoint as composed_checkpoint
from embedder_service.tirg.net import INPUT as COMPOSED_INPUT
from embedder_service.tirg.net import ComposedRetrieval
from embedder_service.weights import Weights, resolve
from imagesearch import logs

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_MEAN_255 = tuple(255.0 * v for v in IMAGENET_MEAN)  # on 0..255 pixels
IMAGENET_STD_255 = tuple(255.0 * v for v in IMAGENET_STD)

# Keys that belong to the classification head we discard; a weights file may
# lack them.
HEAD_PREFIXES = ("fc.", "classifier.", "_fc.")


class GeM(nn.Module):
    """Generalised-mean pooling (Radenović et al.), p=1 is average pooling."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.p = p
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = x.clamp(min=self.eps).pow(self.p).mean(dim=(-2, -1))
        return pooled.pow(1.0 / self.p)


class Trunk(nn.Module):
    """uint8 NCHW images -> normalised float -> features -> pooled vector."""

    def __init__(
        self,
        body: nn.Module,
        pool: nn.Module,
        head: nn.Module | None,
        mean: tuple[float, ...] = IMAGENET_MEAN_255,
        std: tuple[float, ...] = IMAGENET_STD_255,
    ) -> None:
        """``mean``, ``std``: per channel, on 0..255 pixels."""
        super().__init__()
        self.body = body
        self.pool = pool
        self.head = head
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x.float() - self.mean) / self.std
        x = self.pool(self.body(x))
        x = torch.flatten(x, 1)
        if self.head is not None:
            x = self.head(x)
        return x


def _load(net: nn.Module, weights: Weights, model: str) -> None:
    """Loads the weights (if any); only the classification head may be missing."""
    if weights.state_dict is None:
        return
    result = net.load_state_dict(weights.state_dict, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(HEAD_PREFIXES)]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"weights '{weights.source}' do not fit {model}: missing {missing[:5]}, "
            f"unexpected {list(result.unexpected_keys)[:5]}"
        )


def build_network(
    model: str, weights: Weights, pooling: str, gem_p: float
) -> tuple[nn.Module, str]:
    """Returns (trunk, pooling name). Loads weights, checks nothing but the head is missing."""
    if weights.state_dict is None:
        torch.manual_seed(0)  # random init is reproducible across replicas
    pool: nn.Module = GeM(gem_p) if pooling == "gem" else nn.AdaptiveAvgPool2d(1)
    if pooling == "gem" and gem_p != 3.0:
        pooling = f"gem{gem_p:g}"  # another exponent, another vector space
    if model == "efficientnet_lite0":
        lite = EfficientNetLite0()
        _load(lite, weights, model)
        return Trunk(lite.features, pool, None, lite_mean, lite_std), pooling
    net = torchvision.models.get_model(model, weights=None)
    _load(net, weights, model)
    if model.startswith("resnet"):
        body = nn.Sequential(*list(net.children())[:-2])
        return Trunk(body, pool, None), pooling
    if model == "mobilenet_v2":
        return Trunk(net.features, pool, None), pooling
    if model == "vgg16":
        # fc7: the 4096-d output of the second fully connected layer.
        body = nn.Sequential(net.features, net.avgpool)
        head = nn.Sequential(*list(net.classifier.children())[:-1])
        return Trunk(body, nn.Identity(), head), "fc7"
    raise ValueError(f"unsupported model {model}")


def cpu_has_native_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def pick_device(setting: str) -> torch.device:
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(setting)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("EMBEDDER_DEVICE=cuda but torch sees no CUDA device; use auto or cpu")
    return device


# Models whose bf16 vectors drift too far from fp32 (cosine < 0.99 on real
# photos; tests/embedder_service/test_accuracy.py measures it): depthwise
# convolutions lose too much in bf16. tirg_css is small: float32 costs little.
BF16_UNSAFE = frozenset({"mobilenet_v2", "tirg_css"})


def pick_dtype(setting: str, device: torch.device, model: str = "") -> torch.dtype:
    if setting == "float32":
        return torch.float32
    if setting == "bfloat16":
        return torch.bfloat16
    if setting == "float16":
        return torch.float16
    if device.type == "cuda":
        return torch.float16  # 10-bit mantissa: far closer to fp32 than bf16
    if model in BF16_UNSAFE:
        return torch.float32
    return torch.bfloat16 if cpu_has_native_bf16() else torch.float32


@dataclass(frozen=True)
class ModelInfo:
    model: str
    dim: int
    weights: str
    weights_digest: str
    pretrained: bool
    pooling: str
    device: str
    dtype: str
    image_size: int
    note: str
    resize: int = 256
    composes: bool = False  # takes a text with an image (a composed query)
    whole: bool = False  # sees the whole image squashed, not a centre crop

    @property
    def model_id(self) -> str:
        """Identity of the vector space: model, pooling (with a GeM exponent
        other than 3), weights digest and, when not the default 256 -> 224,
        the preprocessing sizes (shorter side, crop): whatever changes the
        vectors changes the id."""
        base = f"{self.model}/{self.pooling}/{self.weights_digest[:12]}"
        if (self.resize, self.image_size) != (256, 224):
            base += f"/{self.resize}-{self.image_size}"
        return base


class CompileFailed(RuntimeError):
    """EMBEDDER_COMPILE=true and the model could not be compiled."""


def compile_for_inference(net: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """torch.compile with Inductor's freezing on: the weights become constants,
    so on the CPU convolutions run on oneDNN with weights prepacked once (the
    model is never trained here). Freezing is a process-wide Inductor option."""
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True
    return torch.compile(net, dynamic=False)


class ModelRunner:
    """Runs batches of preprocessed uint8 images through the trunk."""

    def __init__(self, settings: EmbedderSettings) -> None:
        net: nn.Module
        self.composer: ComposedRetrieval | None = None
        if settings.model in COMPOSED_MODELS:
            # A network trained here on whole 64-px scenes: its own sizes, eager.
            model = settings.model
            self.composer, weights = composed_checkpoint.load(settings.weights)
            net, pooling = self.composer, "flat"
            size, resize = COMPOSED_INPUT, COMPOSED_INPUT
        else:
            model, weights = resolve(settings.model, settings.weights, settings.weights_fallback)
            net, pooling = build_network(model, weights, settings.pooling, settings.gem_p)
            size, resize = settings.image_size, settings.resize
        self.device = pick_device(settings.device)
        self.dtype = pick_dtype(settings.dtype, self.device, model)
        self.channels_last = settings.channels_last
        net = net.eval()
        if settings.fuse_bn and self.composer is None:
            net = fuse(net)  # conv+BatchNorm folded: same results, less work
        net = net.to(self.device)
        if self.channels_last:
            net = net.to(memory_format=torch.channels_last)
        self.eager = net
        self.compile_mode = settings.compile
        self.compiled = settings.compile != "false" and self.composer is None
        self.forward = compile_for_inference(net) if self.compiled else net
        self.max_batch = settings.max_batch
        with torch.inference_mode():
            probe = torch.zeros(1, 3, size, size, dtype=torch.uint8)
            dim = int(net(probe.to(self.device)).shape[1])
        self.info = ModelInfo(
            model=model,
            dim=dim,
            weights=weights.source,
            weights_digest=weights.digest,
            pretrained=weights.pretrained,
            pooling=pooling,
            device=str(self.device),
            dtype=str(self.dtype).removeprefix("torch."),
            image_size=size,
            note=weights.note,
            resize=resize,
            composes=self.composer is not None,
            whole=self.composer is not None,
        )
        logs.event(
            log,
            "model.ready",
            model=model,
            dim=dim,
            weights=weights.source,
            digest=weights.digest[:12],
            device=self.info.device,
            dtype=self.info.dtype,
            compile=settings.compile,
            buckets=",".join(map(str, self.buckets())) if self.compiled else "any",
            pretrained=weights.pretrained,
        )
        if not weights.pretrained:
            logs.event(
                log,
                "model.random_init",
                logging.WARNING,
                note="random weights: vectors are meaningless, use only for shape and speed tests",
            )

    def buckets(self) -> list[int]:
        """Batch sizes the model runs at when compiled (graphs are specialised
        on shape): 1, max_batch/4 and max_batch. Eager runs any size."""
        return sorted({1, max(1, self.max_batch // 4), self.max_batch})

    def _bucket(self, n: int) -> int:
        if not self.compiled:
            return n
        return next((b for b in self.buckets() if b >= n), n)

    def text_problem(self, text: str) -> str:
        """Why ``text`` cannot go with an image here ('' when it can); for a
        composing model only (``info.composes``)."""
        assert self.composer is not None, "only a composing model reads texts"
        return composed_checkpoint.text_problem(self.composer, text)

    def embed(self, images: np.ndarray, texts: Sequence[str] = ()) -> np.ndarray:
        """(N, H, W, 3) uint8 -> (N, dim) float32, unit L2 norm. ``texts``:
        one per image ('' for none), for a composing model only."""
        n = images.shape[0]
        batch = torch.from_numpy(images).permute(0, 3, 1, 2)  # NHWC view -> NCHW
        padded = self._bucket(n)
        if padded > n:
            pad = torch.zeros((padded - n, *batch.shape[1:]), dtype=batch.dtype)
            batch = torch.cat([batch, pad])
        if self.device.type == "cuda":
            batch = batch.contiguous().pin_memory().to(self.device, non_blocking=True)
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        batch = batch.contiguous(memory_format=memory_format)
        with (
            torch.inference_mode(),
            torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32),
        ):
            if self.composer is not None and any(texts):
                out = self.composer.embed(batch, list(texts))
            else:
                out = self._run(batch)
        out = torch.nn.functional.normalize(out[:n].float(), dim=1)
        return out.cpu().numpy()

    def _run(self, batch: torch.Tensor) -> torch.Tensor:
        if not self.compiled:
            return self.forward(batch)
        try:
            return self.forward(batch)
        except Exception as exc:  # compiling failed: no C++ compiler, unsupported op, ...
            reason = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:300]}"
            if self.compile_mode == "true":
                raise CompileFailed(
                    f"EMBEDDER_COMPILE=true, but torch.compile failed ({reason}); set "
                    "EMBEDDER_COMPILE=auto to fall back to eager, or false"
                ) from exc
            # EMBEDDER_COMPILE=auto: a model that runs eager beats one that does not run.
            logs.event(
                log,
                "model.compile_failed",
                logging.WARNING,
                error=reason,
                note="running eager from now on (set EMBEDDER_COMPILE=false to skip the attempt)",
            )
            self.forward = self.eager
            self.compiled = False
            return self.forward(batch)

    def warm_up(self) -> float:
        """Runs every batch shape once (compiling them when EMBEDDER_COMPILE is
        on), so the first requests do not pay for it; returns seconds taken."""
        started = time.perf_counter()
        size = self.info.image_size
        for n in self.buckets() if self.compiled else [1, self.max_batch]:
            self.embed(np.zeros((n, size, size, 3), dtype=np.uint8))
        return time.perf_counter() - started
