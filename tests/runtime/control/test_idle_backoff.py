"""An engine with no paying ramp: probes back off, and a change of the stream ends the wait (issue 32)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from test_controller import Outcome, Stream, make_manifest, run_batch

from apparate_trt.defaults import PROBE_BACKOFF_DOUBLINGS
from apparate_trt.runtime.control.controller import Controller
from apparate_trt.runtime.control.shift import StreamShift, top_probability

CLASSES = 4
RETURN = 3300
"""The batch at which the normal inputs return in :func:`degraded_then_normal`."""


@dataclass
class FinalOutcome(Outcome):
    """An outcome with the model's final outputs, as the executor's ``BatchOutcome`` has them."""

    final_pred: np.ndarray
    final_logits: np.ndarray


def final_outputs(rng: np.random.Generator, n: int, sharp: float) -> tuple[np.ndarray, np.ndarray]:
    """Logits [n, CLASSES] whose top class is uniform and whose top probability grows with ``sharp``."""
    pred = rng.integers(0, CLASSES, n)
    logits = rng.normal(0.0, 0.3, (n, CLASSES))
    logits[np.arange(n), pred] += sharp
    return np.argmax(logits, axis=1).astype(np.int32), logits.astype(np.float32)


class SilentStream(Stream):
    """Nothing is ever confident at any site: no ramp can pay."""

    def sample(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        conf, agree = super().sample(n)
        conf[:] = 0.0
        return conf, agree


def serve(ctl: Controller, stream: Stream, batches: int, sharp=None, batch: int = 8):
    """Serve ``batches`` batches; return per-batch (ran split, early-exit share). ``sharp(b)``: the
    final outputs' sharpness at batch ``b`` (None: outcomes without final outputs)."""
    config = ctl.initial_config()
    rng = np.random.default_rng(5)
    split, exits = [], []
    for b in range(batches):
        conf, agree = stream.sample(batch)
        outcome, _ = run_batch(config, conf, agree)
        if sharp is not None:
            outcome = FinalOutcome(*vars(outcome).values(), *final_outputs(rng, batch, sharp(b)))
        split.append(len(config[0]) > 0)
        exits.append(float((outcome.exit_site >= 0).mean()))
        new = ctl.observe(outcome, t=float(b))
        if new is not None:
            config = new
    return np.asarray(split), np.asarray(exits)


def test_an_engine_whose_ramps_never_pay_probes_ever_less_often():
    ctl = Controller(make_manifest([5]), initial_thresholds="never")
    split, _ = serve(ctl, SilentStream(3), batches=8000)
    waits = [e["wait_batches"] for e in ctl.events if e["kind"] == "idle"]
    cap = ctl.adjust_every * 2**PROBE_BACKOFF_DOUBLINGS
    assert waits[:PROBE_BACKOFF_DOUBLINGS] == [ctl.adjust_every * 2**k for k in range(1, PROBE_BACKOFF_DOUBLINGS + 1)]
    assert max(waits) == cap
    # once backed off, the split chain (a probe) runs on a small share of the batches
    assert split[4000:].mean() < 0.12, split[4000:].mean()
    assert all("no ramp pays" in e["reason"] for e in ctl.events if e["kind"] == "idle")


def degraded_then_normal(with_final_outputs: bool) -> tuple[np.ndarray, Controller]:
    """Normal (300 batches), degraded (3,000: nothing confident, the model's own outputs less sure),
    normal again (250 batches = 2,000 requests); per-batch early-exit shares."""
    normal, degraded, back = RETURN - 3000, 3000, 250

    class Phased(Stream):
        served = 0

        def sample(self, n: int) -> tuple[np.ndarray, np.ndarray]:
            conf, agree = super().sample(n)
            if normal <= self.served < normal + degraded:
                conf[:] = 0.0
            self.served += 1
            return conf, agree

    ctl = Controller(make_manifest([5]), initial_thresholds="never")
    sharp = (lambda b: 0.3 if normal <= b < normal + degraded else 4.0) if with_final_outputs else None
    _, exits = serve(ctl, Phased(11), normal + degraded + back, sharp=sharp)
    return exits, ctl


def first_probe_after_return(ctl: Controller) -> int:
    """Batches from the normal inputs' return to the first ramp added after it (a large number if none)."""
    return next((e["batch"] - RETURN for e in ctl.events if e["kind"] == "add_ramp" and e["batch"] >= RETURN), 10**9)


def test_a_change_of_the_final_outputs_ends_the_backoff_and_exits_recover():
    exits, ctl = degraded_then_normal(with_final_outputs=True)
    assert first_probe_after_return(ctl) <= 64  # 2 x 256 samples of batches of 8
    first = exits[150:300].mean()
    assert first > 0.05
    assert max(e["wait_batches"] for e in ctl.events if e["kind"] == "idle") >= 512  # backed off
    assert exits[-60:].mean() >= 0.8 * first, (first, exits[-60:].mean())
    assert any("stream changed" in e["reason"] for e in ctl.events if e["kind"] == "add_ramp")


def test_without_the_final_outputs_the_backoff_outlasts_the_return():
    """The counterpart: with nothing to see the stream change by, the backed-off engine waits out
    its backoff (so the test above can fail)."""
    _, ctl = degraded_then_normal(with_final_outputs=False)
    assert first_probe_after_return(ctl) > 128


def test_stream_shift_sees_moved_classes_and_confidence_not_noise():
    rng = np.random.default_rng(0)
    shift = StreamShift()
    assert shift.changed() is None  # no reference yet
    shift.mark()
    for _ in range(40):
        shift.add(*final_outputs(rng, 8, 4.0))
    for _ in range(40):
        shift.add(*final_outputs(rng, 8, 4.0))
    assert shift.changed() is None  # the same stream
    for _ in range(40):
        shift.add(*final_outputs(rng, 8, 0.3))
    assert "top probability" in (shift.changed() or "")
    shift.mark()
    for _ in range(40):
        shift.add(*final_outputs(rng, 8, 4.0))
    for _ in range(80):
        pred, logits = final_outputs(rng, 8, 4.0)
        logits[:, 0] += 10.0  # every input now predicted class 0
        shift.add(np.zeros(8, np.int32), logits)
    assert "classes" in (shift.changed() or "")
    shift.clear()
    assert shift.changed() is None


def test_rows_without_a_final_output_are_not_counted():
    shift = StreamShift(min_samples=4)
    shift.mark()
    shift.add(np.full(8, -1, np.int32), np.zeros((8, CLASSES), np.float32))
    assert shift.changed() is None
    assert np.allclose(top_probability(np.zeros((2, CLASSES))), 1.0 / CLASSES)
