"""The gRPC front end: ``inference.GRPCInferenceService`` of the Open Inference Protocol.

Uses the protocol's generated modules shipped in ``tritonclient[grpc]`` (``service_pb2``,
``service_pb2_grpc``, ``model_config_pb2``) and a ``grpc.aio`` server on its own event-loop thread,
so a waiting request costs a coroutine, not a thread. Implemented: ServerLive, ServerReady,
ModelReady, ServerMetadata, ModelMetadata, ModelConfig, ModelInfer (the early result, or the final
one with ``apparate_wait_final``) and ModelStreamInfer (per request the early response with
``triton_final_response=false`` and then the final one with ``true``; a single final response when
no ramp releases the request early). Status codes: INVALID_ARGUMENT (bad request, unknown model),
RESOURCE_EXHAUSTED (queue full), UNAVAILABLE (shutting down), DEADLINE_EXCEEDED, INTERNAL, and
UNAUTHENTICATED (missing or wrong bearer token, when one is set). Infer messages are decoded by
the handlers (an undecodable one is INVALID_ARGUMENT, or an error response on a stream that keeps
serving). Optional TLS and bearer token: :mod:`apparate_trt.runtime.server.security`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import logging
import threading
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc

from apparate_trt import __version__
from apparate_trt._optional import require
from apparate_trt.errors import ApparateError
from apparate_trt.runtime.server.codec import (
    InferAnswer,
    RequestError,
    encode_grpc_response,
    parse_grpc_request,
)
from apparate_trt.runtime.server.rest_app import EXTENSIONS
from apparate_trt.runtime.server.security import OPEN_GRPC_METHODS, Security
from apparate_trt.runtime.server.service import (
    DeadlineError,
    InferenceService,
    InternalError,
    Pending,
    collect,
)
from apparate_trt.runtime.server.statuses import error_kind

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 256 * 1024 * 1024
"""The largest gRPC message sent or received (bytes)."""
MAX_PENDING_HEADROOM = 1024
"""Calls gRPC may handle beyond the service's in-flight limit (those get the service's counted
RESOURCE_EXHAUSTED; past the headroom gRPC refuses with RESOURCE_EXHAUSTED itself)."""
MAX_PENDING_CALLS = 65536
"""Calls gRPC core holds for the event loop to take (its default, 1000, cancels the rest silently)."""
STREAM_INFLIGHT = 256
"""Requests of one stream in flight at once; the stream is not read further until one ends."""
STREAM_POLL_S = 0.1
"""How often (seconds) an idle stream checks whether the server is draining."""


def _protocol_modules() -> tuple[Any, Any, Any]:
    pb = require("tritonclient.grpc.service_pb2", extra="serve", purpose="the gRPC server")
    pb_grpc = require("tritonclient.grpc.service_pb2_grpc", extra="serve", purpose="the gRPC server")
    config_pb = require("tritonclient.grpc.model_config_pb2", extra="serve", purpose="the gRPC server")
    return pb, pb_grpc, config_pb


def status_code(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """gRPC status code and metrics outcome code for an error raised while serving a request
    (the one table in :mod:`.statuses`)."""
    kind = error_kind(exc)
    return getattr(grpc.StatusCode, kind.grpc), kind.code


def _bridge(fut: cf.Future, loop: asyncio.AbstractEventLoop) -> asyncio.Future:
    """An asyncio future set when ``fut`` resolves; cancelling it leaves ``fut`` alone."""
    waiter = loop.create_future()

    def wake(_: cf.Future) -> None:
        try:
            loop.call_soon_threadsafe(lambda: waiter.done() or waiter.set_result(None))
        except RuntimeError:  # the loop is closed: nobody waits any more
            pass

    fut.add_done_callback(wake)
    return waiter


async def wait_answer(pending: Pending, final: bool, final_response: bool | None = None) -> InferAnswer:
    """Await every sample's first released (or final) result; the answer (DeadlineError past it)."""
    futures: Sequence[cf.Future] = pending.futures(final)
    loop = asyncio.get_running_loop()
    waiters = [_bridge(f, loop) for f in futures]
    _, not_done = await asyncio.wait(waiters, timeout=max(0.0, pending.remaining_s()))
    if not_done:
        for waiter in not_done:
            waiter.cancel()
        raise DeadlineError(f"no answer within the request timeout of {pending.deadline - pending.t_start:.3g} s")
    return collect(futures, final_response)


