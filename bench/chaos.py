"""The scaled stack under random faults (`make chaos`): nats-server with a
password, two gateways on it, two embedders behind one target, the index
writer and a reader (read-only database user) on a Milvus server and a
MariaDB of the run's own, and the web face, all on loopback. Photos arrive as
folder jobs and client streams while four clients search; every --every
seconds the nemesis SIGKILLs, SIGTERMs or SIGSTOPs a part picked by --seed
and brings it back 5-15 s later. At the end: every photo stored exactly once,
every job SUCCEEDED with no ResumeJob, no search failed outside the 10 s
after a fault (or while a part with no replica was down).

Prints a table and, last, one line of JSON; exits 1 when a check fails.

    .venv/bin/python bench/chaos.py [--minutes 10] [--every 20] [--seed 1]
        [--photos 2000] [--model resnet50] [--parts gateway-1,nats,...]
        [--plan gateway-1:SIGKILL,milvus:SIGSTOP]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import CLOTHING, OUT, machine
from tools.chaos import report
from tools.chaos.nemesis import KINDS
from tools.chaos.run import PARTS, RunConfig, run
from tools.chaos.stack import missing_tools


def parse_plan(text: str) -> list[tuple[str, str]]:
    steps = []
    for item in filter(None, text.split(",")):
        part, _, kind = item.partition(":")
        if part not in PARTS or kind not in KINDS:
            raise argparse.ArgumentTypeError(
                f"{item!r}: a plan step is PART:KIND, PART one of {', '.join(PARTS)}, "
                f"KIND one of {', '.join(KINDS)}"
            )
        steps.append((part, kind))
    return steps


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10.0, help="how long faults go on")
    p.add_argument("--every", type=float, default=20.0, help="seconds between faults")
    p.add_argument("--seed", type=int, default=1, help="the same seed replays the same faults")
    p.add_argument("--photos", type=int, default=2000, help="distinct photos to store")
    p.add_argument("--model", default="resnet50", help="the embedders' model")
    p.add_argument("--weights", default="", help="EMBEDDER_WEIGHTS (empty: the default)")
    p.add_argument("--parts", default=",".join(PARTS), help="the parts the nemesis may fault")
    p.add_argument("--plan", type=parse_plan, default=[], help="PART:KIND,... in order")
    p.add_argument("--work", type=Path, default=OUT / "chaos", help="data and logs of the run")
    p.add_argument("--photo-cache", type=Path, default=OUT, help="where the photos are made")
    args = p.parse_args(argv)
    parts = [x for x in args.parts.split(",") if x]
    if unknown := sorted(set(parts) - set(PARTS)):
        p.error(f"no such parts: {', '.join(unknown)} (parts: {', '.join(PARTS)})")
    if lacks := missing_tools():
        print("chaos: this machine lacks " + "; ".join(lacks), file=sys.stderr)
        return 2
    result = run(
        RunConfig(
            work=args.work,
            sources=sorted(CLOTHING.rglob("*.jpg")),
            photos=args.photos,
            minutes=args.minutes,
            every_s=args.every,
            seed=args.seed,
            parts=parts,
            plan=args.plan,
            model=args.model,
            weights=args.weights,
            photo_cache=args.photo_cache,
            machine=machine(),
            say=lambda line: print(line, file=sys.stderr, flush=True),
        )
    )
    print(report.table(result))
    print(json.dumps(result))
    return 0 if report.passed(result) else 1


if __name__ == "__main__":
    sys.exit(main())
