"""The CNN trunk that turns preprocessed images into L2-normalised vectors,
and the runner that owns its device, precision and memory format."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch.fx.experimental.optimization import fuse

from embedder_service import int8
from embedder_service.clip import ClipImage
from embedder_service.decode import Decoder
from embedder_service.families import Family, Loaded, open_model
from embedder_service.settings import EmbedderSettings
from embedder_service.text import TextSide
from embedder_service.text.clip_text import ClipText
from embedder_service.text.conse import ClassifierWeights, ConseText
from embedder_service.tirg import checkpoint as composed_checkpoint
from embedder_service.tirg.net import ComposedRetrieval
from embedder_service.weights import WeightsUnavailable
from imagesearch import logs
from imagesearch.cpus import cpu_flags

log = logging.getLogger(__name__)


def cpu_has_native_bf16() -> bool:
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def pick_device(setting: str) -> torch.device:
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(setting)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("EMBEDDER_DEVICE=cuda but torch sees no CUDA device; use auto or cpu")
    return device


def wants_int8(
    setting: str, device: torch.device, compiles: bool, flags: set[str] | None = None
) -> bool:
    """EMBEDDER_DTYPE=int8, or auto on a CPU with VNNI or AMX (``flags``: this
    CPU's) when the model is compiled (int8 is fast only once Inductor lowers
    it to oneDNN). Whether int8 then stays is the guard's call."""
    if setting == "int8":
        return True
    if setting != "auto" or device.type != "cpu" or not compiles:
        return False
    return int8.cpu_has_int8_dot(flags)


def pick_dtype(setting: str, device: torch.device, bf16_safe: bool = True) -> torch.dtype:
    """EMBEDDER_DTYPE other than int8; auto: float16 on CUDA, else bfloat16
    where the CPU has it natively and the family stays accurate in it
    (``Family.bf16_safe``)."""
    if setting == "float32":
        return torch.float32
    if setting == "bfloat16":
        return torch.bfloat16
    if setting == "float16":
        return torch.float16
    if device.type == "cuda":
        return torch.float16  # 10-bit mantissa: far closer to fp32 than bf16
    if not bf16_safe:
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
    text_dim: int = 0  # > 0: search by words (EmbedText; text vectors with images)
    text_model_id: str = ""  # identity of the text space

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


def compile_for_inference(
    net: torch.nn.Module, mode: str = "default"
) -> Callable[[torch.Tensor], torch.Tensor]:
    """torch.compile with Inductor's freezing on: the weights become constants,
    so on the CPU convolutions run on oneDNN with weights prepacked once (the
    model is never trained here). Freezing is a process-wide Inductor option.
    ``mode``: torch.compile's (reduce-overhead: CUDA graphs on a GPU)."""
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True
    return torch.compile(net, dynamic=False, mode=mode)


