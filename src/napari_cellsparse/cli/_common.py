"""What every ``cellsparse`` command shares: reading inputs, writing label results, printing
progress, and the help format of the subcommands."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..core.progress import Progress

SAM_MODELS = ["vit_h", "vit_l", "vit_b", "vit_t"]


class HelpFormatter(argparse.HelpFormatter):
    """Help that names each option's default (when it has one and the help does not)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        shown = default not in (None, False, argparse.SUPPRESS) and not isinstance(default, list)
        if shown and action.option_strings and "default" not in text:
            text += " (default: %(default)s)"
        return text


def command(sub: Any, name: str, help: str) -> argparse.ArgumentParser:
    """A subcommand whose ``-h`` starts with what it does."""
    return sub.add_parser(
        name,
        help=help,
        description=help[0].upper() + help[1:] + ".",
        formatter_class=HelpFormatter,
    )


def add_sam_model(command: argparse.ArgumentParser, help: str) -> None:
    """The ``--model`` option that names one of the SAM checkpoints."""
    command.add_argument("--model", default="vit_t", choices=SAM_MODELS, help=help)


def add_device(command: argparse.ArgumentParser) -> None:
    """The ``--device`` option of the model commands."""
    command.add_argument("--device", default="auto", help="auto, cpu, cuda, mps")


def print_progress(event: Progress) -> None:
    """A progress event as a percentage on one stderr line."""
    if event.total:
        pct = 100.0 * event.step / event.total
        print(f"\r{event.message}: {pct:5.1f}%", end="", file=sys.stderr, flush=True)
        if event.step >= event.total:
            print(file=sys.stderr)


def print_step(step: int, total: int, info: dict) -> None:
    """Training progress on stderr, about every 5 % of the steps and at the end."""
    if step == total or step % max(1, total // 20) == 0:
        print(f"step {step}/{total} loss {info['loss']:.4f}", file=sys.stderr, flush=True)


def print_trained(what: str, model: Any, device: str) -> None:
    """The report of a finished training session (a model's or a counter's)."""
    session = model.info["sessions"][-1]
    print(
        f"trained {what} {model.name!r}: {session['steps']} steps in "
        f"{session['train_s']:.1f} s on {device}, saved in {model.folder}"
    )
    if model.info.get("warning"):
        print(f"warning: {model.info['warning']}")


def read_image(spec: str) -> tuple[np.ndarray, str]:
    """An image file, or ``sample:NAME``, and the stem its results are named after."""
    if spec.startswith("sample:"):
        from ..samples.catalog import load_sample

        name = spec.split(":", 1)[1]
        return load_sample(name).image, f"sample_{name}"
    from ..formats.image_sources import read_image_file

    return read_image_file(spec), Path(spec).stem


def read_annotation(spec: str) -> np.ndarray:
    """An annotation file, or ``sample:NAME`` for the sample's ready sparse annotation."""
    if spec.startswith("sample:"):
        from ..samples.catalog import load_sample
        from ..samples.sparse_annotation import sparse_from_truth

        sample = load_sample(spec.split(":", 1)[1])
        return sparse_from_truth(sample.image, sample.labels, k=4)
    return read_image(spec)[0]


def parse_settings(pairs: Sequence[str]) -> dict[str, object]:
    """``--set name=value`` items → settings (:mod:`napari_cellsparse.core.settings_text`)."""
    from ..core.settings_text import parse_setting_pairs

    return parse_setting_pairs(pairs)


def write_labels(
    out: Path,
    stem: str,
    labels: np.ndarray,
    scores: dict[int, float] | None = None,
    background_id: int | None = None,
    note: str = "",
) -> None:
    """Write ``<stem>_labels.tif`` and, for a 2D image, ``<stem>_objects.csv`` into ``out``,
    both atomically and together (one that fails leaves neither); ``note`` ends the report."""
    import tifffile

    from ..core.errors import BadInputError
    from ..core.paths import atomic_target
    from ..formats.tables import write_objects_csv

    tif = out / f"{stem}_labels.tif"
    table = out / f"{stem}_objects.csv"
    try:
        if labels.ndim != 2:
            with atomic_target(tif) as temp_tif:
                tifffile.imwrite(temp_tif, labels, compression="zlib")
            print(f"wrote {tif} ({int(labels.max())} objects{note})")
            return
        with atomic_target(tif) as temp_tif, atomic_target(table) as temp_table:
            tifffile.imwrite(temp_tif, labels, compression="zlib")
            rows = write_objects_csv(temp_table, labels, scores, background_id=background_id)
    except OSError as err:
        raise BadInputError(f"Could not write the results into {out}: {err}") from err
    print(f"wrote {tif} and {table} ({rows} objects{note})")
