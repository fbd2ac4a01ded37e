"""Run a test's TensorFlow work in a fresh Python process and bring back a JSON result.

TensorFlow and Mesa's OpenGL (a napari viewer) crash when they share a process, so no test
imports TensorFlow in the pytest process (tests/conftest.py checks it). A test calls

    result = run_in_subprocess(some_function, arg, key=value)

where ``some_function`` is a module-level function (of a test file or any module): it is called
in ``sys.executable`` with the test's environment variables (its ``NAPARI_CELLSPARSE_HOME``,
``PYTHONPATH``...) and ``sys.path`` (so the same ``napari_cellsparse``, and the test files' own
helpers, are imported) and the JSON-serialisable arguments; its return value comes back through
JSON (NumPy scalars become Python numbers). Arrays go through files: the function writes them
with ``np.save`` into a folder it was given. A crash, an exception or a timeout fails the test
with the end of the child's stderr (an exception's traceback included).

Several checks can share one child (TensorFlow takes seconds to import): wrap each in
:func:`outcome` there, so one check that raises fails only its own test in the parent, through
:func:`value_of` (unexpected exception: the child's traceback) or :func:`assert_raised`
(the ``pytest.raises(..., match=...)`` of an exception raised in the child).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

__all__ = ["assert_raised", "outcome", "run_in_subprocess", "value_of"]

STDERR_TAIL = 6000  # characters of the child's stderr shown when it fails

# The child: load the function's module from its file, call it, write the result as JSON.
_CHILD = """\
import importlib.util, json, sys, traceback
request_path, result_path = sys.argv[1:3]
with open(request_path) as f:
    request = json.load(f)
sys.path[:] = request["sys_path"]  # imports resolve as in the test process
def scalar(value):
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):
        return value.item()  # a NumPy scalar
    raise TypeError(f"not JSON: {type(value).__name__} (write arrays to files)")
try:
    spec = importlib.util.spec_from_file_location(request["module"], request["file"])
    module = importlib.util.module_from_spec(spec)
    sys.modules[request["module"]] = module
    spec.loader.exec_module(module)
    function = module
    for part in request["qualname"].split("."):
        function = getattr(function, part)
    result = function(*request["args"], **request["kwargs"])
    text = json.dumps(result, default=scalar)
except BaseException:
    traceback.print_exc()
    sys.stderr.flush()
    sys.exit(1)
with open(result_path, "w") as f:
    f.write(text)
"""


def run_in_subprocess(
    function: Callable[..., Any], /, *args: Any, timeout: float = 600, **kwargs: Any
) -> Any:
    """``function(*args, **kwargs)`` run in a new interpreter; its JSON result, or a failed test."""
    module = sys.modules[function.__module__]
    file = getattr(module, "__file__", None)
    if file is None or "<locals>" in function.__qualname__:
        raise TypeError(f"{function!r} is not a module-level function of a file")
    with tempfile.TemporaryDirectory(prefix="cellsparse-child-") as folder:
        request = Path(folder) / "request.json"
        result = Path(folder) / "result.json"
        request.write_text(
            json.dumps(
                {
                    "module": function.__module__,
                    "file": str(Path(file).resolve()),
                    "qualname": function.__qualname__,
                    "args": list(args),
                    "kwargs": kwargs,
                    "sys_path": sys.path,
                }
            )
        )
        command = [sys.executable, "-c", _CHILD, str(request), str(result)]
        try:
            done = subprocess.run(
                command, env=dict(os.environ), capture_output=True, text=True, timeout=timeout
            )
        except subprocess.TimeoutExpired as err:
            stderr = err.stderr.decode(errors="replace") if isinstance(err.stderr, bytes) else ""
            pytest.fail(
                f"{function.__qualname__} ran longer than {timeout} s in a child process; "
                f"its stderr ended with:\n{stderr[-STDERR_TAIL:]}",
                pytrace=False,
            )
        if done.returncode != 0 or not result.is_file():
            status = f"exit status {done.returncode}"
            if done.returncode < 0:
                status = f"killed by {signal.Signals(-done.returncode).name}"
            pytest.fail(
                f"{function.__qualname__} failed in a child process ({status}); its stderr "
                f"ended with:\n{done.stderr[-STDERR_TAIL:]}",
                pytrace=False,
            )
        return json.loads(result.read_text())


# -- several checks in one child -----------------------------------------------------------


def outcome(function: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
    """In the child: ``{"value": function(...)}``, or what it raised (see :func:`value_of`)."""
    try:
        return {"value": function(*args, **kwargs)}
    except Exception as err:
        return {
            "raised": {
                "types": [f"{t.__module__}.{t.__qualname__}" for t in type(err).__mro__],
                "message": str(err),
                "traceback": traceback.format_exc(),
            }
        }


def value_of(result: dict[str, Any]) -> Any:
    """In the parent: the value of an :func:`outcome`; the child's traceback if it raised."""
    if "raised" in result:
        pytest.fail(f"raised in the child process:\n{result['raised']['traceback']}", pytrace=False)
    return result["value"]


def assert_raised(result: dict[str, Any], expected: type[BaseException], match: str) -> None:
    """In the parent: what ``pytest.raises(expected, match=match)`` asserts, about an
    :func:`outcome` of the child (an instance of ``expected``, ``re.search`` of its message)."""
    name = f"{expected.__module__}.{expected.__qualname__}"
    if "raised" not in result:
        pytest.fail(f"DID NOT RAISE {name} (returned {result['value']!r})", pytrace=False)
    raised = result["raised"]
    assert name in raised["types"], f"{raised['types'][0]} is not a {name}:\n{raised['traceback']}"
    assert re.search(match, raised["message"]), (
        f"Regex pattern did not match.\n Regex: {match!r}\n Input: {raised['message']!r}"
    )
