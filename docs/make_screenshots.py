"""The pictures of the user guide, made by real runs of the plugin (``make docs``, under Xvfb).

Each screenshot is the napari window after the widget's own buttons ran on the generated
nuclei sample: the first look (``make demo``), the SAM annotator, sparse training with its
preview and prediction, cell counting, measuring and block-wise segmentation. Each image has a
caption file (``.txt``) saying what ran. Plots are drawn from the benchmark JSON in
``benchmarks/results``.

With ``--weights FILE`` (a real SAM checkpoint) every SAM object comes from SAM. Without one
(no weights can be downloaded on a build machine), a checkpoint of randomly initialised
MobileSAM is made so the real encoder and decoder run, but their noise masks are replaced by
the sample's ground-truth object under each box; the caption says so.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).parent
ROOT = HERE.parent
PLUGIN = "napari-cellsparse"
STEPS = 150  # enough for the sample's 60 nuclei; a real training uses the backend's default


def _stand_in_boxes(prompter, truth):
    """Run the real decoder, then return the ground-truth object under each box."""
    from napari_cellsparse.core.masks import PromptMask

    real = prompter.boxes

    def boxes(boxes, multimask=False):
        results = real(boxes, multimask)
        out = []
        for (x0, y0, x1, y1), result in zip(np.asarray(boxes), results, strict=True):
            ids, counts = np.unique(truth[int(y0) : int(y1), int(x0) : int(x1)], return_counts=True)
            counts[ids == 0] = 0
            obj = truth == ids[counts.argmax()]
            rows, cols = np.flatnonzero(obj.any(1)), np.flatnonzero(obj.any(0))
            crop = obj[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
            out.append(PromptMask(crop, int(rows[0]), int(cols[0]), result.score, truth.shape))
        return out

    prompter.boxes = boxes


class Shooter:
    """The demo window, its widgets by name, and screenshots with captions."""

    def __init__(self, out: Path) -> None:
        from napari_cellsparse._napari.demo import open_demo, widget_names

        self.out = out
        self.viewer, docked = open_demo()
        self.viewer.window._qt_window.resize(1500, 900)
        self.widgets = dict(zip(widget_names(), docked, strict=True))
        self.settle()

    def settle(self, seconds: float = 0.3) -> None:
        from qtpy.QtWidgets import QApplication

        end = time.monotonic() + seconds
        while time.monotonic() < end:
            QApplication.processEvents()
            time.sleep(0.02)

    def wait(self, widget, timeout: float = 900.0) -> None:
        """Let the event loop run until ``widget``'s job is done (it runs in the worker)."""
        end = time.monotonic() + timeout
        while widget.runner.busy:
            if time.monotonic() > end:
                name = type(widget).__name__
                raise TimeoutError(f"{name} did not finish: {widget.status.text()}")
            self.settle(0.1)
        self.settle()

    def raise_dock(self, name: str) -> None:
        self.viewer.window.dock_widgets[f"{name} ({PLUGIN})"].parent().raise_()
        self.settle()

    def shoot(self, name: str, caption: str) -> Path:
        shot = self.out / f"{name}.png"
        self.viewer.screenshot(str(shot), canvas_only=False)
        (self.out / f"{name}.txt").write_text(caption + "\n")
        print(shot)
        return shot


def first_look(shooter: Shooter) -> None:
    shooter.raise_dock("Sparse training")
    shooter.shoot(
        "first_look",
        "`make demo`: the generated nuclei sample with its ready sparse annotation (a few "
        "cells and painted background), and every dock widget of the plugin as a tab (Sparse "
        "training in front).",
    )


