"""The replicated service's pure parts: settings and their checks, the Ray Serve options, how
waiting requests are coalesced into calls, how replicas' numbers add up; and the CLI's checks
of the replica flags (one line, exit 2)."""

from __future__ import annotations

import numpy as np
import pytest

from apparate_trt.cli.run import main
from apparate_trt.errors import ApparateError
from apparate_trt.runtime.api import RequestHandle
from apparate_trt.runtime.batching import OverloadError, ReplicaLostError, RequestTimeoutError
from apparate_trt.runtime.cluster import ClusterConfig
from apparate_trt.runtime.cluster.remote_engine import Waiting, coalesce, error_for, sum_stats


def test_fixed_and_autoscaled_deployment_options() -> None:
    fixed = ClusterConfig(replicas=3, threads=2).deployment_options()
    assert fixed["num_replicas"] == 3 and fixed["ray_actor_options"] == {"num_cpus": 2}
    assert "autoscaling_config" not in fixed and fixed["max_ongoing_requests"] > 1000
    auto = ClusterConfig(
        replicas="auto", min_replicas=1, max_replicas=5, target_ongoing_requests=8
    ).deployment_options()
    assert auto["num_replicas"] == "auto"
    assert auto["autoscaling_config"] == {
        "min_replicas": 1,
        "initial_replicas": 1,
        "max_replicas": 5,
        "target_ongoing_requests": 8.0,
    }


@pytest.mark.parametrize(
    "settings",
    [{"replicas": 0}, {"replicas": "many"}, {"min_replicas": 3, "max_replicas": 2}, {"threads": 0}],
)
def test_bad_cluster_settings_are_refused(settings) -> None:
    with pytest.raises(ApparateError):
        ClusterConfig(**settings)


def _waiting(samples: int, shape=(1, 4), wait_final: bool = False) -> Waiting:
    handles = [RequestHandle(i, 0.0) for i in range(samples)]
    return Waiting(handles, {"x": np.zeros((samples, *shape[1:]), np.float32)}, None, wait_final)


def test_coalesce_packs_alike_requests_up_to_the_max_batch() -> None:
    a, b, c = _waiting(3), _waiting(3), _waiting(3)
    other_shape, final = _waiting(1, (1, 5)), _waiting(1, wait_final=True)
    calls = coalesce([a, b, other_shape, c, final], max_samples=6)
    assert calls == [[a, b], [other_shape], [c], [final]]
    big = _waiting(9)
    assert coalesce([big, a], 6) == [[big], [a]]


def test_sum_stats_adds_counts_and_weighs_the_window_accuracy_by_batches() -> None:
    total = sum_stats(
        {
            "r1": {"batches": 30, "refused": 1, "window_accuracy": 0.99, "compute_saved_ms": 2.0},
            "r2": {"batches": 10, "refused": 0, "window_accuracy": 0.95, "compute_saved_ms": 1.5},
        }
    )
    assert total["batches"] == 40 and total["refused"] == 1 and total["compute_saved_ms"] == 3.5
    assert total["window_accuracy"] == pytest.approx((0.99 * 30 + 0.95 * 10) / 40)
    assert set(total["replicas"]) == {"r1", "r2"}


def test_replica_error_codes_become_the_engine_errors_the_server_maps() -> None:
    assert isinstance(error_for("overloaded", "full"), OverloadError)
    assert isinstance(error_for("closed", "stopping"), ReplicaLostError)
    assert isinstance(error_for("timeout", "late"), RequestTimeoutError)
    assert type(error_for("invalid", "bad shape")) is ApparateError


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--replicas", "2", "--data", "eval.npz"], "--replicas serves from replicas: add --serve"),
        (["--serve", "--replicas", "0"], "--replicas must be a whole number >= 1 or 'auto'"),
        (["--serve", "--replicas", "2", "--save-ramps", "x"], "--save-ramps needs one process"),
        (["--serve", "--replicas", "auto", "--min-replicas", "3", "--max-replicas", "2"], "1 <= min <= max"),
        (["--serve", "--ray-address", "h:6379"], "--ray-address joins a Ray cluster for replicas"),
    ],
)
def test_replica_flags_are_checked(tmp_path, capsys, flags, message) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--engine-dir", str(tmp_path), *flags])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert message in err, err


def test_a_missing_engine_directory_fails_before_ray_starts(tmp_path, capsys) -> None:
    code = main(["--engine-dir", str(tmp_path / "nope"), "--serve", "--replicas", "2", "--http-port", "0"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "nope" in err and len(err.splitlines()) == 1, err
