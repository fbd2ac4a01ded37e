"""CUDA checks: the GPU gives the CPU's answers (SAM prompts, automask, U-Net training).

Skipped where torch sees no CUDA device (CI has none); run on a GPU machine with
``pytest tests/test_gpu.py``.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _nuclei():
    from napari_cellsparse.samples.generated import make_nuclei

    return make_nuclei((256, 256), n_objects=40, radius=(6.0, 10.0), seed=5)


def test_sam_box_masks_on_cuda_match_the_cpu(vit_t_checkpoint) -> None:
    from napari_cellsparse.sam.prompting import SamPrompter

    image, labels = _nuclei()
    boxes = []
    for i in range(1, 11):
        ys, xs = np.nonzero(labels == i)
        boxes.append([xs.min() - 2, ys.min() - 2, xs.max() + 2, ys.max() + 2])
    masks = {}
    for device in ("cpu", "cuda"):
        prompter = SamPrompter.load("vit_t", vit_t_checkpoint, device)
        assert prompter.device.type == device
        prompter.set_image_sync(image)
        masks[device] = [m.full() for m in prompter.boxes(boxes)]
    for cpu, gpu in zip(masks["cpu"], masks["cuda"], strict=True):
        assert np.logical_xor(cpu, gpu).sum() <= 1e-3 * cpu.size


def test_automask_on_cuda_batches_and_finds_the_cpus_objects(vit_t_checkpoint) -> None:
    from napari_cellsparse._testing import LabelOracle, OracleDecoder
    from napari_cellsparse.core.progress import run_sync
    from napari_cellsparse.sam.automask import generate_masks
    from napari_cellsparse.sam.prompting import SamPrompter

    image, labels = _nuclei()
    found = {}
    for device in ("cpu", "cuda"):
        prompter = SamPrompter.load("vit_t", vit_t_checkpoint, device)
        prompter.decoder = OracleDecoder(prompter.decoder, LabelOracle(labels))
        result = run_sync(generate_masks(prompter, image, {"points_per_side": 16}))
        found[device] = sorted(tuple(r["bbox"]) for r in result.records())
    assert SamPrompter.load("vit_t", vit_t_checkpoint, "cuda").batch_size > 1
    assert len(found["cpu"]) >= 20
    assert found["cuda"] == found["cpu"]


def test_unet_trains_on_cuda_and_loads_on_the_cpu() -> None:
    from napari_cellsparse.samples.sparse_annotation import sparse_from_truth
    from napari_cellsparse.training import load_model, train

    image, truth = _nuclei()
    annotation = sparse_from_truth(image, truth, k=4)
    losses: list[float] = []
    model = train(
        "unet",
        image,
        annotation,
        name="gpu",
        steps=60,
        device="cuda",
        progress=lambda step, total, info: losses.append(info["loss"]),
    )
    assert str(model.network.device).startswith("cuda")
    assert np.isfinite(losses).all() and np.mean(losses[-10:]) < np.mean(losses[:5])
    on_gpu = model.predict(image)
    on_cpu = load_model("gpu", device="cpu").predict(image)
    assert on_gpu.max() > 0
    assert ((on_gpu > 0) == (on_cpu > 0)).mean() >= 0.99
