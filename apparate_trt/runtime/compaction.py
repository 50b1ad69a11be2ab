"""Skip mode's batch compaction: released rows leave the batch, an audited sample runs on.

On a CPU every row of a batch costs about its share of the batch, so once a ramp has released a
row, every later segment it runs is spent only on its feedback. In ``skip`` mode
(:data:`EXIT_MODES`) the executor keeps, after each ramp, the rows that did not exit plus an
**audit sample** of those that did (each kept with the controller's audit probability, and always
when the request asked for the final answer), and gathers them into a smaller batch for the later
segments and ramps (:func:`compact`). An audited row reaches the end, so it still labels every
ramp it passed; the controller weighs it by ``1 / p`` (inverse probability weighting), which keeps
its window, threshold search and ramp utility unbiased (``apparate_trt._core`` takes the weights).

Compacting is one ``numpy.take`` per batch-first tensor in the running environment: microseconds
for the tensors of the bundled models (``benchmarks/bench_compaction.py`` measures it). ONNX
Runtime sessions take any batch size, so the segment runners need no re-planning.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from apparate_trt.backends.base import IOSpec

EXIT_MODES = ("release", "skip", "auto")
"""``release``: every row runs to the end (the paper's design); ``skip``: released rows leave the
batch but for an audit sample; ``auto``: each batch is run in release mode while no request waits
behind it and in skip mode when one does (:func:`skips_batch`)."""

AUTO_SKIP_QUEUE_DEPTH = 1
"""``auto`` exit mode: a batch runs in skip mode when at least this many requests still wait in
the queue once it is taken (a backlog is building: its rows' full runs would delay them), in
release mode otherwise (idle capacity: every row runs on and labels every ramp)."""


def skips_batch(exit_mode: str, queue_depth: int, threshold: int = AUTO_SKIP_QUEUE_DEPTH) -> bool:
    """Whether a batch taken with ``queue_depth`` requests still waiting runs in skip mode."""
    return exit_mode == "skip" or (exit_mode == "auto" and queue_depth >= threshold)


def compacts(exit_mode: str) -> bool:
    """Whether ``exit_mode`` may compact batches (skip or auto): the engine then draws audits and
    the controller weighs feedback."""
    return exit_mode in ("skip", "auto")


def check_exit_mode(mode: str) -> str:
    """Return ``mode`` if it is one of :data:`EXIT_MODES`, else raise an ApparateError naming them."""
    from apparate_trt.errors import ApparateError

    if mode not in EXIT_MODES:
        raise ApparateError(f"unknown exit mode {mode!r}; use one of: {', '.join(EXIT_MODES)}")
    return mode


def dynamic_batch_inputs(inputs: Iterable[IOSpec]) -> tuple[set[str], set[str]]:
    """Split a runner's input specs into (names whose first axis is dynamic, the others).

    A dynamic first axis (a symbol, or None) is the batch axis of a segment split from a model
    with a symbolic batch; a tensor without one (a scalar, a fixed first axis) cannot be compacted.
    """
    batch, other = set(), set()
    for spec in inputs:
        (batch if spec.batch_first else other).add(spec.name)
    return batch, other


def compact(env: Mapping[str, np.ndarray], keep: np.ndarray, batch_names: set[str], n: int) -> dict[str, np.ndarray]:
    """The environment with only the rows ``keep`` (int positions, ascending) of its batch tensors.

    A tensor is gathered when it is in ``batch_names`` and its first axis holds the current batch
    of ``n`` rows; every other tensor passes unchanged.
    """
    out: dict[str, np.ndarray] = {}
    for name, value in env.items():
        if name in batch_names and value.ndim >= 1 and value.shape[0] == n:
            out[name] = np.take(value, keep, axis=0)
        else:
            out[name] = value
    return out


def draw_audits(rng: np.random.Generator, exiting: np.ndarray, wait_final: np.ndarray, rate: float) -> np.ndarray:
    """Which of the ``exiting`` rows (original batch indices, int [k]) run on to the end: bool [k].

    Each is audited with probability ``rate`` (0 <= rate <= 1), and always when ``wait_final`` (bool
    [batch]) marks its request as waiting for the final answer.
    """
    if exiting.size == 0:
        return np.zeros(0, dtype=bool)
    drawn = rng.random(exiting.size) < rate if rate < 1.0 else np.ones(exiting.size, dtype=bool)
    return drawn | wait_final[exiting]
