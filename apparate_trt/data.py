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

Memory: only an uncompressed ``.npz`` whose arrays are already in the model's dtypes (and in C
order) is memory-mapped: such an array is returned as a read-only ``np.memmap`` of its bytes inside
the zip file, so a file of any size costs no resident memory and slicing it reads only the rows
asked for. Write it with ``numpy.savez(path, **{input_name: array.astype(model_dtype)})`` (not
``savez_compressed``). Its checks (finite values, the zip member's CRC-32) read the file chunk by
chunk. An array that needs a conversion (float64 -> float32, int32 -> int64, ...), a compressed
member or a Fortran-order array is loaded into memory whole, as before.
"""

from __future__ import annotations

import math
import struct
import warnings
import zipfile
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from numpy.lib import format as npformat

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

    Only an uncompressed ``.npz`` whose array is already in the model input's dtype and C order is
    memory-mapped: that input comes back as a read-only ``np.memmap`` (``mode='r'``) of the bytes in
    the zip file, validated chunk by chunk, so memory stays bounded whatever the file's size. Save
    such a file with ``numpy.savez(path, **{name: array.astype(model_dtype)})``. Any other array (one
    that needs a dtype conversion, a ``numpy.savez_compressed`` member, Fortran order) is loaded
    into memory whole.
    """
    path = Path(path)
    with _open_npz(path, what) as npz:
        members = npz.members
        for spec in model_inputs:
            if spec.name not in members:
                have = ", ".join(sorted(members)) or "no arrays"
                raise ApparateError(
                    f"{what} file '{path}' has no array '{spec.name}' for the model input of that name "
                    f"(it has: {have}); save one array per model input, named as in the model"
                )
        _warn_extra(path, members, model_inputs, what)
        result: dict[str, np.ndarray] = {}
        for spec in model_inputs:
            member = members[spec.name]
            if member.array is not None:
                npz.load(member)  # refuses an entry that is not a .npy array
            _check_shape(path, spec, member)
            if member.mappable(np.dtype(spec.dtype)):
                array = npz.memmap(member)
                _check_finite(path, spec.name, array.dtype, npz.file_chunks(member))
            else:
                array = _convert_dtype(path, spec, npz.load(member))
                _check_finite(path, spec.name, array.dtype, _row_chunks(array))
                array = np.ascontiguousarray(array)
            result[spec.name] = array
    _check_counts(path, result, min_samples, what)
    return result


def num_samples(inputs: dict[str, np.ndarray]) -> int:
    """Number of samples (first axis) of validated inputs."""
    return int(next(iter(inputs.values())).shape[0]) if inputs else 0


def take(inputs: dict[str, np.ndarray], index: np.ndarray | slice) -> dict[str, np.ndarray]:
    """The samples ``index`` (a slice or an index array) of every input, C-contiguous."""
    return {name: np.ascontiguousarray(array[index]) for name, array in inputs.items()}


CHUNK_ROWS = 4096
"""Rows a validation pass looks at at once (fewer when rows are large: see ``CHUNK_BYTES``)."""
CHUNK_BYTES = 32 << 20
"""Most bytes of array data a validation pass reads or scans at once."""

_READ_ERRORS = (ValueError, OSError, zipfile.BadZipFile, EOFError, zlib.error)
_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")  # the 30-byte zip local file header
_LOCAL_SIGNATURE = b"PK\x03\x04"


def _reason(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


@dataclass
class _Member:
    """One array of the ``.npz``: its zip entry and ``.npy`` header, read without its data."""

    name: str
    info: zipfile.ZipInfo
    shape: tuple[int, ...] = ()
    dtype: np.dtype | None = None
    fortran_order: bool = False
    header_version: tuple[int, int] | None = None
    """``None`` when the header was not parsed (not a ``.npy`` entry): the member is loaded eagerly."""
    array: object = None
    """The member's contents when already loaded (entries that are not ``.npy``, object arrays)."""

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def mappable(self, want: np.dtype) -> bool:
        """Whether the array can be memory-mapped as the model's dtype ``want`` (no conversion)."""
        return (
            self.array is None
            and self.header_version in ((1, 0), (2, 0))
            and self.info.compress_type == zipfile.ZIP_STORED
            and not self.info.flag_bits & 0x1  # not encrypted
            and not self.fortran_order
            and self.dtype == want
            and self.size > 0
        )


class _Npz:
    """An open ``.npz``: ``members`` by array name; arrays are read or mapped only when asked for."""

    def __init__(self, path: Path, what: str, loaded: np.lib.npyio.NpzFile) -> None:
        self.path = path
        self.what = what
        self.loaded = loaded
        self.members: dict[str, _Member] = {}

    def __enter__(self) -> _Npz:
        return self

    def __exit__(self, *exc: object) -> None:
        self.loaded.close()

    def unreadable(self, reason: str) -> ApparateError:
        return ApparateError(
            f"{self.what} file '{self.path}' holds an array that cannot be read ({reason}); "
            "save it again with numpy.savez"
        )

    def read_headers(self) -> None:
        """Read every member's ``.npy`` header (not its data); other entries are loaded as before."""
        for info in self.loaded.zip.infolist():
            entry = info.filename
            name = entry[:-4] if entry.endswith(".npy") else entry
            member = _Member(name, info)
            try:
                with self.loaded.zip.open(info) as fp:
                    if fp.read(len(npformat.MAGIC_PREFIX)) != npformat.MAGIC_PREFIX:
                        member.array = self.loaded[name]
                    else:
                        fp.seek(0)
                        version = npformat.read_magic(fp)
                        if version == (1, 0):
                            header = npformat.read_array_header_1_0(fp)
                        elif version == (2, 0):
                            header = npformat.read_array_header_2_0(fp)
                        else:
                            header = None
                        if header is not None:
                            member.shape, member.fortran_order, member.dtype = header
                            member.header_version = version
                        if header is None or member.dtype.hasobject:
                            member.array = self.loaded[name]  # numpy refuses object arrays itself
            except _READ_ERRORS as exc:
                raise self.unreadable(_reason(exc)) from None
            if isinstance(member.array, np.ndarray):
                array = member.array
                member.shape, member.dtype, member.fortran_order = array.shape, array.dtype, False
            self.members[name] = member

    def load(self, member: _Member) -> np.ndarray:
        """The member's array in memory (numpy's own reader: CRC checked, decompressed)."""
        if member.array is not None:
            if not isinstance(member.array, np.ndarray):
                raise self.unreadable(f"entry '{member.info.filename}' is not a .npy array")
            return member.array
        try:
            return self.loaded[member.name]
        except _READ_ERRORS as exc:
            raise self.unreadable(_reason(exc)) from None

    def _data_offset(self, member: _Member) -> tuple[int, int]:
        """Offsets in the file of a stored member's ``.npy`` header and of its array data."""
        info = member.info
        try:
            with self.path.open("rb") as f:
                f.seek(info.header_offset)
                local = f.read(_LOCAL_HEADER.size)
                if len(local) < _LOCAL_HEADER.size:
                    raise self._truncated(member)
                fields = _LOCAL_HEADER.unpack(local)
                if fields[0] != _LOCAL_SIGNATURE:
                    raise self.unreadable(f"bad local zip header for '{info.filename}'")
                name_length, extra_length = fields[-2], fields[-1]
                npy_start = info.header_offset + _LOCAL_HEADER.size + name_length + extra_length
                f.seek(npy_start)
                version = npformat.read_magic(f)
                reader = npformat.read_array_header_1_0 if version == (1, 0) else npformat.read_array_header_2_0
                shape, fortran_order, dtype = reader(f)
                data_offset = f.tell()
        except _READ_ERRORS as exc:
            raise self.unreadable(_reason(exc)) from None
        if (shape, fortran_order, dtype) != (member.shape, member.fortran_order, member.dtype):
            raise self.unreadable(f"the .npy header of '{info.filename}' differs from the zip directory's")
        member_end = npy_start + info.file_size
        data_end = data_offset + member.size * member.dtype.itemsize
        if data_end > self.path.stat().st_size:
            raise self._truncated(member)
        if data_end > member_end:
            raise self.unreadable(f"array data of '{info.filename}' runs past the end of its zip entry")
        return npy_start, data_offset

    def _truncated(self, member: _Member) -> ApparateError:
        return ApparateError(
            f"{self.what} file '{self.path}' is truncated: array '{member.name}' "
            f"(shape {list(member.shape)}, {member.dtype}) runs past the end of the file; copy or save it again"
        )

    def memmap(self, member: _Member) -> np.memmap:
        """A read-only memory map of a stored, C-order member in the model's dtype."""
        _, offset = self._data_offset(member)
        try:
            return np.memmap(self.path, dtype=member.dtype, mode="r", offset=offset, shape=member.shape, order="C")
        except _READ_ERRORS as exc:
            raise self.unreadable(_reason(exc)) from None

    def file_chunks(self, member: _Member) -> Iterator[np.ndarray]:
        """The member's rows, a chunk at a time, read from the file into one reused buffer.

        Reading (not touching the memory map) keeps the pages out of the process's resident set;
        the member's CRC-32 is checked on the way, as numpy's reader would.
        """
        npy_start, data_offset = self._data_offset(member)
        row_shape = member.shape[1:]
        row_bytes = math.prod(row_shape) * member.dtype.itemsize
        rows = _chunk_rows(row_bytes)
        buffer = bytearray(rows * row_bytes)
        view = memoryview(buffer)
        try:
            with self.path.open("rb") as f:
                f.seek(npy_start)
                crc = zlib.crc32(f.read(data_offset - npy_start))
                for start in range(0, member.shape[0], rows):
                    count = min(rows, member.shape[0] - start)
                    want = count * row_bytes
                    got = f.readinto(view[:want])
                    if got != want:
                        raise self._truncated(member)
                    crc = zlib.crc32(view[:want], crc)
                    yield np.frombuffer(buffer, dtype=member.dtype, count=count * math.prod(row_shape)).reshape(
                        (count, *row_shape)
                    )
        except _READ_ERRORS as exc:
            raise self.unreadable(_reason(exc)) from None
        if crc != member.info.CRC:
            raise self.unreadable(f"Bad CRC-32 for file '{member.info.filename}'")


def _chunk_rows(row_bytes: int) -> int:
    return max(1, min(CHUNK_ROWS, CHUNK_BYTES // max(1, row_bytes)))


def _row_chunks(array: np.ndarray) -> Iterator[np.ndarray]:
    """Views of ``array``'s rows, a bounded chunk at a time."""
    if array.ndim == 0:
        yield array.reshape(1)
        return
    rows = _chunk_rows(array.itemsize * math.prod(array.shape[1:]))
    for start in range(0, array.shape[0], rows):
        yield array[start : start + rows]


def _open_npz(path: Path, what: str) -> _Npz:
    if not path.exists():
        raise ApparateError(f"{what} file '{path}' does not exist; check the path")
    if path.is_dir():
        raise ApparateError(
            f"{what} file '{path}' is a directory; pass an .npz file (np.savez) with one array per model input"
        )
    try:
        loaded = np.load(path, allow_pickle=False)
    except _READ_ERRORS as exc:
        raise ApparateError(
            f"{what} file '{path}' is not a readable .npz ({_reason(exc)}); save it with "
            f"numpy.savez(path, **{{input_name: array}}), without object arrays"
        ) from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise ApparateError(
            f"{what} file '{path}' is a single .npy array, not an .npz; save it with "
            f"numpy.savez(path, **{{input_name: array}}) with one array per model input"
        )
    npz = _Npz(path, what, loaded)
    try:
        npz.read_headers()
    except BaseException:
        loaded.close()
        raise
    return npz


def _warn_extra(path: Path, arrays: Iterable[str], model_inputs: Sequence[InputSpec], what: str) -> None:
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


def _check_shape(path: Path, spec: InputSpec, array: np.ndarray | _Member) -> None:
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
            chunks = [chunk for chunk in _row_chunks(array) if chunk.size]
            low = min(int(chunk.min()) for chunk in chunks)
            high = max(int(chunk.max()) for chunk in chunks)
            if low < info.min or high > info.max:
                raise ApparateError(
                    f"array '{spec.name}' in '{path}' has values {low}..{high} that do not fit the model's "
                    f"dtype {want}; check the data"
                )
        return array.astype(want)
    raise refuse


def _check_finite(path: Path, name: str, dtype: np.dtype, chunks: Iterable[np.ndarray]) -> None:
    """Count NaN and inf in ``chunks`` (the array's rows, a bounded chunk at a time; always consumed)."""
    nan = inf = bad_rows = 0
    for chunk in chunks:
        if dtype.kind != "f":
            continue
        nan += int(np.count_nonzero(np.isnan(chunk)))
        inf += int(np.count_nonzero(np.isinf(chunk)))
        if chunk.size and not np.isfinite(chunk).all():
            bad_rows += int((~np.isfinite(chunk.reshape(chunk.shape[0], -1))).any(axis=1).sum())
    if nan or inf:
        raise ApparateError(
            f"array '{name}' in '{path}' holds {nan} NaN and {inf} inf values (in {bad_rows} samples, after "
            f"conversion to {dtype}); remove or fix those samples"
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
