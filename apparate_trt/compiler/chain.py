"""Chain checks: run the split segments in order and compare them with the unsplit model.

The compiler's proof that :func:`apparate_trt.graph.split.split_model` kept the model's function:
every tensor passed between segments and the score output are compared with the model's own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from apparate_trt.backends import open_runner
from apparate_trt.errors import ApparateError
from apparate_trt.graph.split import Segment, with_extra_outputs


@dataclass(frozen=True)
class ChainCheck:
    """Result of :func:`verify_chain`: the largest absolute difference of the score output between
    the chained segments and the model, and whether every argmax agrees (``near_ties`` counts the
    inputs whose argmax differed only between classes whose original scores tie within float
    noise, 1e-4 of the score range; they count as equal)."""

    max_abs_diff: float
    argmax_equal: bool
    near_ties: int = 0


def _max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        return float("inf")
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))


def _diverges(value: np.ndarray, ref: np.ndarray) -> bool:
    """True when ``value`` differs from ``ref`` beyond float noise (1e-4 + 1e-3 of its range)."""
    if value.shape != ref.shape:
        return True
    if not np.issubdtype(ref.dtype, np.floating):
        return not np.array_equal(value, ref)
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    return _max_abs_diff(value, ref) > 1e-4 + 1e-3 * scale


def run_chain(
    segments: Sequence[Segment], feeds: Mapping[str, np.ndarray], threads: int | None = 1
) -> dict[str, np.ndarray]:
    """Run the segments in order on ``feeds`` through ONNX Runtime; returns every tensor the chain
    produced (the environment), keyed by name. Raises ApparateError naming a segment that fails."""
    env: dict[str, np.ndarray] = dict(feeds)
    for number, seg in enumerate(segments):
        runner = open_runner(seg.model, threads=threads, name=f"segment {number}")
        try:
            env.update(runner.run(env, seg.outputs))
        except ApparateError:
            raise
        except Exception as exc:
            line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ApparateError(
                f"segment {number} (of {len(segments)}) fails to run: {line}; "
                "the split does not fit this model, please report it with the model"
            ) from exc
    return env


def verify_chain(
    model: onnx.ModelProto,
    segments: Sequence[Segment],
    feeds: Mapping[str, np.ndarray],
    score_output: str,
    threads: int | None = 1,
) -> ChainCheck:
    """Check that the chained segments reproduce ``model`` on ``feeds``.

    Runs the model (exposing every tensor passed between segments) and the chain, compares the
    ``score_output``: returns its max absolute difference and whether all argmaxes agree. Raises
    ApparateError naming the first segment whose outputs diverge when an argmax differs by more
    than a near tie.
    """
    boundary = [name for seg in segments[:-1] for name in seg.outputs]
    reference = open_runner(with_extra_outputs(model, boundary), threads=threads, name="the model").run(feeds)
    env = run_chain(segments, feeds, threads)
    if score_output not in env:
        raise ApparateError(f"the chained segments do not produce the score output '{score_output}'")
    ref, got = reference[score_output], env[score_output]
    diff = _max_abs_diff(got, ref)
    ref_pred, got_pred = ref.argmax(axis=-1), got.argmax(axis=-1)
    differ = np.flatnonzero(ref_pred != got_pred)
    ref_rows = ref.reshape(len(ref_pred), -1) if ref.ndim > 1 else ref[:, None]
    margin = ref_rows.max(axis=-1)[differ] - ref_rows[differ, got_pred[differ]]
    noise = 1e-4 * (1.0 + float(np.max(np.abs(ref_rows)))) if ref_rows.size else 0.0
    ties = int(np.sum(margin <= noise))
    if len(differ) > ties:
        bad = next(
            (
                k
                for k, seg in enumerate(segments)
                if any(_diverges(env[o], reference[o]) for o in seg.outputs if o in reference)
            ),
            len(segments) - 1,
        )
        seg = segments[bad]
        where = f"ending at site {seg.ends_at_site}" if seg.ends_at_site is not None else "the last one"
        raise ApparateError(
            f"the chained segments disagree with the model on {len(differ) - ties} of {len(ref_pred)} inputs "
            f"(max abs difference {diff:.3g}); first diverging: segment {bad} ({where}, outputs "
            f"{', '.join(seg.outputs)}); the model may be non-deterministic, please report it with the model"
        )
    return ChainCheck(diff, True, ties)
