"""The engine never imports Qt, napari or TensorFlow; the package root not even torch.

Checked in fresh interpreters: the test process itself has napari and Qt loaded by pytest
plugins, so ``sys.modules`` here says nothing.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

FRONT_END = [
    "napari",
    "qtpy",
    "PyQt5",
    "PyQt6",
    "PySide2",
    "PySide6",
    "magicgui",
    "superqt",
    "vispy",
    "tensorflow",
]

REPO = Path(__file__).resolve().parents[1]


def engine_modules() -> list[str]:
    """Every module of the package outside ``_napari`` (found, not listed by hand)."""
    import napari_cellsparse

    found = ["napari_cellsparse"]
    for info in pkgutil.walk_packages(napari_cellsparse.__path__, "napari_cellsparse."):
        if not info.name.startswith("napari_cellsparse._napari") and "__main__" not in info.name:
            found.append(info.name)
    return found


def loaded_after(code: str) -> set[str]:
    """Top-level names of the modules loaded after running ``code`` in a new interpreter."""
    script = (
        f"{code}\nimport json, sys\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


def test_package_root_is_light() -> None:
    loaded = loaded_after("import napari_cellsparse")
    assert "napari_cellsparse" in loaded
    heavy = {"torch", "torchvision", "skimage", "scipy", "tifffile", *FRONT_END}
    assert not loaded & heavy


def test_the_architecture_contracts_hold() -> None:
    """import-linter's contracts in pyproject.toml: the layers, and where Qt, napari and
    TensorFlow may be imported (static imports, those inside functions included)."""
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "from importlinter.cli import lint_imports; raise SystemExit(lint_imports())",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def test_engine_modules_import_no_front_end() -> None:
    """Importing every engine module (dynamic imports included) loads no Qt, napari or TF."""
    engine = engine_modules()
    assert len(engine) > 60 and "napari_cellsparse.core.errors" in engine
    loaded = loaded_after("\n".join(f"import {name}" for name in engine))
    assert {"napari_cellsparse", "numpy"} <= loaded
    assert not loaded & set(FRONT_END)


def test_running_the_engine_imports_no_front_end() -> None:
    """Building MobileSAM and segment_anything loads torch, timm...: still no Qt."""
    code = (
        "import warnings; warnings.simplefilter('ignore')\n"
        "from napari_cellsparse.core.lazy import import_segment_anything\n"
        "from napari_cellsparse.sam.models import build_sam\n"
        "from napari_cellsparse.sam.prompting import SamPrompter\n"
        "from napari_cellsparse.samples.catalog import load_sample\n"
        "import_segment_anything()\n"
        "prompter = SamPrompter(build_sam('vit_t'), 'k')\n"
        "load_sample('nuclei')\n"
    )
    loaded = loaded_after(code)
    assert {"torch", "mobile_sam", "segment_anything"} <= loaded
    assert not loaded & set(FRONT_END)


@pytest.mark.skipif(
    importlib.util.find_spec("segmentation_models_pytorch") is None,
    reason="counting extra not installed",
)
def test_counting_engine_imports_no_front_end() -> None:
    """Building the counter's network loads torch, timm and torchvision: still no Qt."""
    code = (
        "import warnings; warnings.simplefilter('ignore')\n"
        "from napari_cellsparse.counting import CounterConfig\n"
        "from napari_cellsparse.counting.network import build_network\n"
        "build_network(CounterConfig(encoder_depth=3).to_dict(), 1)\n"
    )
    loaded = loaded_after(code)
    assert {"torch", "segmentation_models_pytorch", "timm"} <= loaded
    assert not loaded & set(FRONT_END)


@pytest.mark.parametrize("where", ["here", "fresh"])
def test_guard_triton(where: str) -> None:
    if where == "here":
        from napari_cellsparse.core.lazy import guard_triton

        assert guard_triton() in ("not-needed", "deepbind", "disabled")
        return
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "from napari_cellsparse.core.lazy import guard_triton, import_torch\n"
            "print(guard_triton()); import_torch(); print(guard_triton())",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    first, second = done.stdout.split()
    assert first in ("not-needed", "deepbind", "disabled")
    assert second in ("not-needed", "deepbind", "disabled")


def mesa_llvm() -> str | None:
    found = sorted(
        glob.glob("/usr/lib/*-linux-gnu/libLLVM*.so*") + glob.glob("/usr/lib*/libLLVM*.so*")
    )
    return found[-1] if found else None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")
@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="torch without triton")
@pytest.mark.skipif(mesa_llvm() is None, reason="no system libLLVM (Mesa) to load")
def test_guard_makes_torchvision_safe_after_mesa_llvm() -> None:
    """The case the guard exists for: LLVM symbols already global (as after napari's GL
    context). Here, importing torchvision then crashes the interpreter without the guard."""
    code = (
        "import ctypes, os, warnings\n"
        "warnings.simplefilter('ignore')\n"
        f"ctypes.CDLL({mesa_llvm()!r}, mode=os.RTLD_NOW | ctypes.RTLD_GLOBAL)\n"
        "from napari_cellsparse.core.lazy import guard_triton\n"
        "result = guard_triton()\n"
        "import torchvision\n"
        "from napari_cellsparse.sam.models import build_sam\n"
        "build_sam('vit_t')\n"
        "print(result)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert done.stdout.split()[-1] in ("deepbind", "disabled")
