"""docs/SERVING.md's limits table states the limits the code enforces: each row's value is read
from the constant the row names, and every limit constant of the REST server is in the table."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

SERVING_MD = Path(__file__).resolve().parents[3] / "docs" / "SERVING.md"
UNITS = {"": 1, "s": 1, "KiB": 1 << 10, "MiB": 1 << 20}
REST_MODULES = ("runtime.server.http", "runtime.server.rest_app", "runtime.server.encoding")


def table_rows() -> list[tuple[str, str, str]]:
    """(limit, value, constant path) per row of the limits table."""
    section = SERVING_MD.read_text().split("\n## Limits\n", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[2].startswith("`"):
            rows.append((cells[0], cells[1], cells[2].strip("`")))
    return rows


def parse_value(text: str) -> float:
    match = re.fullmatch(r"(\d+)(?: (s|KiB|MiB))?", text)
    assert match, f"a limit is a number with an optional unit (s, KiB, MiB), got {text!r}"
    return int(match.group(1)) * UNITS[match.group(2) or ""]


def constant(path: str) -> float:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(f"apparate_trt.{module}"), name)


def test_each_row_states_its_constant() -> None:
    rows = table_rows()
    assert len(rows) >= 20, rows
    for limit, value, path in rows:
        assert parse_value(value) == constant(path), f"docs/SERVING.md says {limit!r} is {value}; {path} differs"


def test_every_rest_limit_constant_is_in_the_table() -> None:
    documented = {path for _, _, path in table_rows()}
    for module in REST_MODULES:
        source = Path(importlib.import_module(f"apparate_trt.{module}").__file__ or "").read_text()
        for name in re.findall(r"^([A-Z][A-Z_]*) = ", source, flags=re.MULTILINE):  # defined here, not imported
            if re.fullmatch(r"MAX_[A-Z_]+|[A-Z_]+_S|[A-Z_]+_BYTES", name):
                assert f"{module}.{name}" in documented, f"{module}.{name} is not in docs/SERVING.md's limits table"
