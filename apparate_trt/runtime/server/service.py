"""The protocol-independent core of the server: checks requests, submits samples to the engine,
collects their early and final results, and keeps the draining state and in-flight count.

Both front ends (REST in :mod:`.http`, gRPC in :mod:`.grpc`) go through one
:class:`InferenceService`, so requests from every connection land in the Engine's one batcher.
A request with a batch axis of B becomes B engine requests, queued together
(``Engine.submit_batch``: the batch is checked once, there, and its samples are views of it); its
answer is ready when all B samples have a released result (early) or a final one. The protocol
layer (:mod:`.codec`) checks only what it must before decoding: names, datatypes, shapes and sizes
as declared. Times are ``time.monotonic()`` seconds.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from apparate_trt.errors import ApparateError
from apparate_trt.runtime.batching import BatcherClosedError, OverloadError, ReplicaLostError, RequestTimeoutError
from apparate_trt.runtime.server.codec import (
    InferAnswer,
    InferRequest,
    ModelSpec,
    RequestError,
    UnknownModelError,
    check_outputs,
)
from apparate_trt.runtime.server.config import MAX_INFLIGHT
from apparate_trt.runtime.server.metrics import Metrics

log = logging.getLogger(__name__)


class OverloadedError(ApparateError):
    """The engine's queue is full: HTTP 503 with Retry-After, gRPC RESOURCE_EXHAUSTED."""


class UnavailableError(ApparateError):
    """The server is shutting down and accepts no new requests: HTTP 503, gRPC UNAVAILABLE."""


class DeadlineError(ApparateError):
    """The request was not answered within its timeout: HTTP 504, gRPC DEADLINE_EXCEEDED."""


class InternalError(ApparateError):
    """The engine failed on the request: HTTP 500, gRPC INTERNAL."""


def first_released(handle: Any) -> cf.Future:
    """A future resolved by whichever of ``handle.early`` / ``handle.final`` resolves first.

    The engine resolves ``early`` first anyway; this guards against an engine that resolves only
    ``final`` for inputs no ramp releases. The engine's futures are never cancelled here.
    """
    first: cf.Future = cf.Future()

    def relay(done: cf.Future) -> None:
        if first.done():
            return
        try:
            if done.exception() is not None:
                first.set_exception(done.exception())
            else:
                first.set_result(done.result())
        except cf.InvalidStateError:  # the other one won the race
            pass

    handle.early.add_done_callback(relay)
    handle.final.add_done_callback(relay)
    return first


def combine(results: Sequence[Any], final_response: bool | None = None) -> InferAnswer:
    """Stack per-sample engine Results (in batch order) into one answer."""
    output = np.stack([np.asarray(r.output) for r in results])
    sites = [None if r.is_final else r.exit_site for r in results]
    skipped = any(r.skipped for r in results)
    is_last = all(r.is_last for r in results)
    return InferAnswer(
        output, sites, all(r.is_final for r in results), final_response, skipped=skipped, is_last=is_last
    )


def result_error(exc: BaseException) -> ApparateError:
    """The server error for an exception that an engine future holds."""
    if isinstance(exc, RequestTimeoutError):
        return DeadlineError(str(exc))
    if isinstance(exc, OverloadError):  # a replica's queue was full (replicated engines)
        return OverloadedError(str(exc))
    if isinstance(exc, (ReplicaLostError, BatcherClosedError)):
        return UnavailableError(str(exc))
    return InternalError(f"the engine failed on this request: {exc}")


@dataclass
class Pending:
    """A submitted request: one engine handle per sample, and its deadline (monotonic seconds)."""

    request: InferRequest
    handles: list[Any]
    firsts: list[cf.Future]
    t_start: float
    deadline: float

    def futures(self, final: bool) -> list[cf.Future]:
        """The futures to wait for: the final ones, or the first released ones."""
        return [h.final for h in self.handles] if final else self.firsts

    def remaining_s(self) -> float:
        """Seconds left before the deadline (may be negative)."""
        return self.deadline - time.monotonic()

    def deadline_error(self) -> DeadlineError:
        """The error of a request whose deadline passed before its answer."""
        return DeadlineError(f"no answer within the request timeout of {self.deadline - self.t_start:.3g} s")


def collect(futures: Sequence[cf.Future], final_response: bool | None = None) -> InferAnswer:
    """The answer from resolved futures; the server error of the first failed one."""
    results = []
    for fut in futures:
        exc = fut.exception(timeout=0)
        if exc is not None:
            raise result_error(exc)
        results.append(fut.result(timeout=0))
    return combine(results, final_response)


