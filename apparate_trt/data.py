"""Load a ``.npz`` of model inputs and validate it against the model's inputs.

The file holds one array per model input, named as in the model, first axis = samples. Rules
(each violation is a one-line :class:`ApparateError` that says how to fix it):

- every model input must be present; arrays the model does not take (e.g. ``labels``) are
  ignored with a warning (:class:`DataWarning`), so a user's file with labels still works;
- each array has the input's rank, and every fixed (integer) dimension after the batch matches;
  symbolic dimensions take any size;
- dtypes: the model's dtype is expected. Conversions within a kind are applied, because they are
  what users' files usually hold: float64/float16 -> float32 (any float -> the model's float) and
  int32/uint8/... -> int64 (any integer -> the model's integer, if every value fits). Conversions
  across kinds (float -> int, int -> float, bool <-> number) are refused: they usually mean the
  wrong array or missing preprocessing (e.g. uint8 pixels not normalised);
- float arrays must be finite (no NaN or inf, checked after conversion);
- all arrays have the same number of samples, at least ``min_samples``.
"""

from __future__ import annotations

import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from apparate_trt.errors import ApparateError


class DataWarning(UserWarning):
    """A data file is usable but something in it was ignored."""


class InputSpec(Protocol):
    """What :func:`load_inputs` needs to know of a model input (``TensorInfo`` fits)."""

    name: str
    dtype: object
    shape: Sequence[int | str | None]


def load_inputs(
    path: str | Path, model_inputs: Sequence[InputSpec], min_samples: int = 1, what: str = "data"
) -> dict[str, np.ndarray]:
    """Read ``path`` (an ``.npz``) and return ``{input name: C-contiguous array}`` in the model's dtypes.

    ``what`` names the data in messages ("bootstrap data", "evaluation data").
    """
    path = Path(path)
    arrays = _read_npz(path, what)
    for spec in model_inputs:
        if spec.name not in arrays:
            have = ", ".join(sorted(arrays)) or "no arrays"
            raise ApparateError(
                f"{what} file '{path}' has no array '{spec.name}' for the model input of that name "
                f"(it has: {have}); save one array per model input, named as in the model"
            )
    _warn_extra(path, arrays, model_inputs, what)
    result: dict[str, np.ndarray] = {}
    for spec in model_inputs:
        array = arrays[spec.name]
        _check_shape(path, spec, array)
        array = _convert_dtype(path, spec, array)
        _check_finite(path, spec.name, array)
        result[spec.name] = np.ascontiguousarray(array)
    _check_counts(path, result, min_samples, what)
    return result


def num_samples(inputs: dict[str, np.ndarray]) -> int:
    """Number of samples (first axis) of validated inputs."""
    return int(next(iter(inputs.values())).shape[0]) if inputs else 0


def take(inputs: dict[str, np.ndarray], index: np.ndarray | slice) -> dict[str, np.ndarray]:
    """The samples ``index`` (a slice or an index array) of every input, C-contiguous."""
    return {name: np.ascontiguousarray(array[index]) for name, array in inputs.items()}


def _read_npz(path: Path, what: str) -> dict[str, np.ndarray]:
    if not path.exists():
        raise ApparateError(f"{what} file '{path}' does not exist; check the path")
    if path.is_dir():
        raise ApparateError(
            f"{what} file '{path}' is a directory; pass an .npz file (np.savez) with one array per model input"
        )
    try:
        loaded = np.load(path, allow_pickle=False)
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ApparateError(
            f"{what} file '{path}' is not a readable .npz ({reason}); save it with "
            f"numpy.savez(path, **{{input_name: array}}), without object arrays"
        ) from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise ApparateError(
            f"{what} file '{path}' is a single .npy array, not an .npz; save it with "
            f"numpy.savez(path, **{{input_name: array}}) with one array per model input"
        )
    try:
        with loaded:
            return {name: loaded[name] for name in loaded.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ApparateError(
            f"{what} file '{path}' holds an array that cannot be read ({reason}); save it again with numpy.savez"
        ) from None


def _warn_extra(path: Path, arrays: dict[str, np.ndarray], model_inputs: Sequence[InputSpec], what: str) -> None:
    wanted = {spec.name for spec in model_inputs}
    extra = sorted(set(arrays) - wanted)
    if extra:
        warnings.warn(
            f"{what} file '{path}' has arrays the model does not take, ignored: {', '.join(extra)} "
            f"(model inputs: {', '.join(sorted(wanted))})",
            DataWarning,
            stacklevel=3,
        )


def _shape_text(shape: Sequence[int | str | None]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _check_shape(path: Path, spec: InputSpec, array: np.ndarray) -> None:
    expected = list(spec.shape)
    if array.ndim != len(expected):
        raise ApparateError(
            f"array '{spec.name}' in '{path}' has shape {list(array.shape)} (rank {array.ndim}) but the "
            f"model input has shape {_shape_text(expected)} (rank {len(expected)}, first axis = samples); reshape it"
        )
    if array.ndim == 0:
        raise ApparateError(f"array '{spec.name}' in '{path}' is a scalar; its first axis must be the samples")
    for axis, (want, got) in enumerate(zip(expected, array.shape)):
        if axis > 0 and isinstance(want, int) and want > 0 and want != got:
            raise ApparateError(
                f"array '{spec.name}' in '{path}' has shape {list(array.shape)} but the model input has shape "
                f"{_shape_text(expected)}: axis {axis} must be {want}, not {got}; resize or pad the data"
            )


def _convert_dtype(path: Path, spec: InputSpec, array: np.ndarray) -> np.ndarray:
    want = np.dtype(spec.dtype)
    got = array.dtype
    if got == want:
        return array
    refuse = ApparateError(
        f"array '{spec.name}' in '{path}' has dtype {got} but the model input expects {want}; convert it "
        f"(e.g. array.astype(np.{want.name})) after checking it is the right array and preprocessing"
    )
    if want.kind == "f" and got.kind == "f":
        with np.errstate(over="ignore"):
            return array.astype(want)
    if want.kind in "iu" and got.kind in "iu":
        if array.size:
            info = np.iinfo(want)
            low, high = int(array.min()), int(array.max())
            if low < info.min or high > info.max:
                raise ApparateError(
                    f"array '{spec.name}' in '{path}' has values {low}..{high} that do not fit the model's "
                    f"dtype {want}; check the data"
                )
        return array.astype(want)
    raise refuse


def _check_finite(path: Path, name: str, array: np.ndarray) -> None:
    if array.dtype.kind != "f":
        return
    nan = int(np.isnan(array).sum())
    inf = int(np.isinf(array).sum())
    if nan or inf:
        bad_rows = int((~np.isfinite(array.reshape(array.shape[0], -1))).any(axis=1).sum()) if array.ndim else 1
        raise ApparateError(
            f"array '{name}' in '{path}' holds {nan} NaN and {inf} inf values (in {bad_rows} samples, after "
            f"conversion to {array.dtype}); remove or fix those samples"
        )


def _check_counts(path: Path, arrays: dict[str, np.ndarray], min_samples: int, what: str) -> None:
    counts = {name: int(a.shape[0]) for name, a in arrays.items()}
    if len(set(counts.values())) > 1:
        listing = ", ".join(f"{n} {c}" for n, c in counts.items())
        raise ApparateError(
            f"arrays in '{path}' have different numbers of samples ({listing}); every input needs one entry per sample"
        )
    count = next(iter(counts.values()), 0)
    if count < min_samples:
        raise ApparateError(
            f"{what} file '{path}' has {count} samples but at least {min_samples} are needed; provide more samples"
        )
