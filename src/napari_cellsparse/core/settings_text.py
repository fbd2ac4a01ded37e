"""Settings typed by a person: ``name=value, name=value`` in a widget's field, ``--set
name=value`` on the command line. One parser for both, so a value means the same everywhere.

Values are Python literals (numbers, strings, lists such as ``grid=[2, 2]``, ``True``) or JSON's
words (``true``, ``false``, ``null``, ``NaN``, ``Infinity``); anything else is kept as its text
(``activation=relu``), for the settings' own checks to judge. The text is parsed, never run.
"""

from __future__ import annotations

import ast
from collections.abc import Sequence
from typing import Any

from .errors import BadInputError

__all__ = ["parse_setting_pairs", "parse_settings"]

_JSON_WORDS = {
    "true": True,
    "false": False,
    "null": None,
    "NaN": float("nan"),
    "Infinity": float("inf"),
}
_FORM = "Settings must look like 'name=value, name=value'"


def parse_settings(text: str) -> dict[str, Any]:
    """``"base_filters=8, grid=[2, 2]"`` → ``{"base_filters": 8, "grid": [2, 2]}``."""
    text = text.strip().strip(",").strip()
    if not text:
        return {}
    source = f"_({text})"
    try:
        call = ast.parse(source, mode="eval").body
    except SyntaxError as err:
        raise BadInputError(f"{_FORM}, not {text!r} ({err.msg}).") from None
    if not isinstance(call, ast.Call) or call.args or any(k.arg is None for k in call.keywords):
        raise BadInputError(f"{_FORM}, not {text!r}: every value needs a name.")
    names = [keyword.arg for keyword in call.keywords]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise BadInputError(f"{_FORM}, each name once: {', '.join(twice)} given twice.")
    return {keyword.arg: _value(source, keyword.value) for keyword in call.keywords}


def parse_setting_pairs(pairs: Sequence[str]) -> dict[str, Any]:
    """Command-line ``name=value`` items (one setting each) → settings."""
    settings: dict[str, Any] = {}
    for item in pairs:
        parsed = parse_settings(item)
        if len(parsed) != 1:
            raise BadInputError(f"--set expects one name=value per item, got {item!r}.")
        settings.update(parsed)
    return settings


def _value(source: str, node: ast.expr) -> Any:
    if isinstance(node, ast.Name) and node.id in _JSON_WORDS:
        return _JSON_WORDS[node.id]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        inner = _value(source, node.operand)
        if isinstance(inner, float):
            return -inner
    try:
        return ast.literal_eval(node)
    except ValueError:
        return ast.get_source_segment(source, node)
