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
