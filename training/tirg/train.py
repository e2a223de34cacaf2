"""Trains the composed-retrieval models on generated scenes.

    python -m training.tirg.train            # all four, the shipped files
    python -m training.tirg.train --kinds tirg --steps 200   # a quick try

The defaults are the settings that produced the shipped checkpoints:
``tirg_css.pt`` (the served TIRG model) and ``baselines_css.pt`` (image only,
text only and concat, trained the same way, for bench/composed.py). Each
step takes a batch of fresh (source, text, target) examples from the
generator, none seen before (an endless stream, the same for the same seed),
32 sources with four modifications each, and pulls the composed vector
towards its target with a softmax over the batch's targets and sources: the
query's own source is a negative (or TIRG learns to return the source), and
so are its siblings' targets, the scenes one object away from the right
one. Every ``--eval-every`` steps the model is measured on the validation
split (scenes of neither training nor the test); the weights of its best R@1
are kept.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from embedder_service.tirg.checkpoint import SHIPPED
from embedder_service.tirg.net import COMPOSERS, ComposedRetrieval
from training.tirg.evaluate import evaluate, pixels
from training.tirg.scenes import Example, examples, take

# The checkpoints ship with the serving package, which loads them.
HERE = SHIPPED.parent
SERVED = SHIPPED
BASELINES = HERE / "baselines_css.pt"


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kinds", default=",".join(COMPOSERS), help="composers to train")
    p.add_argument("--seed", type=int, default=17)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--held-out", type=int, default=2000, help="held-out examples to report")
    p.add_argument("--val", type=int, default=600, help="validation examples")
    p.add_argument("--eval-every", type=int, default=250, help="steps between validations")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", type=Path, default=HERE, help="folder for the checkpoints")
    return p.parse_args(argv)


Batch = tuple[torch.Tensor, torch.Tensor, list[str]]


def batches(seed: int, size: int) -> Iterator[Batch]:
    """Endless batches of new training examples: source and target pixels
    and the texts. Siblings share their source, which is rendered once."""
    stream = examples("train", seed)
    while True:
        chunk = [next(stream) for _ in range(size)]
        sources = {s: i for i, s in enumerate(dict.fromkeys(ex.source for ex in chunk))}
        yield (
            pixels(list(sources))[[sources[ex.source] for ex in chunk]],
            pixels([ex.target for ex in chunk]),
            [ex.text for ex in chunk],
        )


def train(
    kind: str, args: argparse.Namespace, val: list[Example], device: torch.device
) -> tuple[ComposedRetrieval, int, float]:
    """The model at its best validation R@1, that step and that R@1."""
    torch.manual_seed(args.seed)
    data = batches(args.seed, args.batch)
    net = ComposedRetrieval(kind).to(device)
    decayed = [p for name, p in net.named_parameters() if name != "scale"]
    groups: list[dict[str, Any]] = [
        {"params": decayed},
        {"params": [net.scale], "weight_decay": 0.0},  # the softmax scale is not decayed
    ]
    opt = torch.optim.AdamW(groups, lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.1
    )
    started = time.monotonic()
    best: tuple[dict[str, torch.Tensor], int, float] = ({}, 0, -1.0)
    net.train()
    for step in range(args.steps):
        src, tgt, texts = next(data)
        feats = net.image(torch.cat([src, tgt]).to(device))
        x_src, x_tgt = feats[: args.batch], feats[args.batch :]
        ids, lengths = net.vocab.encode(texts)
        q = net.compose(x_src, net.text(ids.to(device), lengths))
        q = nn.functional.normalize(q, dim=1)
        g = nn.functional.normalize(torch.cat([x_tgt, x_src]), dim=1)
        logits = net.scale * q @ g.T
        loss = nn.functional.cross_entropy(logits, torch.arange(args.batch, device=device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        done = step + 1
        if done % args.eval_every == 0 or done == args.steps:
            r1 = evaluate(net, val)[0]["R@1"]
            net.train()
            if r1 > best[2]:
                best = ({k: v.detach().clone() for k, v in net.state_dict().items()}, done, r1)
            print(
                f"{kind} step {done}/{args.steps} loss {loss.item():.3f} val R@1 {r1:.3f} "
                f"{time.monotonic() - started:.0f} s",
                flush=True,
            )
    net.load_state_dict(best[0])
    return net.cpu().eval(), best[1], best[2]


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    args.out.mkdir(parents=True, exist_ok=True)
    val = take("val", args.seed, args.val)
    held_out = take("test", args.seed, args.held_out)
    results: dict[str, dict[str, float]] = {}
    baselines: dict[str, object] = {}
    for kind in args.kinds.split(","):
        t0 = time.monotonic()
        net, step, val_r1 = train(kind, args, val, device)
        scores, _ = evaluate(net, held_out)
        results[kind] = {
            **scores,
            "step": step,
            "val_R@1": val_r1,
            "train_s": round(time.monotonic() - t0),
        }
        print(f"{kind}: {json.dumps(results[kind])}", flush=True)
        if kind == "tirg":
            torch.save(net.checkpoint(), args.out / SERVED.name)
        else:
            baselines[kind] = net.checkpoint()
    if baselines:
        torch.save(baselines, args.out / BASELINES.name)
    print(json.dumps({"seed": args.seed, "steps": args.steps, "batch": args.batch, **results}))


if __name__ == "__main__":
    main()
