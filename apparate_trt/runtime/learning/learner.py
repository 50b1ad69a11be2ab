"""Ramps that keep learning: reservoirs of served samples, refits off the batch path, swaps.

The engine's control thread hands every batch's feedback to :meth:`RampLearner.observe`: for each
active ramp, the pooled features of the rows that reached the model's end and the model's final
probabilities go into that ramp's reservoir (:mod:`.reservoir`). When an active ramp out of
probation has gathered ``refit_every`` new samples (and none is being refitted), a refit starts on
a background thread that runs :mod:`.refit_worker` as a niced child process beside the batches
(the engine passes no gate: held stopped while batches ran, a refit under steady load never
finished). The worker trains a new head on the reservoir's training rows, warm-started from the
serving head, and judges both heads on its held-out rows (the releasable share at the controller's
target, :mod:`apparate_trt.ramps.refit`).

:meth:`RampLearner.take_finished` hands the engine a finished refit; an accepted one is swapped in
between batches (``Executor.replace_ramp``) and the controller puts the ramp in probation until a
tune on the new head's feedback (``Controller.ramp_refitted``); either way the controller records
an event with the before and after figures. :meth:`RampLearner.save` writes an engine directory
with the refitted ramps and their provenance (``apparate-run --save-ramps``).

Refits need torch (the ``train`` extra) and ramp graphs with a ``features`` output (engine
directories compiled since ramps export it); without either the learner says so once and the
ramps stay as compiled.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from apparate_trt._optional import is_available
from apparate_trt.defaults import DEFAULT_REFIT_EVERY
from apparate_trt.engine_dir import Manifest, write_manifest
from apparate_trt.errors import ApparateError
from apparate_trt.ramps.fit import target_probabilities
from apparate_trt.ramps.refit import MIN_GAIN, MIN_SAMPLES, MIN_SIDE
from apparate_trt.runtime.learning.refit_worker import EXIT_NO_TORCH, write_job
from apparate_trt.runtime.learning.reservoir import RESERVOIR_BYTES, RESERVOIR_SAMPLES, TOTAL_BYTES, Reservoirs
from apparate_trt.runtime.split_worker import IdleGate

log = logging.getLogger(__name__)

REFIT_EVERY = DEFAULT_REFIT_EVERY
"""New samples a ramp gathers between refits."""
TIMEOUT_S = 300.0
"""Wall-clock seconds a refit may take, stopped time included."""


@dataclass(frozen=True)
class LearningOptions:
    """How ramps keep learning (None means the default).

    Attributes:
        refits: False keeps the ramps as compiled (no reservoirs, no refits).
        refit_every: new samples an active ramp gathers before its next refit.
        reservoir_samples: newest samples kept per ramp.
        reservoir_bytes: most bytes per ramp's reservoir.
        total_bytes: most bytes of all reservoirs together.
        min_gain: least rise of the held-out releasable share (a fraction) that accepts a new head.
    """

    refits: bool = True
    refit_every: int = REFIT_EVERY
    reservoir_samples: int = RESERVOIR_SAMPLES
    reservoir_bytes: int = RESERVOIR_BYTES
    total_bytes: int = TOTAL_BYTES
    min_gain: float = MIN_GAIN

    def __post_init__(self) -> None:
        if int(self.refit_every) < 1:
            raise ApparateError(f"refit_every must be at least 1 sample, got {self.refit_every}")
        if int(self.reservoir_samples) < MIN_SAMPLES:
            raise ApparateError(
                f"reservoir_samples must be at least {MIN_SAMPLES} (the fewest a refit judges on), got "
                f"{self.reservoir_samples}"
            )
        if int(self.reservoir_bytes) < 1 or int(self.total_bytes) < int(self.reservoir_bytes):
            raise ApparateError(
                f"reservoir bytes must be >= 1 and total_bytes at least reservoir_bytes, got {self.reservoir_bytes} "
                f"and {self.total_bytes}"
            )
        if not 0.0 <= float(self.min_gain) < 1.0:
            raise ApparateError(f"min_gain must be a fraction in [0, 1), got {self.min_gain}")


@dataclass
class FinishedRefit:
    """A refit that ended: its site, the worker's figures (``accepted``, ``before``, ``after``,
    ``train_samples``, ``heldout_samples``, ``fit_s``), the new ramp file (accepted only), the
    wall time it took (s, stopped time included) and the requests served when it started."""

    site: int
    figures: dict[str, Any]
    file: Path | None
    wall_s: float
    served: int

    @property
    def accepted(self) -> bool:
        return bool(self.figures.get("accepted")) and self.file is not None


@dataclass
class _SiteState:
    file: Path
    """The ramp graph serving now."""
    since_refit: int = 0
    version: int = 0
    provenance: dict[str, Any] | None = None
    graph: bytes | None = None
    """The refitted ramp graph's bytes (kept so that :meth:`RampLearner.save` works after close)."""
    history: list[dict[str, Any]] = field(default_factory=list)


