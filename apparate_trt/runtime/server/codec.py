"""Tensors to and from the Open Inference Protocol (KServe v2), over REST (JSON + binary) and gRPC.

Pure functions and small value types, no I/O: the HTTP and gRPC front ends parse a request into an
:class:`InferRequest` (named numpy arrays, batch axis first), the service checks it against the
model's :class:`ModelSpec`, and the answer goes back through :func:`encode_http_response` or
:func:`encode_grpc_response`.

Every problem with a request raises :class:`RequestError` (HTTP 400, gRPC INVALID_ARGUMENT) with a
one-line message that names the offending tensor or field.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tritonclient.utils import np_to_triton_dtype, triton_to_np_dtype

from apparate_trt.errors import ApparateError

SUPPORTED_DATATYPES = (
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
)
"""The KServe v2 datatypes a request may use; their numpy dtypes come from ``tritonclient.utils``
(BYTES is not used by classifiers, BF16 has no numpy dtype: both are refused)."""

# gRPC InferTensorContents field holding each datatype's values (when raw contents are not used).
_GRPC_CONTENTS: dict[str, str] = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}

WAIT_FINAL_PARAM = "apparate_wait_final"
"""Request parameter (bool): answer with the final result instead of the early one."""
EXIT_SITE_PARAM = "apparate_exit_site"
"""Response parameter (string): the releasing site id per sample, or ``final``; comma-separated."""
IS_FINAL_PARAM = "apparate_is_final"
"""Response parameter (bool): every sample's answer is the full model's output."""
SKIPPED_PARAM = "apparate_skipped"
"""Response parameter (skip mode): true when a sample left the batch at its ramp, so the answer is
its last and no final one follows."""
FINAL_RESPONSE_PARAM = "triton_final_response"
"""Response parameter (bool) of a decoupled stream: true on a request's last response."""
TIMEOUT_PARAM = "timeout"
"""Request parameter (int, microseconds), as tritonclient sends it: a tighter per-request timeout."""


MAX_DIM = 2**31 - 1
"""The largest size of one tensor dimension a request may declare."""
MAX_TENSOR_BYTES = 256 * 1024 * 1024
"""The most bytes one decoded input tensor may take (its declared shape times its itemsize)."""
MAX_JSON_BYTES = 64 * 1024 * 1024
"""The largest JSON part of a REST request (bytes): parsed JSON takes about 7 times its size in
memory, so larger tensors must travel as binary data (``binary_data_size``)."""


def one_line(message: str) -> str:
    """``message`` with its control characters escaped (``\\n`` for a newline): a name a client
    sent cannot break an error message into lines."""
    if message.isprintable():
        return message
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in message)


class RequestError(ApparateError):
    """A request the server cannot serve as sent (HTTP 400, gRPC INVALID_ARGUMENT); its message is
    kept on one line (:func:`one_line`)."""

    def __init__(self, message: str) -> None:
        super().__init__(one_line(str(message)))


class UnknownModelError(RequestError):
    """The request names a model or version this server does not serve."""


def numpy_dtype(datatype: str, where: str) -> np.dtype:
    """The numpy dtype of a protocol datatype name such as ``FP32``; RequestError if unsupported."""
    name = str(datatype).upper()
    if name not in SUPPORTED_DATATYPES:
        supported = ", ".join(SUPPORTED_DATATYPES)
        raise RequestError(f"{where}: datatype '{datatype}' is not supported (use one of {supported})")
    return np.dtype(triton_to_np_dtype(name))


def protocol_datatype(dtype: np.dtype | str) -> str:
    """The protocol datatype name (``FP32``) of a numpy dtype or dtype name (``float32``)."""
    try:
        name = np_to_triton_dtype(np.dtype(dtype))
    except TypeError:
        name = None
    if name not in SUPPORTED_DATATYPES:
        raise ApparateError(f"dtype '{dtype}' has no Open Inference Protocol datatype")
    return name


