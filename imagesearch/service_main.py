"""The body of every service's ``__main__``: settings from env and flags, logs,
start, metrics, serve until SIGTERM."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TypeVar

from imagesearch import logs
from imagesearch.processes import process_index, supervise
from imagesearch.server import RunningServer, note_reloads, serve_until_signal, start_metrics
from imagesearch.settings import SettingsError, load_settings

S = TypeVar("S")


def run(
    name: str,
    settings_cls: type[S],
    prefix: str,
    start: Callable[[S], RunningServer],
    description: str | None = None,
    fatal: tuple[type[Exception], ...] = (),
) -> int:
    """Exit codes: 0 after a clean stop, 2 bad settings, 3 a ``fatal`` start error."""
    try:
        settings = load_settings(settings_cls, prefix, sys.argv[1:], description=description)
    except SettingsError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 2
    settings_any: Any = settings
    logs.configure(settings_any.log_level)
    processes = getattr(settings_any, "processes", 1)
    if processes > 1 and process_index() is None:
        return supervise(
            name, processes, settings_any.host, settings_any.port, settings_any.metrics_port
        )
    noted = note_reloads()
    try:
        running = start(settings)
    except SettingsError as exc:  # e.g. a certificate or tokens file that cannot be read
        print(f"{name}: {exc}", file=sys.stderr)
        return 2
    except fatal as exc:
        print(f"{name}: cannot start: {exc}", file=sys.stderr)
        return 3
    start_metrics(settings_any.metrics_port, settings_any.host)
    serve_until_signal(
        running,
        name,
        drain=settings_any.drain_s,
        grace=settings_any.shutdown_grace_s,
        noted=noted,
    )
    return 0