class InferenceService:
    """Checks and submits infer requests; tracks what is in flight for a graceful stop.

    Args:
        engine: a loaded :class:`~apparate_trt.runtime.api.Engine`.
        spec: the model as the protocol shows it.
        metrics: where requests and releases are counted.
        request_timeout_s: the longest a request may take, seconds (a client may ask for less).
        max_batch: the engine's max batch size (reported in the model config).
        max_inflight: requests (over REST and gRPC together) accepted at once; one more is
            refused as overloaded (HTTP 503, gRPC RESOURCE_EXHAUSTED) before it is decoded.
    """

    def __init__(
        self,
        engine: Any,
        spec: ModelSpec,
        metrics: Metrics,
        request_timeout_s: float,
        max_batch: int,
        max_inflight: int = MAX_INFLIGHT,
    ) -> None:
        if not request_timeout_s > 0:
            raise ApparateError(f"request timeout must be > 0 s, got {request_timeout_s}")
        if max_inflight < 1:
            raise ApparateError(f"the in-flight request limit must be at least 1, got {max_inflight}")
        self.max_inflight = int(max_inflight)
        self.engine = engine
        self.spec = spec
        self.metrics = metrics
        self.request_timeout_s = float(request_timeout_s)
        self.max_batch = int(max_batch)
        self._draining = False
        self._inflight = 0
        self._cond = threading.Condition()

    # -------------------------------------------------------------------------------- state
    @property
    def ready(self) -> bool:
        """True while the server accepts requests."""
        return not self._draining

    @property
    def inflight(self) -> int:
        """Requests accepted and not yet answered (or abandoned)."""
        return self._inflight

    def start_draining(self) -> None:
        """Refuse new requests from now on (HTTP 503 / gRPC UNAVAILABLE)."""
        with self._cond:
            self._draining = True
            self._cond.notify_all()

    def wait_idle(self, timeout_s: float) -> bool:
        """Block until no request is in flight (or ``timeout_s`` seconds); True if idle."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._inflight:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    @contextmanager
    def tracked(self) -> Iterator[None]:
        """Count one request in flight for the duration of the block; refuse it while draining
        (UnavailableError) or when ``max_inflight`` requests are in flight (OverloadedError)."""
        with self._cond:
            if self._draining:
                raise UnavailableError(
                    "the server is shutting down and accepts no new requests; retry on another replica"
                )
            if self._inflight >= self.max_inflight:
                raise OverloadedError(f"the server has {self._inflight} requests in flight, its limit; retry shortly")
            self._inflight += 1
            self.metrics.set_inflight(self._inflight)
        try:
            yield
        finally:
            with self._cond:
                self._inflight -= 1
                self.metrics.set_inflight(self._inflight)
                self._cond.notify_all()

    # ----------------------------------------------------------------------------- requests
    def check_model(self, name: str, version: str = "") -> None:
        """UnknownModelError unless ``name`` (and ``version``, if given) is the served model."""
        if name != self.spec.name:
            raise UnknownModelError(f"unknown model '{name}'; this server serves '{self.spec.name}'")
        if version not in ("", self.spec.version):
            raise UnknownModelError(
                f"unknown version '{version}' of model '{name}'; the only version is '{self.spec.version}'"
            )

    def submit(self, request: InferRequest, client_timeout_s: float | None = None) -> Pending:
        """Check ``request`` and submit each of its samples to the engine.

        The deadline is the tightest of the server's request timeout, the request's ``timeout``
        parameter and ``client_timeout_s`` (e.g. a gRPC deadline).

        Raises:
            RequestError: the request does not fit the model (nothing is submitted).
            OverloadedError: the engine's queue has no room for every sample (nothing is submitted).
            UnavailableError: the engine is closed.
        """
        t_start = time.monotonic()
        check_outputs(self.spec, request.outputs)
        timeout_s = min(t for t in (self.request_timeout_s, request.timeout_s, client_timeout_s) if t is not None)
        try:
            handles = self.engine.submit_batch(
                request.inputs, timeout_ms=timeout_s * 1000.0, wait_final=request.wait_final
            )
        except OverloadError as exc:
            raise OverloadedError(str(exc)) from None
        except BatcherClosedError as exc:
            raise UnavailableError(str(exc)) from None
        except ApparateError as exc:
            raise RequestError(f"{exc} (model '{self.spec.name}')") from None
        for handle in handles:
            self.metrics.watch(handle)
        return Pending(request, handles, [first_released(h) for h in handles], t_start, t_start + timeout_s)

    def wait(self, pending: Pending, final: bool, final_response: bool | None = None) -> InferAnswer:
        """Block until every sample has its (first released or final) result; the answer.

        Raises:
            DeadlineError: the deadline passed first (the engine's late answers are dropped).
            InternalError: the engine failed on a sample.
        """
        futures = pending.futures(final)
        _, not_done = cf.wait(futures, timeout=max(0.0, pending.remaining_s()))
        if not_done:
            raise pending.deadline_error()
        return collect(futures, final_response)

    async def wait_async(self, pending: Pending, final: bool, final_response: bool | None = None) -> InferAnswer:
        """:meth:`wait` for an event loop: awaits the results without blocking the loop.

        Raises:
            DeadlineError: the deadline passed first (the engine's late answers are dropped).
            InternalError: the engine failed on a sample.
        """
        futures = pending.futures(final)
        done = all_done(futures, asyncio.get_running_loop())
        try:
            await asyncio.wait_for(asyncio.shield(done), timeout=max(0.0, pending.remaining_s()))
        except TimeoutError:
            raise pending.deadline_error() from None
        return collect(futures, final_response)


def all_done(futures: Sequence[cf.Future], loop: asyncio.AbstractEventLoop) -> asyncio.Future:
    """An asyncio future on ``loop``, resolved once every one of ``futures`` (resolved on any
    thread) is done. The futures themselves are never cancelled; a loop closed meanwhile is ignored."""
    waiter: asyncio.Future = loop.create_future()
    left = [len(futures)]
    lock = threading.Lock()

    def resolve() -> None:
        if not waiter.done():
            waiter.set_result(None)

    def one_done(_: cf.Future) -> None:
        with lock:
            left[0] -= 1
            last = left[0] == 0
        if last:
            try:
                loop.call_soon_threadsafe(resolve)
            except RuntimeError:  # the loop is closed: nobody waits any more
                pass

    if not futures:
        resolve()
    for fut in futures:
        fut.add_done_callback(one_done)
    return waiter
