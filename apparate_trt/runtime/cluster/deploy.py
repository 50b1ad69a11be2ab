"""Replicas on Ray Serve: the deployment, the settings, and a replicated server in one call.

The shape of the service: Ray Serve runs N replicas of :class:`.replica.EngineReplica` (each with
its own batching, executor and controller, and ``threads`` ONNX Runtime threads, reserved as
``num_cpus``); this process keeps the protocol: the same REST and gRPC front ends as the
single-process server, over a :class:`.remote_engine.ReplicatedEngine` that streams each request
to a replica through a ``DeploymentHandle``. Ray Serve places, restarts and autoscales replicas;
its own HTTP proxy is not started (``proxy_location="Disabled"``): the front ends here speak KServe
v2 REST and gRPC, which Ray's proxy does not.

Thresholds across replicas: each replica's controller holds the accuracy constraint on the stream
it serves. The service's accuracy is the traffic-weighted mean of the replicas' accuracies, so
when every replica holds it, the service does (no shared state, no coordination on the batch path).

Entry points: :func:`serve_replicated` (``apparate-run --serve --replicas N``), and for users who
compose their own Ray Serve application, :func:`replica_deployment` (the bound deployment) and
:class:`ReplicatedServer` (this process's front ends over a running deployment).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apparate_trt.errors import ApparateError
from apparate_trt.runtime.config import EngineConfig

log = logging.getLogger(__name__)

APP_NAME = "apparate"
"""The Ray Serve application name of a replicated service."""
DEPLOYMENT_NAME = "EngineReplica"
MAX_ONGOING_PER_REPLICA = 2048
"""Requests Ray Serve sends one replica at once. Ray Serve's default (5) would cap each batch at
5; and a request over the limit waits in Ray's router, which polls the replicas with backoff
(a burst over a limit of 256 crawled). So the limit is above the front ends' in-flight limit,
and the replica's own queue (``--queue-size``) is what refuses."""
DEFAULT_TARGET_ONGOING = 16.0
"""``--replicas auto``: the ongoing requests per replica that Ray Serve's autoscaler aims for."""
LOCAL_OBJECT_STORE_BYTES = 256 * 1024 * 1024
"""The object store of a local Ray instance (requests and answers are small)."""


@dataclass(frozen=True)
class ClusterConfig:
    """How to replicate (None means the default; checked when made).

    Attributes:
        replicas: the number of replicas, or ``"auto"`` for Ray Serve's autoscaling between
            ``min_replicas`` and ``max_replicas``.
        min_replicas, max_replicas: autoscaling's bounds (``replicas="auto"`` only).
        target_ongoing_requests: autoscaling's target of ongoing requests per replica.
        threads: ONNX Runtime threads per replica, reserved as Ray CPUs (None: 1).
        ray_address: an existing Ray cluster to join (``ray://host:10001`` or ``host:6379``);
            None: start a local Ray instance on 127.0.0.1 and stop it on exit.
        max_ongoing_per_replica: requests Ray Serve sends one replica at once.
    """

    replicas: int | str = 2
    min_replicas: int = 1
    max_replicas: int = 4
    target_ongoing_requests: float = DEFAULT_TARGET_ONGOING
    threads: int | None = None
    ray_address: str | None = None
    max_ongoing_per_replica: int = MAX_ONGOING_PER_REPLICA

    def __post_init__(self) -> None:
        if self.replicas != "auto" and not (isinstance(self.replicas, int) and self.replicas >= 1):
            raise ApparateError(f"replicas must be a whole number >= 1 or 'auto', got {self.replicas!r}")
        if not 1 <= self.min_replicas <= self.max_replicas:
            raise ApparateError(
                f"autoscaling needs 1 <= min replicas <= max replicas, got {self.min_replicas} and {self.max_replicas}"
            )
        if not self.target_ongoing_requests > 0:
            raise ApparateError(f"the target of ongoing requests must be > 0, got {self.target_ongoing_requests}")
        if self.threads is not None and self.threads < 1:
            raise ApparateError(f"threads per replica must be at least 1, got {self.threads}")
        if self.max_ongoing_per_replica < 1:
            raise ApparateError(f"max ongoing requests per replica must be >= 1, got {self.max_ongoing_per_replica}")

    @property
    def threads_per_replica(self) -> int:
        """ONNX Runtime threads (and Ray CPUs) of each replica."""
        return int(self.threads or 1)

    def deployment_options(self) -> dict[str, Any]:
        """The Ray Serve deployment options: replicas or autoscaling, CPUs, ongoing requests."""
        options: dict[str, Any] = {
            "name": DEPLOYMENT_NAME,
            "ray_actor_options": {"num_cpus": self.threads_per_replica},
            "max_ongoing_requests": int(self.max_ongoing_per_replica),
            "health_check_period_s": 2.0,
            "health_check_timeout_s": 10.0,
            "graceful_shutdown_wait_loop_s": 0.5,
            "graceful_shutdown_timeout_s": 30.0,
        }
        if self.replicas == "auto":
            options["num_replicas"] = "auto"
            options["autoscaling_config"] = {
                "min_replicas": int(self.min_replicas),
                "initial_replicas": int(self.min_replicas),
                "max_replicas": int(self.max_replicas),
                "target_ongoing_requests": float(self.target_ongoing_requests),
            }
        else:
            options["num_replicas"] = int(self.replicas)
        return options


