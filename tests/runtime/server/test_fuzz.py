"""Bounded property-based fuzzing (hypothesis) of the REST and gRPC decoders on a real server:
random bodies, headers, shapes and messages never get a 5xx / INTERNAL / UNKNOWN answer, never go
unanswered, and the server still serves afterwards."""

from __future__ import annotations

import gzip
import http.client
import json
import zlib

import grpc
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from server_helpers import Workload
from tritonclient.grpc import service_pb2 as pb

FUZZ = settings(max_examples=2000, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
DATATYPES = ["FP32", "FP64", "INT64", "INT32", "BOOL", "BYTES", "UINT8", "FP16", "nope", ""]
DIMS = st.one_of(st.integers(-3, 40), st.sampled_from([0, 2**31, 2**62, 2**63 - 1, 10**30]))
VALUES = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(2**70), 2**70),
    st.text(max_size=4),
    st.booleans(),
    st.none(),
)


def _names(workload: Workload) -> list[str]:
    return [t.name for t in workload.manifest.model.inputs]


@st.composite
def rest_request(draw, names: list[str]) -> tuple[bytes, dict[str, str]]:
    """A REST infer body (JSON, binary-extension, compressed, or garbage) and its headers."""
    headers: dict[str, str] = {"Content-Type": "application/json"}
    kind = draw(st.sampled_from(["json", "json", "binary", "garbage"]))
    if kind == "garbage":
        body = draw(st.binary(max_size=512))
    else:
        entries = []
        for _ in range(draw(st.integers(0, 3))):
            entry: dict = {
                "name": draw(st.one_of(st.sampled_from(names), st.text(max_size=6))),
                "datatype": draw(st.sampled_from(DATATYPES)),
                "shape": draw(st.one_of(st.lists(DIMS, max_size=5), VALUES)),
            }
            if kind == "binary":
                entry["parameters"] = {"binary_data_size": draw(st.one_of(st.integers(-2, 600), VALUES))}
            else:
                entry["data"] = draw(
                    st.one_of(st.lists(VALUES, max_size=20), st.lists(st.lists(VALUES, max_size=4), max_size=4), VALUES)
                )
            entries.append(entry)
        doc = draw(
            st.sampled_from(
                [
                    {"inputs": entries},
                    {"inputs": entries, "parameters": draw(st.dictionaries(st.text(max_size=8), VALUES, max_size=3))},
                    {
                        "inputs": entries,
                        "outputs": draw(st.lists(st.dictionaries(st.text(max_size=6), VALUES, max_size=2), max_size=2)),
                    },
                    entries,
                ]
            )
        )
        header = json.dumps(doc).encode()
        body = header
        if kind == "binary":
            body += draw(st.binary(max_size=600))
            headers["Inference-Header-Content-Length"] = draw(
                st.sampled_from([str(len(header)), "-1", "x", str(len(body) + 5)])
            )
    encoding = draw(st.sampled_from([None, None, "gzip", "deflate", "br", "identity"]))
    if encoding is not None:
        headers["Content-Encoding"] = encoding
        if encoding == "gzip" and draw(st.booleans()):
            body = gzip.compress(body)
        elif encoding == "deflate" and draw(st.booleans()):
            body = zlib.compress(body)
    return body, headers


def test_rest_decoder_never_fails_the_server(server, workload: Workload) -> None:
    path = f"/v2/models/{server.spec.name}/infer"
    conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=60)
    seen: set[int] = set()

    @FUZZ
    @given(rest_request(_names(workload)))
    def check(case: tuple[bytes, dict[str, str]]) -> None:
        nonlocal conn
        body, headers = case
        try:
            conn.request("POST", path, body, headers)
            resp = conn.getresponse()
        except (http.client.HTTPException, OSError):
            conn.close()  # the server may close a connection after a refusal: retry once on a new one
            conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=60)
            conn.request("POST", path, body, headers)
            resp = conn.getresponse()
        payload = resp.read()
        seen.add(resp.status)
        assert resp.status < 500, (resp.status, payload[:300], body[:200], headers)
        if resp.status != 200:
            message = json.loads(payload)["error"]
            assert isinstance(message, str) and "\n" not in message
        if resp.getheader("Connection", "").lower() == "close":
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=60)

    check()
    conn.close()
    assert 400 in seen  # the fuzzer did reach the decoder's refusals
    assert server.service.inflight == 0


@st.composite
def grpc_request(draw, names: list[str], model: str) -> bytes:
    """A ModelInferRequest with random names, datatypes, shapes and contents, or random bytes."""
    if draw(st.integers(0, 4)) == 0:
        return draw(st.binary(max_size=256))
    request = pb.ModelInferRequest(
        model_name=draw(st.sampled_from(["", "x", model, model])), id=draw(st.text(max_size=4))
    )
    for _ in range(draw(st.integers(0, 3))):
        tensor = request.inputs.add()
        tensor.name = draw(st.one_of(st.sampled_from(names), st.text(max_size=6)))
        tensor.datatype = draw(st.sampled_from(DATATYPES))
        tensor.shape.extend(draw(st.lists(st.integers(-(2**63), 2**63 - 1) | st.integers(0, 40), max_size=5)))
        if draw(st.booleans()):
            request.raw_input_contents.append(draw(st.binary(max_size=400)))
        else:
            tensor.contents.fp32_contents.extend(draw(st.lists(st.floats(width=32), max_size=20)))
    if draw(st.booleans()):
        request.parameters["apparate_wait_final"].string_param = draw(st.text(max_size=5))
    return request.SerializeToString()


def test_grpc_decoder_never_fails_the_server(server, workload: Workload) -> None:
    names = _names(workload)
    ok_codes = {grpc.StatusCode.INVALID_ARGUMENT}
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")

        @FUZZ
        @given(grpc_request(names, server.spec.name))
        def check(raw: bytes) -> None:
            try:
                infer(raw, timeout=60)
            except grpc.RpcError as err:
                assert err.code() in ok_codes, (err.code(), err.details(), raw[:200])
                assert "\n" not in (err.details() or "")

        check()
        # and a good request still works
        good = pb.ModelInferRequest(model_name=server.spec.name)
        for name, value in workload.batch(0).items():
            tensor = good.inputs.add()
            tensor.name, tensor.datatype = name, "FP32" if value.dtype == np.float32 else "INT64"
            tensor.shape.extend(value.shape)
            good.raw_input_contents.append(value.tobytes())
        assert pb.ModelInferResponse.FromString(infer(good.SerializeToString(), timeout=60)).outputs
    assert server.service.inflight == 0