class ModelRunner:
    """Runs batches of preprocessed uint8 images through an image family's
    trunk: device, precision, memory format, folded BatchNorm, compiling."""

    fuses_bn = True  # conv+BatchNorm folded: same results, less work
    compiles = True  # EMBEDDER_COMPILE applies

    def __init__(self, settings: EmbedderSettings, family: Family, loaded: Loaded) -> None:
        weights = loaded.weights
        size, resize = settings.image_size, settings.resize
        if family.input_size:
            size = resize = family.input_size
        self.device = pick_device(settings.device)
        fallback = "auto" if settings.dtype == "int8" else settings.dtype
        self.dtype = pick_dtype(fallback, self.device, family.bf16_safe)
        self.precision = ""  # "int8" once quantized; self.dtype is then the rest's
        self.channels_last = settings.channels_last
        net = loaded.net.eval()
        if settings.fuse_bn and self.fuses_bn:
            net = fuse(net)
        net = net.to(self.device)
        if self.channels_last:
            net = net.to(memory_format=torch.channels_last)
        self.compile_mode = settings.compile
        self.compiled = settings.compile != "false" and self.compiles
        self.eager = net  # what runs when compiling fails: the float model, in self.float_dtype
        self.float_dtype = self.dtype
        quantized = None
        if self.compiles and wants_int8(settings.dtype, self.device, self.compiled):
            quantized = self._int8(net, settings, family, size, resize)
        model = net if quantized is None else quantized
        self.forward = (
            compile_for_inference(model, settings.compile_mode) if self.compiled else model
        )
        self.max_batch = settings.max_batch
        with torch.inference_mode():
            probe = torch.zeros(1, 3, size, size, dtype=torch.uint8)
            dim = int(net(probe.to(self.device)).shape[1])
        self.info = ModelInfo(
            model=family.name,
            dim=dim,
            weights=weights.source,
            weights_digest=weights.digest,
            pretrained=weights.pretrained,
            pooling=loaded.pooling,
            device=str(self.device),
            dtype=self.precision or str(self.dtype).removeprefix("torch."),
            image_size=size,
            note=weights.note,
            resize=resize,
            composes=family.composes,
            whole=family.input_size > 0,
        )
        self.text = None if settings.text == "off" else text_side(family, loaded, self.info)
        if self.text is not None:
            self.text.to(self.device)
            self.info = replace(self.info, text_dim=self.text.dim, text_model_id=self.text.model_id)
        logs.event(
            log,
            "model.ready",
            model=family.name,
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

    def _int8(
        self,
        net: torch.nn.Module,
        settings: EmbedderSettings,
        family: Family,
        size: int,
        resize: int,
    ) -> torch.nn.Module | None:
        """``net`` quantized to int8 when the guard holds; else None (``net``
        then runs in self.dtype), and the log says why."""
        if self.device.type != "cpu":
            raise ValueError(
                f"EMBEDDER_DTYPE=int8 runs on x86 CPUs; the model is on {self.device} "
                "(use float16 there, or EMBEDDER_DEVICE=cpu)"
            )
        if not int8.cpu_has_int8_dot():
            logs.event(
                log,
                "model.int8_slow",
                logging.WARNING,
                note="this CPU has neither VNNI nor AMX: int8 runs, but slower than bfloat16",
            )
        rest = torch.bfloat16 if cpu_has_native_bf16() else torch.float32
        decoder = Decoder(settings.max_pixels, resize, size, whole=family.input_size > 0)
        calibrate, check = int8.calibration_batches(decoder, self.channels_last)
        result = int8.quantize(net, calibrate, check, family.int8_depthwise, rest)
        if not result.agreement.holds:
            logs.event(
                log,
                "model.int8_refused",
                logging.WARNING,
                model=family.name,
                agreement=str(result.agreement),
                note=f"{family.name} loses too much in int8 (floors: median "
                f"{int8.MEDIAN_FLOOR}, p5 {int8.P5_FLOOR}, neighbours kept "
                f"{int8.OVERLAP_FLOOR}); running "
                f"{str(self.dtype).removeprefix('torch.')} instead",
            )
            return None
        logs.event(
            log,
            "model.int8",
            model=family.name,
            agreement=str(result.agreement),
            rest=str(rest).removeprefix("torch."),
            depthwise=family.int8_depthwise,
            seconds=round(result.seconds, 1),
        )
        self.dtype, self.precision = rest, "int8"
        return result.net

    def buckets(self) -> list[int]:
        """Batch sizes the model runs at when compiled (graphs are specialised
        on shape): 1, max_batch/4 and max_batch. Eager runs any size."""
        return sorted({1, max(1, self.max_batch // 4), self.max_batch})

    def padded_sizes(self) -> list[int]:
        """The sizes a batch is padded up to now: the buckets while the model
        runs compiled, none (any size runs as it is) when eager."""
        return self.buckets() if self.compiled else []

    def _bucket(self, n: int) -> int:
        return next((b for b in self.padded_sizes() if b >= n), n)

    def embed(self, images: np.ndarray | torch.Tensor, texts: Sequence[str] = ()) -> np.ndarray:
        """(N, H, W, 3) uint8 -> (N, dim) float32, unit L2 norm. ``texts``:
        one per image ('' for none), for a composing model only."""
        return self.embed_with_text(images, texts)[0]

    def embed_with_text(
        self, images: np.ndarray | torch.Tensor, texts: Sequence[str] = ()
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """``embed``, and with a text side (``self.text``) each image's vector
        in the text space too, from the same features (None without one).
        ``images``: (N, H, W, 3) uint8 on the host, or (N, 3, H, W) uint8
        already on the model's device (the device decoder's batches)."""
        if any(texts) and not self.info.composes:
            raise ValueError(f"{self.info.model} does not compose: it takes no text")
        n = images.shape[0]
        on_host = isinstance(images, np.ndarray)
        batch: torch.Tensor = (
            torch.from_numpy(images).permute(0, 3, 1, 2)  # NHWC view -> NCHW
            if isinstance(images, np.ndarray)
            else images
        )
        padded = self._bucket(n)
        if padded > n:
            pad = batch.new_zeros((padded - n, *batch.shape[1:]))
            batch = torch.cat([batch, pad])
        if on_host and self.device.type == "cuda":
            batch = batch.contiguous().pin_memory().to(self.device, non_blocking=True)
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        batch = batch.contiguous(memory_format=memory_format)
        with (
            torch.inference_mode(),
            torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32),
        ):
            out = self._model(batch, texts)
        pooled = out[:n].float()
        text = None if self.text is None else self.text.image_vectors(pooled)
        return torch.nn.functional.normalize(pooled, dim=1).cpu().numpy(), text

    def _model(self, batch: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        return self._run(batch)

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
            if self.precision == "int8":  # int8 uncompiled is slower than float: not that
                self.dtype, self.precision = self.float_dtype, ""
                self.info = replace(self.info, dtype=str(self.dtype).removeprefix("torch."))
                logs.event(log, "model.int8_dropped", logging.WARNING, dtype=self.info.dtype)
            float32 = self.dtype == torch.float32
            with torch.autocast(self.device.type, dtype=self.dtype, enabled=not float32):
                return self.forward(batch)

    def warm_up(self) -> float:
        """Runs every batch shape once (compiling them when EMBEDDER_COMPILE is
        on), so the first requests do not pay for it; returns seconds taken."""
        started = time.perf_counter()
        size = self.info.image_size
        for n in self.buckets() if self.compiled else [1, self.max_batch]:
            self.embed(np.zeros((n, size, size, 3), dtype=np.uint8))
        return time.perf_counter() - started


class ComposingRunner(ModelRunner):
    """A composing family (``Family.composes``): the same batches, and with
    each image a text ('' for none) that the network composes with it. Trained
    here on whole 64-px scenes: no BatchNorm folding, no compiling."""

    fuses_bn = False
    compiles = False

    def __init__(self, settings: EmbedderSettings, family: Family, loaded: Loaded) -> None:
        if not isinstance(loaded.net, ComposedRetrieval):
            raise TypeError(f"{family.name}: a composing runner needs a ComposedRetrieval")
        self.composer = loaded.net
        super().__init__(settings, family, loaded)

    def text_problem(self, text: str) -> str:
        """Why ``text`` cannot go with an image here ('' when it can)."""
        return composed_checkpoint.text_problem(self.composer, text)

    def _model(self, batch: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        if any(texts):
            return self.composer.embed(batch, list(texts))
        return self._run(batch)


def text_side(family: Family, loaded: Loaded, info: ModelInfo) -> TextSide | None:
    """Search by words for this model: CLIP's own text tower, or ConSE over
    its ImageNet classifier; None where it cannot: no classifier in the
    family or the weights, or the sentence encoder missing (logged: searches
    by words then answer FAILED_PRECONDITION, images are served as ever)."""
    weights = loaded.weights
    body = getattr(loaded.net, "body", None)
    if isinstance(body, ClipImage):
        folder = Path(weights.source)
        return ClipText(body, folder, info.model_id) if folder.is_dir() else None
    keys = family.classifier
    sd = weights.state_dict
    if keys is None or sd is None or not weights.pretrained or not set(keys) <= sd.keys():
        return None
    try:
        return ConseText(ClassifierWeights(sd[keys[0]], sd[keys[1]]), info.model_id)
    except WeightsUnavailable as exc:
        logs.event(log, "text.unavailable", logging.WARNING, model=family.name, reason=str(exc))
        return None


def make_runner(settings: EmbedderSettings) -> ModelRunner:
    """The runner for EMBEDDER_MODEL, chosen once: its family from the
    registry, its weights loaded (or the fallback's, when allowed)."""
    family, loaded = open_model(
        settings.model,
        settings.weights,
        settings.weights_fallback,
        settings.pooling,
        settings.gem_p,
    )
    runner = ComposingRunner if family.composes else ModelRunner
    return runner(settings, family, loaded)
