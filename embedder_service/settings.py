"""Embedder settings: env ``EMBEDDER_*``, flags ``--name`` override."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from embedder_service.families import FAMILIES
from imagesearch.cpus import available_cpus
from imagesearch.formats import PHOTO_FORMATS, allowed, registered
from imagesearch.settings import ServerSettings, SettingsError, server_field


@dataclass(frozen=True)
class EmbedderSettings(ServerSettings):
    env_prefix: ClassVar[str] = "EMBEDDER_"
    port: int = server_field("port", 50052)
    rpc_workers: int = server_field("rpc_workers", 32)
    max_message_mb: int = server_field("max_message_mb", 128)
    model: str = field(
        default="resnet50",
        metadata={"help": "; ".join(f"{f.name} ({f.summary})" for f in FAMILIES.values())},
    )
    weights: str = field(
        default="imagenet",
        metadata={
            "help": "imagenet (torchvision cache or download), bundled (the ImageNet weights "
            "a pinned package ships: mobilenet_v2, efficientnet_lite0), random (speed/shape "
            "tests only), or a path to a state-dict file. For tirg_css: imagenet or bundled "
            "is the checkpoint trained here, or a file its training script wrote"
        },
    )
    weights_fallback: str = field(
        default="none",
        metadata={
            "help": "what to do when imagenet weights cannot be had: none (fail with the "
            "ways out) or bundled (switch to efficientnet_lite0 + bundled weights, logged "
            "loudly)"
        },
    )
    image_formats: tuple[str, ...] = field(
        default=PHOTO_FORMATS,
        metadata={
            "help": "the only image formats decoded (Pillow names); bytes of any other "
            "format, whatever the file name, are refused INVALID_ARGUMENT naming it. "
            "HEIF and AVIF count where a plugin provides them"
        },
    )
    text: str = field(
        default="auto",
        metadata={
            "help": "auto: search by words (ConSE: the model's ImageNet classifier and the "
            "bundled all-MiniLM-L6-v2) where the model and its weights have a classifier "
            "(efficientnet_lite0, resnet18/50, vgg16); off: none"
        },
    )
    pooling: str = field(default="avg", metadata={"help": "avg or gem (conv models only)"})
    gem_p: float = field(default=3.0, metadata={"help": "GeM pooling exponent"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda or cuda:N"})
    dtype: str = field(
        default="auto",
        metadata={
            "help": "auto (float16 on CUDA; on a CPU with VNNI or AMX, int8 when the model "
            "is compiled and int8's guard holds for it; else bfloat16 where the CPU has "
            "native bf16, except mobilenet_v2, which needs float32 to stay accurate), "
            "float32, bfloat16, float16 or int8 (x86 CPUs, compiled models: quantized at "
            "start on bundled photos, 5-30 s more; falls back to floating point, logged, "
            "where int8 vectors stray from fp32)"
        },
    )
    channels_last: bool = field(default=True, metadata={"help": "channels-last memory format"})
    fuse_bn: bool = field(
        default=True, metadata={"help": "fold BatchNorm into convolutions (exact; faster)"}
    )
    compile: str = field(
        default="auto",
        metadata={
            "help": "torch.compile the model with frozen weights: auto (try it, run eager "
            "if compiling fails), true (fail if it cannot), false. Adds 15-60 s at start "
            "(less once Inductor's cache is warm); batches are padded to 3 sizes"
        },
    )
    warmup: bool = field(default=True, metadata={"help": "run the model once before SERVING"})
    max_batch: int = field(default=32, metadata={"help": "largest batch sent to the model"})
    max_wait_ms: float = field(
        default=5.0, metadata={"help": "how long a batch waits for more images"}
    )
    queue_size: int = field(
        default=2048,
        metadata={"help": "images waiting at most; beyond, RESOURCE_EXHAUSTED"},
    )
    decode_workers: int = field(
        default=0,
        metadata={
            "help": "decode threads (0: one per usable CPU, counting a container's CPU quota, "
            "with the model on a GPU; a quarter of them, at least 1, with the model on the "
            "CPU, which needs the rest)"
        },
    )
    decode_pixel_budget: int = field(
        default=100_000_000,
        metadata={
            "help": "decoded pixels in flight at most, over all decode threads (memory "
            "bound: ~4-16 bytes a pixel while decoding); an image waits for room, or gets "
            "RESOURCE_EXHAUSTED after 30 s. At least EMBEDDER_MAX_PIXELS"
        },
    )
    gpu_decode: bool = field(
        default=False,
        metadata={
            "help": "decode JPEGs in batches on the model's device: nvJPEG on CUDA "
            "(torchvision), then EXIF orientation, resize, crop and thumbnails there too; "
            "other images, progressive or CMYK JPEGs and any it cannot decode go through "
            "PIL. With the model on the CPU it runs there (libjpeg-turbo), slower than PIL's "
            "reduced-size decode: for tests and comparison"
        },
    )
    busy_wait_ms: float = field(
        default=100.0,
        metadata={
            "help": "how long a batch waits at most for images still being decoded (they "
            "are certain to come; one full batch is cheaper than several small ones)"
        },
    )
    processes: int = field(
        default=1,
        metadata={
            "help": "embedder processes serving one port (SO_REUSEPORT), each with its own "
            "GIL and a copy of the model on the same device; on a GPU, run CUDA MPS beside "
            "them. The metrics port, if any, is this one's plus the process's index"
        },
    )
    compile_mode: str = field(
        default="default",
        metadata={
            "help": "torch.compile mode when compiling: default, reduce-overhead (CUDA "
            "graphs on a GPU: less launch time per batch), max-autotune or "
            "max-autotune-no-cudagraphs"
        },
    )
    max_pixels: int = field(
        default=50_000_000,
        metadata={"help": "images declaring more pixels are refused before decoding"},
    )
    max_image_mb: int = field(
        default=32,
        metadata={
            "was": "max_image_bytes",
            "was_unit": 1024 * 1024,
            "help": "largest encoded image accepted",
        },
    )
    max_images_per_request: int = field(
        default=1024, metadata={"help": "most images in one Embed call"}
    )
    image_size: int = field(default=224, metadata={"help": "center crop size"})
    resize: int = field(default=256, metadata={"help": "shorter side before the crop"})

    @property
    def max_image_bytes(self) -> int:
        return self.max_image_mb * 1024 * 1024

    def decode_threads(self, model_on_cpu: bool) -> int:
        if self.decode_workers > 0:
            return self.decode_workers
        cores = available_cpus()
        return max(1, cores // 4) if model_on_cpu else cores

    def _validate_int8(self) -> None:
        if self.compile == "false":
            raise SettingsError(
                "EMBEDDER_DTYPE=int8 needs EMBEDDER_COMPILE auto or true: uncompiled, int8 "
                "runs slower than float32"
            )
        if FAMILIES[self.model].composes:
            raise SettingsError(f"EMBEDDER_DTYPE=int8: {self.model} does not run in int8")
        if self.device.startswith("cuda"):
            raise SettingsError("EMBEDDER_DTYPE=int8 is for x86 CPUs; use float16 on CUDA")

    def validate(self) -> None:
        if self.model not in FAMILIES:  # the registry: one family per value
            raise SettingsError(
                f"EMBEDDER_MODEL={self.model!r} is not supported; use one of {', '.join(FAMILIES)}"
            )
        unknown = [f.upper() for f in self.image_formats if f.upper() not in registered()]
        if unknown and not set(unknown) <= {"HEIF", "AVIF"}:  # plugins that may be missing
            raise SettingsError(
                f"EMBEDDER_IMAGE_FORMATS names {', '.join(unknown)}, which Pillow does not know"
            )
        if not allowed(self.image_formats):
            raise SettingsError("EMBEDDER_IMAGE_FORMATS allows no format that can be opened here")
        if self.text not in ("auto", "off"):
            raise SettingsError(f"EMBEDDER_TEXT={self.text!r}: use auto or off")
        if self.pooling not in ("avg", "gem"):
            raise SettingsError(f"EMBEDDER_POOLING={self.pooling!r}: use avg or gem")
        multiple = FAMILIES[self.model].size_multiple
        if self.image_size % multiple:
            raise SettingsError(
                f"EMBEDDER_IMAGE_SIZE={self.image_size}: {self.model} needs a multiple "
                f"of {multiple}, such as {7 * multiple} or {10 * multiple}"
            )
        if self.weights_fallback not in ("none", "bundled"):
            raise SettingsError(
                f"EMBEDDER_WEIGHTS_FALLBACK={self.weights_fallback!r}: use none or bundled"
            )
        if self.dtype not in ("auto", "float32", "bfloat16", "float16", "int8"):
            raise SettingsError(
                f"EMBEDDER_DTYPE={self.dtype!r}: use auto, float32, bfloat16, float16 or int8"
            )
        if self.dtype == "int8":
            self._validate_int8()
        if self.compile not in ("auto", "true", "false"):
            raise SettingsError(f"EMBEDDER_COMPILE={self.compile!r}: use auto, true or false")
        modes = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
        if self.compile_mode not in modes:
            raise SettingsError(
                f"EMBEDDER_COMPILE_MODE={self.compile_mode!r}: use {', '.join(modes)}"
            )
        if not 1 <= self.processes <= 64:
            raise SettingsError(f"EMBEDDER_PROCESSES={self.processes}: use 1 to 64")
        if self.busy_wait_ms < 0:
            raise SettingsError("EMBEDDER_BUSY_WAIT_MS must be >= 0")
        if self.max_batch < 1 or self.queue_size < self.max_batch:
            raise SettingsError("EMBEDDER_MAX_BATCH must be >= 1 and <= EMBEDDER_QUEUE_SIZE")
        if self.decode_pixel_budget < self.max_pixels:
            raise SettingsError(
                "EMBEDDER_DECODE_PIXEL_BUDGET must be at least EMBEDDER_MAX_PIXELS, so that "
                "every image allowed can be decoded"
            )
        if self.max_pixels < 1 or self.image_size < 32 or self.resize < self.image_size:
            raise SettingsError(
                "EMBEDDER_MAX_PIXELS must be positive, EMBEDDER_IMAGE_SIZE >= 32 "
                "and EMBEDDER_RESIZE >= EMBEDDER_IMAGE_SIZE"
            )