@dataclass(frozen=True)
class TensorSpec:
    """A model tensor as the protocol shows it: ``shape`` has the batch axis first, -1 = any size."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]

    @property
    def datatype(self) -> str:
        """The protocol datatype name, e.g. ``FP32``."""
        return protocol_datatype(self.dtype)

    def metadata(self) -> dict[str, Any]:
        """The ``{name, datatype, shape}`` entry of model metadata."""
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


def _protocol_shape(shape: Sequence[Any]) -> tuple[int, ...]:
    """Manifest shape (ints, symbolic names, None) -> protocol shape (-1 for every non-fixed dim)."""
    dims = [int(d) if isinstance(d, (int, np.integer)) and int(d) > 0 else -1 for d in shape]
    if dims:
        dims[0] = -1  # the batch axis
    return tuple(dims)


def _attr(obj: Any, key: str) -> Any:
    return obj[key] if isinstance(obj, Mapping) else getattr(obj, key)


@dataclass(frozen=True)
class ModelSpec:
    """What the server exposes of a compiled model: its name, inputs and the score output."""

    name: str
    inputs: tuple[TensorSpec, ...]
    output: TensorSpec
    num_classes: int
    version: str = "1"
    platform: str = "apparate_trt"

    @classmethod
    def from_manifest(cls, manifest: Any, name: str | None = None) -> ModelSpec:
        """Build from an engine directory's manifest (``read_manifest``'s object or the JSON dict)."""
        model = _attr(manifest, "model")
        specs = []
        for tensor in _attr(model, "inputs"):
            specs.append(
                TensorSpec(
                    _attr(tensor, "name"), np.dtype(_attr(tensor, "dtype")), _protocol_shape(_attr(tensor, "shape"))
                )
            )
        out_name = _attr(model, "output")
        num_classes = int(_attr(model, "num_classes"))
        out_dtype = np.dtype(np.float32)
        for tensor in _attr(model, "outputs"):
            if _attr(tensor, "name") == out_name:
                out_dtype = np.dtype(_attr(tensor, "dtype"))
        output = TensorSpec(out_name, out_dtype, (-1, num_classes))
        return cls(name or str(_attr(model, "name")), tuple(specs), output, num_classes)

    def max_request_bytes(self, max_batch: int) -> int | None:
        """Bytes of the largest valid request's tensors (``max_batch`` samples of every input), or
        None when a non-batch dimension is dynamic (no bound follows from the model)."""
        total = 0
        for t in self.inputs:
            dims = t.shape[1:]
            if any(d < 0 for d in dims):
                return None
            total += int(max_batch) * math.prod(dims) * t.dtype.itemsize
        return total

    def metadata(self) -> dict[str, Any]:
        """The model metadata object of the protocol (``GET /v2/models/{name}``)."""
        return {
            "name": self.name,
            "versions": [self.version],
            "platform": self.platform,
            "inputs": [t.metadata() for t in self.inputs],
            "outputs": [self.output.metadata()],
        }

    def config(self, max_batch: int) -> dict[str, Any]:
        """A minimal Triton-style model configuration (``GET /v2/models/{name}/config``)."""

        def entry(t: TensorSpec) -> dict[str, Any]:
            return {"name": t.name, "data_type": "TYPE_" + t.datatype, "dims": list(t.shape[1:])}

        return {
            "name": self.name,
            "platform": self.platform,
            "max_batch_size": int(max_batch),
            "input": [entry(t) for t in self.inputs],
            "output": [entry(self.output)],
            "model_transaction_policy": {"decoupled": False},
        }


@dataclass
class InferRequest:
    """A parsed infer request: inputs as numpy arrays with the batch axis first."""

    inputs: dict[str, np.ndarray]
    id: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)
    outputs: list[str] | None = None  # requested output names; None: all
    binary_outputs: set[str] = field(default_factory=set)  # HTTP: outputs to send as binary data

    @property
    def wait_final(self) -> bool:
        """True if the client asked for the final result (``apparate_wait_final``)."""
        return _truthy(self.parameters.get(WAIT_FINAL_PARAM, False))

    @property
    def timeout_s(self) -> float | None:
        """The client's own timeout in seconds (``timeout`` parameter, microseconds), or None."""
        value = self.parameters.get(TIMEOUT_PARAM)
        if value is None or isinstance(value, bool):
            return None
        try:
            micros = float(value)
        except (TypeError, ValueError, OverflowError):
            raise RequestError(f"request parameter 'timeout' must be a number of microseconds, got {value!r}") from None
        if not math.isfinite(micros):
            raise RequestError(f"request parameter 'timeout' must be a finite number of microseconds, got {value!r}")
        return micros / 1e6 if micros > 0 else None


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


