"""int8 on the CPU three ways, in one run: PyTorch's PT2E flow with the X86
Inductor quantizer (what EMBEDDER_DTYPE=int8 uses), ONNX Runtime's static
QDQ quantization, and OpenVINO with NNCF. Each is calibrated on the same
photos (embedder_service/calibration), timed on the model alone at one batch
size, and compared with eager fp32 on the clothing-64 photos (cosine of the
vectors; for random weights only the speed means anything).

ONNX Runtime, OpenVINO and NNCF are not dependencies of the project; run
this from a venv that has them besides the project's:

    pip install -c constraints.txt -e '.[embedder]' onnx onnxscript onnxruntime openvino nncf
    python -m bench.int8_backends [--models resnet50,efficientnet_lite0,mobilenet_v2]
        [--batch 32] [--seconds 8] [--backends torch,onnxruntime,openvino]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.fx.experimental.optimization import fuse

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import CLOTHING, machine
from embedder_service import int8
from embedder_service.decode import Decoder
from embedder_service.families import open_model
from embedder_service.model import compile_for_inference, cpu_has_native_bf16

Run = Callable[[np.ndarray], np.ndarray]  # uint8 NCHW -> vectors


def photos(decoder: Decoder) -> np.ndarray:
    paths = sorted(CLOTHING.glob("*/*.jpg"))
    pixels = [decoder.decode(p.read_bytes(), p.name).pixels for p in paths]
    return np.stack(pixels).transpose(0, 3, 1, 2).copy()


def timed(run: Run, batch: np.ndarray, seconds: float) -> float:
    run(batch)
    run(batch)
    started, done = time.perf_counter(), 0
    while time.perf_counter() - started < seconds:
        run(batch)
        done += len(batch)
    return done / (time.perf_counter() - started)


def torch_pt2e(net: torch.nn.Module, calibrate: np.ndarray, depthwise: bool) -> Run:
    rest = torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    images = torch.from_numpy(calibrate)
    quantized = int8.quantize(fuse(net), images, images[:2], depthwise, rest).net
    forward = compile_for_inference(quantized)

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad(), torch.autocast("cpu", dtype=rest, enabled=rest != torch.float32):
            return forward(torch.from_numpy(x)).float().numpy()

    return run


def onnxruntime_qdq(net: torch.nn.Module, calibrate: np.ndarray, tmp: Path) -> Run:
    import onnxruntime as ort
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    fp32, q8 = tmp / "model.onnx", tmp / "model.int8.onnx"
    torch.onnx.export(
        net,
        (torch.from_numpy(calibrate[:2]),),
        str(fp32),
        input_names=["images"],
        output_names=["vectors"],
        dynamic_axes={"images": {0: "batch"}, "vectors": {0: "batch"}},
        dynamo=False,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"images": calibrate[i : i + 1]} for i in range(len(calibrate))])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    quantize_static(
        str(fp32),
        str(q8),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    session = ort.InferenceSession(str(q8), providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"images": x})[0]


def openvino_nncf(net: torch.nn.Module, calibrate: np.ndarray) -> Run:
    import nncf
    import openvino as ov

    model = ov.convert_model(net, example_input=torch.from_numpy(calibrate[:2]))
    dataset = nncf.Dataset([calibrate[i : i + 1] for i in range(len(calibrate))])
    quantized = nncf.quantize(model, dataset, subset_size=len(calibrate))
    compiled = ov.Core().compile_model(quantized, "CPU")
    return lambda x: np.asarray(compiled(x)[0])


def cosines(reference: np.ndarray, other: np.ndarray) -> np.ndarray:
    a = reference / np.linalg.norm(reference, axis=1, keepdims=True)
    b = other / np.linalg.norm(other, axis=1, keepdims=True)
    return np.sum(a * b, axis=1)


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--models", default="resnet50,efficientnet_lite0,mobilenet_v2")
    p.add_argument("--backends", default="torch,onnxruntime,openvino")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seconds", type=float, default=8.0)
    args = p.parse_args()
    print(f"machine: {machine()}")
    print(f"threads: {torch.get_num_threads()}; batch {args.batch}")
    tmp = Path(tempfile.mkdtemp(prefix="int8-backends-"))
    for model in args.models.split(","):
        weights = "random" if model in ("resnet50", "resnet18", "vgg16") else "bundled"
        family, loaded = open_model(model, weights, "none")
        net = loaded.net.eval()
        decoder = Decoder(50_000_000, 256, 224)
        calibrate, _ = int8.calibration_batches(decoder, channels_last=False)
        calib = calibrate.numpy()
        images = photos(decoder)
        with torch.no_grad():
            reference = net(torch.from_numpy(images)).numpy()
        batch = images[np.arange(args.batch) % len(images)]
        for backend in args.backends.split(","):
            started = time.perf_counter()
            if backend == "torch":
                run = torch_pt2e(net, calib, family.int8_depthwise)
            elif backend == "onnxruntime":
                run = onnxruntime_qdq(net, calib, tmp)
            else:
                run = openvino_nncf(net, calib)
            vectors = np.concatenate([run(images[i : i + 32]) for i in range(0, len(images), 32)])
            prepare = time.perf_counter() - started
            rate = timed(run, batch, args.seconds)
            c = cosines(reference, vectors)
            print(
                f"{model} ({weights}) {backend}: {rate:.1f} img/s; cosine to fp32 median "
                f"{np.median(c):.4f}, p5 {np.percentile(c, 5):.4f}; ready in {prepare:.0f} s",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
