"""One replica of a replicated service: an Engine of its own, answering one request as a stream.

:class:`EngineReplica` is plain Python (no Ray in it): it loads the engine directory with its own
batching, executor and controller, and :meth:`EngineReplica.infer` answers one request (a batch
of samples) as an async stream of events, each sample's early result as soon as a ramp releases
it and its final one after. :func:`replica_deployment` wraps the class as a Ray Serve deployment
(:mod:`.deploy` runs it); the ingress side reads the stream in :mod:`.remote_engine`.

Events are plain dicts (picklable, stable across Ray versions):

- ``{"kind": "early" | "final", "index": i, "result": Result}``: sample ``i``'s result;
- ``{"kind": "error", "index": i | None, "error": CODE, "message": str}``: sample ``i`` (None:
  every sample not yet answered) failed; ``CODE`` is one of :data:`ERROR_CODES`.

:meth:`EngineReplica.stats` answers ``{"kind": "stats", "replica": ID, "stats": dict}`` (the
numbers ``/metrics`` reads), which the ingress asks every replica for at a scrape.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import logging
import os
import uuid
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from apparate_trt.errors import ApparateError
from apparate_trt.runtime.batching import BatcherClosedError, OverloadError, RequestTimeoutError
from apparate_trt.runtime.config import EngineConfig
from apparate_trt.runtime.gc_freeze import freeze_after_load

log = logging.getLogger(__name__)

ERROR_CODES = ("overloaded", "closed", "invalid", "timeout", "internal")
"""What an error event can say: the queue was full, the replica is stopping, the request does not
fit the model, it waited past its timeout, or the engine failed on it."""


def error_code(exc: BaseException) -> str:
    """The event's error code for an exception from the engine."""
    if isinstance(exc, OverloadError):
        return "overloaded"
    if isinstance(exc, BatcherClosedError):
        return "closed"
    if isinstance(exc, RequestTimeoutError):
        return "timeout"
    if isinstance(exc, ApparateError):
        return "invalid"
    return "internal"


def raise_priority(niceness: int = 0) -> bool:
    """Bring this thread (and the threads it starts) to ``niceness``; True if it is there.

    Ray starts workers at niceness 15 unless ``RAY_worker_niceness`` says otherwise; lowering it
    needs the privilege to (CAP_SYS_NICE or RLIMIT_NICE), else the replica stays where it is."""
    try:
        current = os.nice(0)
        if current > niceness:
            os.setpriority(os.PRIO_PROCESS, 0, niceness)  # Linux: the calling thread
        return os.nice(0) <= niceness
    except (AttributeError, OSError):
        return False


def replica_gauges(engine: Any) -> dict[str, Any]:
    """The engine's numbers as the server's ``/metrics`` reads them (``Engine.stats()``, the
    learning figures flattened, the controller's window accuracy): picklable, O(1)."""
    from apparate_trt.runtime.server.metrics import engine_gauges

    return {k: v for k, v in engine_gauges(engine).items() if k != "learning"}


class EngineReplica:
    """An Engine that answers requests as event streams (one replica of a replicated service).

    Args:
        engine_dir: the engine directory; every replica's node must see it at this path.
        config: the engine's settings (:class:`~apparate_trt.runtime.config.EngineConfig`; None:
            the defaults). ``threads`` is this replica's share of the cores.
        replica_id: a name for this replica in stats events (None: Ray Serve's replica id when
            run under it, else a random one).
    """

    def __init__(self, engine_dir: str | Path, config: EngineConfig | None = None, replica_id: str | None = None):
        from apparate_trt.runtime.api import load

        self.replica_id = replica_id or _serve_replica_id() or f"{os.getpid()}-{uuid.uuid4().hex[:6]}"
        unniced = raise_priority()
        self.engine = load(engine_dir, config or EngineConfig())  # its threads inherit this thread's priority
        freeze_after_load()  # the replica's process serves: full GC collections skip what loading made
        if not unniced:
            log.warning(
                "replica %s runs at niceness %d (Ray's worker niceness) and may starve beside other "
                "processes; start the Ray cluster with RAY_worker_niceness=0",
                self.replica_id,
                os.nice(0),
            )

    async def infer(
        self, inputs: Mapping[str, Any], timeout_ms: float | None = None, wait_final: bool = False
    ) -> AsyncIterator[dict[str, Any]]:
        """Submit one request (``{input name: array with the batch axis first}``) and yield its
        events: each sample's early and final result, or errors (see the module's docstring)."""
        try:
            handles = self.engine.submit_batch(inputs, timeout_ms=timeout_ms, wait_final=wait_final)
        except Exception as exc:  # noqa: BLE001 - every failure becomes an error event
            yield {"kind": "error", "index": None, "error": error_code(exc), "message": str(exc)}
            return
        loop = asyncio.get_running_loop()
        done: asyncio.Queue[tuple[str, int, cf.Future]] = asyncio.Queue()

        def relay(kind: str, index: int) -> Any:
            return lambda fut: loop.call_soon_threadsafe(done.put_nowait, (kind, index, fut))

        for i, handle in enumerate(handles):
            handle.early.add_done_callback(relay("early", i))
            handle.final.add_done_callback(relay("final", i))
        try:
            for _ in range(2 * len(handles)):
                kind, index, fut = await done.get()
                exc = fut.exception()
                if exc is None:
                    yield {"kind": kind, "index": index, "result": fut.result()}
                elif kind == "final":  # the early future holds the same exception: report it once
                    yield {"kind": "error", "index": index, "error": error_code(exc), "message": str(exc)}
        except asyncio.CancelledError:  # the caller went away: drop its samples from their batches
            for handle in handles:
                handle.final.cancel()
            raise

    async def stats(self) -> dict[str, Any]:
        """This replica's numbers now, as a stats event (the ingress broadcasts for them at a scrape)."""
        return {"kind": "stats", "replica": self.replica_id, "stats": replica_gauges(self.engine)}

    async def drain(self) -> int:
        """Dispatch the queue at once, answer every accepted request and close the engine
        (the service's stop broadcasts it); the number of batches this replica ran."""
        await asyncio.to_thread(self.engine.close)
        return int(self.engine.stats().get("batches") or 0)

    def close(self) -> None:
        """Answer every accepted request and release the engine (idempotent)."""
        self.engine.close()

    def __del__(self) -> None:  # Ray Serve stops a replica by dropping it
        engine = getattr(self, "engine", None)
        if engine is not None:
            try:
                engine.close()
            except Exception:  # noqa: BLE001, S110 - nothing to report to at interpreter exit
                pass


def _serve_replica_id() -> str | None:
    """Ray Serve's id of the replica this code runs in, or None outside one."""
    try:
        from ray import serve

        context = serve.get_replica_context()
    except Exception:  # noqa: BLE001 - not under Ray Serve (or no Ray at all)
        return None
    replica = getattr(context, "replica_id", None)
    return str(getattr(replica, "unique_id", None) or getattr(context, "replica_tag", None) or replica or "") or None
