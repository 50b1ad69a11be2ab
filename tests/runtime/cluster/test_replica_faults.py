"""Faults of a replicated service on real Ray on 127.0.0.1: requests held by a replica that is
killed are retried on another and answered; SIGTERM to ``apparate-run --serve --replicas 2``
drains every replica (each dispatches its queue at once) and the process exits 0."""

from __future__ import annotations

import signal
import threading
import time

import numpy as np
import tritonclient.http as httpclient
from cluster_helpers import REPLICAS, serving_config
from server_helpers import (
    THREADS,
    Workload,
    http_inputs,
    metric_value,
    scrape,
    start_serve_process,
    stop_process,
    wait_until,
)
from tritonclient.utils import InferenceServerException

from apparate_trt.runtime.cluster import ClusterConfig, ReplicatedServer
from apparate_trt.runtime.cluster.deploy import DEPLOYMENT_NAME

WAIT_FINAL = {"apparate_wait_final": True}
HELD = 8


def _send_all(http_port: int, workload: Workload, count: int) -> tuple[list[threading.Thread], dict[int, object]]:
    """Start ``count`` concurrent final-answer requests; their threads and {i: answer or exception}."""
    out: dict[int, object] = {}
    name = workload.manifest.model.name

    def one(i: int) -> None:
        client = httpclient.InferenceServerClient(f"127.0.0.1:{http_port}", network_timeout=120)
        try:
            r = client.infer(name, http_inputs(workload, i), parameters=WAIT_FINAL)
            out[i] = r.as_numpy(workload.manifest.model.output)
        except InferenceServerException as exc:
            out[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    return threads, out


def _assert_answers(out: dict[int, object], workload: Workload, count: int, log: str = "") -> None:
    assert sorted(out) == list(range(count)), f"a request was lost without an answer {log}"
    for i, got in out.items():
        assert not isinstance(got, Exception), (i, got, log)
        np.testing.assert_allclose(got, workload.expected(i), rtol=1e-4, atol=1e-4)


def test_requests_held_by_a_killed_replica_are_answered_by_another(workload: Workload) -> None:
    """Batches wait up to 5 s for 64 requests, so the requests sit in the replicas' queues; kill a
    replica that holds some: they are retried on the other replica and every one is answered."""
    import ray

    srv = ReplicatedServer(
        workload.engine_dir,
        serving_config(max_batch=64, max_delay_ms=5000.0),
        ClusterConfig(replicas=REPLICAS, threads=THREADS),
    ).start()
    try:
        engine = srv.server.engine
        threads, out = _send_all(srv.http_port, workload, HELD)
        wait_until(lambda: srv.server.service.inflight == HELD, 10.0, "every request in flight")
        holding = {}
        wait_until(
            lambda: (
                holding.update({r: s for r, s in engine.stats()["replicas"].items() if s.get("queue_depth", 0) > 0})
                or bool(holding)
            ),
            3.0,
            "a replica holding requests",
        )
        victim = next(iter(holding))
        names = [
            a
            for a in ray.util.list_named_actors(all_namespaces=True)
            if DEPLOYMENT_NAME in a["name"] and victim in a["name"]
        ]
        assert len(names) == 1, (victim, names)
        assert not out, "a request was answered before its batch was due"
        ray.kill(ray.get_actor(names[0]["name"], namespace=names[0]["namespace"]), no_restart=True)
        for t in threads:
            t.join(60)
        _assert_answers(out, workload, HELD)
        assert engine.retried >= 1 and engine.lost == 0, (engine.retried, engine.lost)
    finally:
        assert srv.stop(), "the replicated service did not drain"


def test_sigterm_drains_every_replica_then_exits_0(workload: Workload) -> None:
    """``apparate-run --serve --replicas 2`` with batches that would wait 60 s: SIGTERM answers
    every accepted request at once (each replica dispatches its queue) and exits 0."""
    proc, http_port, _, lines = start_serve_process(
        [
            "--engine-dir",
            str(workload.engine_dir),
            "--serve",
            "--replicas",
            str(REPLICAS),
            "--threads",
            "1",
            "--http-port",
            "0",
            "--grpc-port",
            "0",
            "--max-batch",
            "64",
            "--max-delay-ms",
            "60000",
        ],
        timeout_s=120,
    )
    try:
        assert "2 replicas" in "".join(lines)
        threads, out = _send_all(http_port, workload, 12)
        wait_until(  # every request is in a replica's queue (the batches wait 60 s)
            lambda: metric_value(scrape(http_port), "apparate_queue_depth") == 12, 30.0, "12 requests queued"
        )
        assert not out, "a request was answered before its batch was due"
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(90)
        for t in threads:
            t.join(30)
    finally:
        stop_process(proc)
    log = "".join(lines)
    assert rc == 0, log
    assert time.monotonic() - t0 < 45, "the drain waited for the batches' delay instead of dispatching them"
    _assert_answers(out, workload, 12, log)
