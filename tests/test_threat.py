import math

import pytest

from harness.errors import UsageError
from harness.threat import ThreatModel, format_eps, parse_eps, parse_norm


def test_eps_accepts_fractions_and_numbers():
    assert parse_eps("8/255") == 8 / 255
    assert parse_eps("0.3") == 0.3
    assert parse_eps(0.1) == 0.1
    with pytest.raises(UsageError, match="'abc'"):
        parse_eps("abc")
    for value in ("nan", "inf", "-inf", "1e999", math.nan, math.inf):  # was a traceback in format_eps (harness run --eps nan)
        with pytest.raises(UsageError, match="is not a finite number"):
            parse_eps(value)


@pytest.mark.parametrize(
    "text, norm", [("inf", "inf"), ("linf", "inf"), ("Linf", "inf"), ("l_inf", "inf"), (math.inf, "inf"), ("2", "2"), ("l2", "2"), (2, "2")]
)
def test_norm_spellings(text, norm):
    assert parse_norm(text) == norm


def test_unknown_norm_lists_the_valid_ones():
    with pytest.raises(UsageError, match="inf, 2"):
        parse_norm("1")


@pytest.mark.parametrize("norm, eps", [("inf", 0), ("inf", -0.1), ("inf", 1.5), ("inf", math.nan), ("2", 0)])
def test_out_of_range_eps(norm, eps):
    with pytest.raises(UsageError, match="out of range"):
        ThreatModel(norm, eps)


def test_eps_is_shown_the_way_papers_write_it():
    assert [format_eps(e) for e in (0.3, 8 / 255, 2 / 255, 0.2, 1.58, 36 / 255)] == ["0.3", "8/255", "2/255", "0.2", "1.58", "36/255"]
