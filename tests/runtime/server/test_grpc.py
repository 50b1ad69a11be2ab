"""gRPC (inference.GRPCInferenceService) against a real server on 127.0.0.1 with tritonclient.grpc:
health, metadata, unary infer (early and final) and the decoupled stream (early, then final)."""

from __future__ import annotations

import queue
import time

import numpy as np
import pytest
from server_helpers import Workload, grpc_client, grpc_inputs, params_of
from tritonclient.utils import InferenceServerException


def test_health_and_metadata(server, workload: Workload) -> None:
    client = grpc_client(server)
    name = server.spec.name
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(name)
    assert not client.is_model_ready("no_such_model")
    assert client.get_server_metadata().name == "apparate_trt"
    meta = client.get_model_metadata(name)
    assert [t.name for t in meta.inputs] == [t.name for t in workload.manifest.model.inputs]
    assert list(meta.outputs[0].shape) == [-1, workload.manifest.model.num_classes]
    assert client.get_model_config(name).config.max_batch_size == 8
    with pytest.raises(InferenceServerException) as err:
        client.get_model_metadata("no_such_model")
    assert "unknown model" in err.value.message()


def test_unary_infer_early_and_final(server, workload: Workload) -> None:
    client = grpc_client(server)
    out = workload.manifest.model.output
    for i in range(6):
        early = client.infer(server.spec.name, grpc_inputs(workload, i), request_id=f"g{i}")
        assert early.get_response().id == f"g{i}"
        params = params_of(early)
        if params["apparate_is_final"]:
            assert params["apparate_exit_site"] == "final"
            np.testing.assert_allclose(early.as_numpy(out), workload.expected(i), rtol=1e-4, atol=1e-4)
        else:
            assert int(params["apparate_exit_site"]) in {s.id for s in workload.manifest.sites}
        final = client.infer(server.spec.name, grpc_inputs(workload, i, 3), parameters={"apparate_wait_final": True})
        assert params_of(final) == {"apparate_exit_site": "final,final,final", "apparate_is_final": True}
        np.testing.assert_allclose(final.as_numpy(out), workload.expected(i, 3), rtol=1e-4, atol=1e-4)


def test_stream_answers_early_then_final(server, workload: Workload) -> None:
    """Per request: [early (triton_final_response false), final (true)] or, when no ramp released
    it, one final response; the final output equals the original model's. The stream ends cleanly."""
    client = grpc_client(server)
    responses: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    count = 64
    try:
        for i in range(count):
            client.async_stream_infer(server.spec.name, grpc_inputs(workload, i), request_id=str(i))
        by_id: dict[str, list] = {str(i): [] for i in range(count)}
        finals = 0
        deadline = time.monotonic() + 30
        while finals < count and time.monotonic() < deadline:
            result, error = responses.get(timeout=30)
            assert error is None, error
            by_id[result.get_response().id].append((params_of(result), result.as_numpy(workload.manifest.model.output)))
            finals += bool(params_of(result)["triton_final_response"])
    finally:
        client.stop_stream()
    assert finals == count
    assert responses.empty(), "a response came after the request's final one"
    early_seen = 0
    for rid, got in by_id.items():
        i = int(rid)
        *first, (last_params, last_out) = got
        assert last_params["triton_final_response"] and last_params["apparate_is_final"]
        assert last_params["apparate_exit_site"] == "final"
        np.testing.assert_allclose(last_out, workload.expected(i), rtol=1e-4, atol=1e-4)
        assert len(first) <= 1
        for params, _ in first:
            early_seen += 1
            assert params["triton_final_response"] is False and params["apparate_is_final"] is False
            assert int(params["apparate_exit_site"]) in {s.id for s in workload.manifest.sites}
    assert early_seen > 0, "no ramp released any of 64 stream requests early"
