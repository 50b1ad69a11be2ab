"""An open-loop REST load generator for the Open Inference Protocol (``bench_server.py --protocol rest``).

Sample ``i`` is sent at ``arrivals[i]`` whatever the server does (open loop), as one
``POST /v2/models/{name}/infer`` with the inputs in the binary tensor extension (what
tritonclient's HTTP client sends) and a JSON output. Requests travel over a pool of keep-alive
connections (at most ``max_connections``; a new one opens when every open one is busy), on one
asyncio loop in a thread of its own. A request's latency is its response's arrival minus its
scheduled arrival (seconds, monotonic clock), so generator lag counts against the server.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import numpy as np

from apparate_trt.errors import ApparateError

TRITON_DTYPES = {"float32": "FP32", "float16": "FP16", "float64": "FP64", "int64": "INT64", "int32": "INT32"}


class RestResponses:
    """What came back, per request index: completion time (monotonic s), argmax, early or not."""

    def __init__(self, n: int) -> None:
        self.t_done = np.full(n, np.nan)
        self.pred = np.full(n, -1, dtype=np.int32)
        self.early = np.zeros(n, dtype=bool)
        self.errors: dict[str, int] = {}
        self.count = 0
        self.n = n

    def ok(self, index: int, doc: dict[str, Any]) -> None:
        self.t_done[index] = time.monotonic()
        self.pred[index] = int(np.argmax(np.asarray(doc["outputs"][0]["data"])))
        self.early[index] = not bool(doc.get("parameters", {}).get("apparate_is_final", True))
        self.count += 1

    def failed(self, key: str) -> None:
        self.errors[key] = self.errors.get(key, 0) + 1
        self.count += 1


def infer_request(model_name: str, inputs: dict[str, np.ndarray], index: int) -> bytes:
    """The whole HTTP request (head and body) for sample ``index``: binary inputs, JSON output."""
    tensors = []
    raw = []
    for name, value in inputs.items():
        sample = np.ascontiguousarray(value[index : index + 1])
        data = sample.astype(sample.dtype.newbyteorder("<"), copy=False).tobytes()
        tensors.append(
            {
                "name": name,
                "shape": list(sample.shape),
                "datatype": TRITON_DTYPES[str(sample.dtype)],
                "parameters": {"binary_data_size": len(data)},
            }
        )
        raw.append(data)
    header = json.dumps({"id": str(index), "inputs": tensors}).encode()
    body = header + b"".join(raw)
    head = (
        f"POST /v2/models/{model_name}/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Content-Type: application/octet-stream\r\n"
        f"Inference-Header-Content-Length: {len(header)}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """One response: (status, body, whether the server closes the connection)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, body, headers.get("connection", "").lower() == "close"


class _Pool:
    """Idle keep-alive connections to one port; a new one opens while fewer than ``limit`` are open."""

    def __init__(self, port: int, limit: int) -> None:
        self.port = port
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.open = 0
        self.free = asyncio.Semaphore(limit)

    async def take(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        await self.free.acquire()
        if self.idle:
            return self.idle.pop()
        try:
            conn = await asyncio.open_connection("127.0.0.1", self.port)
        except BaseException:
            self.free.release()
            raise
        self.open += 1
        return conn

    def give(self, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter], reuse: bool) -> None:
        if reuse:
            self.idle.append(conn)
        else:
            conn[1].close()
            self.open -= 1
        self.free.release()


async def _send_one(pool: _Pool, request: bytes, index: int, out: RestResponses) -> None:
    try:
        conn = await pool.take()
    except OSError as exc:
        out.failed(f"connect: {type(exc).__name__}")
        return
    reuse = False
    try:
        conn[1].write(request)
        status, body, closing = await _read_response(conn[0])
        reuse = not closing
        if status == 200:
            out.ok(index, json.loads(body))
        else:
            out.failed(f"http {status}")
    except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
        out.failed(f"lost: {type(exc).__name__}")
    finally:
        pool.give(conn, reuse)


async def _drive(port: int, requests: list[bytes], arrivals: np.ndarray, limit: int) -> tuple[RestResponses, float]:
    pool = _Pool(port, limit)
    out = RestResponses(len(requests))
    t0 = time.monotonic() + 0.05
    tasks = []
    for i, request in enumerate(requests):
        delay = t0 + float(arrivals[i]) - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(_send_one(pool, request, i, out)))
    await asyncio.gather(*tasks)
    for _, writer in pool.idle:
        writer.close()
    return out, t0


def drive_rest(
    http_port: int,
    model_name: str,
    inputs: dict[str, np.ndarray],
    arrivals: np.ndarray,
    timeout_s: float,
    max_connections: int = 64,
) -> tuple[RestResponses, float]:
    """Send sample ``i`` at ``arrivals[i]`` (s after the start) over REST; wait for every answer.
    Returns the responses and the start time (monotonic s)."""
    requests = [infer_request(model_name, inputs, i) for i in range(arrivals.shape[0])]
    result: list[tuple[RestResponses, float]] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            result.append(asyncio.run(_drive(http_port, requests, arrivals, max_connections)))
        except BaseException as exc:  # noqa: BLE001 - reported on the caller's thread
            failure.append(exc)

    thread = threading.Thread(target=run, name="rest-load", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise ApparateError(f"the REST load did not finish within {timeout_s:.0f} s")
    if failure:
        raise failure[0]
    return result[0]