def decode_message(cls: Any, raw: bytes, what: str) -> Any:
    """``cls`` parsed from ``raw`` (the message's bytes); RequestError when they are not one."""
    from google.protobuf.message import DecodeError

    try:
        return cls.FromString(raw)
    except (DecodeError, ValueError, TypeError) as exc:
        raise RequestError(
            f"the {what} message cannot be decoded as {cls.DESCRIPTOR.name} ({exc}); "
            f"send a {cls.DESCRIPTOR.name} of the Open Inference Protocol"
        ) from None


def _decoding(method: Any, cls: Any, what: str) -> Any:
    """``method`` behind a decoder: a message that is not a ``cls`` gets INVALID_ARGUMENT."""

    async def handler(raw: bytes, context: Any) -> Any:
        try:
            request = decode_message(cls, raw, what)
        except RequestError as exc:
            await context.abort(status_code(exc)[0], str(exc))
        return await method(request, context)

    return handler


def service_handler(servicer: Any, pb: Any) -> Any:
    """The method table of ``inference.GRPCInferenceService`` over ``servicer``.

    Every method receives its message as bytes and decodes it itself, so that an undecodable
    message is answered with INVALID_ARGUMENT (unary) or an error response on a stream that keeps
    serving, not with the framework's UNKNOWN; the infer methods decode inside their own handling
    (counted in the metrics). Methods not listed (model repository, shared memory, statistics,
    trace) are UNIMPLEMENTED."""
    unary = {
        "ServerLive": (pb.ServerLiveRequest, pb.ServerLiveResponse),
        "ServerReady": (pb.ServerReadyRequest, pb.ServerReadyResponse),
        "ModelReady": (pb.ModelReadyRequest, pb.ModelReadyResponse),
        "ServerMetadata": (pb.ServerMetadataRequest, pb.ServerMetadataResponse),
        "ModelMetadata": (pb.ModelMetadataRequest, pb.ModelMetadataResponse),
        "ModelConfig": (pb.ModelConfigRequest, pb.ModelConfigResponse),
    }
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            _decoding(getattr(servicer, name), req, name),
            request_deserializer=None,
            response_serializer=resp.SerializeToString,
        )
        for name, (req, resp) in unary.items()
    }
    handlers["ModelInfer"] = grpc.unary_unary_rpc_method_handler(
        servicer.ModelInfer, request_deserializer=None, response_serializer=pb.ModelInferResponse.SerializeToString
    )
    handlers["ModelStreamInfer"] = grpc.stream_stream_rpc_method_handler(
        servicer.ModelStreamInfer,
        request_deserializer=None,
        response_serializer=pb.ModelStreamInferResponse.SerializeToString,
    )
    return grpc.method_handlers_generic_handler("inference.GRPCInferenceService", handlers)


class TokenInterceptor(grpc.aio.ServerInterceptor):
    """Refuses, with UNAUTHENTICATED, every call but the open probes that lacks the bearer token
    (metadata ``authorization: Bearer TOKEN``); each refusal is counted in the metrics."""

    def __init__(self, security: Security, service: InferenceService) -> None:
        self.security = security
        self.service = service

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        method = details.method.rsplit("/", 1)[-1]
        metadata = {str(k).lower(): v for k, v in (details.invocation_metadata or ())}
        if method in OPEN_GRPC_METHODS or self.security.authorized(metadata.get("authorization")):
            return await continuation(details)
        self.service.metrics.request_done("grpc", "unauthenticated", 0.0)
        message = "missing or wrong bearer token; send the metadata 'authorization: Bearer TOKEN'"

        async def deny(request: Any, context: Any) -> None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

        if method == "ModelStreamInfer":
            return grpc.stream_stream_rpc_method_handler(deny)
        return grpc.unary_unary_rpc_method_handler(deny)


def _client_timeout(context: Any) -> float | None:
    remaining = context.time_remaining()
    return remaining if remaining is not None and remaining > 0 else None


