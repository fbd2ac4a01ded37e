"""Export a trained model as a bioimage.io model package (model spec 0.5, a zip).

The description is built with ``bioimageio.spec``'s classes and packaged by it: PyTorch state
dict weights with a torch-only architecture file and TorchScript (U-Net, Cellpose) or a Keras v3
file and a TensorFlow SavedModel bundle (StarDist), a raw test input whose declared
preprocessing is our normalisation, the network's raw output on it, the object scale in the
README and config, a cover image, the training summary and the citations. The zip is written
under a temporary name and renamed, so a failed export leaves nothing behind.
"""

from __future__ import annotations

import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ...core.errors import BackendUnavailableError, BadInputError, WeightsError
from ...core.paths import atomic_target
from ..api import load_model
from ..model import TrainedModel
from .documents import citations, training_summary, write_cover, write_readme
from .keras_package import grid_values, write_weights
from .networks import (
    PackagedNetwork,
    measured_halo,
    packaged_network,
    raw_output,
    test_image,
    torch_forward,
)

__all__ = ["CONFIG_KEY", "export_model"]

CONFIG_KEY = "napari_cellsparse"  # our entry in the package's config
INPUT_ID, OUTPUT_ID = "raw", "output"
PERCENTILES = (1.0, 99.8)  # napari_cellsparse.core.images.normalize
DEFAULT_LICENSE = "CC-BY-4.0"
DEFAULT_AUTHOR = "napari-cellsparse user"


def export_model(
    name_or_folder: str | Path,
    out_zip: str | Path,
    image: np.ndarray | None = None,
    diameter: float | None = None,
    author: str = DEFAULT_AUTHOR,
    license: str = DEFAULT_LICENSE,
) -> Path:
    """Write model ``name_or_folder`` (a store name or a model folder) to ``out_zip``.

    The test input comes from ``image`` (its first 2D slice, rescaled so that its cells,
    ``diameter`` pixels wide or estimated, get the model's training diameter) or, without
    one, from synthetic nuclei at that diameter. Raises BadInputError for an unknown model,
    a folder that is not a model, a backend that cannot be exported or an unwritable output.
    """
    spec = _import_spec()
    out = Path(out_zip).expanduser()
    if out.suffix.lower() != ".zip":
        raise BadInputError(f"A bioimage.io package is a .zip file; got {str(out)!r}.")
    if out.is_dir():
        raise BadInputError(f"{out} is a folder; give the path of the .zip file to write.")
    try:
        model = load_model(name_or_folder, device="cpu")
    except WeightsError as err:
        raise BadInputError(f"{name_or_folder} cannot be exported: {err}") from err
    network = packaged_network(model)
    with tempfile.TemporaryDirectory(prefix="cellsparse-bioimageio-") as work:
        descr = _describe(
            spec,
            model,
            network,
            Path(work),
            test_image(model, network.step, image, diameter),
            author,
            license,
        )
        try:
            with atomic_target(out) as temp:
                spec.save_bioimageio_package(descr, output_path=temp.with_suffix(".zip"))
                temp.with_suffix(".zip").replace(temp)
        except OSError as err:
            raise BadInputError(f"Cannot write {out}: {err.strerror or err}.") from err
    return out


def _import_spec() -> Any:
    try:
        import bioimageio.spec as spec
    except ImportError as err:
        raise BackendUnavailableError(
            "bioimage.io export (bioimageio.spec)", "bioimageio", err
        ) from err
    return spec


def _describe(
    spec: Any,
    model: TrainedModel,
    network: PackagedNetwork,
    work: Path,
    raw: np.ndarray,
    author: str,
    license: str,
) -> Any:
    """The model description, with every file it names written into ``work``."""
    from bioimageio.spec.model import v0_5 as m

    files = {
        "input": work / "test_input.npy",
        "output": work / "test_output.npy",
        "readme": work / "README.md",
        "cover": work / "cover.png",
    }
    if network.channel_last:
        raw = np.ascontiguousarray(np.moveaxis(raw, 1, -1))
        weights, output, framework, halo = _keras_weights(m, model, raw, work, network.step)
        grid = tuple(int(g) for g in model.config.grid)
        cover_output = grid_values(output, grid)[None]
    else:
        weights, output, framework, halo = _torch_weights(m, model, network, raw, work)
        cover_output = output
    np.save(files["input"], raw)
    np.save(files["output"], output)
    summary = training_summary(model)
    write_readme(files["readme"], model, network, summary, halo)
    channel_first_raw = np.moveaxis(raw, -1, 1) if network.channel_last else raw
    write_cover(files["cover"], channel_first_raw, cover_output, model.backend)
    inputs, outputs = _tensors(m, model, network, files, halo)
    return _model_descr(
        m, model, files, inputs, outputs, weights, summary, framework, author, license
    )


