"""Server metrics for Prometheus (``GET /metrics`` on the HTTP port), through ``prometheus_client``.

Each server has a registry of its own (never the process-global one, so two servers in a process,
or a host application's own metrics, do not collide). Counted by the server: requests by protocol
and outcome, request durations, per-sample release and final latencies, releases per exit site.
Read from the engine at each scrape by :class:`EngineCollector` (``Engine.stats()`` and the
controller's newest observation, O(1) in the server's age): queue depth, batches, refused and
expired requests, active ramps, thresholds, the window accuracy, skip mode's row counts. Latencies
are in seconds, as Prometheus expects. Thread-safe (``prometheus_client`` locks its own values).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS_S: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Upper bounds (seconds) of the latency histograms' buckets; +Inf is implied."""
CONTENT_TYPE = CONTENT_TYPE_LATEST
"""The ``Content-Type`` of ``/metrics`` (Prometheus text format)."""

ENGINE_SCALARS: tuple[tuple[str, str, str, str], ...] = (
    ("queue_depth", "apparate_queue_depth", "gauge", "Requests waiting in the engine's queue."),
    ("batches", "apparate_batches", "counter", "Batches the engine ran."),
    (
        "unsplit_batches",
        "apparate_unsplit_batches",
        "counter",
        "Batches run on the unsplit model, without ramps, because a full batch was waiting (overload fallback).",
    ),
    ("refused", "apparate_refused", "counter", "Samples refused because the queue was full."),
    ("expired", "apparate_expired", "counter", "Samples dropped after waiting past their timeout."),
    (
        "window_accuracy",
        "apparate_window_accuracy",
        "gauge",
        "The controller's accuracy over its feedback window (0..1).",
    ),
    (
        "released_rows",
        "apparate_released_rows",
        "counter",
        "Rows a ramp released early (batch feedback; overload-fallback batches excluded).",
    ),
    (
        "audited_rows",
        "apparate_audited_rows",
        "counter",
        "Skip mode: released rows that ran on to the end as the audit sample.",
    ),
    (
        "skipped_rows",
        "apparate_skipped_rows",
        "counter",
        "Skip mode: released rows that left the batch at their ramp (no final result).",
    ),
    (
        "compute_saved_s",
        "apparate_compute_saved_seconds",
        "counter",
        "Skip mode: segment time the skipped rows did not cost, from the profile, seconds.",
    ),
    (
        "audit_rate",
        "apparate_audit_rate",
        "gauge",
        "Skip mode: probability that a released row runs on to the end as feedback.",
    ),
    ("reservoir_samples", "apparate_reservoir_samples", "gauge", "Served samples the ramps' reservoirs hold now."),
    ("reservoir_bytes", "apparate_reservoir_bytes", "gauge", "Bytes the ramps' reservoirs hold now."),
    ("refits", "apparate_refits", "counter", "Ramp head refits run on the served stream."),
    ("refits_accepted", "apparate_refits_accepted", "counter", "Refitted ramp heads swapped in."),
    (
        "refit_seconds",
        "apparate_refit_seconds",
        "counter",
        "Wall time of the finished refits, paused time included, seconds.",
    ),
    (
        "feedback_dropped",
        "apparate_feedback_dropped",
        "counter",
        "Batches whose feedback the controller's full backlog dropped.",
    ),
)
"""``(Engine.stats() key, metric name, kind, help)`` of each engine number exported at a scrape
(counters get the ``_total`` suffix from ``prometheus_client``)."""


def _site_label(site: int | None) -> str:
    return "final" if site is None else str(site)


class EngineCollector:
    """A ``prometheus_client`` collector of the engine's gauges, read at each scrape.

    Args:
        model: the ``model`` label's value.
        gauges: returns the engine's current numbers (:func:`engine_gauges`).
        exits: returns the released results per exit-site label so far (for the shares).
    """

    def __init__(
        self, model: str, gauges: Callable[[], Mapping[str, Any]], exits: Callable[[], Mapping[str, float]]
    ) -> None:
        self.model = model
        self._gauges = gauges
        self._exits = exits

    def collect(self) -> Iterator[Metric]:
        """The engine's metric families now (called by the registry at each scrape)."""
        gauges = dict(self._gauges())
        for key, name, kind, text in ENGINE_SCALARS:
            value = gauges.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                family = (CounterMetricFamily if kind == "counter" else GaugeMetricFamily)(name, text, labels=["model"])
                family.add_metric([self.model], float(value))
                yield family
        active = gauges.get("active_sites")
        if active is not None:
            family = GaugeMetricFamily("apparate_active_ramps", "Ramps active now.", labels=["model"])
            family.add_metric([self.model], float(len(active)))
            yield family
        thresholds = GaugeMetricFamily(
            "apparate_threshold", "Exit threshold of each active ramp (0: never exits).", labels=["model", "site"]
        )
        for site, value in sorted((gauges.get("thresholds") or {}).items()):
            thresholds.add_metric([self.model, str(site)], float(value))
        yield thresholds
        yield from replica_families(self.model, gauges.get("replicas"))
        exits = dict(self._exits())
        total = sum(exits.values())
        shares = GaugeMetricFamily(
            "apparate_exit_share", "Share of released results by exit site, since start.", labels=["model", "site"]
        )
        for site, count in sorted(exits.items(), key=lambda kv: (kv[0] == "final", kv[0])):
            shares.add_metric([self.model, site], count / total)
        yield shares


