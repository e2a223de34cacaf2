"""The decoder opens only photo formats: bytes of another format, whatever the
file is called, are refused naming what they look like, before any decoder of
theirs runs (EPS would start Ghostscript). Real decoder, real bytes; a Python
audit hook records every process this process starts meanwhile."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from PIL import Image

from embedder_service.decode import DecodeError, Decoder
from imagesearch.client import Client, ImageSearchError
from tests.conftest import CLOTHING, ODD, ROOT, Stack, clothing_images

EPS = (
    b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n"
    b"newpath 0 0 moveto 10 10 lineto stroke showpage\n%%EOF\n"
)
FITS = b"".join(
    card.ljust(80).encode()
    for card in (
        "SIMPLE  =                    T",
        "BITPIX  =                    8",
        "NAXIS   =                    2",
        "NAXIS1  =                    4",
        "NAXIS2  =                    4",
        "END",
    )
).ljust(2880) + bytes(2880)
PSD = b"8BPS\x00\x01" + bytes(6) + b"\x00\x03" + (4).to_bytes(4, "big") * 2 + b"\x00\x08\x00\x03"
PSD += bytes(64)
NOT_PHOTOS = {"EPS": EPS, "FITS": FITS, "PSD": PSD}

_started: list[str] = []
_watching = False


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if _watching and event in ("subprocess.Popen", "os.system", "os.posix_spawn", "os.exec"):
        _started.append(f"{event} {args[:2]!r}")


sys.addaudithook(_audit)  # cannot be removed; records only while _watching


@pytest.fixture
def no_processes() -> Iterator[list[str]]:
    global _watching
    _started.clear()
    _watching = True
    yield _started
    _watching = False


@pytest.mark.parametrize("kind", sorted(NOT_PHOTOS))
def test_other_formats_named_jpg_are_refused(kind: str, no_processes: list[str]) -> None:
    decoder = Decoder(50_000_000)
    with pytest.raises(DecodeError) as err:
        decoder.decode(NOT_PHOTOS[kind], "q.jpg")
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert f"q.jpg: looks like {kind}, a format this embedder does not open" in err.value.message
    assert "EMBEDDER_IMAGE_FORMATS" in err.value.message and "JPEG" in err.value.message
    assert no_processes == []


def test_the_allowed_list_is_a_setting(no_processes: list[str]) -> None:
    png = (ODD / "hopper.png").read_bytes()
    jpeg = (ODD / "hopper.jpg").read_bytes()
    only_jpeg = Decoder(50_000_000, formats=("jpeg",))
    assert only_jpeg.decode(jpeg, "a.jpg").width == 128
    with pytest.raises(DecodeError, match=r"looks like PNG.*allowed: JPEG;"):
        only_jpeg.decode(png, "b.jpg")
    with pytest.raises(ValueError, match="none of the image formats"):
        Decoder(50_000_000, formats=("NOPE",))
    assert no_processes == []


def test_the_stack_refuses_them_by_name(stack: Stack) -> None:
    with Client(stack.gateway.addr, timeout=60) as client:
        photo = (CLOTHING / clothing_images()[0][0]).read_bytes()
        assert client.index_images([("p.jpg", photo)], collection="f").indexed == 1
        report = client.index_images(
            [(f"{k.lower()}.jpg", data) for k, data in NOT_PHOTOS.items()], collection="f"
        )
        assert report.failed == 3 and report.indexed == 0
        for error in report.errors:
            assert "a format this embedder does not open" in error.reason, error
        with pytest.raises(ImageSearchError) as err:
            client.search(image=EPS, collection="f")
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "looks like EPS" in err.value.message
        assert client.count(collection="f").count == 1


@pytest.mark.processes
def test_a_strip_is_cropped_before_it_is_resized(tmp_path: Path) -> None:
    """Found by tools/fuzz.py: a GIF of 62965 x 3 pixels (under the pixel
    limit, a few hundred bytes) took 5.5 GB, resized to 5.4 M x 256 pixels
    before the centre crop. Decoded in a process of its own, to read its peak."""
    strip = tmp_path / "strip.gif"
    Image.new("L", (62965, 3), 128).save(strip)
    assert strip.stat().st_size < 10_000
    # VmHWM, the peak of this process's own memory (ru_maxrss would carry the
    # parent's peak over the exec).
    script = (
        "import sys\n"
        "from embedder_service.decode import Decoder\n"
        "d = Decoder(4_000_000).decode(open(sys.argv[1], 'rb').read(), 'strip.gif', 64)\n"
        "peak = next(int(line.split()[1]) for line in open('/proc/self/status')"
        " if line.startswith('VmHWM:'))\n"
        "print(d.pixels.shape, d.width, d.height, peak // 1024)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(strip)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    shape, rest = done.stdout.split(")")
    width, height, peak_mb = rest.split()
    assert shape == "(224, 224, 3" and (int(width), int(height)) == (62965, 3)
    assert int(peak_mb) < 600, f"{peak_mb} MB to decode a {strip.stat().st_size}-byte strip"