@dataclass
class InferAnswer:
    """The server's answer to one infer request (all its samples)."""

    output: np.ndarray  # [batch, classes]
    exit_sites: list[int | None]  # per sample: releasing site id, None for the final layer
    is_final: bool  # True when every sample's answer is the final output
    final_response: bool | None = None  # streams: value of triton_final_response (None: not sent)
    skipped: bool = False  # skip mode: some sample left the batch at its ramp (no final follows for it)
    is_last: bool | None = None  # every sample's answer is its last (None: as is_final)

    @property
    def last(self) -> bool:
        """True when no further answer follows for any sample (final, or skipped at its ramp)."""
        return self.is_final if self.is_last is None else bool(self.is_last)

    def parameters(self) -> dict[str, Any]:
        """The response parameters: exit site(s), finality, skips and (streams) the final-response flag."""
        params: dict[str, Any] = {
            EXIT_SITE_PARAM: ",".join("final" if s is None else str(s) for s in self.exit_sites),
            IS_FINAL_PARAM: bool(self.is_final),
        }
        if self.skipped:
            params[SKIPPED_PARAM] = True
        if self.final_response is not None:
            params[FINAL_RESPONSE_PARAM] = bool(self.final_response)
        return params


# ------------------------------------------------------------------------------------ checking
def _shape_matches(shape: Sequence[int], expected: Sequence[int]) -> bool:
    return len(shape) == len(expected) and all(e < 0 or s == e for s, e in zip(shape, expected))


def check_outputs(spec: ModelSpec, requested: Iterable[str] | None) -> None:
    """RequestError if a requested output is not the model's score output."""
    for name in requested or ():
        if name != spec.output.name:
            raise RequestError(f"unknown output '{name}' for model '{spec.name}' (its output: {spec.output.name})")


# ----------------------------------------------------------------------------------- tensors
def _shape_of(raw: Any, where: str) -> tuple[int, ...]:
    if not isinstance(raw, (list, tuple)) or not all(isinstance(d, int) and not isinstance(d, bool) for d in raw):
        raise RequestError(f"{where}: 'shape' must be a list of integers, got {raw!r}")
    if any(d < 0 for d in raw):
        raise RequestError(f"{where}: 'shape' {list(raw)} has a negative dimension")
    if any(d > MAX_DIM for d in raw):
        raise RequestError(f"{where}: 'shape' {list(raw)} has a dimension over {MAX_DIM}")
    return tuple(raw)


def tensor_nbytes(shape: Sequence[int], dtype: np.dtype, where: str) -> int:
    """Bytes a tensor of ``shape`` and ``dtype`` takes, in exact integer arithmetic (no overflow);
    RequestError past :data:`MAX_TENSOR_BYTES`, before anything is allocated."""
    nbytes = math.prod(int(d) for d in shape) * dtype.itemsize
    if nbytes > MAX_TENSOR_BYTES:
        raise RequestError(
            f"{where}: shape {list(shape)} of {protocol_datatype(dtype)} needs {nbytes} bytes, "
            f"over the limit of {MAX_TENSOR_BYTES} per tensor; send smaller batches"
        )
    return nbytes


def check_declared(
    spec: ModelSpec, max_batch: int | None, name: str, dtype: np.dtype, shape: tuple[int, ...], where: str
) -> None:
    """Check one input's declared name, datatype and shape against the model (and its batch
    against ``max_batch``) before its data is decoded; RequestError otherwise."""
    expected = {t.name: t for t in spec.inputs}
    t = expected.get(name)
    if t is None:
        raise RequestError(f"unknown input '{name}' for model '{spec.name}' (its inputs: {', '.join(expected)})")
    if dtype != t.dtype:
        raise RequestError(f"{where} has datatype {protocol_datatype(dtype)}, expected {t.datatype}")
    if not _shape_matches(shape, t.shape):
        raise RequestError(f"{where} has shape {list(shape)}, expected {list(t.shape)} (-1: any size, batch first)")
    if max_batch is not None and shape and shape[0] > max_batch:
        raise RequestError(
            f"{where} has a batch of {shape[0]}, over the model's maximum batch of {max_batch}; split the request"
        )


