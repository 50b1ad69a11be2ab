"""REST (KServe v2) against a real server on 127.0.0.1: tritonclient.http, and plain urllib for
the JSON-only path, health, metadata and the metrics endpoint."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import numpy as np
import pytest
import tritonclient.http as httpclient
from server_helpers import Workload, http_client, http_inputs, metric_value


def _url(server, path: str) -> str:
    return f"http://127.0.0.1:{server.http_port}{path}"


def test_health_and_metadata(server, workload: Workload) -> None:
    client = http_client(server)
    name = server.spec.name
    assert name == workload.manifest.model.name
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(name)
    assert not client.is_model_ready("no_such_model")
    meta = client.get_server_metadata()
    assert meta["name"] == "apparate_trt" and "binary_tensor_data" in meta["extensions"]
    model = client.get_model_metadata(name)
    assert [i["name"] for i in model["inputs"]] == [t.name for t in workload.manifest.model.inputs]
    assert model["outputs"][0]["name"] == workload.manifest.model.output
    assert model["outputs"][0]["shape"] == [-1, workload.manifest.model.num_classes]
    assert all(i["shape"][0] == -1 for i in model["inputs"])
    config = client.get_model_config(name)
    assert config["max_batch_size"] == 8


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_infer_early_and_final(server, workload: Workload, binary: bool) -> None:
    client = http_client(server)
    name, out = server.spec.name, workload.manifest.model.output
    outputs = [httpclient.InferRequestedOutput(out, binary_data=binary)]
    for i in range(6):
        early = client.infer(name, http_inputs(workload, i, 1, binary), outputs=outputs, request_id=f"e{i}")
        params = early.get_response()["parameters"]
        assert early.get_response()["id"] == f"e{i}"
        got = early.as_numpy(out)
        assert got.shape == (1, workload.manifest.model.num_classes)
        if params["apparate_is_final"]:
            assert params["apparate_exit_site"] == "final"
            np.testing.assert_allclose(got, workload.expected(i), rtol=1e-4, atol=1e-4)
        else:
            assert int(params["apparate_exit_site"]) in {s.id for s in workload.manifest.sites}
        final = client.infer(
            name, http_inputs(workload, i, 1, binary), outputs=outputs, parameters={"apparate_wait_final": True}
        )
        assert final.get_response()["parameters"] == {"apparate_exit_site": "final", "apparate_is_final": True}
        np.testing.assert_allclose(final.as_numpy(out), workload.expected(i), rtol=1e-4, atol=1e-4)


def test_batched_request_and_default_outputs(server, workload: Workload) -> None:
    """A request with a batch axis of 5 gets 5 rows; with no outputs named, binary output is used."""
    client = http_client(server)
    result = client.infer(server.spec.name, http_inputs(workload, 3, 5), parameters={"apparate_wait_final": True})
    got = result.as_numpy(workload.manifest.model.output)
    np.testing.assert_allclose(got, workload.expected(3, 5), rtol=1e-4, atol=1e-4)
    assert result.get_response()["parameters"]["apparate_exit_site"] == ",".join(["final"] * 5)


def test_plain_json_infer(server, workload: Workload) -> None:
    """A client without tritonclient: JSON in, JSON out, nested data accepted."""
    x = workload.batch(0, 2)
    body = {
        "id": "plain",
        "inputs": [
            {
                "name": k,
                "shape": list(v.shape),
                "datatype": "FP32" if v.dtype == np.float32 else "INT64",
                "data": v.tolist(),
            }
            for k, v in x.items()
        ],
        "parameters": {"apparate_wait_final": True},
    }
    req = urllib.request.Request(
        _url(server, f"/v2/models/{server.spec.name}/versions/1/infer"),
        json.dumps(body).encode(),
        {"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 200
        doc = json.load(resp)
    assert doc["id"] == "plain" and doc["model_name"] == server.spec.name
    out = doc["outputs"][0]
    got = np.asarray(out["data"], np.float32).reshape(out["shape"])
    np.testing.assert_allclose(got, workload.expected(0, 2), rtol=1e-4, atol=1e-4)


def test_metrics_endpoint(server, workload: Workload) -> None:
    client = http_client(server)
    client.infer(server.spec.name, http_inputs(workload, 0, 1))
    with urllib.request.urlopen(_url(server, "/metrics"), timeout=30) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    for family in (
        "apparate_requests_total",
        "apparate_request_duration_seconds_bucket",
        "apparate_exit_share",
        "apparate_queue_depth",
        "apparate_unsplit_batches_total",
        "apparate_active_ramps",
        "apparate_threshold",
        "apparate_release_latency_seconds_count",
    ):
        assert family in text, family
    assert metric_value(text, "apparate_requests_total", model=server.spec.name, protocol="http", code="ok") >= 1


def test_unknown_endpoint_is_404(server) -> None:
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(_url(server, "/v2/nowhere"), timeout=30)
    assert err.value.code == 404 and "no endpoint" in json.load(err.value)["error"]