def make_servicer(service: InferenceService, pb: Any, pb_grpc: Any, config_pb: Any) -> Any:
    """The GRPCInferenceService implementation over ``service``."""
    spec = service.spec

    class Servicer(pb_grpc.GRPCInferenceServiceServicer):
        async def ServerLive(self, request: Any, context: Any) -> Any:  # noqa: N802 - protocol names
            return pb.ServerLiveResponse(live=True)

        async def ServerReady(self, request: Any, context: Any) -> Any:  # noqa: N802
            return pb.ServerReadyResponse(ready=service.ready)

        async def ModelReady(self, request: Any, context: Any) -> Any:  # noqa: N802
            try:
                service.check_model(request.name, request.version)
            except RequestError:
                return pb.ModelReadyResponse(ready=False)
            return pb.ModelReadyResponse(ready=service.ready)

        async def ServerMetadata(self, request: Any, context: Any) -> Any:  # noqa: N802
            return pb.ServerMetadataResponse(name="apparate_trt", version=__version__, extensions=EXTENSIONS)

        async def ModelMetadata(self, request: Any, context: Any) -> Any:  # noqa: N802
            try:
                service.check_model(request.name, request.version)
            except RequestError as exc:
                await context.abort(status_code(exc)[0], str(exc))

            def tensor(t: Any) -> Any:
                return pb.ModelMetadataResponse.TensorMetadata(name=t.name, datatype=t.datatype, shape=list(t.shape))

            return pb.ModelMetadataResponse(
                name=spec.name,
                versions=[spec.version],
                platform=spec.platform,
                inputs=[tensor(t) for t in spec.inputs],
                outputs=[tensor(spec.output)],
            )

        async def ModelConfig(self, request: Any, context: Any) -> Any:  # noqa: N802
            try:
                service.check_model(request.name, request.version)
            except RequestError as exc:
                await context.abort(status_code(exc)[0], str(exc))

            def entry(t: Any, cls: Any) -> Any:
                return cls(
                    name=t.name, data_type=config_pb.DataType.Value("TYPE_" + t.datatype), dims=list(t.shape[1:])
                )

            config = config_pb.ModelConfig(
                name=spec.name,
                platform=spec.platform,
                max_batch_size=service.max_batch,
                input=[entry(t, config_pb.ModelInput) for t in spec.inputs],
                output=[entry(spec.output, config_pb.ModelOutput)],
            )
            return pb.ModelConfigResponse(config=config)

        async def ModelInfer(self, raw: bytes, context: Any) -> Any:  # noqa: N802
            t0 = time.monotonic()
            code, failure, status = "ok", None, grpc.StatusCode.INTERNAL
            try:
                with service.tracked():
                    request = decode_message(pb.ModelInferRequest, raw, "ModelInfer")
                    service.check_model(request.model_name, request.model_version)
                    infer = parse_grpc_request(request, spec, service.max_batch)
                    pending = service.submit(infer, _client_timeout(context))
                    answer = await wait_answer(pending, final=infer.wait_final)
                    return encode_grpc_response(spec, infer.id, answer, pb)
            except ApparateError as exc:
                failure = exc
                status, code = status_code(exc)
            except asyncio.CancelledError:
                code = "disconnected"
                raise
            except Exception as exc:  # noqa: BLE001 - a bug must cost one request, not the server
                log.exception("gRPC infer request failed")
                failure, code = InternalError(f"internal server error: {exc}"), "error"
            finally:
                service.metrics.request_done("grpc", code, time.monotonic() - t0)
            await context.abort(status, str(failure))

        async def ModelStreamInfer(self, request_iterator: Any, context: Any) -> AsyncIterator[Any]:  # noqa: N802
            # Backpressure: at most STREAM_INFLIGHT requests of one stream in flight, and answers
            # wait in a bounded queue; a client that sends without reading stops being read.
            out: asyncio.Queue = asyncio.Queue(maxsize=2 * STREAM_INFLIGHT)
            slots = asyncio.Semaphore(STREAM_INFLIGHT)
            tasks: set[asyncio.Task] = set()
            reader_done = asyncio.Event()

            def finished(task: asyncio.Task) -> None:
                tasks.discard(task)
                slots.release()

            async def read() -> None:
                try:
                    async for request in request_iterator:
                        await slots.acquire()
                        task = asyncio.ensure_future(self._stream_one(request, out))
                        tasks.add(task)
                        task.add_done_callback(finished)
                finally:
                    reader_done.set()

            reader = asyncio.ensure_future(read())
            try:
                while True:
                    try:
                        yield await asyncio.wait_for(out.get(), STREAM_POLL_S)
                        continue
                    except asyncio.TimeoutError:
                        pass
                    if not tasks and out.empty() and (reader_done.is_set() or not service.ready):
                        break
            finally:  # normal end: nothing is pending; client gone: its answers are dropped
                reader.cancel()
                for task in list(tasks):
                    task.cancel()

        async def _stream_one(self, raw: bytes, out: asyncio.Queue) -> None:
            """Answer one stream request: early then final response, or one final response; an
            undecodable message gets an error response and the stream goes on."""
            t0 = time.monotonic()
            code = "ok"
            request: Any = None
            try:
                request = decode_message(
                    pb.ModelInferRequest, raw, "ModelStreamInfer"
                )  # first: every error names its id
                with service.tracked():
                    service.check_model(request.model_name, request.model_version)
                    infer = parse_grpc_request(request, spec, service.max_batch)
                    pending = service.submit(infer)
                    first = await wait_answer(pending, final=infer.wait_final)
                    first.final_response = first.last  # a skipped sample's early answer is its last
                    await out.put(
                        pb.ModelStreamInferResponse(infer_response=encode_grpc_response(spec, infer.id, first, pb))
                    )
                    if not first.last:
                        final = await wait_answer(pending, final=True, final_response=True)
                        await out.put(
                            pb.ModelStreamInferResponse(infer_response=encode_grpc_response(spec, infer.id, final, pb))
                        )
            except ApparateError as exc:
                code = status_code(exc)[1]
                label = (request.id if request is not None else "") or "request"
                await out.put(pb.ModelStreamInferResponse(error_message=f"{label}: {exc}"))
            except asyncio.CancelledError:
                code = "disconnected"
                raise
            except Exception as exc:  # noqa: BLE001
                log.exception("gRPC stream request failed")
                code = "error"
                await out.put(pb.ModelStreamInferResponse(error_message=f"internal server error: {exc}"))
            finally:
                service.metrics.request_done("grpc_stream", code, time.monotonic() - t0)

    return Servicer()