def _enough(heldout: np.ndarray) -> bool:
    """True when samples with these held-out marks are enough to refit on (see ``refit_head``)."""
    held = int(np.count_nonzero(heldout))
    return heldout.size >= MIN_SAMPLES and min(held, heldout.size - held) >= MIN_SIDE


class RampLearner:
    """Keeps reservoirs, runs refits, and remembers each ramp's current file (see the module doc).

    Args:
        manifest: the engine directory's manifest.
        target: the disagreement (fraction) refits judge the releasable share at: the controller's
            ``target_constraint``.
        options: :class:`LearningOptions` (None: the defaults).
        gate: an IdleGate that stops the worker while batches run (None, the engine's choice: the
            worker runs beside them, niced).
        seed: seeds the held-out marks and the training.
    """

    def __init__(
        self,
        manifest: Manifest,
        target: float,
        options: LearningOptions | None = None,
        gate: IdleGate | None = None,
        seed: int = 0,
    ) -> None:
        self.manifest = manifest
        self.options = options or LearningOptions()
        self.target = float(target)
        self.gate = gate
        self.seed = int(seed)
        self.reservoirs = Reservoirs(
            self.options.reservoir_samples, self.options.reservoir_bytes, self.options.total_bytes, seed
        )
        self._sites = {
            entry.site: _SiteState(manifest.path(entry.file)) for entry in manifest.ramps if manifest.root is not None
        }
        self._learnable = {entry.site for entry in manifest.ramps if entry.features}
        self.status = self._status()
        """``on``, or why refits are off (one line)."""
        if self.status != "on":
            log.warning("ramp refits are off: %s; the ramps stay as compiled", self.status)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="apparate-refit")
        self._future: Future[FinishedRefit] | None = None
        self._scratch = Path(tempfile.mkdtemp(prefix="apparate-refits-")) if self.enabled else None
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._closing = False
        self.served = 0
        """Rows whose samples were offered (the requests that reached the model's end)."""
        self.refits = 0
        self.accepted = 0
        self.refit_seconds = 0.0
        """Wall seconds of every finished refit together (stopped time included)."""
        self.last_refit_s: float | None = None

    def _status(self) -> str:
        if not self.options.refits:
            return "off by request (refits=False)"
        if self.manifest.root is None:
            return "the manifest was not read from an engine directory"
        if not self._learnable:
            return "the ramp graphs have no features output (recompile the engine directory with this version)"
        if not is_available("torch"):
            return "refits need torch, which is not installed (pip install 'apparate_trt[train]')"
        return "on"

    @property
    def enabled(self) -> bool:
        """True when refits can run."""
        return self.status == "on"

    # ------------------------------------------------------------------------------------ samples
    def observe(self, outcomes: Sequence[Any]) -> None:
        """Add the samples of finished batches (``BatchOutcome``: ``features`` per site, ``final_logits``,
        ``weights``) to the reservoirs of their ramps."""
        if not self.enabled:
            return
        for outcome in outcomes:
            features = getattr(outcome, "features", None)
            if not features:
                continue
            weights = getattr(outcome, "weights", None)
            rows = np.arange(outcome.final_pred.shape[0]) if weights is None else np.flatnonzero(weights > 0)
            if rows.size == 0:
                continue
            probs = target_probabilities(np.asarray(outcome.final_logits, dtype=np.float32)[rows])
            w = None if weights is None else np.asarray(weights, dtype=np.float64)[rows]
            self.served += int(rows.size)
            for site, values in features.items():
                if site not in self._learnable:
                    continue
                self.reservoirs.add(site, np.asarray(values, dtype=np.float32)[rows], probs, w)
                self._sites[site].since_refit += int(rows.size)

    # ------------------------------------------------------------------------------------- refits
    def maybe_start(self, active: Sequence[int], probation: set[int] | frozenset[int] = frozenset()) -> int | None:
        """Start a refit of the active ramp (out of probation) with the most new samples, if one has
        gathered ``refit_every`` and none is running; returns its site or None."""
        if not self.enabled or self._closing:
            return None
        with self._lock:
            if self._future is not None:
                return None
            due = []
            for site in active:
                state, reservoir = self._sites.get(site), self.reservoirs.get(site)
                if site in probation or site not in self._learnable or state is None or reservoir is None:
                    continue
                if state.since_refit >= self.options.refit_every and _enough(reservoir.heldout[: len(reservoir)]):
                    due.append((state.since_refit, site))
            if not due:
                return None
            _, site = max(due)
            state = self._sites[site]
            state.since_refit = 0
            features, probs, weights, heldout = self.reservoirs.get(site).arrays()
            job_dir = self._scratch / f"site{site:02d}_job{self.refits + 1:04d}"
            job = {
                "kind": self.manifest.ramps[site].kind,
                "ramp_file": str(state.file),
                "target": self.target,
                "min_gain": float(self.options.min_gain),
                "seed": self.seed * 1000 + self.refits,
            }
            write_job(job_dir, job, features, probs, weights, heldout)
            self.refits += 1
            self._future = self._pool.submit(self._run_worker, site, job_dir, self.served)
            return site

    def _run_worker(self, site: int, job_dir: Path, served: int) -> FinishedRefit:
        start = time.perf_counter()
        cmd = [sys.executable, "-m", "apparate_trt.runtime.learning.refit_worker", str(job_dir)]
        try:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        except OSError as exc:
            return self._failed(site, f"the refit worker did not start ({exc})", start, served)
        with self._lock:
            self._proc = proc
        try:
            with self.gate.holding(proc) if self.gate is not None else nullcontext():
                stdout, stderr = proc.communicate(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            return self._failed(site, f"the refit worker took over {TIMEOUT_S:.0f} s", start, served)
        finally:
            with self._lock:
                self._proc = None
        if proc.returncode == EXIT_NO_TORCH:
            self.status = "refits need torch, which is not installed (pip install 'apparate_trt[train]')"
            log.warning("ramp refits are off: %s; the ramps stay as compiled", self.status)
        if proc.returncode != 0:
            last = (stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
            return self._failed(site, f"the refit worker failed: {last}", start, served)
        try:
            figures = json.loads(stdout.strip().splitlines()[-1])
        except (IndexError, ValueError) as exc:
            return self._failed(site, f"the refit worker printed no result ({exc})", start, served)
        file = Path(figures["file"]) if figures.get("accepted") and figures.get("file") else None
        return FinishedRefit(site, figures, file, time.perf_counter() - start, served)

    @staticmethod
    def _failed(site: int, why: str, start: float, served: int) -> FinishedRefit:
        log.warning("refit of ramp %d: %s; the ramp stays as it is", site, why)
        return FinishedRefit(site, {"accepted": False, "error": why}, None, time.perf_counter() - start, served)

    def take_finished(self) -> FinishedRefit | None:
        """The refit that finished since the last call (None if none did): an accepted one's file
        becomes the site's current ramp file, with its provenance."""
        with self._lock:
            future = self._future
            if future is None or not future.done():
                return None
            self._future = None
        try:
            done = future.result()
        except Exception as exc:  # noqa: BLE001 - a learner bug must not stop serving
            log.exception("a ramp refit failed")
            return FinishedRefit(-1, {"accepted": False, "error": str(exc)}, None, 0.0, self.served)
        self.refit_seconds += done.wall_s
        self.last_refit_s = done.wall_s
        state = self._sites.get(done.site)
        if state is not None:
            record = {"served": done.served, **{k: v for k, v in done.figures.items() if k != "file"}}
            state.history.append(record)
            del state.history[:-8]  # the newest few, for the provenance
            if done.accepted and done.file is not None:
                self.accepted += 1
                state.version += 1
                kept = self._scratch / f"ramp_site{done.site:02d}_refit{state.version}.onnx"
                shutil.move(str(done.file), kept)
                shutil.rmtree(done.file.parent, ignore_errors=True)
                compiled = self.manifest.ramps[done.site].file
                state.file = kept
                state.graph = kept.read_bytes()
                state.provenance = {
                    "compiled_file": compiled,
                    "refits": state.version,
                    "requests_served": done.served,
                    "samples": int(done.figures.get("train_samples", 0)) + int(done.figures.get("heldout_samples", 0)),
                    "target_disagreement": self.target,
                    "before": done.figures.get("before"),
                    "after": done.figures.get("after"),
                }
                done.file = kept
        return done

    def wait(self, timeout_s: float | None = None) -> bool:
        """Wait for the running refit (if any) to finish; True if none runs now (for tests)."""
        with self._lock:
            future = self._future
        if future is None:
            return True
        try:
            future.result(timeout_s)
        except Exception:  # noqa: BLE001 - reported by take_finished
            pass
        return future.done()

    # -------------------------------------------------------------------------------- reporting
    def stats(self) -> dict[str, Any]:
        """Figures for ``/metrics`` and the report: reservoir samples and bytes, refits run and
        accepted, refit seconds (total and the last), the status line."""
        return {
            "status": self.status,
            "reservoir_samples": int(sum(self.reservoirs.sizes().values())),
            "reservoir_bytes": int(self.reservoirs.nbytes),
            "refits": self.refits,
            "refits_accepted": self.accepted,
            "refit_seconds": self.refit_seconds,
            "last_refit_s": self.last_refit_s,
        }

    def refitted(self) -> dict[int, dict[str, Any]]:
        """Provenance of every ramp whose head was replaced, by site."""
        return {site: dict(s.provenance) for site, s in self._sites.items() if s.provenance is not None}

    def save(self, directory: str | Path) -> Path:
        """Write an engine directory at ``directory`` (created; it must not hold one already): a copy
        of this one with every refitted ramp's file replaced and its manifest entry recording where
        it came from (``refit``). Loading it works as for any engine directory; a refitted ramp
        starts in probation (its bootstrap statistics describe the compiled head). Works after
        :meth:`close` too."""
        src = self.manifest.root
        if src is None:
            raise ApparateError("this engine was not loaded from a directory; there is nothing to copy")
        out = Path(directory)
        if out.exists() and any(out.iterdir()):
            raise ApparateError(f"{out} exists and is not empty; give a new directory for the saved ramps")
        shutil.copytree(src, out, dirs_exist_ok=True)
        ramps = list(self.manifest.ramps)
        for site, provenance in self.refitted().items():
            entry = ramps[site]
            (out / entry.file).write_bytes(self._sites[site].graph or b"")
            history = entry.refit or {}
            provenance = {**provenance, "refits": provenance["refits"] + int(history.get("refits", 0))}
            after = provenance.get("after") or {}
            ramps[site] = replace(entry, refit=provenance, agreement=float(after.get("agreement", entry.agreement)))
        saved = replace(self.manifest, ramps=ramps, root=out)
        write_manifest(out, saved)
        return out

    def close(self) -> None:
        """Stop: a running worker is killed, the scratch files removed."""
        self._closing = True
        with self._lock:
            proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
