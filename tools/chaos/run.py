"""One chaos run, start to end: the stack up, the work and the nemesis for
``minutes``, then every part running again, the work finished, the checks."""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tools.chaos import report
from tools.chaos.nemesis import Nemesis
from tools.chaos.stack import Stack, StackConfig
from tools.chaos.workload import Ingest, Searchers, Stored, make_photos, plan

# Parts the nemesis may fault (the web face is the users' door, not a part under test).
PARTS = (
    "gateway-1",
    "gateway-2",
    "embedder-1",
    "embedder-2",
    "writer",
    "reader",
    "nats",
    "milvus",
    "mariadb",
)
FINISH_TIMEOUT_S = 1200.0  # the work left when the faults end must be done within this


@dataclass
class RunConfig:
    work: Path
    sources: Sequence[Path]
    photos: int = 2000
    minutes: float = 10.0
    every_s: float = 20.0
    seed: int = 1
    parts: Sequence[str] = PARTS
    plan: Sequence[tuple[str, str]] = ()
    model: str = "resnet50"
    weights: str = ""
    search_pause_s: float = 0.2
    photo_cache: Path | None = None
    machine: str = ""
    say: Callable[[str], None] = field(default=print)


def run(config: RunConfig) -> dict[str, Any]:
    say = config.say
    # pymilvus logs every failed connection of a ready check at ERROR (its
    # level is set when it is imported, so after that).
    import pymilvus  # noqa: F401

    for name in ("pymilvus", "pymilvus.milvus_client"):  # each has a level of its own
        logging.getLogger(name).setLevel(logging.CRITICAL)
    shutil.rmtree(config.work, ignore_errors=True)
    config.work.mkdir(parents=True)
    cache = config.photo_cache or config.work / "photos"
    folder = cache / f"chaos-photos-{config.photos}"
    paths = make_photos(folder, config.sources, config.photos)
    units = plan(paths)
    photos = [p for u in units for p in u.photos]
    stack = Stack(StackConfig(config.work, folder, model=config.model, weights=config.weights))
    stack.build()
    stored = Stored()
    duration = config.minutes * 60
    ingest = Ingest(stack.gateway_target, units, stored, spread_s=duration * 0.6)
    searchers = Searchers(
        stack.gateway_target, stack.web_url, stored, config.seed, config.search_pause_s
    )
    nemesis = Nemesis(
        stack, config.parts, seed=config.seed, every_s=config.every_s, plan=config.plan
    )
    try:
        say(f"starting {len(stack.parts)} parts under {config.work}")
        started = time.monotonic()
        stack.start()
        say(
            f"stack ready in {time.monotonic() - started:.0f} s; {len(photos)} photos in "
            f"{len(units)} units; faults every {config.every_s:.0f} s for {config.minutes} min"
        )
        rss_start = stack.rss()
        ingest.run()
        searchers.run()
        nemesis.run(duration)
        end = time.monotonic() + duration
        while time.monotonic() < end and not nemesis.error:
            time.sleep(min(30.0, max(0.0, end - time.monotonic())))
            say(
                f"{len(nemesis.faults)} faults; {sum(u.done for u in units)}/{len(units)} "
                f"units done; {len(searchers.records)} searches"
            )
        nemesis.close()
        say("faults over; finishing the work")
        finished = ingest.wait(FINISH_TIMEOUT_S)
        if not finished:
            say("the work did not finish in time")
        time.sleep(2.0)  # a last moment of searches with no fault
        searchers.close()
        ingest.close()
        rss_end = stack.rss()
        say("checking every photo")
        storage = report.check_storage(stack, photos, stack.gateway_target)
        result = report.build(
            seed=config.seed,
            minutes=config.minutes,
            storage=storage,
            ingest=ingest,
            faults=nemesis.faults,
            records=searchers.snapshot(),
            rss_start=rss_start,
            rss_end=rss_end,
            nemesis_error=nemesis.error,
            machine=config.machine,
        )
    finally:
        nemesis.stop.set()
        searchers.stop.set()
        ingest.stop.set()
        stack.stop()  # whatever happened: no part outlives the run
    (config.work / "report.json").write_text(json.dumps(result, indent=1))
    return result
