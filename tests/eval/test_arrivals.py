"""Arrival processes: fixed, poisson and trace specs, and clear errors for malformed ones."""

from __future__ import annotations

import numpy as np
import pytest

from apparate_trt.errors import ApparateError
from apparate_trt.eval.arrivals import parse_arrivals


def test_fixed_rate_is_evenly_spaced():
    times = parse_arrivals("fixed:50", 5)
    np.testing.assert_allclose(times, [0.0, 0.02, 0.04, 0.06, 0.08])


def test_poisson_is_seeded_with_the_right_mean_gap():
    a = parse_arrivals("poisson:200", 4000, seed=3)
    b = parse_arrivals("poisson:200", 4000, seed=3)
    c = parse_arrivals("poisson:200", 4000, seed=4)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a[0] == 0.0 and np.all(np.diff(a) >= 0)
    assert np.diff(a).mean() == pytest.approx(1 / 200, rel=0.05)


def test_trace_is_read_shifted_and_limited(tmp_path):
    trace = tmp_path / "trace.txt"
    trace.write_text("# camera\n10.0\n10.5\n\n10.5  # burst\n12\n", encoding="utf-8")
    np.testing.assert_allclose(parse_arrivals(f"trace:{trace}", 100), [0.0, 0.5, 0.5, 2.0])
    np.testing.assert_allclose(parse_arrivals(f"trace:{trace}", 2), [0.0, 0.5])


@pytest.mark.parametrize(
    "spec, message",
    [
        ("poisson", "not understood"),
        ("uniform:10", "not understood"),
        ("fixed:", "not understood"),
        ("poisson:fast", "not a number"),
        ("fixed:0", "positive"),
        ("fixed:-3", "positive"),
        ("poisson:nan", "positive"),
        ("trace:/nonexistent/trace.txt", "does not exist"),
    ],
)
def test_malformed_specs_say_what_to_write(spec, message):
    with pytest.raises(ApparateError, match=message):
        parse_arrivals(spec, 10)


@pytest.mark.parametrize(
    "content, message",
    [
        ("1.0\nsoon\n", "line 2: 'soon' is not a time"),
        ("2.0\n1.0\n", "must not decrease"),
        ("# nothing\n\n", "no arrival times"),
        ("1\ninf\n", "not finite"),
    ],
)
def test_malformed_trace_files_name_the_line(tmp_path, content, message):
    trace = tmp_path / "t.txt"
    trace.write_text(content, encoding="utf-8")
    with pytest.raises(ApparateError, match=message):
        parse_arrivals(f"trace:{trace}", 10)
