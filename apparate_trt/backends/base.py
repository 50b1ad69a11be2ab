"""The backend seam: what every runner offers, whatever executes the model.

A *runner* holds one loaded model (an ONNX segment, a ramp, the whole model, or a TensorRT engine)
and maps ``{input name: array}`` to ``{output name: array}``. Callers never name a backend class:
they call :func:`apparate_trt.backends.open_runner` (today every caller opens the engine directory's
ONNX files on the default backend, onnxruntime) and use the runner through this interface only.
Tests use a real runner or a small fake that implements :class:`Runner`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class IOSpec:
    """One input or output of a loaded model: its name, numpy dtype name (``float32``, ``int64``) and
    shape, where a dimension that is not fixed is a symbol (``"N"``) or None."""

    name: str
    dtype: str
    shape: tuple[int | str | None, ...]

    @property
    def batch_first(self) -> bool:
        """Whether the first axis is not fixed (the batch axis of a model with a symbolic batch)."""
        return bool(self.shape) and not isinstance(self.shape[0], int)


@runtime_checkable
class Runner(Protocol):
    """One loaded model. ``run`` is for one thread at a time; distinct runners may run at once."""

    name: str
    """What the runner holds, for error messages ("segment 1", "ramp 3 (ramps/ramp_3.onnx)")."""
    input_names: list[str]
    """The inputs ``run`` needs, in the model's order."""
    output_names: list[str]
    """Every output the model can return, in the model's order."""
    inputs: list[IOSpec]
    """The inputs' specs, in ``input_names`` order."""
    outputs: list[IOSpec]
    """The outputs' specs, in ``output_names`` order."""

    def run(self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Run once. ``feeds`` must hold every input (extra entries are ignored); returns the requested
        ``outputs`` (None: all) as arrays the caller owns. Raises ApparateError naming what failed."""
        ...

    def close(self) -> None:
        """Release what the runner holds (session, device buffers); it may not run afterwards."""
        ...

    def __enter__(self) -> Runner: ...

    def __exit__(self, *exc_info: object) -> None: ...


class RunnerBase:
    """Context-manager behaviour shared by the concrete runners: ``with open_runner(...) as r:``
    closes the runner on exit, and the names from the specs. Subclasses set ``name``, ``inputs``
    and ``outputs`` and implement ``run`` and ``close``."""

    name: str
    inputs: list[IOSpec]
    outputs: list[IOSpec]

    @property
    def input_names(self) -> list[str]:
        return [spec.name for spec in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [spec.name for spec in self.outputs]

    def close(self) -> None:
        """Nothing to release by default."""

    def __enter__(self) -> RunnerBase:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# ------------------------------------------------------------------------------ device-resident chains
@dataclass
class Submission:
    """Work a :class:`ChainRunner` has queued: the outputs kept on its device, and the fetched ones.

    ``kept`` maps output names to the backend's device tensors (a TensorRT runner's
    :class:`~apparate_trt.backends.tensorrt.DeviceArray`, an ONNX Runtime ``OrtValue``): later
    runners of the same chain read them in stream order without a host round trip. :meth:`wait`
    blocks until the fetched outputs are on the host and returns them (the same dict on every call).
    """

    kept: dict[str, Any]
    fetch: Callable[[], dict[str, np.ndarray]]
    _fetched: dict[str, np.ndarray] | None = field(default=None, repr=False)

    def wait(self) -> dict[str, np.ndarray]:
        if self._fetched is None:
            self._fetched = self.fetch()
        return self._fetched

    @classmethod
    def ready(cls, kept: dict[str, Any], fetched: dict[str, np.ndarray]) -> Submission:
        """A submission that already finished (a synchronous runner's)."""
        return cls(kept, lambda: fetched, fetched)


@runtime_checkable
class ChainRunner(Runner, Protocol):
    """A runner whose outputs can stay on its device and feed the next runner of a chain.

    ``submit`` queues one run: ``feeds`` hold host arrays or device tensors kept by an earlier
    submission of the same device; outputs named in ``keep`` stay on the device, those in ``fetch``
    come back to the host. ``side=True`` queues it on the chain's side stream after everything
    queued so far on the main stream (a ramp beside the next segment). An ``asynchronous`` runner
    returns at once; a synchronous one has finished when ``submit`` returns.
    """

    device: str
    """Where its tensors live: ``cpu``, ``cuda:0``."""
    asynchronous: bool

    def submit(
        self,
        feeds: Mapping[str, Any],
        keep: Sequence[str] = (),
        fetch: Sequence[str] = (),
        *,
        side: bool = False,
    ) -> Submission: ...
