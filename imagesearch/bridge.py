"""The services' plain (threaded) servicers behind an asyncio gRPC server.

An open call costs a coroutine on the event loop, not a thread: a thread is
taken only once a call's request has arrived and a slot of its kind is free
(``imagesearch.limits``), and it is held only while the handler runs. So idle
streams, slow bodies and reflection sessions cannot take the threads that
other callers need, and health answers on the loop however busy the threads
are.

A servicer method written as a coroutine (``async def``, such as the
index's Search) runs on the loop itself once its request is in and its slot
taken: it takes no thread, and must not block (what blocks goes to a
thread: ``asyncio.to_thread``).

Every unary method is served as a client stream whose one message is read with
a time limit, so a call whose body never arrives is ended after
``*_STREAM_IDLE_S`` (DEADLINE_EXCEEDED, with a sentence) like a client stream
that falls silent. The wire protocol of the two is the same.

Here too, in one place: the request id (from ``x-request-id`` or made up, in
the logs and in the trailers), one log line and the metrics per call,
``ServiceError`` to its status, any other exception to INTERNAL with a
sentence (its text stays in the log), and the ``authorize`` hook.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import logging
import queue
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, NoReturn, TypeGuard, TypeVar, cast

import grpc
from google.protobuf.message import DecodeError
from prometheus_client import Counter, Histogram

from imagesearch import errors, logs
from imagesearch.limits import CALLS, REFLECTION, UPLOADS, WATCHERS, CallLimits, Slot, Slots

log = logging.getLogger("imagesearch.server")

T = TypeVar("T")

REQUEST_ID_HEADER = "x-request-id"
# A client's request id is used (logs, trailers) only if it looks like one.
REQUEST_ID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.:")
REQUEST_ID_MAX = 64

# Called before every RPC of the service (not health or reflection) with the
# method's full name; raises ServiceError to refuse the call.
Authorize = Callable[[str, grpc.ServicerContext], None]
# The caller's TLS auth context -> why it is refused (None: accepted); asked
# before every call but health (mTLS: only the gateway's certificate).
CheckPeer = Callable[[Mapping[str, Iterable[bytes]]], str | None]

RPC_HANDLED = Counter(
    "imagesearch_rpc_handled_total", "RPCs completed, by method and status code", ["method", "code"]
)
RPC_SECONDS = Histogram(
    "imagesearch_rpc_seconds",
    "RPC handling time in seconds, by method",
    ["method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)

_END = object()  # a client stream's last message was read
EOF: Any = getattr(grpc.aio, "EOF")  # noqa: B009 -- what read() returns at a stream's end (untyped)


def valid_request_id(rid: object) -> TypeGuard[str]:
    """A client's id is kept only if short and plain (no newlines, quotes or
    escapes that could forge log lines); otherwise the call gets a new one."""
    return isinstance(rid, str) and 0 < len(rid) <= REQUEST_ID_MAX and set(rid) <= REQUEST_ID_CHARS


def _short(method: str) -> str:
    return method.rsplit("/", 1)[-1]


class SyncContext:
    """What a threaded handler may ask of its call (the part of
    ``grpc.ServicerContext`` the servicers use), safe from any thread."""

    def __init__(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        self.aio_context = context  # the call itself: the bridge writes through it
        self.loop = asyncio.get_running_loop()
        self._metadata = tuple(context.invocation_metadata() or ())
        self._lock = threading.Lock()
        self._ended = False
        self._callbacks: list[Callable[[], None]] = []
        context.add_done_callback(cast(Any, self._done))

    def _done(self, _context: object) -> None:
        with self._lock:
            self._ended = True
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            try:
                callback()
            except Exception:
                log.exception("rpc.callback_failed")

    def invocation_metadata(self) -> tuple[Any, ...]:
        return self._metadata

    def time_remaining(self) -> float | None:
        return self.aio_context.time_remaining()

    def is_active(self) -> bool:
        with self._lock:
            return not self._ended

    def add_callback(self, callback: Callable[[], None]) -> bool:
        """Runs ``callback`` when the call ends (answered, canceled or out of
        time); False when it has ended already."""
        with self._lock:
            if self._ended:
                return False
            self._callbacks.append(callback)
            return True

    def peer(self) -> str:
        return self.aio_context.peer()

    def auth_context(self) -> Mapping[str, Iterable[bytes]]:
        return self.aio_context.auth_context()

    def abort(self, code: grpc.StatusCode, details: str) -> NoReturn:
        raise errors.ServiceError(code, details)


class _Call:
    """Bookkeeping for one RPC: request id, timing, final code, the log line."""

    def __init__(self, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        self.method = method
        self.context = context
        metadata = dict(context.invocation_metadata() or ())
        rid = metadata.get(REQUEST_ID_HEADER)
        self.request_id = rid if valid_request_id(rid) else uuid.uuid4().hex[:16]
        self.started = time.perf_counter()
        self.token = logs.request_id.set(self.request_id)
        self.trailers = ((REQUEST_ID_HEADER, self.request_id),)
        context.set_trailing_metadata(self.trailers)

    async def fail(self, exc: BaseException) -> NoReturn:
        if isinstance(exc, asyncio.CancelledError):
            self.finish(grpc.StatusCode.CANCELLED)
            raise exc
        if isinstance(exc, errors.ServiceError):
            code, message = exc.code, exc.message
        else:
            log.error("rpc.crash", exc_info=exc, extra={"fields": {"method": self.method}})
            # The exception's text stays in the log: it may name files, hosts or URIs.
            code = grpc.StatusCode.INTERNAL
            message = (
                f"internal error in {self.method} ({type(exc).__name__}); the service log has "
                f"the details under request id {self.request_id}"
            )
        self.finish(code, message)
        await self.context.abort(code, message, self.trailers)
        raise AssertionError("abort returned")  # pragma: no cover

    def finish(self, code: grpc.StatusCode, detail: str = "") -> None:
        seconds = time.perf_counter() - self.started
        RPC_HANDLED.labels(self.method, code.name).inc()
        RPC_SECONDS.labels(self.method).observe(seconds)
        level = logging.INFO if code == grpc.StatusCode.OK else logging.WARNING
        fields: dict[str, Any] = {
            "method": self.method,
            "code": code.name,
            "ms": round(seconds * 1000, 2),
        }
        if detail:
            fields["detail"] = detail
        log.log(level, "rpc", extra={"fields": fields, "request_id": self.request_id})
        with contextlib.suppress(ValueError):  # finished in another context than it started
            logs.request_id.reset(self.token)


class _Feed:
    """A client stream's messages, read on the loop, handed to the handler's
    thread through a queue at most ``depth`` messages deep (backpressure:
    a busy handler stops the reading, and gRPC's flow control the client)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, depth: int = 2) -> None:
        self.loop = loop
        self.queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self.space = asyncio.Semaphore(depth)

    def put(self, item: object) -> None:
        self.queue.put(item)

    def messages(self) -> Iterator[Any]:
        while True:
            item = self.queue.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            try:
                self.loop.call_soon_threadsafe(self.space.release)
            except RuntimeError:  # the loop has stopped: the server is gone
                return
            yield item


class Bridge(grpc.aio.ServerInterceptor):
    """Serves every method of a server through its caps and idle limits,
    running the threaded handlers on its own thread pools."""

    def __init__(
        self,
        limits: CallLimits,
        authorize: Authorize | None = None,
        check_peer: CheckPeer | None = None,
    ) -> None:
        self.limits = limits
        self.authorize = authorize
        self.check_peer = check_peer
        self.slots = {
            kind: Slots(kind, getattr(limits, kind), limits.setting(kind))
            for kind in (CALLS, UPLOADS, WATCHERS, REFLECTION)
        }
        self.unary_pool = ThreadPoolExecutor(limits.threads, thread_name_prefix="rpc")
        # Every admitted stream finds a thread at once: no stream waits for another.
        self.stream_pool = ThreadPoolExecutor(
            limits.uploads + limits.watchers, thread_name_prefix="stream"
        )

    def close(self) -> None:
        self.unary_pool.shutdown(wait=False, cancel_futures=True)
        self.stream_pool.shutdown(wait=False, cancel_futures=True)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if isinstance(method, bytes):
            method = method.decode()
        if handler is None or method.startswith("/grpc.health."):
            return handler  # health: on the loop, no slot, never refused
        kwargs = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if method.startswith("/grpc.reflection."):
            return grpc.stream_stream_rpc_method_handler(
                self._reflection(method, cast(Any, handler.stream_stream)), **kwargs
            )
        if handler.unary_unary:
            return grpc.stream_unary_rpc_method_handler(
                self._unary(method, handler.unary_unary), **kwargs
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                self._upload(method, handler.stream_unary), **kwargs
            )
        if handler.unary_stream:
            return grpc.stream_stream_rpc_method_handler(
                self._watch(method, handler.unary_stream), **kwargs
            )
        raise TypeError(f"{method}: bidirectional streams are not bridged")

    # -- the parts every kind shares ----------------------------------------

    def _check_peer(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        if self.check_peer is not None:
            refusal = self.check_peer(context.auth_context())
            if refusal:
                raise errors.permission_denied(refusal)

    def _admit(self, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> SyncContext:
        self._check_peer(context)
        sync = SyncContext(context)
        if self.authorize is not None:
            self.authorize(method, cast(grpc.ServicerContext, sync))
        return sync

    def _idle_error(self, method: str, what: str) -> errors.ServiceError:
        return errors.ServiceError(
            grpc.StatusCode.DEADLINE_EXCEEDED,
            f"{_short(method)}: {what} within {self.limits.idle_s:g} s "
            f"({self.limits.prefix}STREAM_IDLE_S); the call is ended",
        )

    async def _read(
        self, method: str, context: grpc.aio.ServicerContext[Any, Any], what: str
    ) -> Any:
        """The next message (or ``EOF``), waiting at most the idle limit;
        bytes that do not parse as the method's message are the caller's
        mistake (INVALID_ARGUMENT), not a crash."""
        try:
            async with asyncio.timeout(self.limits.idle_s):  # no task per read, as wait_for makes
                return await context.read()
        except TimeoutError:
            raise self._idle_error(method, what) from None
        except DecodeError:
            raise errors.invalid_argument(
                f"{_short(method)}: the request is not a valid message of this method "
                "(a client built from other protos?)"
            ) from None

    async def _first(self, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        request = await self._read(method, context, "the request did not arrive")
        if request is EOF:
            raise errors.invalid_argument(f"{_short(method)}: the call ended with no request")
        return request

    async def _in_thread(
        self, pool: ThreadPoolExecutor, slot: Slot, fn: Callable[..., T], *args: Any
    ) -> T:
        """Runs ``fn`` on ``pool`` (with this call's log context); the slot is
        given back when the thread is done, even after the caller has left."""
        run = contextvars.copy_context().run
        try:
            future: Future[T] = pool.submit(run, fn, *args)
        except RuntimeError:  # the pool is shut down
            slot.release()
            raise errors.unavailable("the server is stopping; retry") from None
        future.add_done_callback(slot.release)
        return await asyncio.wrap_future(future)

    # -- one behaviour per kind ---------------------------------------------

    def _one_request(
        self, method: str, kind: str, pool: ThreadPoolExecutor, handle: Callable[[Any, Any], T]
    ) -> Callable[..., Any]:
        """A call that sends one request (unary, or a watcher's): read it
        within the idle limit, then a slot of ``kind`` and a thread of
        ``pool`` run ``handle(request, context)``."""

        async def run(_requests: object, context: grpc.aio.ServicerContext[Any, Any]) -> T:
            call = _Call(method, context)
            try:
                sync = self._admit(method, context)
                request = await self._first(method, context)
                slot = self.slots[kind].take(method)
                if inspect.iscoroutinefunction(handle):
                    try:
                        response = await handle(request, sync)
                    finally:
                        slot.release()
                else:
                    response = await self._in_thread(pool, slot, handle, request, sync)
            except (Exception, asyncio.CancelledError) as exc:
                await call.fail(exc)
            call.finish(grpc.StatusCode.OK)
            return response

        return run

    def _unary(self, method: str, behavior: Callable[[Any, Any], Any]) -> Callable[..., Any]:
        return self._one_request(method, CALLS, self.unary_pool, behavior)

    def _upload(self, method: str, behavior: Callable[[Any, Any], Any]) -> Callable[..., Any]:
        async def run(_requests: object, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            call = _Call(method, context)
            pump: asyncio.Task[None] | None = None
            try:
                sync = self._admit(method, context)
                # Nothing is held until the first message is there.
                first = await self._read(method, context, "the first message did not arrive")
                slot = self.slots[UPLOADS].take(method)
                feed = _Feed(asyncio.get_running_loop())
                if first is EOF:
                    feed.put(_END)
                else:
                    feed.put(first)
                    pump = asyncio.ensure_future(self._pump(method, context, feed))
                response = await self._in_thread(
                    self.stream_pool, slot, behavior, feed.messages(), sync
                )
            except (Exception, asyncio.CancelledError) as exc:
                await call.fail(exc)
            finally:
                if pump is not None:
                    pump.cancel()
            call.finish(grpc.StatusCode.OK)
            return response

        return run

    async def _pump(
        self, method: str, context: grpc.aio.ServicerContext[Any, Any], feed: _Feed
    ) -> None:
        """Reads a client stream into ``feed`` until its end, its idle limit
        or the call's end; the handler's thread sees each as it comes."""
        try:
            while True:
                await feed.space.acquire()
                message = await self._read(method, context, "the client sent nothing")
                feed.put(_END if message is EOF else message)
                if message is EOF:
                    return
        except errors.ServiceError as exc:
            feed.put(exc)
        except asyncio.CancelledError:
            feed.put(errors.ServiceError(grpc.StatusCode.CANCELLED, "the call has ended"))
            raise
        except Exception as exc:  # the stream broke under us
            feed.put(errors.unavailable(f"the request stream broke ({type(exc).__name__})"))

    def _watch(self, method: str, behavior: Callable[[Any, Any], Any]) -> Callable[..., Any]:
        """A server stream: its thread writes each answer through the loop and
        waits for it to be taken, at most the idle limit."""
        idle_s = self.limits.idle_s

        def stream(request: Any, sync: SyncContext) -> None:
            context = sync.aio_context
            for response in behavior(request, sync):
                sent = asyncio.run_coroutine_threadsafe(context.write(response), sync.loop)
                try:
                    sent.result(timeout=idle_s)
                except TimeoutError:  # the client reads nothing: it holds a slot
                    sent.cancel()
                    raise self._idle_error(method, "the client read nothing") from None

        return self._one_request(method, WATCHERS, self.stream_pool, stream)

    def _reflection(
        self, method: str, behavior: Callable[[Any, Any], AsyncIterator[Any]]
    ) -> Callable[..., AsyncIterator[Any]]:
        """Reflection runs on the loop (no thread); its sessions are capped
        and ended when idle, quietly (no log line per session)."""

        async def run(
            _requests: object, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            slot: Slot | None = None
            try:
                self._check_peer(context)
                first = await self._read(method, context, "the client sent nothing")
                if first is EOF:
                    return
                slot = self.slots[REFLECTION].take(method)

                async def requests() -> AsyncIterator[Any]:
                    message = first
                    while message is not EOF:
                        yield message
                        message = await self._read(method, context, "the client sent nothing")

                async for response in behavior(requests(), context):
                    yield response
            except errors.ServiceError as exc:
                await context.abort(exc.code, exc.message)
            finally:
                if slot is not None:
                    slot.release()

        return run