def sam(shooter: Shooter, weights: str | None) -> None:
    from napari_cellsparse.samples.catalog import load_sample

    widget = shooter.widgets["SAM annotator"]
    shooter.raise_dock("SAM annotator")
    checkpoint = weights
    if checkpoint is None:
        import torch

        from napari_cellsparse.sam.models import build_sam

        torch.manual_seed(0)
        checkpoint = str(Path(tempfile.mkdtemp()) / "vit_t_random.pt")
        torch.save(build_sam("vit_t").state_dict(), checkpoint)
    widget.weights_edit.setText(checkpoint)
    widget.runner.synchronous = True
    widget.compute_embedding()
    if weights is None:
        _stand_in_boxes(widget.state.prompter, load_sample("nuclei").labels)
    widget.segment_all_boxes()
    widget.weights_edit.setText("")  # the screenshot shows no temporary path
    widget.runner.synchronous = False
    target = widget.labels_combo.currentText()
    if target in shooter.viewer.layers:
        shooter.viewer.layers.selection.active = shooter.viewer.layers[target]
    shooter.settle()
    caption = (
        "SAM annotator after 'Segment all boxes' on the generated nuclei sample: the box "
        f"prompts, the new objects added to '{target}' and their outlines."
    )
    if weights is None:
        caption += (
            " Made without real SAM weights: the real MobileSAM encoder and decoder ran with "
            "random weights, and the sample's ground-truth object under each box stands in "
            "for SAM's mask."
        )
    shooter.shoot("sam_annotator", caption)
    for name in ("SAM prompts", "SAM outlines", "SAM points"):
        if name in shooter.viewer.layers:
            shooter.viewer.layers[name].visible = False


def sparse_training(shooter: Shooter) -> None:
    widget = shooter.widgets["Sparse training"]
    shooter.raise_dock("Sparse training")
    widget.backend_combo.setCurrentText("unet")
    widget.name_edit.setText("sample-unet")
    widget.steps_spin.setValue(STEPS)
    widget.preview_spin.setValue(25)
    widget.device_combo.setCurrentText("cpu")
    widget.train()
    shooter.wait(widget)
    widget.predict()
    shooter.wait(widget)
    shooter.shoot(
        "sparse_training",
        f"Sparse training: a U-Net trained for {STEPS} steps on the sample's sparse annotation "
        "(the loss curve in the widget), then Predict: the objects drawn as outlines. "
        f"Status line: {widget.status.text()}",
    )
    plot_loss(shooter.out, widget.loss_plot.steps, widget.loss_plot.losses)


def plot_loss(out: Path, steps: list[int], losses: list[float]) -> None:
    """The loss curve of the screenshot's training, as the widget received it."""
    plt = _pyplot()

    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=110)
    ax.plot(steps, losses, color="C0", linewidth=1, alpha=0.5, label="each step")
    window = 10
    if len(losses) > window:
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1 :], smooth, color="C0", linewidth=2, label="mean of 10 steps")
    ax.set_xlabel("training step")
    ax.set_ylabel("loss on the annotated pixels")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save_plot(
        fig,
        out / "training_loss.png",
        f"The loss of the U-Net training in the Sparse training screenshot ({len(steps)} "
        "steps on the sample's sparse annotation), as the widget's live curve received it. "
        "Only annotated pixels (cells and painted background) count in it; the step-to-step "
        "noise is the random crops, so judge the trend (the thick line), and the preview.",
    )


