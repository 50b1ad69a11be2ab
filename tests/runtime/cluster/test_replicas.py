"""Two Ray Serve replicas behind the server's front ends, driven by stock tritonclient (HTTP and
gRPC streaming) on 127.0.0.1: the same answers as the original model, per-replica and summed
/metrics, and a replica killed under load that Ray replaces without losing a request."""

from __future__ import annotations

import queue
import threading
import time

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from cluster_helpers import REPLICAS
from server_helpers import Workload, grpc_inputs, http_inputs, metric_value, params_of, scrape
from tritonclient.utils import InferenceServerException

from apparate_trt.runtime.cluster.deploy import APP_NAME, DEPLOYMENT_NAME

WAIT_FINAL = {"apparate_wait_final": True}


def _http(srv) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(f"127.0.0.1:{srv.http_port}", connection_timeout=30, network_timeout=60)


def _concurrently(count: int, threads: int, one) -> dict[int, object]:
    """Run ``one(i)`` for i in 0..count-1 on ``threads`` threads; {i: its return or exception}."""
    out: dict[int, object] = {}
    todo = list(range(count))
    lock = threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                if not todo:
                    return
                i = todo.pop(0)
            try:
                out[i] = one(i)
            except Exception as exc:  # noqa: BLE001 - the test inspects every outcome
                out[i] = exc

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(120)
    return out


def test_replicas_answer_as_the_original_model_over_http(replicated, workload: Workload) -> None:
    """Final answers equal the original model's; early ones name a ramp site; both replicas served."""
    name, out = replicated.server.spec.name, workload.manifest.model.output

    def final(i: int) -> np.ndarray:
        return _http(replicated).infer(name, http_inputs(workload, i), parameters=WAIT_FINAL).as_numpy(out)

    answers = _concurrently(48, 8, final)
    assert sorted(answers) == list(range(48))
    for i, got in answers.items():
        assert not isinstance(got, Exception), (i, got)
        np.testing.assert_allclose(got, workload.expected(i), rtol=1e-4, atol=1e-4)
    sites = {str(s.id) for s in workload.manifest.sites} | {"final"}
    for i in range(8):
        r = _http(replicated).infer(name, http_inputs(workload, i, 2))
        assert set(r.get_response()["parameters"]["apparate_exit_site"].split(",")) <= sites
    text = scrape(replicated.http_port)
    assert metric_value(text, "apparate_replicas") == REPLICAS, text
    per_replica = [
        line for line in text.splitlines() if line.startswith("apparate_replica_batches_total{") and 'replica="' in line
    ]
    assert len(per_replica) == REPLICAS, "both replicas report their batches"
    assert all(float(line.rsplit(" ", 1)[1]) > 0 for line in per_replica), per_replica
    assert metric_value(text, "apparate_batches_total") == metric_value(text, "apparate_replica_batches_total")


def test_replicas_stream_early_then_final_over_grpc(replicated, workload: Workload) -> None:
    """The decoupled gRPC stream through replicas: per request an early answer (or none), then the
    final one, equal to the original model's."""
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{replicated.grpc_port}")
    assert client.is_server_ready() and client.is_model_ready(replicated.server.spec.name)
    responses: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    count = 32
    by_id: dict[str, list] = {str(i): [] for i in range(count)}
    try:
        for i in range(count):
            client.async_stream_infer(replicated.server.spec.name, grpc_inputs(workload, i), request_id=str(i))
        finals = 0
        while finals < count:
            result, error = responses.get(timeout=60)
            assert error is None, error
            params = params_of(result)
            by_id[result.get_response().id].append((params, result.as_numpy(workload.manifest.model.output)))
            finals += bool(params["triton_final_response"])
    finally:
        client.stop_stream()
    early = 0
    for rid, got in by_id.items():
        *first, (last_params, last_out) = got
        assert last_params["apparate_is_final"] and last_params["apparate_exit_site"] == "final"
        np.testing.assert_allclose(last_out, workload.expected(int(rid)), rtol=1e-4, atol=1e-4)
        assert len(first) <= 1
        early += len(first)
    assert early > 0, "no replica released any of 32 stream requests early"


def _replica_actors():
    import ray

    return [
        a
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["name"].startswith("SERVE_REPLICA::") and DEPLOYMENT_NAME in a["name"]
    ]


def _running_replicas() -> int:
    from ray import serve

    app = serve.status().applications.get(APP_NAME)
    states = app.deployments[DEPLOYMENT_NAME].replica_states if app is not None else {}
    return int(states.get("RUNNING", 0))


def test_killed_replica_is_replaced_and_no_request_is_lost(replicated, workload: Workload) -> None:
    """Kill a replica (``ray.kill``) under load: every request is answered, correctly or with a
    retryable 503; Ray starts a replacement and the service answers as before."""
    import ray

    name, out = replicated.server.spec.name, workload.manifest.model.output
    answered = threading.Event()
    done_count = [0]

    def final(i: int) -> np.ndarray:
        try:
            return _http(replicated).infer(name, http_inputs(workload, i), parameters=WAIT_FINAL).as_numpy(out)
        finally:
            done_count[0] += 1
            if done_count[0] >= 20:
                answered.set()

    results: dict[int, object] = {}
    load = threading.Thread(target=lambda: results.update(_concurrently(200, 6, final)))
    load.start()
    assert answered.wait(60), "the load never got going"
    victims = _replica_actors()
    assert len(victims) == REPLICAS, victims
    ray.kill(ray.get_actor(victims[0]["name"], namespace=victims[0]["namespace"]), no_restart=True)
    load.join(180)
    assert not load.is_alive(), "a request was never answered"
    assert sorted(results) == list(range(200)), "a request was lost without an answer"
    retryable = 0
    for i, got in results.items():
        if isinstance(got, InferenceServerException):
            assert got.status() in ("503", "StatusCode.UNAVAILABLE"), (i, got)
            assert "retry" in str(got), got
            retryable += 1
        else:
            assert not isinstance(got, Exception), (i, got)
            np.testing.assert_allclose(got, workload.expected(i), rtol=1e-4, atol=1e-4)
    assert retryable <= 200 // 4, f"{retryable} of 200 requests failed with a retryable status"
    deadline = time.monotonic() + 120
    while _running_replicas() < REPLICAS or len(_replica_actors()) < REPLICAS:
        assert time.monotonic() < deadline, "Ray never replaced the killed replica"
        time.sleep(0.5)
    after = _concurrently(24, 4, final)
    for i, got in after.items():
        assert not isinstance(got, Exception), (i, got)
        np.testing.assert_allclose(got, workload.expected(i), rtol=1e-4, atol=1e-4)