def _claim_name(seen: Iterable[str], name: str, where: str) -> None:
    """RequestError when ``name`` is among the inputs already given (the protocol names each once)."""
    if name in seen:
        raise RequestError(f"{where}: input '{name}' is given twice; send each input once")


def tensor_from_values(values: Any, dtype: np.dtype, shape: tuple[int, ...], where: str) -> np.ndarray:
    """Array of ``shape`` from JSON data (flat or nested list); RequestError on a size mismatch."""
    count = tensor_nbytes(shape, dtype, where) // dtype.itemsize
    flat = _flatten(values, where)
    check_value_types(flat, dtype, where)
    try:
        arr = np.asarray(flat, dtype=dtype)
    except (TypeError, ValueError, OverflowError) as exc:
        raise RequestError(f"{where}: 'data' cannot be read as {protocol_datatype(dtype)} ({exc})") from None
    if arr.size != count:
        raise RequestError(f"{where}: 'data' holds {arr.size} values but shape {list(shape)} needs {count}")
    return arr.reshape(shape)


MAX_NESTING = 64
"""The deepest nesting of lists a tensor's JSON 'data' may have (a tensor has at most a few dims)."""


def _flatten(values: Any, where: str) -> list[Any]:
    """The values of JSON ``data`` (a scalar, a flat list or nested lists) in row-major order."""
    if not isinstance(values, list):
        return [values]
    if not any(isinstance(v, list) for v in values):
        return values
    flat: list[Any] = []
    stack = [iter(values)]
    while stack:
        for v in stack[-1]:
            if isinstance(v, list):
                if len(stack) >= MAX_NESTING:
                    raise RequestError(f"{where}: 'data' nests lists over {MAX_NESTING} deep; send a flat list")
                stack.append(iter(v))
                break
            flat.append(v)
        else:
            stack.pop()
    return flat


def _describe(value: Any) -> str:
    """A JSON value as the client wrote it, shortened (for error messages)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = json.dumps(value) if isinstance(value, (str, int, float)) else type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."


def check_value_types(flat: Sequence[Any], dtype: np.dtype, where: str) -> None:
    """RequestError naming the first value of ``flat`` that ``dtype`` does not take, and where.

    FP16/FP32/FP64 take JSON numbers (not booleans, strings or null); INT and UINT types take
    integers within the type's range; BOOL takes true and false only."""
    kinds = set(map(type, flat))
    name = protocol_datatype(dtype)
    if dtype.kind == "f":
        ok: tuple[type, ...] = (int, float)
        hint = "send a JSON number for every value (no booleans, strings or null)"
    elif dtype.kind in "iu":
        ok = (int,)
        hint = f"send a JSON integer in {np.iinfo(dtype).min}..{np.iinfo(dtype).max} for every value"
    elif dtype.kind == "b":
        ok = (bool,)
        hint = "send true or false for every value"
    else:
        return
    if not kinds <= set(ok):
        for i, v in enumerate(flat):
            if type(v) not in ok:
                raise RequestError(f"{where}: 'data' holds {_describe(v)} at position {i}, not valid {name}; {hint}")
    if dtype.kind in "iu" and flat:
        info = np.iinfo(dtype)
        low, high = min(flat), max(flat)
        if low < info.min or high > info.max:
            bad = low if low < info.min else high
            i = list(flat).index(bad)
            raise RequestError(
                f"{where}: 'data' holds {bad} at position {i}, outside {name}'s range {info.min}..{info.max}; "
                "send values that fit the datatype"
            )


def tensor_from_bytes(raw: bytes, dtype: np.dtype, shape: tuple[int, ...], where: str) -> np.ndarray:
    """Array of ``shape`` from little-endian raw bytes; RequestError on a size mismatch."""
    need = tensor_nbytes(shape, dtype, where)
    count = need // dtype.itemsize
    if len(raw) != need:
        raise RequestError(
            f"{where}: binary data has {len(raw)} bytes but shape {list(shape)} of {protocol_datatype(dtype)} "
            f"needs {need}"
        )
    return np.frombuffer(raw, dtype=dtype.newbyteorder("<"), count=count).astype(dtype, copy=True).reshape(shape)


