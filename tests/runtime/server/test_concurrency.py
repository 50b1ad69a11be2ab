"""Several client threads (REST and gRPC) send a few hundred requests together to one server:
every request gets exactly one answer (its own id), every final result equals the original
model's output, the released results hold the accuracy constraint, and the engine saw each sample
exactly once (all connections share its one batcher)."""

from __future__ import annotations

import threading

import numpy as np
from server_helpers import CONSTRAINT, Workload, grpc_client, grpc_inputs, http_client, http_inputs, params_of

THREADS_PER_PROTOCOL = 3
REQUESTS_PER_THREAD = 50


def _run_client(server, workload: Workload, protocol: str, thread: int, answers: dict, errors: list) -> None:
    try:
        client = http_client(server) if protocol == "http" else grpc_client(server)
        for k in range(REQUESTS_PER_THREAD):
            i = thread * REQUESTS_PER_THREAD + k
            rid = f"{protocol}-{i}"
            wait_final = k % 3 == 0
            params = {"apparate_wait_final": True} if wait_final else None
            if protocol == "http":
                result = client.infer(server.spec.name, http_inputs(workload, i), request_id=rid, parameters=params)
                response_id, p = result.get_response()["id"], result.get_response()["parameters"]
            else:
                result = client.infer(server.spec.name, grpc_inputs(workload, i), request_id=rid, parameters=params)
                response_id, p = result.get_response().id, params_of(result)
            assert response_id == rid, (response_id, rid)
            assert rid not in answers, f"{rid} answered twice"
            answers[rid] = (i, wait_final, p, result.as_numpy(workload.manifest.model.output)[0])
    except BaseException as exc:  # noqa: BLE001 - reported by the main thread
        errors.append(exc)


def test_many_clients_share_one_batcher(server, workload: Workload) -> None:
    before = server.engine.stats()
    answers: dict = {}
    errors: list = []
    threads = [
        threading.Thread(target=_run_client, args=(server, workload, protocol, t, answers, errors))
        for t in range(THREADS_PER_PROTOCOL)
        for protocol in ("http", "grpc")
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors[:3]
    total = 2 * THREADS_PER_PROTOCOL * REQUESTS_PER_THREAD
    assert len(answers) == total
    after = server.engine.stats()
    assert after["requests"] - before["requests"] == total  # each sample submitted exactly once
    assert after["refused"] == before["refused"] and after["failed"] == before["failed"]
    assert max(after["batch_sizes"]) > 1, "requests from different connections were never batched together"

    agree = released = 0
    for i, wait_final, params, out in answers.values():
        expected = workload.reference[i % workload.n]
        if wait_final or params["apparate_is_final"]:
            assert params["apparate_exit_site"] == "final" and params["apparate_is_final"]
            np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
        if not wait_final:
            released += 1
            agree += int(np.argmax(out) == np.argmax(expected))
    accuracy = agree / released
    assert accuracy >= 1.0 - CONSTRAINT, f"served accuracy {accuracy:.3f} breaks the constraint {CONSTRAINT}"
