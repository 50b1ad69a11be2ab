"""Progress: throttled lines off a terminal, a bar redrawn in place on one, one summary per stage."""

from __future__ import annotations

import io

from apparate_trt import progress as progress_mod
from apparate_trt.progress import Progress, is_terminal


def test_lines_off_a_terminal_come_once_per_tenth_then_one_summary() -> None:
    out = io.StringIO()
    shown = Progress("replay", 1000, "req", stream=out)
    for done in range(1, 1001):
        shown.update(done, "p50 8.0 ms")
    shown.close("replay finished: 1000/1000")
    lines = out.getvalue().splitlines()
    assert len(lines) == 11, lines  # 10%, 20%, ... 100%, then the summary
    assert lines[0].startswith("replay: 100/1000 req (10%), p50 8.0 ms, ")
    assert lines[-2].startswith("replay: 1000/1000 req (100%)")
    assert lines[-1] == "replay finished: 1000/1000"
    assert [line.split(" (")[1].split(")")[0] for line in lines[:-1]] == [f"{k}0%" for k in range(1, 11)]
    assert [line.split()[1] for line in lines[:-1]] == [f"{k}00/1000" for k in range(1, 11)]  # each tenth when reached


def test_a_slow_stage_writes_a_line_every_interval(monkeypatch) -> None:
    clock = [100.0]
    monkeypatch.setattr(progress_mod.time, "monotonic", lambda: clock[0])
    out = io.StringIO()
    shown = Progress("train", 1000, stream=out)
    shown.update(1)
    assert out.getvalue() == ""  # under a tenth, under the interval
    clock[0] += progress_mod.QUIET_INTERVAL_S
    shown.update(2)
    assert out.getvalue().startswith("train: 2/1000 it (0%), 30.0 s")


def test_a_bar_redraws_in_place_and_is_cleared_at_the_end() -> None:
    out = io.StringIO()
    shown = Progress("profile", 50, "runs", stream=out, bar=True)
    for done in range(1, 51):
        shown.update(done)
    shown.close("profiled 50 runs")
    text = out.getvalue()
    assert text.startswith("\rprofile:") and "/50 [" in text  # a tqdm bar, drawn with a carriage return
    assert text.rstrip("\n").endswith("profiled 50 runs")
    assert not is_terminal(out)
