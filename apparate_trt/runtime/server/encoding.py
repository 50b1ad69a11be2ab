"""Request bodies as sent: the size caps and the Content-Encoding (gzip, deflate) undone with a
bounded output, so that a small compressed body cannot expand into a large allocation.

Sizes in bytes.
"""

from __future__ import annotations

import zlib

from apparate_trt.runtime.server.codec import RequestError

MAX_BODY_BYTES = 256 * 1024 * 1024
"""The largest request body accepted (bytes, as sent); larger ones get 413."""
MAX_DECODED_BYTES = MAX_BODY_BYTES
"""The largest request body after its Content-Encoding is undone (bytes); past it, 400. A model
whose inputs have fixed sizes gets a tighter cap (:func:`decoded_limit`)."""
JSON_EXPANSION = 16
"""A tensor as JSON text takes up to about this many times its binary size (an FP16 value such as
``-6.103515625e-05, `` is 18 characters for 2 bytes): the body-size cap leaves that much room."""
MAX_GZIP_MEMBERS = 16
"""Gzip members one body may hold (clients send one; thousands of empty ones would make the
decompression quadratic)."""


def decoded_limit(max_request_bytes: int | None) -> int:
    """The decoded-body cap for a model whose largest valid request holds ``max_request_bytes``
    of tensors (None: unbounded by the model): room for it as JSON, at most ``MAX_DECODED_BYTES``."""
    if max_request_bytes is None:
        return MAX_DECODED_BYTES
    return min(MAX_DECODED_BYTES, JSON_EXPANSION * max_request_bytes + (1 << 20))


def decode_body(body: bytes, encoding: str | None, limit: int = MAX_DECODED_BYTES) -> bytes:
    """The request body after its Content-Encoding (gzip or deflate); RequestError otherwise.

    Decompression is streamed and stops as soon as the output passes ``limit`` bytes, so a small
    compressed body cannot expand into a large allocation (a decompression bomb)."""
    encoding = (encoding or "").strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "deflate"):
        raise RequestError(f"unsupported Content-Encoding '{encoding}' (use gzip, deflate or none)")
    try:
        return _inflate(body, 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS, limit, encoding)
    except zlib.error as exc:
        raise RequestError(f"request body is not valid {encoding} data ({exc})") from None


def _inflate(data: bytes, wbits: int, limit: int, encoding: str) -> bytes:
    """Decompress ``data`` (gzip members one after another, or one zlib stream) into at most
    ``limit`` bytes; RequestError past it or on a truncated stream."""
    out = bytearray()
    rest = data
    members = 0
    while rest:
        members += 1
        if members > MAX_GZIP_MEMBERS:
            raise RequestError(f"request body has over {MAX_GZIP_MEMBERS} gzip members; send one gzip stream")
        stream = zlib.decompressobj(wbits)
        pending = rest
        while pending:
            out += stream.decompress(pending, limit + 1 - len(out))
            _check_decoded_size(out, limit)
            pending = stream.unconsumed_tail
            if stream.eof:
                break
        out += stream.flush()
        _check_decoded_size(out, limit)
        if not stream.eof:
            raise RequestError(f"request body is not valid {encoding} data (the stream is truncated)")
        rest = stream.unused_data
        if rest and encoding != "gzip":
            raise RequestError(f"request body has {len(rest)} bytes after the end of its {encoding} stream")
    return out  # bytearray: every reader takes it as bytes, without a second copy


def _check_decoded_size(out: bytearray, limit: int) -> None:
    if len(out) > limit:
        raise RequestError(f"request body decompresses to over {limit} bytes, the limit; send less data per request")
