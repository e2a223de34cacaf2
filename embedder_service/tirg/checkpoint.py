"""The served composed model (EMBEDDER_MODEL=tirg_css): the TIRG checkpoint
trained here (``python -m training.tirg.train``), shipped beside this
file, or another file that script wrote."""

from __future__ import annotations

from pathlib import Path

import torch

from embedder_service.tirg.net import ComposedRetrieval
from embedder_service.tirg.words import tokens
from embedder_service.weights import Weights, WeightsUnavailable, file_sha256

SHIPPED = Path(__file__).parent / "tirg_css.pt"
NOTE = (
    "TIRG trained from scratch on generated CSS-like scenes (training/tirg/train.py); "
    "it knows only those scenes and their words"
)
MAX_TEXT_CHARS = 500


def load(setting: str) -> tuple[ComposedRetrieval, Weights]:
    """``setting``: EMBEDDER_WEIGHTS. imagenet (the default) or bundled: the
    shipped checkpoint; random: untrained (shape and speed tests only); else
    a checkpoint file."""
    if setting == "random":
        torch.manual_seed(0)
        return ComposedRetrieval("tirg").eval(), Weights(None, "random", "random", False)
    path = SHIPPED if setting in ("imagenet", "bundled") else Path(setting)
    if not path.is_file():
        raise WeightsUnavailable(
            f"EMBEDDER_WEIGHTS={setting}: no checkpoint at {path}; use bundled (the shipped "
            "tirg_css.pt) or a file written by python -m training.tirg.train"
        )
    net = ComposedRetrieval.load(torch.load(path, map_location="cpu", weights_only=True))
    if net.kind != "tirg":
        raise WeightsUnavailable(
            f"{path.name} holds a {net.kind} model; tirg_css serves a TIRG checkpoint"
        )
    source = "bundled" if path == SHIPPED else path.name
    return net, Weights(None, source, file_sha256(path), True, NOTE)


def text_problem(net: ComposedRetrieval, text: str) -> str:
    """Why ``text`` cannot be composed with an image ('' when it can)."""
    if len(text) > MAX_TEXT_CHARS:
        return f"the text is {len(text)} characters, over the limit of {MAX_TEXT_CHARS}"
    if not tokens(text):
        return f"the text {text!r} has no words"
    unknown = net.vocab.unknown(text)
    if unknown:
        return (
            f"the text {text!r} has words the model never learned: {', '.join(unknown)} "
            f"(it knows: {', '.join(net.vocab.words)}, and cube, sphere, cylinder)"
        )
    return ""