def _torch_weights(
    m: Any, model: TrainedModel, network: PackagedNetwork, raw: np.ndarray, work: Path
) -> tuple[Any, np.ndarray, str, int]:
    """PyTorch state dict (with its torch-only architecture file) and TorchScript weights."""
    import torch

    state = {k: v.detach().cpu() for k, v in model.network.net.state_dict().items()}
    net = network.module(state)
    output = raw_output(net, raw)
    assert network.architecture is not None
    files = {
        "architecture": work / f"{network.callable.lower()}_architecture.py",
        "state": work / "weights.pt",
        "torchscript": work / "weights_torchscript.pt",
    }
    shutil.copyfile(network.architecture, files["architecture"])
    torch.save(net.state_dict(), files["state"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, not gone
        torch.jit.save(torch.jit.script(net), str(files["torchscript"]))
    torch_version = m.Version(torch.__version__.split("+")[0])
    weights = m.WeightsDescr(
        pytorch_state_dict=m.PytorchStateDictWeightsDescr(
            source=files["state"],
            architecture=m.ArchitectureFromFileDescr(
                source=files["architecture"],
                callable=m.Identifier(network.callable),
                kwargs=network.kwargs,
            ),
            pytorch_version=torch_version,
        ),
        torchscript=m.TorchscriptWeightsDescr(
            source=files["torchscript"], pytorch_version=torch_version, parent="pytorch_state_dict"
        ),
    )
    return weights, output, "pytorch", measured_halo(torch_forward(net), raw, network.step)


def _keras_weights(
    m: Any, model: TrainedModel, raw: np.ndarray, work: Path, step: int
) -> tuple[Any, np.ndarray, str, int]:
    """StarDist: the Keras v3 file (the trained weights) and a SavedModel converted from it."""
    files, output, halo = write_weights(model, raw, work, step)
    import keras
    import tensorflow as tf

    tf_version = m.Version(tf.__version__.split("+")[0])
    weights = m.WeightsDescr(
        keras_v3=m.KerasV3WeightsDescr(
            source=files["keras_v3"],
            keras_version=m.Version(keras.__version__),
            backend=("tensorflow", tf_version),
        ),
        tensorflow_saved_model_bundle=m.TensorflowSavedModelBundleWeightsDescr(
            source=files["tensorflow_saved_model_bundle"],
            tensorflow_version=tf_version,
            parent="keras_v3",
        ),
    )
    return weights, output, "tensorflow", halo


def _tensors(
    m: Any, model: TrainedModel, network: PackagedNetwork, files: dict[str, Path], halo: int
) -> tuple[Any, Any]:
    """The input (raw image, our normalisation declared) and output tensor descriptions; the
    output's ``halo`` is what a consumer that tiles crops from each tile (an input can hold
    at least the halo on both sides and one step)."""
    step = network.step
    space_in = [
        m.SpaceInputAxis(id=m.AxisId(a), size=m.ParameterizedSize(min=2 * halo + step, step=step))
        for a in ("y", "x")
    ]
    space_out = [
        m.SpaceOutputAxisWithHalo(
            id=m.AxisId(a),
            size=m.SizeReference(tensor_id=m.TensorId(INPUT_ID), axis_id=m.AxisId(a)),
            halo=halo,
        )
        for a in ("y", "x")
    ]
    channels_in = m.ChannelAxis(channel_names=[f"channel{c}" for c in range(model.n_channels)])
    channels_out = m.ChannelAxis(channel_names=list(network.output_channels))
    if network.channel_last:
        axes_in, axes_out = [*space_in, channels_in], [*space_out, channels_out]
    else:
        axes_in, axes_out = [channels_in, *space_in], [channels_out, *space_out]
    d = model.config.target_diameter
    inputs = m.InputTensorDescr(
        id=m.TensorId(INPUT_ID),
        description=f"raw image; cells about {d:.0f} px across (rescale before use)",
        axes=[m.BatchAxis(), *axes_in],
        test_tensor=m.FileDescr(source=files["input"]),
        preprocessing=[
            m.ScaleRangeDescr(
                kwargs=m.ScaleRangeKwargs(
                    axes=[m.AxisId("y"), m.AxisId("x")],
                    min_percentile=PERCENTILES[0],
                    max_percentile=PERCENTILES[1],
                )
            )
        ],
    )
    outputs = m.OutputTensorDescr(
        id=m.TensorId(OUTPUT_ID),
        description=network.output_description,
        axes=[m.BatchAxis(), *axes_out],
        test_tensor=m.FileDescr(source=files["output"]),
    )
    return inputs, outputs


def _model_descr(
    m: Any,
    model: TrainedModel,
    files: dict[str, Path],
    inputs: Any,
    outputs: Any,
    weights: Any,
    summary: dict[str, Any],
    framework: str,
    author: str,
    license: str,
) -> Any:
    """The package's description around its tensors and weights: text, citations, config."""
    d = model.config.target_diameter
    ours = {
        "backend": model.backend,
        "n_channels": model.n_channels,
        "target_diameter": d,
        "config": model.settings().flat(),
        "training": summary,
        "metadata": {
            k: model.info.get(k)
            for k in ("name", "created", "updated", "steps", "images", "versions")
        },
    }
    return m.ModelDescr(
        name=f"{model.name} {model.backend} sparse",
        description=(
            f"{model.backend} cell segmentation trained on sparse annotation with "
            f"napari-cellsparse; expects cells about {d:.0f} px across."
        ),
        authors=[m.Author(name=author)],
        cite=[m.CiteEntry(text=text, doi=m.Doi(doi)) for text, doi in citations(model.backend)],
        license=m.LicenseId(license),
        documentation=m.FileDescr(source=files["readme"]),
        covers=[m.FileDescr(source=files["cover"])],
        tags=[
            "napari-cellsparse",
            "sparse-annotation",
            "instance-segmentation",
            "2d",
            model.backend,
            framework,
        ],
        inputs=[inputs],
        outputs=[outputs],
        weights=weights,
        config=m.Config(**{CONFIG_KEY: ours}),
    )
