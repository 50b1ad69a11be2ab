"""Every metric family /metrics exports is documented in docs/SERVING.md's metrics table."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from apparate_trt.runtime.server.metrics import ENGINE_SCALARS, Metrics

SERVING_MD = Path(__file__).resolve().parents[3] / "docs" / "SERVING.md"


def test_every_exported_family_is_in_the_serving_md_table() -> None:
    gauges = {key: 1.0 for key, _, _, _ in ENGINE_SCALARS}
    gauges.update(active_sites=[1], thresholds={1: 0.5})
    metrics = Metrics("m", lambda: gauges)
    metrics.request_done("http", "ok", 0.01)
    exported = {
        family.name
        for family in text_string_to_metric_families(metrics.render())
        if not family.name.endswith("_created")  # prometheus_client's start times, documented once
    }
    table = SERVING_MD.read_text().split("## Metrics (`GET /metrics`)", 1)[1].split("\n## ", 1)[0]
    documented = {name.removesuffix("_total") for name in re.findall(r"`(apparate_[a-z_]+)`", table)}
    missing = sorted(exported - documented)
    assert not missing, f"docs/SERVING.md's metrics table lacks {missing}"


def test_every_per_replica_family_is_documented() -> None:
    """A replicated engine's stats (``replicas``: each replica's numbers) export one
    ``apparate_replica_*`` family per engine number; each is the documented prefix rule applied
    to a documented family, or named in the table itself."""
    one = {key: 1.0 for key, _, _, _ in ENGINE_SCALARS}
    gauges = {**one, "replicas": {"r1": {**one, "thresholds": {1: 0.5}}, "r2": dict(one)}}
    text = Metrics("m", lambda: gauges).render()
    families = {f.name for f in text_string_to_metric_families(text)}
    table = SERVING_MD.read_text().split("## Metrics (`GET /metrics`)", 1)[1].split("\n## ", 1)[0]
    documented = {name.removesuffix("_total") for name in re.findall(r"`(apparate_[a-z_]+)`", table)}
    replica = sorted(f for f in families if f.startswith("apparate_replica"))
    assert "apparate_replicas" in replica and "apparate_replica_threshold" in replica
    assert "apparate_replica_*" in table
    for name in replica:
        assert name in documented or name.replace("apparate_replica_", "apparate_", 1) in documented, name
    assert 'apparate_replica_batches_total{model="m",replica="r2"} 1.0' in text