def cell_counting(shooter: Shooter) -> None:
    from scipy import ndimage as ndi

    from napari_cellsparse.samples.catalog import load_sample

    widget = shooter.widgets["Cell counting"]
    shooter.raise_dock("Cell counting")
    truth = load_sample("nuclei").labels
    ids = np.arange(1, int(truth.max()) + 1)
    centres = np.asarray(ndi.center_of_mass(truth > 0, truth, ids))
    rng = np.random.default_rng(0)
    clicked = centres[rng.permutation(len(centres))[: len(centres) // 4]]
    clicked = clicked + rng.uniform(-3, 3, clicked.shape)
    viewer = shooter.viewer
    viewer.add_points(clicked, name="clicked centres", size=8, face_color="yellow")
    image = viewer.layers[0].name
    widget.image_combo.setCurrentText(image)
    widget.points_combo.setCurrentText("clicked centres")
    widget.steps_spin.setValue(STEPS)
    widget.device_combo.setCurrentText("cpu")
    widget.train()
    shooter.wait(widget)
    widget.count_image_combo.setCurrentText(image)
    widget.count()
    shooter.wait(widget)
    shooter.shoot(
        "cell_counting",
        f"Cell counting: {len(clicked)} rough centres clicked (yellow; a quarter of the "
        f"sample's {len(centres)} nuclei, moved up to 3 px), a counter trained for {STEPS} "
        "steps, then Count: the density and every centre found. "
        f"{widget.count_label.text()}",
    )
    widget.where_to_click()
    shooter.wait(widget)
    shooter.shoot(
        "where_to_click",
        "Where to click next: the counter's 8 flipped and turned readings compared; bright "
        "where their heat maps differ, the 10 least sure cells numbered (cells near a clicked "
        "point are left out).",
    )
    for layer in list(viewer.layers):
        if layer.name == "clicked centres" or {"count", "where_to_click"} & set(layer.metadata):
            layer.visible = False


def measure_cells(shooter: Shooter) -> None:
    widget = shooter.widgets["Measure cells"]
    shooter.raise_dock("Measure cells")
    viewer = shooter.viewer
    image = viewer.layers[0].name
    predicted = f"{image} prediction"
    widget.labels_combo.setCurrentText(predicted)
    for k in range(widget.images_list.count()):
        item = widget.images_list.item(k)
        item.setSelected(item.text() == image)
    widget.measure()
    shooter.wait(widget)
    layer = viewer.layers[predicted]
    viewer.layers.selection.active = layer
    shooter.shoot(
        "measure_cells",
        "Measure cells on the prediction: QuPath-style measurements become the layer's "
        f"features ({len(layer.features)} rows; napari shows a cell's values under the "
        "cursor) and Save table… writes CSV or TSV.",
    )


def batch(shooter: Shooter) -> None:
    widget = shooter.widgets["Batch"]
    shooter.raise_dock("Batch")
    widget.refresh_models()
    widget.model_combo.setCurrentText("sample-unet")
    widget.image_combo.setCurrentText(shooter.viewer.layers[0].name)
    widget.block_spin.setValue(256)
    widget.run_layer()
    shooter.wait(widget)
    predicted = f"{shooter.viewer.layers[0].name} prediction"
    if predicted in shooter.viewer.layers:
        shooter.viewer.layers[predicted].visible = False
        shooter.settle()
    shooter.shoot(
        "batch",
        "Batch, Layer tab: the trained U-Net over the image block by block (256 px blocks "
        "with a halo; objects on block borders neither cut nor counted twice), with the "
        f"measurements as features. Status line: {widget.status.text()}",
    )


def plot_cells(out: Path) -> None:
    """F1 against the number of annotated cells, per backend, from the benchmark JSON."""
    plt = _pyplot()

    runs = json.loads((ROOT / "benchmarks/results/sparse_training.json").read_text())["runs"]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    for backend in sorted({r["backend"] for r in runs}):
        mine = sorted(
            (r for r in runs if r["backend"] == backend and r["protocol"] in ("paper", "full")),
            key=lambda r: r["n_train_cells"],
        )
        ax.plot([r["n_train_cells"] for r in mine], [r["f1"] for r in mine], "o-", label=backend)
        user = [r for r in runs if r["backend"] == backend and r["protocol"] == "user"]
        for r in user:
            ax.plot(r["n_train_cells"], r["f1"], "k*", markersize=9)
    ax.plot([], [], "k*", label="user story (30 cells)")
    ax.set_xscale("log")
    ax.set_xlabel("annotated cells (40 DSB 2018 fluorescence images)")
    ax.set_ylabel("F1 at IoU 0.5 on all test images")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save_plot(
        fig,
        out / "f1_vs_cells.png",
        "F1 against annotated cells, from benchmarks/results/sparse_training.json: 'paper' "
        "protocol (k darkest + k brightest cells per image), full annotation, and the user "
        "story (5 + 5 cells on 3 images). 'stock' is upstream StarDist trained on the same "
        "sparse labels without our masked losses.",
    )


# The issue-25 runs of each backend's present defaults: the user story and, in the same run
# or the run beside it, the same backend trained on every cell (benchmarks/README.md).
DEFAULTS_RUNS = {
    "cellpose": ["i25_cellpose_neck_split.json"],
    "stardist": ["i25_stardist_one_cell_plateau.json"],
    "unet": ["i25_unet_400_steps.json"],
}


def plot_user_story(out: Path) -> None:
    """The user story's F1 per backend and seed, with the full-annotation reference, from the
    issue-25 benchmark JSON of the present defaults (:data:`DEFAULTS_RUNS`)."""
    plt = _pyplot()

    results = ROOT / "benchmarks/results"
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    for x, (backend, files) in enumerate(DEFAULTS_RUNS.items()):
        runs = [r for f in files for r in json.loads((results / f).read_text())["runs"]]
        runs = [r for r in runs if r["backend"] == backend and "f1" in r]
        user = [r for r in runs if r["protocol"] == "user"]
        f1 = [r["f1"] for r in user]
        seconds = np.mean([r["train_s"] for r in user])
        ax.plot([x] * len(f1), f1, "o", color="C0", alpha=0.7)
        ax.plot([x - 0.2, x + 0.2], [np.mean(f1)] * 2, "-", color="C0", linewidth=2)
        ax.annotate(f"{seconds:.0f} s", (x + 0.22, np.mean(f1)), fontsize=8, va="center")
        full = [r["f1"] for r in runs if r["protocol"] == "full"]
        ax.plot([x - 0.3, x + 0.3], [np.mean(full)] * 2, "--", color="k", linewidth=1)
    ax.plot([], [], "o", color="C0", label="user story, one seed (30 cells)")
    ax.plot([], [], "--", color="k", label="every cell annotated (1904), same steps")
    ax.set_xticks(range(len(DEFAULTS_RUNS)), list(DEFAULTS_RUNS))
    ax.set_ylabel("F1 at IoU 0.5 on all test images")
    ax.set_ylim(0.5, 1)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8, loc="lower left")
    _save_plot(
        fig,
        out / "user_story_f1.png",
        "The user story (5 darkest + 5 brightest cells on each of 3 DSB 2018 fluorescence "
        "images) with each backend's defaults, one dot per seed, the line their mean, the "
        "mean training time beside it (2-core CPU, one thread); dashed: the mean of the same "
        "backend trained on every cell of the 40 training images with the same steps and "
        "seeds. From benchmarks/results/ (docs/make_screenshots.py names the files).",
    )


def plot_counts(out: Path) -> None:
    """Counted against true cells per test image, the counting user story's seeds, from the
    issue-25 counting benchmark JSON."""
    plt = _pyplot()

    source = ROOT / "benchmarks/results/i25_counting_user_prominence_pieces.json"
    data = json.loads(source.read_text())
    runs = [r for r in data["runs"] if r["run"] == "user" and "per_image" in r]
    fig, ax = plt.subplots(figsize=(5, 4.6), dpi=110)
    top = 1.0
    for i, run in enumerate(runs):
        true = [p["true"] for p in run["per_image"]]
        counted = [p["count"] for p in run["per_image"]]
        top = max(top, *true, *counted)
        label = (
            f"seed {run['seed']}: {run['given_points']} points given, total "
            f"{run['count_pred']:.0f} / {run['count_true']}"
        )
        ax.plot(true, counted, "o", color=f"C{i}", alpha=0.7, label=label)
    ax.plot([0, top * 1.05], [0, top * 1.05], "k--", linewidth=1, label="counted = true")
    ax.set_xlabel("true nuclei per test image")
    ax.set_ylabel("counted")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="upper left")
    _save_plot(
        fig,
        out / "counts.png",
        "Cell counting, the user story: a counter trained on a quarter of the nuclei of 6 DSB "
        "2018 fluorescence images as rough points (moved up to 3 px) plus painted background, "
        "then every image of fluo/test counted; one colour per seed (which points were "
        "given). From benchmarks/results/i25_counting_user_prominence_pieces.json.",
    )


def _pyplot() -> Any:
    """matplotlib's pyplot drawing off screen (no window, also under Xvfb)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_plot(fig: Any, path: Path, caption: str) -> None:
    """Write a plot and its caption file (``.txt`` beside it), and close the figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    path.with_suffix(".txt").write_text(caption + "\n")
    print(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--weights", help="a real vit_t checkpoint (mobile_sam.pt)")
    parser.add_argument("--out", default=str(HERE / "images"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plot_cells(out)
    plot_user_story(out)
    plot_counts(out)
    shooter = Shooter(out)
    try:
        first_look(shooter)
        sam(shooter, args.weights)
        sparse_training(shooter)
        cell_counting(shooter)
        measure_cells(shooter)
        batch(shooter)
    finally:
        shooter.viewer.close()


if __name__ == "__main__":
    main()
