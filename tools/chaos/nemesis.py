"""The nemesis: every ``every`` seconds it picks a part and a fault from a
seeded random stream (the same seed replays the same faults), injects it,
and brings the part back after 5-15 s:

- SIGKILL: dead at once, no goodbye (a crash, the OOM killer);
- SIGTERM: asked to stop (a rolling update, a scale-down);
- SIGSTOP: hung, its sockets open and silent (a stuck disk, a GC pause, a
  frozen VM), then SIGCONT.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from tools.chaos.stack import Stack

KINDS = ("SIGKILL", "SIGTERM", "SIGSTOP")
DOWN_S = (5.0, 15.0)
READY_TIMEOUT_S = 300.0


@dataclass
class Fault:
    part: str
    kind: str
    down_s: float
    replicated: bool
    at: float = 0.0  # monotonic: injected
    back: float = 0.0  # restarted (or continued)
    ready: float = 0.0  # serving again (0: never within READY_TIMEOUT_S)
    starts: int = 0  # starts it took to come back
    note: str = ""


class Nemesis:
    """Faults one part at a time; ``plan`` (part:KIND, ...) instead of chance
    names them in order, cycling."""

    def __init__(
        self,
        stack: Stack,
        parts: Sequence[str],
        *,
        seed: int,
        every_s: float,
        plan: Sequence[tuple[str, str]] = (),
    ) -> None:
        self.stack = stack
        self.parts = list(parts)
        self.rng = random.Random(seed)
        self.every_s = every_s
        self.plan = list(plan)
        self.faults: list[Fault] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="nemesis")
        self.deadline = 0.0
        self.error = ""

    def next_fault(self) -> Fault:
        down = round(self.rng.uniform(*DOWN_S), 1)
        if self.plan:
            part, kind = self.plan[len(self.faults) % len(self.plan)]
        else:
            part, kind = self.rng.choice(self.parts), self.rng.choice(KINDS)
        return Fault(part, kind, down, self.stack.parts[part].replicated)

    def run(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds
        self.thread.start()

    def _loop(self) -> None:
        while not self.stop.wait(self.every_s):
            if time.monotonic() + DOWN_S[1] > self.deadline:
                return
            fault = self.next_fault()
            self.faults.append(fault)
            try:
                self.inject(fault)
            except Exception as exc:  # the run reports it and ends
                fault.note = f"{type(exc).__name__}: {exc}"
                self.error = f"{fault.part} did not come back: {fault.note}"
                return

    def inject(self, fault: Fault) -> None:
        part = self.stack.parts[fault.part]
        fault.at = time.monotonic()
        if fault.kind == "SIGSTOP":
            part.signal(signal.SIGSTOP)
            time.sleep(fault.down_s)
            part.signal(signal.SIGCONT)
            fault.back = time.monotonic()
        else:
            part.signal(getattr(signal, fault.kind))
            if not part.wait_exit(60):  # a SIGTERM that hangs
                fault.note = "SIGTERM took over 60 s; killed"
                part.signal(signal.SIGKILL)
                part.wait_exit(30)
            time.sleep(max(0.0, fault.at + fault.down_s - time.monotonic()))
            self.bring_back(fault)
        part.wait_ready(READY_TIMEOUT_S)
        fault.ready = time.monotonic()

    def bring_back(self, fault: Fault) -> None:
        """Starts the part again (``back``: its last start); a start that exits
        before it serves (a port still held by the dead one's connections) is
        tried again, for a while."""
        part = self.stack.parts[fault.part]
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            fault.back = time.monotonic()
            part.start()
            fault.starts += 1
            while part.alive() and not part.ready() and time.monotonic() < deadline:
                time.sleep(0.2)
            if part.alive() or time.monotonic() > deadline:
                return
            time.sleep(2.0)

    def close(self) -> None:
        """Ends the faults; every part is left running (SIGCONT for one stopped)."""
        self.stop.set()
        self.thread.join()
        for part in self.stack.parts.values():
            part.signal(signal.SIGCONT)
