"""A served gRPC call's CPU on asyncio's event loop and on uvloop's.

One grpc.aio server process per loop, each with two echo methods of an
8 KiB message (a 2048-d query's size): a plain unary one, and a client
stream read for one message with a time limit, which is how
imagesearch.bridge serves every unary method. A client here calls each
method CALLS times per round, the servers in turn, ROUNDS rounds; the
server process's CPU (from /proc) per call, medians over the rounds, and
the ratio uvloop / asyncio. The services' loop is uvloop's
(imagesearch.server) where it is installed.

    .venv/bin/python -m bench.server_loop [--calls 3000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import cpu_seconds, machine

PAYLOAD = b"x" * 8192
LOOPS = ("asyncio", "uvloop")


def _same(b: bytes) -> bytes:
    return b


async def _unary(request: bytes, _context: Any) -> bytes:
    return request


async def _one_message(_requests: Any, context: Any) -> bytes:
    async with asyncio.timeout(60):
        return bytes(await context.read())


def _serve(loop: str, ready: Any) -> None:
    import grpc

    async def main() -> None:
        server = grpc.aio.server()
        handlers = {
            "Unary": grpc.unary_unary_rpc_method_handler(_unary, _same, _same),
            "OneMessage": grpc.stream_unary_rpc_method_handler(_one_message, _same, _same),
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("b.Echo", handlers),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        ready.put(port)
        await server.wait_for_termination()

    if loop == "uvloop":
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    import grpc

    print(machine())
    spawn = mp.get_context("spawn")
    servers: dict[str, tuple[Any, Any]] = {}
    for loop in LOOPS:
        ready = spawn.Queue()
        proc = spawn.Process(target=_serve, args=(loop, ready), daemon=True)
        proc.start()
        channel = grpc.insecure_channel(f"127.0.0.1:{ready.get(timeout=60)}")
        calls = {
            "unary": lambda ch=channel: ch.unary_unary("/b.Echo/Unary")(PAYLOAD),
            "one-message stream (the bridge's unary)": lambda ch=channel: ch.stream_unary(
                "/b.Echo/OneMessage"
            )(iter([PAYLOAD])),
        }
        servers[loop] = (proc, calls)
    try:
        for _, calls in servers.values():  # warm every path
            for call in calls.values():
                for _ in range(200):
                    call()
        cpu: dict[tuple[str, str], list[float]] = {}
        for _ in range(args.rounds):
            for loop, (proc, calls) in servers.items():
                for kind, call in calls.items():
                    before = cpu_seconds(proc.pid)
                    for _ in range(args.calls):
                        call()
                    spent = (cpu_seconds(proc.pid) - before) / args.calls * 1000
                    cpu.setdefault((kind, loop), []).append(spent)
    finally:
        for proc, _ in servers.values():
            proc.kill()
    print(f"{args.calls} calls per round, {args.rounds} rounds; server CPU in ms per call:")
    print("| method | asyncio | uvloop | uvloop / asyncio |")
    print("|---|---|---|---|")
    for kind in servers["asyncio"][1]:
        a, u = (statistics.median(cpu[(kind, loop)]) for loop in LOOPS)
        print(f"| {kind} | {a:.3f} | {u:.3f} | {u / a:.3f} |")


if __name__ == "__main__":
    main()