def import_ray() -> tuple[Any, Any]:
    """``(ray, ray.serve)``, or ApparateError saying how to install them."""
    try:
        import ray
        from ray import serve
    except ImportError as exc:
        raise ApparateError(
            f"replicas run on Ray Serve, which is not installed ({exc}); "
            "install it with: pip install 'apparate_trt[cluster]'"
        ) from None
    return ray, serve


def replica_deployment(
    engine_dir: str | Path, engine: EngineConfig | None = None, cluster: ClusterConfig | None = None
) -> Any:
    """The bound Ray Serve application of ``engine_dir``'s replicas (``serve.run`` it yourself).

    Each replica is an :class:`.replica.EngineReplica`; call ``handle.options(stream=True)
    .infer.remote(inputs, timeout_ms, wait_final)`` for a request's event stream, or wrap the
    handle in :class:`.remote_engine.ReplicatedEngine` for futures. ``engine.threads`` is replaced
    by ``cluster``'s threads per replica.
    """
    _, serve = import_ray()
    from apparate_trt.runtime.cluster.replica import EngineReplica

    cluster = cluster or ClusterConfig()
    engine = (engine or EngineConfig()).replace(threads=cluster.threads_per_replica)
    deployment = serve.deployment(EngineReplica).options(**cluster.deployment_options())
    return deployment.bind(str(Path(engine_dir).resolve()), engine)


def start_ray(cluster: ClusterConfig) -> bool:
    """Join ``cluster.ray_address``, or start a local Ray instance on 127.0.0.1 (sized to the
    replicas' CPUs); True if this call started it (the caller stops it with ``ray.shutdown``)."""
    ray, _ = import_ray()
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if cluster.ray_address is not None:
        try:
            ray.init(address=cluster.ray_address, log_to_driver=False)
        except Exception as exc:  # noqa: BLE001 - Ray's errors are many; one clear line
            raise ApparateError(
                f"cannot join the Ray cluster at {cluster.ray_address} ({type(exc).__name__}: {exc}); "
                "check the address (ray://HOST:10001 or HOST:6379) and that the cluster runs"
            ) from None
        return True
    # Ray starts its workers at niceness 15; a replica is the service's batch path, and at 15 it
    # starved beside the front ends' process on 2 cores
    os.environ.setdefault("RAY_worker_niceness", "0")
    largest = cluster.max_replicas if cluster.replicas == "auto" else int(cluster.replicas)
    cpus = max(os.cpu_count() or 1, largest * cluster.threads_per_replica)
    ray.init(
        address="local",
        num_cpus=cpus,
        include_dashboard=False,
        log_to_driver=False,
        object_store_memory=LOCAL_OBJECT_STORE_BYTES,
        _node_ip_address="127.0.0.1",
    )
    return True


