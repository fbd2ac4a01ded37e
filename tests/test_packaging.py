"""The wheel carries the npe2 manifest and the sample files; the manifest points at real code."""

from __future__ import annotations

import importlib
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


def build(*args: str, outdir: Path) -> None:
    """``python -m build`` (isolated: hatchling comes from the configured index)."""
    done = subprocess.run(
        [sys.executable, "-m", "build", *args, "--outdir", str(outdir), str(REPO)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]


@pytest.fixture(scope="module")
def sdist_and_wheel(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """What ``python -m build`` makes by default: an sdist, and a wheel built from it
    (the path pip takes when it installs from an sdist)."""
    out = tmp_path_factory.mktemp("dist")
    build(outdir=out)
    (sdist,) = out.glob("napari_cellsparse-*.tar.gz")
    (wheel,) = out.glob("napari_cellsparse-*.whl")
    return sdist, wheel


def test_wheel_contents(tmp_path: Path) -> None:
    build("--wheel", outdir=tmp_path)
    wheels = list(tmp_path.glob("napari_cellsparse-*.whl"))
    assert len(wheels) == 1
    with zipfile.ZipFile(wheels[0]) as wheel:
        names = wheel.namelist()
        assert len(names) == len(set(names))
        assert wheel.read("napari_cellsparse/napari.yaml") == (REPO / "napari.yaml").read_bytes()
        assert (
            wheel.read("napari_cellsparse/sample_data/nuclei_boxes.csv")
            == (REPO / "sample_data" / "nuclei_boxes.csv").read_bytes()
        )
        for module in (
            "__init__.py",
            "cli/__init__.py",
            "cli/__main__.py",
            "sam/prompting.py",
            "sam/weights.py",
        ):
            assert f"napari_cellsparse/{module}" in names
        assert not any(name.startswith(("tests/", "src/")) for name in names)
        dist_info = next(n.split("/")[0] for n in names if ".dist-info/" in n)
        entry_points = wheel.read(f"{dist_info}/entry_points.txt").decode()
        metadata = wheel.read(f"{dist_info}/METADATA").decode()
    assert "[napari.manifest]" in entry_points
    assert "napari-cellsparse = napari_cellsparse:napari.yaml" in entry_points
    assert "cellsparse = napari_cellsparse.cli:main" in entry_points
    assert "Framework :: napari" in metadata


def test_sdist_carries_the_manifest_and_samples(sdist_and_wheel) -> None:
    import tarfile

    sdist, _ = sdist_and_wheel
    with tarfile.open(sdist) as tar:
        root = tar.getnames()[0].split("/")[0]
        for name in ("napari.yaml", "sample_data/nuclei_boxes.csv", "pyproject.toml"):
            member = tar.extractfile(f"{root}/{name}")
            assert member is not None
            assert member.read() == (REPO / name).read_bytes()


def test_wheel_built_from_the_sdist_has_the_samples(sdist_and_wheel) -> None:
    _, wheel_path = sdist_and_wheel
    with zipfile.ZipFile(wheel_path) as wheel:
        names = wheel.namelist()
        assert wheel.read("napari_cellsparse/napari.yaml") == (REPO / "napari.yaml").read_bytes()
        assert (
            wheel.read("napari_cellsparse/sample_data/nuclei_boxes.csv")
            == (REPO / "sample_data" / "nuclei_boxes.csv").read_bytes()
        )
        assert len(names) == len(set(names))


def installed_manifest():
    from npe2 import PluginManifest

    return PluginManifest.from_distribution("napari-cellsparse")


def test_npe2_reads_the_installed_manifest() -> None:
    from npe2 import PluginManifest

    manifest = installed_manifest()
    assert manifest.name == "napari-cellsparse"
    assert manifest.display_name == "Cellsparse"
    # the installed manifest is the top-level file
    assert manifest.contributions == PluginManifest.from_file(REPO / "napari.yaml").contributions
    contributions = manifest.contributions
    command_ids = {c.id for c in contributions.commands}
    assert "napari-cellsparse.sam_annotator" in command_ids
    assert {w.command for w in contributions.widgets} <= command_ids
    assert {s.command for s in contributions.sample_data} <= command_ids
    assert {s.key for s in contributions.sample_data} == {"nuclei", "stardist_nuclei"}


def test_every_manifest_command_resolves() -> None:
    commands = installed_manifest().contributions.commands
    assert commands
    for command in commands:
        assert command.python_name, command.id
        module_name, _, attribute = command.python_name.partition(":")
        module = importlib.import_module(module_name)
        assert callable(getattr(module, attribute)), command.python_name


def test_generated_sample_through_npe2() -> None:
    """File > Open Sample calls the command: an image, its sparse annotation and boxes."""
    commands = {c.id: c for c in installed_manifest().contributions.commands}
    module_name, _, attribute = commands["napari-cellsparse.sample_nuclei"].python_name.partition(
        ":"
    )
    layers = getattr(importlib.import_module(module_name), attribute)()
    kinds = [kind for _, _, kind in layers]
    assert kinds == ["image", "labels", "shapes"]
    assert layers[0][0].shape == (512, 512) == layers[1][0].shape
    assert len(layers[2][0]) == 12
