"""The pure parts of the server: tensor codecs (REST JSON / binary, gRPC) and the metrics text."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as pb

from apparate_trt.runtime.server.codec import (
    InferAnswer,
    ModelSpec,
    RequestError,
    TensorSpec,
    encode_grpc_response,
    encode_http_response,
    parse_grpc_request,
    parse_http_request,
)
from apparate_trt.runtime.server.metrics import Metrics

SPEC = ModelSpec(
    "m", (TensorSpec("x", np.dtype(np.float32), (-1, 2, 3)),), TensorSpec("y", np.dtype(np.float32), (-1, 4)), 4
)


def _binary_body(x: np.ndarray) -> tuple[bytes, int]:
    header = json.dumps(
        {
            "inputs": [
                {"name": "x", "shape": list(x.shape), "datatype": "FP32", "parameters": {"binary_data_size": x.nbytes}}
            ],
            "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
        }
    ).encode()
    return header + x.tobytes(), len(header)


def test_http_binary_round_trip() -> None:
    x = np.arange(12, dtype=np.float32).reshape(2, 2, 3)
    body, n = _binary_body(x)
    request = parse_http_request(body, n)
    np.testing.assert_array_equal(request.inputs["x"], x)
    assert request.inputs["x"].shape == (2, 2, 3) and request.binary_outputs == {"y"}
    out = np.arange(8, dtype=np.float32).reshape(2, 4)
    payload, header_length = encode_http_response(SPEC, request, InferAnswer(out, [3, None], False))
    assert header_length is not None
    doc = json.loads(payload[:header_length])
    assert doc["parameters"] == {"apparate_exit_site": "3,final", "apparate_is_final": False}
    np.testing.assert_array_equal(np.frombuffer(payload[header_length:], np.float32).reshape(2, 4), out)


_HEADER = b'{"inputs": [{"name": "x", "shape": [1, 2, 3], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6]}]}'


@pytest.mark.parametrize(
    "body, header_length, message",
    [
        (b"[1]", None, "JSON object"),
        (b'{"inputs": [{"name": "x", "shape": [1, 2, 3], "datatype": "FP32"}]}', None, "neither 'data' nor"),
        (b'{"inputs": [{"name": "x", "shape": "1", "datatype": "FP32", "data": []}]}', None, "list of integers"),
        (_HEADER + b"xyz", len(_HEADER), "binary bytes that no input claims"),
    ],
)
def test_http_parse_errors(body: bytes, header_length: int | None, message: str) -> None:
    with pytest.raises(RequestError, match=message):
        parse_http_request(body, header_length)


def test_grpc_typed_contents_and_response() -> None:
    request = pb.ModelInferRequest(model_name="m", id="r1")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[1, 2, 3])
    tensor.contents.fp32_contents.extend([0.5] * 6)
    request.parameters["apparate_wait_final"].bool_param = True
    parsed = parse_grpc_request(request)
    assert parsed.wait_final and parsed.id == "r1" and parsed.inputs["x"].shape == (1, 2, 3)
    response = encode_grpc_response(SPEC, "r1", InferAnswer(np.ones((1, 4), np.float32), [None], True, True), pb)
    assert response.parameters["triton_final_response"].bool_param is True
    assert np.frombuffer(response.raw_output_contents[0], np.float32).tolist() == [1.0] * 4


def test_metrics_text_format() -> None:
    metrics = Metrics(
        "m",
        lambda: {
            "queue_depth": 2,
            "unsplit_batches": 3,
            "active_sites": [1, 4],
            "thresholds": {1: 0.25, 4: 0.0},
            "window_accuracy": 0.995,
        },
    )
    metrics.request_done("http", "ok", 0.01)
    text = metrics.render()
    assert 'apparate_requests_total{code="ok",model="m",protocol="http"} 1.0' in text
    assert 'apparate_queue_depth{model="m"} 2.0' in text and 'apparate_active_ramps{model="m"} 2.0' in text
    assert 'apparate_unsplit_batches_total{model="m"} 3.0' in text
    assert 'apparate_request_duration_seconds_bucket{le="0.01",model="m",protocol="http"} 1.0' in text
    assert 'apparate_threshold{model="m",site="1"} 0.25' in text and 'apparate_window_accuracy{model="m"} 0.995' in text
    families = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")]
    assert len(families) == len(set(families)), "a metric family is declared twice"


@pytest.mark.parametrize(
    "datatype, data, fragment",
    [
        ("FP32", [True, False], "holds true at position 0"),
        ("FP32", [0.5, "0.5"], 'holds "0.5" at position 1'),
        ("FP32", [0.5, 1.0, None], "holds null at position 2"),
        ("FP64", [[1.0], [False]], "holds false at position 1"),
        ("INT8", [1.5, 2], "holds 1.5 at position 0"),
        ("INT8", [1, 300], "holds 300 at position 1, outside INT8's range -128..127"),
        ("UINT8", [-1, 0], "outside UINT8's range 0..255"),
        ("INT64", [1, 2.0], "holds 2.0 at position 1"),
        ("BOOL", [True, 1], "holds 1 at position 1"),
        ("BOOL", ["true", True], 'holds "true" at position 0'),
    ],
)
def test_json_data_is_strictly_typed(datatype: str, data: list, fragment: str) -> None:
    from apparate_trt.runtime.server.codec import RequestError, numpy_dtype, tensor_from_values

    with pytest.raises(RequestError) as err:
        tensor_from_values(data, numpy_dtype(datatype, "input 'x'"), (2,), "input 'x'")
    message = str(err.value)
    assert fragment in message and datatype in message and "\n" not in message, message


@pytest.mark.parametrize(
    "datatype, data",
    [
        ("FP32", [1, 2.5]),
        ("FP16", [[0.0], [-3]]),
        ("INT8", [-128, 127]),
        ("UINT64", [0, 2**64 - 1]),
        ("BOOL", [True, False]),
    ],
)
def test_json_data_of_the_right_types_is_read(datatype: str, data: list) -> None:
    from apparate_trt.runtime.server.codec import numpy_dtype, tensor_from_values

    dtype = numpy_dtype(datatype, "x")
    arr = tensor_from_values(data, dtype, (2,), "x")
    assert arr.dtype == dtype and arr.shape == (2,)


def test_grpc_typed_contents_are_range_checked() -> None:
    spec = ModelSpec(
        "m", (TensorSpec("x", np.dtype(np.int8), (-1, 2)),), TensorSpec("y", np.dtype(np.float32), (-1, 4)), 4
    )
    request = pb.ModelInferRequest(model_name="m")
    tensor = request.inputs.add()
    tensor.name, tensor.datatype = "x", "INT8"
    tensor.shape.extend([1, 2])
    tensor.contents.int_contents.extend([1, 300])  # int_contents holds int32: 300 fits it, not INT8
    with pytest.raises(RequestError, match="holds 300 at position 1, outside INT8's range"):
        parse_grpc_request(request, spec, 4)