def replica_families(model: str, replicas: Any) -> Iterator[Metric]:
    """A replicated engine's numbers per replica: each engine number as ``apparate_replica_*``
    with a ``replica`` label (the unlabelled families hold their sums), and each replica's
    thresholds; nothing for a single-process engine (no ``replicas`` in its stats)."""
    if not isinstance(replicas, Mapping) or not replicas:
        return
    count = GaugeMetricFamily("apparate_replicas", "Replicas that reported their numbers.", labels=["model"])
    count.add_metric([model], float(len(replicas)))
    yield count
    for key, name, kind, text in ENGINE_SCALARS:
        name = name.replace("apparate_", "apparate_replica_", 1)
        family = (CounterMetricFamily if kind == "counter" else GaugeMetricFamily)(
            name, f"{text} Per replica.", labels=["model", "replica"]
        )
        for replica, gauges in sorted(replicas.items()):
            value = gauges.get(key) if isinstance(gauges, Mapping) else None
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                family.add_metric([model, str(replica)], float(value))
        if family.samples:
            yield family
    thresholds = GaugeMetricFamily(
        "apparate_replica_threshold",
        "Exit threshold of each active ramp, per replica.",
        labels=["model", "replica", "site"],
    )
    for replica, gauges in sorted(replicas.items()):
        for site, value in sorted(((gauges or {}).get("thresholds") or {}).items()):
            thresholds.add_metric([model, str(replica), str(site)], float(value))
    yield thresholds


class Metrics:
    """Counters and histograms of one server, with the engine's gauges collected at each scrape.

    Args:
        model: the ``model`` label of every series.
        engine_gauges: returns the engine's numbers at a scrape (:func:`engine_gauges`); None: none.
    """

    def __init__(self, model: str, engine_gauges: Callable[[], Mapping[str, Any]] | None = None) -> None:
        self.model = model
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        self._requests = Counter(
            "apparate_requests", "Infer requests by protocol and outcome.", ["model", "protocol", "code"], registry=r
        )
        self._inflight = Gauge(
            "apparate_inflight_requests", "Infer requests accepted and not yet answered.", ["model"], registry=r
        ).labels(model)
        self._durations = Histogram(
            "apparate_request_duration_seconds",
            "Successful infer requests: receipt to answer, seconds.",
            ["model", "protocol"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self._release = Histogram(
            "apparate_release_latency_seconds",
            "Per sample: arrival to the first released result (early or final), seconds.",
            ["model"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        ).labels(model)
        self._final = Histogram(
            "apparate_final_latency_seconds",
            "Per sample: arrival to the final result (a skipped sample's early one, its last), seconds.",
            ["model"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        ).labels(model)
        self._failed = Counter(
            "apparate_failed_samples", "Samples the engine failed or expired.", ["model"], registry=r
        ).labels(model)
        self._exits = Counter(
            "apparate_exits", "Released results by exit site ('final': the full model).", ["model", "site"], registry=r
        )
        r.register(EngineCollector(model, engine_gauges or dict, self._exit_counts))

    # ----------------------------------------------------------------------------- recording
    def request_done(self, protocol: str, code: str, duration_s: float | None) -> None:
        """Count one protocol request by outcome ``code`` (``ok``, ``bad_request``, ``overloaded``,
        ``timeout``, ``unavailable``, ``error``, ``disconnected``, ``unauthenticated``) and, for
        ``ok``, its duration in seconds."""
        self._requests.labels(self.model, protocol, code).inc()
        if duration_s is not None and code == "ok":
            self._durations.labels(self.model, protocol).observe(duration_s)

    def set_inflight(self, count: int) -> None:
        """The number of requests in flight now."""
        self._inflight.set(count)

    def watch(self, handle: Any) -> None:
        """Count ``handle``'s released result (exit site, latency) and its final latency."""
        handle.early.add_done_callback(lambda fut: self._on_result(fut, final=False))
        handle.final.add_done_callback(lambda fut: self._on_result(fut, final=True))

    def _on_result(self, fut: Any, final: bool) -> None:
        if fut.cancelled() or fut.exception() is not None:
            if final:
                self._failed.inc()
            return
        result = fut.result()
        latency_s = max(0.0, float(result.t_release - result.t_arrival))
        if final:
            self._final.observe(latency_s)
        else:
            self._release.observe(latency_s)
            self._exits.labels(self.model, _site_label(None if result.is_final else result.exit_site)).inc()

    def _exit_counts(self) -> dict[str, float]:
        """Released results per exit-site label so far."""
        counts: dict[str, float] = {}
        for family in self._exits.collect():
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    counts[sample.labels["site"]] = sample.value
        return counts

    # ------------------------------------------------------------------------------ rendering
    def render(self) -> str:
        """All metrics in the Prometheus text format (``CONTENT_TYPE``)."""
        return generate_latest(self.registry).decode()


def engine_gauges(engine: Any) -> dict[str, Any]:
    """The engine's current numbers: ``Engine.stats()`` plus the controller's window accuracy
    (from its newest observation only: a scrape costs the same however long the server ran)."""
    stats: dict[str, Any] = dict(engine.stats())
    if isinstance(stats.get("compute_saved_ms"), (int, float)):
        stats["compute_saved_s"] = float(stats["compute_saved_ms"]) / 1000.0
    learning = stats.get("learning")
    if isinstance(learning, Mapping) and learning.get("status") == "on":
        for key in ("reservoir_samples", "reservoir_bytes", "refits", "refits_accepted", "refit_seconds"):
            stats[key] = learning.get(key)
    last = engine.controller.last_observation if engine.controller is not None else None
    if "window_accuracy" not in stats and last and last.get("window_accuracy") is not None:
        stats["window_accuracy"] = last["window_accuracy"]
    return stats
