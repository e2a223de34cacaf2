"""Job progress as Server-Sent Events, from the gateway's WatchJob.

Each open event stream waits in a thread of its own pool (WEB_MAX_EVENT_STREAMS
threads), so watchers never take the threads that answer every other
request; past that many open streams a new one is refused (429). When the
browser goes away, the stream is cancelled at once (``WatchStop``) and its
thread freed."""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator

import anyio
import grpc

from imagesearch.client import Client, ImageSearchError, Job, WatchStop
from web_service.errors import error_body
from web_service.models import JobOut

WATCH_STREAM_S = 300.0  # each WatchJob stream behind an event stream


class EventStreams:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.threads = anyio.CapacityLimiter(limit)
        self._open = 0
        self._lock = threading.Lock()

    @property
    def open(self) -> int:
        with self._lock:
            return self._open

    def check(self) -> None:
        if self.open >= self.limit:
            raise ImageSearchError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{self.limit} job event streams are open here (WEB_MAX_EVENT_STREAMS); "
                "retry later, or poll GET /v1/jobs/{job_id}",
            )

    async def stream(self, client: Client, job_id: str) -> AsyncIterator[str]:
        """``event: job`` with the job (JobOut) now and at every change, until
        it ends; ``event: error`` with ``{"detail", "code"}`` if watching fails."""
        stop = WatchStop()
        jobs = client.watch_job(job_id, stream_s=WATCH_STREAM_S, stop=stop)
        with self._lock:
            self._open += 1
        try:
            while True:
                job: Job | None = await anyio.to_thread.run_sync(
                    next, jobs, None, limiter=self.threads, abandon_on_cancel=True
                )
                if job is None:
                    return
                yield f"event: job\ndata: {JobOut.of(job).model_dump_json()}\n\n"
        except ImageSearchError as exc:  # the stream has begun: say it in the stream
            yield f"event: error\ndata: {json.dumps(error_body(exc.code.name, exc.message))}\n\n"
        finally:
            stop.set()  # the gateway stream ends now, whoever is still waiting on it
            with self._lock:
                self._open -= 1
