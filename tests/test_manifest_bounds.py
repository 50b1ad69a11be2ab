"""The engine directory's manifest is bounded: a size cap read without loading the file, unknown
top-level keys refused by name, one ``error:`` line and exit 2 (``apparate-run --serve``), and
property-based mutations of a real manifest never escape as anything but an ApparateError."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apparate_trt.engine_dir import MAX_MANIFEST_BYTES, read_manifest
from apparate_trt.errors import ApparateError

# Runs the CLI and writes its own peak resident memory (KiB) to the file named by argv[1]. It reads
# VmHWM, which starts anew with the process image; getrusage's ru_maxrss would not do: Linux keeps it
# across execve, so a child of a large pytest process reports the parent's size at the fork.
_MEASURED_RUN = """
import sys
from apparate_trt.cli.run import main
out = sys.argv[1]
try:
    status = main(sys.argv[2:])
finally:
    with open("/proc/self/status") as status_file:
        peak_kib = next(line.split()[1] for line in status_file if line.startswith("VmHWM:"))
    with open(out, "w") as fh:
        fh.write(peak_kib)
sys.exit(status)
"""


def _huge_manifest(directory: Path, size: int) -> None:
    """A ``manifest.json`` of ``size`` bytes: one unknown key holding one long string (sparse on disk)."""
    directory.mkdir()
    with open(directory / "manifest.json", "wb") as fh:
        fh.write(b'{"format_version": 1, "padding": "')
        fh.truncate(size - 2)
        fh.seek(size - 2)
        fh.write(b'"}')


def test_a_200_mb_manifest_exits_2_fast_with_one_line_and_bounded_memory(tmp_path):
    engine = tmp_path / "engine"
    _huge_manifest(engine, 200 * 1024 * 1024)
    rss_file = tmp_path / "rss"
    t0 = time.monotonic()
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            _MEASURED_RUN,
            str(rss_file),
            "--engine-dir",
            str(engine),
            "--serve",
            "--http-port",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    elapsed = time.monotonic() - t0
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "over 16 MiB" in lines[0] and "manifest" in lines[0]
    assert elapsed < 20.0
    peak_mb = int(rss_file.read_text()) / 1024
    assert peak_mb < 400, f"peak memory {peak_mb:.0f} MB"


def test_a_manifest_just_over_the_cap_is_refused_and_the_cap_is_far_above_a_real_one(resnet, tmp_path):
    real = (resnet.engine_dir / "manifest.json").stat().st_size
    assert real * 20 < MAX_MANIFEST_BYTES  # the cap cannot refuse a real manifest
    engine = tmp_path / "engine"
    _huge_manifest(engine, MAX_MANIFEST_BYTES + 1)
    with pytest.raises(ApparateError, match="over 16 MiB"):
        read_manifest(engine)


def _copy_with(resnet, tmp_path: Path, data: dict) -> Path:
    engine = tmp_path / "engine"
    shutil.copytree(resnet.engine_dir, engine)
    (engine / "manifest.json").write_text(json.dumps(data), encoding="utf-8")
    return engine


def test_unknown_top_level_keys_are_refused_by_name(resnet, tmp_path):
    data = json.loads((resnet.engine_dir / "manifest.json").read_text())
    data["zz_extra"] = "x" * 100
    data["aa_other"] = 1
    engine = _copy_with(resnet, tmp_path, data)
    with pytest.raises(ApparateError, match=r"unknown top-level key\(s\) 'aa_other', 'zz_extra'"):
        read_manifest(engine, verify=False)


def _mutate(value, draw):
    """``value`` with one leaf or key replaced by an arbitrary JSON value (hypothesis ``draw``)."""
    if isinstance(value, dict) and value:
        key = draw(st.sampled_from(sorted(value)))
        out = dict(value)
        if draw(st.booleans()):
            out[key] = _mutate(value[key], draw)
        else:
            out.pop(key)
        return out
    if isinstance(value, list) and value:
        i = draw(st.integers(0, len(value) - 1))
        out = list(value)
        out[i] = _mutate(value[i], draw)
        return out
    return draw(_JSON)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_manifests_fail_with_an_apparate_error_only(resnet, tmp_path_factory, data):
    """Every mutation of a real manifest is read, or refused with ApparateError: no other exception."""
    original = json.loads((resnet.engine_dir / "manifest.json").read_text())
    mutated = _mutate(original, data.draw)
    engine = tmp_path_factory.mktemp("fuzz")
    manifest = engine / "manifest.json"
    try:
        manifest.write_text(json.dumps(mutated), encoding="utf-8")
    except ValueError:  # NaN is written as NaN, which is not JSON: the reader must refuse it too
        manifest.write_text(json.dumps(mutated, allow_nan=True), encoding="utf-8")
    for rel in {p.name for p in resnet.engine_dir.iterdir()} - {"manifest.json"}:
        (engine / rel).symlink_to(resnet.engine_dir / rel)
    try:
        read_manifest(engine, verify=False)
    except ApparateError as exc:
        assert "\n" not in str(exc) and str(exc)