# --------------------------------------------------------------------------------------- REST
def parse_http_request(
    body: bytes, header_length: int | None = None, spec: ModelSpec | None = None, max_batch: int | None = None
) -> InferRequest:
    """Parse a REST infer body: JSON, or with the binary tensor extension a JSON header of
    ``header_length`` bytes followed by the inputs' raw bytes (``binary_data_size`` each).

    With ``spec`` (and ``max_batch``), each input's name, datatype and shape are checked against
    the model before its data is decoded; every input is named once, and no tensor may need more
    than :data:`MAX_TENSOR_BYTES`."""
    if header_length is not None:
        if header_length < 0 or header_length > len(body):
            raise RequestError(f"Inference-Header-Content-Length {header_length} exceeds the body's {len(body)} bytes")
        header_bytes, binary = body[:header_length], body[header_length:]
    else:
        header_bytes, binary = body, b""
    if len(header_bytes) > MAX_JSON_BYTES:
        raise RequestError(
            f"the request's JSON is {len(header_bytes)} bytes, over the limit of {MAX_JSON_BYTES}; "
            "send the tensors as binary data (binary_data_size) or in smaller requests"
        )
    try:
        doc = json.loads(header_bytes)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise RequestError(f"request body is not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise RequestError("request body must be a JSON object with an 'inputs' list")
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise RequestError("request body needs a non-empty 'inputs' list")
    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise RequestError("request 'parameters' must be a JSON object")
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for i, entry in enumerate(raw_inputs):
        name = _name_of(entry, f"inputs[{i}]")
        _claim_name(inputs, name, f"inputs[{i}]")
        array, used = _http_input(entry, name, binary, offset, spec, max_batch)
        offset += used
        inputs[name] = array
    if offset != len(binary):
        raise RequestError(f"the body carries {len(binary) - offset} binary bytes that no input claims")
    outputs, binary_outputs = _http_outputs(doc.get("outputs"), _truthy(params.get("binary_data_output", False)))
    request_id = doc.get("id", "")
    return InferRequest(inputs, str(request_id) if request_id is not None else "", params, outputs, binary_outputs)


def _name_of(entry: Any, where: str) -> str:
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise RequestError(f"{where} must be an object with a string 'name'")
    return entry["name"]


def _http_input(
    entry: dict[str, Any], name: str, binary: bytes, offset: int, spec: ModelSpec | None, max_batch: int | None
) -> tuple[np.ndarray, int]:
    """One input tensor (``name``, already read from ``entry``) of a REST request, and the binary
    bytes it consumed."""
    where = f"input '{name}'"
    dtype = numpy_dtype(entry.get("datatype", ""), where)
    shape = _shape_of(entry.get("shape"), where)
    if spec is not None:
        check_declared(spec, max_batch, name, dtype, shape, where)
    params = entry.get("parameters") or {}
    size = params.get("binary_data_size") if isinstance(params, dict) else None
    if size is not None:
        if not isinstance(size, int) or size < 0 or offset + size > len(binary):
            raise RequestError(
                f"{where}: binary_data_size {size!r} does not fit the {len(binary) - offset} binary bytes left"
            )
        return tensor_from_bytes(binary[offset : offset + size], dtype, shape, where), size
    if "data" not in entry:
        raise RequestError(f"{where} has neither 'data' nor a 'binary_data_size' parameter")
    return tensor_from_values(entry["data"], dtype, shape, where), 0


def _http_outputs(raw: Any, binary_default: bool) -> tuple[list[str] | None, set[str]]:
    if raw is None:
        return None, set()
    if not isinstance(raw, list):
        raise RequestError("request 'outputs' must be a list")
    names: list[str] = []
    binary: set[str] = set()
    for i, entry in enumerate(raw):
        name = _name_of(entry, f"outputs[{i}]")
        names.append(name)
        params = entry.get("parameters") or {}
        if _truthy(params.get("binary_data", binary_default) if isinstance(params, dict) else binary_default):
            binary.add(name)
    return names, binary


def encode_http_response(spec: ModelSpec, request: InferRequest, answer: InferAnswer) -> tuple[bytes, int | None]:
    """The REST response body, and the JSON header length when binary output data follows."""
    out = np.ascontiguousarray(answer.output, dtype=spec.output.dtype)
    binary = spec.output.name in request.binary_outputs or (
        request.outputs is None and _truthy(request.parameters.get("binary_data_output", False))
    )
    tensor: dict[str, Any] = {"name": spec.output.name, "datatype": spec.output.datatype, "shape": list(out.shape)}
    if binary:
        raw = out.astype(out.dtype.newbyteorder("<"), copy=False).tobytes()
        tensor["parameters"] = {"binary_data_size": len(raw)}
    else:
        raw = b""
        tensor["data"] = out.ravel().tolist()
    doc: dict[str, Any] = {
        "model_name": spec.name,
        "model_version": spec.version,
        "outputs": [tensor],
        "parameters": answer.parameters(),
    }
    if request.id:
        doc["id"] = request.id
    header = json.dumps(doc, separators=(",", ":")).encode()
    return (header + raw, len(header)) if binary else (header, None)


def http_error_body(message: str) -> bytes:
    """The protocol's error body: ``{"error": message}``, the message on one line."""
    return json.dumps({"error": one_line(message)}).encode()


# --------------------------------------------------------------------------------------- gRPC
def _grpc_param_value(param: Any) -> Any:
    kind = param.WhichOneof("parameter_choice")
    return None if kind is None else getattr(param, kind)


def grpc_parameters(params: Any) -> dict[str, Any]:
    """A protobuf map<string, InferParameter> as a plain dict."""
    return {key: _grpc_param_value(value) for key, value in params.items()}


def set_grpc_parameters(target: Any, values: Mapping[str, Any]) -> None:
    """Fill a protobuf map<string, InferParameter> from plain bool / int / float / str values."""
    for key, value in values.items():
        if isinstance(value, bool):
            target[key].bool_param = value
        elif isinstance(value, (int, np.integer)):
            target[key].int64_param = int(value)
        elif isinstance(value, float):
            target[key].double_param = value
        else:
            target[key].string_param = str(value)


def parse_grpc_request(request: Any, spec: ModelSpec | None = None, max_batch: int | None = None) -> InferRequest:
    """Parse a ``ModelInferRequest`` (raw_input_contents or typed contents); ``spec`` and
    ``max_batch`` as in :func:`parse_http_request`."""
    if not request.inputs:
        raise RequestError("the request has no inputs")
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise RequestError(f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs")
    inputs: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(request.inputs):
        where = f"input '{tensor.name}'"
        _claim_name(inputs, tensor.name, f"inputs[{i}]")
        dtype = numpy_dtype(tensor.datatype, where)
        shape = _shape_of(list(tensor.shape), where)
        if spec is not None:
            check_declared(spec, max_batch, tensor.name, dtype, shape, where)
        if raw:
            inputs[tensor.name] = tensor_from_bytes(raw[i], dtype, shape, where)
        else:
            field_name = _GRPC_CONTENTS.get(tensor.datatype.upper())
            if field_name is None:
                raise RequestError(f"{where}: datatype {tensor.datatype} needs raw_input_contents")
            inputs[tensor.name] = tensor_from_values(list(getattr(tensor.contents, field_name)), dtype, shape, where)
    outputs = [o.name for o in request.outputs] or None
    return InferRequest(inputs, request.id, grpc_parameters(request.parameters), outputs)


def encode_grpc_response(spec: ModelSpec, request_id: str, answer: InferAnswer, pb: Any) -> Any:
    """A ``ModelInferResponse`` (``pb`` is the service_pb2 module) with raw output contents."""
    out = np.ascontiguousarray(answer.output, dtype=spec.output.dtype)
    response = pb.ModelInferResponse(model_name=spec.name, model_version=spec.version, id=request_id)
    tensor = response.outputs.add()
    tensor.name = spec.output.name
    tensor.datatype = spec.output.datatype
    tensor.shape.extend(out.shape)
    response.raw_output_contents.append(out.astype(out.dtype.newbyteorder("<"), copy=False).tobytes())
    set_grpc_parameters(response.parameters, answer.parameters())
    return response