class GrpcFrontend:
    """The gRPC listener on its own event-loop thread; binds in :meth:`start`."""

    def __init__(self, service: InferenceService, host: str, port: int, security: Security | None = None) -> None:
        self.service = service
        self.security = security or Security()
        self.host = host
        self.port = int(port)
        self._modules = _protocol_modules()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="apparate-grpc", daemon=True)
        self._server: Any = None
        self._stopping: cf.Future | None = None

    def start(self) -> None:
        """Start the loop thread and the server; ApparateError if the port cannot be bound."""
        self._thread.start()
        try:
            self.port = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result()
        except Exception:
            self._halt_loop()
            raise

    async def _start(self) -> int:
        pb, pb_grpc, config_pb = self._modules
        model_cap = self.service.spec.max_request_bytes(self.service.max_batch)
        receive = MAX_MESSAGE_BYTES if model_cap is None else min(MAX_MESSAGE_BYTES, 2 * model_cap + (1 << 20))
        options = [
            ("grpc.max_receive_message_length", receive),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),  # a taken port must fail, not be shared
            # Calls that arrived and wait for the event loop to take them. gRPC core's default
            # (1000) cancels the rest with a bare CANCELLED that no handler sees: a burst of 3000
            # calls on one channel lost about 700 that way. Past the service's in-flight limit a
            # handler refuses a call itself, with RESOURCE_EXHAUSTED, counted.
            ("grpc.server.max_pending_requests", MAX_PENDING_CALLS),
            ("grpc.server.max_pending_requests_hard_limit", MAX_PENDING_CALLS),
        ]
        interceptors = [TokenInterceptor(self.security, self.service)] if self.security.token is not None else []
        # gRPC's own bound on calls being handled, above the service's in-flight limit (which
        # refuses first, counted): it caps the memory of messages received before a handler runs.
        server = grpc.aio.server(
            options=options,
            interceptors=interceptors,
            maximum_concurrent_rpcs=self.service.max_inflight + MAX_PENDING_HEADROOM,
        )
        server.add_generic_rpc_handlers((service_handler(make_servicer(self.service, pb, pb_grpc, config_pb), pb),))
        address = f"{self.host}:{self.port}"
        try:
            if self.security.tls:
                port = server.add_secure_port(address, grpc.ssl_server_credentials([self.security.pem_pair()]))
            else:
                port = server.add_insecure_port(address)
        except RuntimeError as exc:
            raise ApparateError(f"cannot listen for gRPC on {address} ({exc}); choose another --grpc-port") from None
        if not port:
            raise ApparateError(f"cannot listen for gRPC on {address}; choose another --grpc-port")
        await server.start()
        self._server = server
        return int(port)

    def stop_accepting(self, grace_s: float) -> None:
        """Refuse new RPCs now; running ones get up to ``grace_s`` seconds (see :meth:`close`)."""
        if self._server is not None and self._stopping is None:
            self._stopping = asyncio.run_coroutine_threadsafe(self._server.stop(grace_s), self._loop)

    def close(self, timeout_s: float) -> None:
        """Wait for the stop begun by :meth:`stop_accepting`, then end the loop thread."""
        if self._stopping is not None:
            try:
                self._stopping.result(timeout_s)
            except cf.TimeoutError:
                log.warning("gRPC server did not stop within %.1f s", timeout_s)
        self._halt_loop()

    def _halt_loop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10.0)
        if not self._thread.is_alive() and not self._loop.is_closed():
            self._loop.close()
