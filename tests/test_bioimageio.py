"""bioimage.io model packages: export, bioimage.io's own model test (offline), re-import.

Models are trained for a few steps on generated nuclei (weights cannot be downloaded here);
``bioimageio.core.test_model`` runs in this environment with every connection off this
machine refused, so a package that needs the internet fails.
"""

from __future__ import annotations

import ast
import socket
import zipfile
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("bioimageio.core")

from napari_cellsparse.cli import main
from napari_cellsparse.core.errors import BadInputError
from napari_cellsparse.core.paths import HOME_ENV
from napari_cellsparse.samples.generated import make_nuclei
from napari_cellsparse.samples.sparse_annotation import sparse_from_truth
from napari_cellsparse.training import load_model, train
from napari_cellsparse.training.bioimage_io import export_model

SPARSE_DOI = "10.1101/2023.06.13.544786"


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Refuse every connection that leaves this machine."""
    connect = socket.socket.connect

    def local_only(self: socket.socket, address: object) -> object:
        host = address[0] if isinstance(address, tuple) else str(address)
        if self.family in (socket.AF_INET, socket.AF_INET6) and host not in ("127.0.0.1", "::1"):
            raise OSError(f"test is offline: connection to {address} refused")
        return connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", local_only)


def _trained(tmp_path_factory: pytest.TempPathFactory, backend: str, **settings: object):
    home = tmp_path_factory.mktemp(f"home-{backend}")
    image, truth = make_nuclei((128, 128), n_objects=14, radius=(7.0, 9.0), seed=1)
    annotation = sparse_from_truth(image, truth, k=3, band=8)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(HOME_ENV, str(home))
        model = train(backend, image, annotation, name=f"tiny-{backend}", **settings)
        package = export_model(model.name, home / f"{backend}.zip", image=image)
    return model, image, package, home


@pytest.fixture(scope="module")
def unet(tmp_path_factory):
    return _trained(
        tmp_path_factory, "unet", steps=20, base_filters=8, depth=2, patch_size=64, batch_size=4
    )


@pytest.fixture(scope="module")
def cellpose(tmp_path_factory):
    pytest.importorskip("cellpose")
    return _trained(
        tmp_path_factory, "cellpose", steps=2, nbase=[8, 16, 32, 64], patch_size=64, batch_size=2
    )


def _core_test_passes(package: Path) -> None:
    from bioimageio.core import test_model

    summary = test_model(package, devices=["cpu"])
    failed = [d.name for d in summary.details if d.status == "failed"]
    assert summary.status == "passed", (failed, summary.format())
    reproduced = {d.name for d in summary.details if d.status == "passed"}
    for weights in ("pytorch_state_dict", "torchscript"):
        assert f"Reproduce test outputs from test inputs ({weights})" in reproduced


@pytest.mark.parametrize("backend", ["unet", "cellpose"])
def test_package_passes_bioimageio_core_model_test_offline(backend, request, offline) -> None:
    package = request.getfixturevalue(backend)[2]
    _core_test_passes(package)


@pytest.mark.parametrize("backend", ["unet", "cellpose"])
def test_reimported_package_predicts_identically(backend, request, monkeypatch) -> None:
    model, image, package, home = request.getfixturevalue(backend)
    monkeypatch.setenv(HOME_ENV, str(home))
    loaded = load_model(package, device="cpu")
    # The network is rebuilt from the package's architecture file, not from this package.
    assert not type(loaded.network.net).__module__.startswith("napari_cellsparse")
    assert loaded.backend == model.backend and loaded.settings() == model.settings()
    other, _ = make_nuclei((112, 144), n_objects=10, radius=(9.0, 11.0), seed=5)
    for img in (image, other):
        np.testing.assert_array_equal(loaded.predict(img), model.predict(img))
    scaled = np.random.default_rng(0).random((64, 64, model.n_channels), np.float32)
    if backend == "unet":  # the class probabilities
        pairs = [(model.network.probabilities(scaled), loaded.network.probabilities(scaled))]
    else:  # the flows and the cell probability
        pairs = list(
            zip(
                model.network.network_output(scaled),
                loaded.network.network_output(scaled),
                strict=True,
            )
        )
    for raw, again in pairs:
        np.testing.assert_array_equal(raw, again)


def test_package_holds_raw_tensors_scale_metadata_and_only_dois(unet) -> None:
    from bioimageio.spec import load_model_description

    model, _, package, _ = unet
    descr = load_model_description(package, perform_io_checks=False)
    assert descr.format_version.startswith("0.5.")
    with zipfile.ZipFile(package) as z:
        names = set(z.namelist())
        texts = {n: z.read(n).decode() for n in names if n.endswith((".yaml", ".md", ".py"))}
        test_in = np.load(z.open("test_input.npy"))
        test_out = np.load(z.open("test_output.npy"))
    assert {"rdf.yaml", "README.md", "cover.png", "weights.pt", "weights_torchscript.pt"} <= names
    for text in texts.values():
        assert "http://" not in text and "https://" not in text
    arch = next(t for n, t in texts.items() if n.endswith(".py"))
    imported = {
        (node.module if isinstance(node, ast.ImportFrom) else alias.name).split(".")[0]
        for node in ast.walk(ast.parse(arch))
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert imported <= {"torch", "typing"}
    # Raw input, our normalisation declared, the network's raw output (logits, not labels).
    assert test_in.max() > 10 and test_in.shape[:2] == (1, 1)
    (scale,) = [p for p in descr.inputs[0].preprocessing if p.id == "scale_range"]
    assert (scale.kwargs.min_percentile, scale.kwargs.max_percentile) == (1.0, 99.8)
    assert [str(a) for a in scale.kwargs.axes] == ["y", "x"]
    assert test_out.shape == (1, 3, *test_in.shape[2:]) and test_out.min() < 0
    d = round(model.config.target_diameter)
    assert f"cells must be about {d} pixels across" in texts["README.md"]
    halo = descr.outputs[0].axes[-1].halo
    assert f"should crop {halo} pixels (the output's `halo`)" in texts["README.md"]
    assert any(str(c.doi) == SPARSE_DOI for c in descr.cite)
    ours = descr.config.model_extra["napari_cellsparse"]
    assert ours["config"]["centre_threshold"] == model.thresholds.centre_threshold
    assert ours["training"]["steps"] == 20 and ours["training"]["images"] == 1
    assert ours["training"]["annotated_cells"] == 6


def test_measured_halo_is_the_reach_of_a_known_network() -> None:
    import torch

    from napari_cellsparse.training.bioimage_io.networks import measured_halo

    torch.manual_seed(0)
    for n_convs in (1, 5):  # each 3x3 convolution reaches one pixel farther
        convs = torch.nn.Sequential(
            *(torch.nn.Conv2d(1, 1, 3, padding=1, bias=False) for _ in range(n_convs))
        )
        with torch.no_grad():
            for conv in convs:
                conv.weight.fill_(1.0)

        def forward(x: np.ndarray, net=convs) -> np.ndarray:
            with torch.no_grad():
                return net(torch.from_numpy(x)).numpy()

        raw = np.random.default_rng(0).random((1, 1, 40, 40), np.float32) * 100
        assert measured_halo(forward, raw, step=1) == n_convs
        assert measured_halo(forward, raw, step=4) == 4 * -(-n_convs // 4)


@pytest.mark.parametrize("backend", ["unet", "cellpose"])
def test_a_consumer_tiling_with_the_declared_halo_matches_the_whole_image(backend, request):
    from bioimageio.core import predict
    from bioimageio.spec import load_model_description

    package = request.getfixturevalue(backend)[2]
    descr = load_model_description(package, perform_io_checks=False)
    y_in, x_in = descr.inputs[0].axes[-2:]
    y_out, x_out = descr.outputs[0].axes[-2:]
    halo = y_out.halo
    assert halo == x_out.halo and halo > 0 and halo % y_in.size.step == 0
    assert y_in.size.min >= 2 * halo + y_in.size.step and x_in.size == y_in.size
    image, _ = make_nuclei((384, 384), n_objects=120, radius=(7.0, 9.0), seed=4)
    x = {"raw": image[None, None].astype(np.float32)}
    whole = predict(model=descr, inputs=x).members["output"].data.values
    tiled = predict(model=descr, inputs=x, blocksize_parameter=1).members["output"].data.values
    assert tiled.shape == whole.shape
    # Group normalisation (U-Net) and Cellpose's style see the tile, not the image: close only.
    if backend == "unet":  # the class of nearly every pixel
        agree = (tiled.argmax(1) == whole.argmax(1)).mean()
        assert agree >= 0.9, agree
    else:  # the flows and cell probability everywhere
        change = np.abs(tiled - whole).max() / np.ptp(whole)
        assert change < 0.05, change


def test_cli_export_then_predict_from_the_package(unet, tmp_path, monkeypatch, capsys) -> None:
    model, _, _, home = unet
    monkeypatch.setenv(HOME_ENV, str(home))
    out = tmp_path / "cli.zip"
    assert main(["export", "--model", model.name, "--out", str(out)]) == 0
    assert "bioimage.io model package" in capsys.readouterr().out and zipfile.is_zipfile(out)
    assert (
        main(["predict", "--model", str(out), "--image", "sample:nuclei", "--out", str(tmp_path)])
        == 0
    )
    assert (tmp_path / "sample_nuclei_labels.tif").is_file()


def test_bad_inputs_get_a_message_and_leave_no_file(unet, tmp_path, monkeypatch, capsys) -> None:
    model, _, _, home = unet
    monkeypatch.setenv(HOME_ENV, str(home))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(BadInputError, match="No model called 'nope'"):
        export_model("nope", out / "a.zip")
    not_a_model = tmp_path / "folder"
    not_a_model.mkdir()
    (not_a_model / "notes.txt").write_text("hello")
    with pytest.raises(BadInputError, match="cannot be exported"):
        export_model(not_a_model, out / "b.zip")
    blocker = tmp_path / "a file"
    blocker.write_text("x")
    with pytest.raises(BadInputError, match="Cannot write"):
        export_model(model.name, blocker / "c.zip")
    with pytest.raises(BadInputError, match=r"\.zip"):
        export_model(model.name, out / "d.tar")
    assert list(out.iterdir()) == [] and list(tmp_path.glob("**/*.part")) == []
    assert main(["export", "--model", "nope", "--out", str(out / "e.zip")]) == 2
    assert "No model called" in capsys.readouterr().err and not (out / "e.zip").exists()
    fake = out / "fake.zip"
    fake.write_bytes(b"not a zip")
    with pytest.raises(BadInputError, match="not a zip file"):
        load_model(fake)
