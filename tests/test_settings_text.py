"""One parser for the settings a person types, in a widget's field or after ``--set``."""

from __future__ import annotations

import math

import pytest

from napari_cellsparse.core.errors import BadInputError
from napari_cellsparse.core.settings_text import parse_setting_pairs, parse_settings


def test_values_are_literals_json_words_or_text():
    text = "base_filters=8, grid=[2, 2], activation=relu, flag=true, lr=1e-3, name='a, b',"
    assert parse_settings(text) == {
        "base_filters": 8,
        "grid": [2, 2],
        "activation": "relu",
        "flag": True,
        "lr": 1e-3,
        "name": "a, b",
    }
    assert parse_settings("  ") == {}
    special = parse_settings("a=NaN, b=-Infinity, c=null, d=-2")
    assert math.isnan(special["a"]) and special["b"] == -math.inf
    assert special["c"] is None and special["d"] == -2


@pytest.mark.parametrize("text", ["8", "a=", "=3", "a=1, a=2", "a=1 b=2", "**x", "a=(1"])
def test_malformed_settings_are_refused_with_the_expected_form(text):
    with pytest.raises(BadInputError, match="name=value"):
        parse_settings(text)


def test_command_line_items_are_one_setting_each():
    assert parse_setting_pairs(["grid=[2,2]", "depth=3"]) == {"grid": [2, 2], "depth": 3}
    with pytest.raises(BadInputError, match="one name=value per item"):
        parse_setting_pairs(["a=1, b=2"])
    with pytest.raises(BadInputError):
        parse_setting_pairs(["patch"])


def test_nothing_typed_is_ever_run(tmp_path):
    marker = tmp_path / "ran"
    text = f"x=open({str(marker)!r}, 'w').write('x')"
    assert parse_settings(text) == {"x": f"open({str(marker)!r}, 'w').write('x')"}
    assert not marker.exists()