class ReplicatedServer:
    """The replicated service in this process: Ray Serve replicas of ``engine_dir`` and the
    server's REST and gRPC front ends over them (:class:`~apparate_trt.runtime.server.Server`).

    :meth:`start` starts (or joins) Ray, deploys the replicas and waits until they run, then binds
    the ports; :meth:`stop` drains: it stops accepting, answers every accepted request, deletes the
    deployment (each replica closes its engine) and stops a Ray instance it started.

    Args:
        engine_dir: the engine directory (every Ray node must see it at this path).
        config: the server's settings (:class:`~apparate_trt.runtime.server.config.ServingConfig`).
        cluster: how to replicate (:class:`ClusterConfig`; None: 2 replicas, 1 thread each).
    """

    def __init__(self, engine_dir: str | Path, config: Any = None, cluster: ClusterConfig | None = None) -> None:
        from apparate_trt.runtime.server.config import ServingConfig

        self.engine_dir = Path(engine_dir)
        self.config = config or ServingConfig()
        self.cluster = cluster or ClusterConfig()
        if self.config.save_ramps is not None:
            raise ApparateError("--save-ramps needs one process (each replica refits its own ramps): drop --replicas")
        self.server: Any = None
        self._started_ray = False

    def start(self) -> ReplicatedServer:
        """Deploy the replicas and start serving; ApparateError if Ray or the replicas fail."""
        from apparate_trt.engine_dir import read_manifest
        from apparate_trt.runtime.cluster.remote_engine import ReplicatedEngine
        from apparate_trt.runtime.server.app import Server

        manifest = read_manifest(self.engine_dir)  # a missing or corrupt directory fails here, before Ray
        ray, serve = import_ray()
        self._started_ray = start_ray(self.cluster)
        try:
            serve.start(proxy_location="Disabled")
            app = replica_deployment(self.engine_dir, self.config.engine, self.cluster)
            try:
                handle = serve.run(app, name=APP_NAME, route_prefix=None)
            except Exception as exc:  # noqa: BLE001 - a replica that cannot load the engine
                raise ApparateError(f"the replicas failed to start: {_first_line(exc)}") from None
            engine = ReplicatedEngine(
                handle,
                manifest,
                self.config.engine.max_batch,
                self.config.engine.mode,
                on_close=self._shutdown,
            )
            self.server = Server(engine, self.config)
            self.server.start()
        except BaseException:
            self._shutdown()
            raise
        return self

    def _shutdown(self) -> None:
        """Delete the deployment (replicas drain and close) and stop a Ray instance we started."""
        try:
            ray, serve = import_ray()
        except ApparateError:
            return
        if not ray.is_initialized():
            return
        try:
            serve.delete(APP_NAME)
            if self._started_ray:
                serve.shutdown()
        except Exception:  # noqa: BLE001 - the stop goes on
            log.exception("deleting the replicas failed")
        if self._started_ray:
            ray.shutdown()
            self._started_ray = False

    def stop(self) -> bool:
        """Drain and stop (see the class); True if every accepted request was answered."""
        if self.server is None:
            self._shutdown()
            return True
        return self.server.stop()

    @property
    def http_port(self) -> int | None:
        return self.server.http_port if self.server is not None else None

    @property
    def grpc_port(self) -> int | None:
        return self.server.grpc_port if self.server is not None else None

    def describe(self) -> str:
        """One line: what is served where, and on how many replicas."""
        count = "autoscaled" if self.cluster.replicas == "auto" else str(self.cluster.replicas)
        where = self.cluster.ray_address or "a local Ray instance on 127.0.0.1"
        return f"{self.server.describe()} ({count} replicas on {where})"

    def __enter__(self) -> ReplicatedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_replicated(engine_dir: str | Path, config: Any = None, cluster: ClusterConfig | None = None) -> int:
    """Serve ``engine_dir`` on Ray Serve replicas until SIGTERM / SIGINT; the exit status (0 once
    every accepted request was answered). ``apparate-run --serve --replicas N`` calls it."""
    from apparate_trt.runtime.server.app import run_until_signal

    return run_until_signal(ReplicatedServer(engine_dir, config, cluster))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    lines = [line.strip() for line in text if line.strip()]
    # Ray wraps the replica's error: its last line is the cause
    return lines[-1] if lines else type(exc).__name__
