"""The ``cellsparse`` command, run in-process through ``cli.main`` (and once as installed)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_cellsparse.cli import main
from napari_cellsparse.sam.weights import CHECKPOINTS, sha256_of, weights_dir
from napari_cellsparse.samples.catalog import load_sample, sample_file

BOXES = str(sample_file("nuclei_boxes.csv"))
URL = CHECKPOINTS["vit_t"].url


def read_table(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def sam_run(tmp_path_factory: pytest.TempPathFactory, vit_t_checkpoint: Path):
    """``cellsparse sam`` on the sample with the random checkpoint (run once)."""
    out = tmp_path_factory.mktemp("cli-out")
    cache = tmp_path_factory.mktemp("cli-cache")
    argv = ["sam", "--image", "sample:nuclei", "--boxes", BOXES, "--weights",
            str(vit_t_checkpoint), "--device", "cpu", "--out", str(out),
            "--cache-dir", str(cache)]  # fmt: skip
    return main(argv), out, cache


def test_sam_without_weights(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    status = main(
        ["sam", "--image", "sample:nuclei", "--boxes", BOXES, "--out", str(tmp_path / "o")]
    )
    err = capsys.readouterr().err
    assert status == 2
    assert "mobile_sam.pt" in err
    assert URL in err
    assert str(weights_dir()) in err
    assert "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_sam_on_the_sample(sam_run) -> None:
    status, out, cache = sam_run
    assert status == 0
    labels = tifffile.imread(out / "sample_nuclei_labels.tif")
    image = load_sample("nuclei").image
    assert labels.dtype == np.int32
    assert labels.shape == image.shape
    ids = np.unique(labels[labels > 0])
    assert ids.size >= 1
    assert ids.min() >= 2
    assert ids.size <= 12  # at most one object per box
    assert ids.tolist() == list(range(2, 2 + ids.size))  # consecutive
    table = read_table(out / "sample_nuclei_objects.csv")
    assert len(table) == ids.size
    assert sorted(int(r["id"]) for r in table) == ids.tolist()
    for row in table:
        assert int(row["area"]) == int((labels == int(row["id"])).sum())
        assert row["score"] != ""  # every object has a score
        float(row["score"])
    assert len(list(cache.glob("*.pt"))) == 1  # the embedding was kept on disk


def test_sam_scores_belong_to_their_objects(sam_run, vit_t_checkpoint: Path) -> None:
    """The score column is the predicted IoU of the mask painted with that id."""
    from napari_cellsparse.core.progress import run_sync
    from napari_cellsparse.core.sparse_labels import paint_masks
    from napari_cellsparse.sam.embedding import EmbeddingCache
    from napari_cellsparse.sam.prompting import SamPrompter

    _, out, cache = sam_run
    sample = load_sample("nuclei")
    prompter = SamPrompter.load("vit_t", vit_t_checkpoint, "cpu", EmbeddingCache(disk_dir=cache))
    run_sync(prompter.set_image(sample.image))  # from the disk cache the CLI wrote
    masks = prompter.boxes(sample.boxes)
    labels = np.zeros(sample.image.shape, dtype=np.int32)
    owners = {}
    for mask in masks:  # painting one by one tells which mask got which id
        (got,) = paint_masks(labels, [mask])
        if got is not None:
            owners[got] = mask
    assert np.array_equal(labels, tifffile.imread(out / "sample_nuclei_labels.tif"))
    table = {int(r["id"]): float(r["score"]) for r in read_table(out / "sample_nuclei_objects.csv")}
    assert set(table) == set(owners)
    for object_id, owner in owners.items():
        assert table[object_id] == pytest.approx(owner.score, abs=1e-4)


def test_sam_scores_with_a_duplicated_box(sam_run, tmp_path: Path, vit_t_checkpoint: Path) -> None:
    from napari_cellsparse.core.progress import run_sync
    from napari_cellsparse.sam.embedding import EmbeddingCache
    from napari_cellsparse.sam.prompting import SamPrompter

    cache = sam_run[2]  # the sample's embedding is there already

    sample = load_sample("nuclei")
    boxes = sample.boxes[[0, 0, 1]]  # the second box repeats the first
    path = tmp_path / "boxes.csv"
    np.savetxt(path, boxes, delimiter=",", header="x0,y0,x1,y1", comments="", fmt="%g")
    out = tmp_path / "out"
    argv = ["sam", "--image", "sample:nuclei", "--boxes", str(path), "--weights",
            str(vit_t_checkpoint), "--device", "cpu", "--out", str(out),
            "--cache-dir", str(cache)]  # fmt: skip
    assert main(argv) == 0
    prompter = SamPrompter.load("vit_t", vit_t_checkpoint, "cpu", EmbeddingCache(disk_dir=cache))
    run_sync(prompter.set_image(sample.image))
    first, _, third = prompter.boxes(boxes)
    assert abs(first.score - third.score) > 1e-3  # otherwise the test cannot tell
    table = {int(r["id"]): float(r["score"]) for r in read_table(out / "sample_nuclei_objects.csv")}
    assert table == {
        2: pytest.approx(first.score, abs=1e-4),
        3: pytest.approx(third.score, abs=1e-4),
    }


def test_sam_with_a_bad_boxes_header(
    tmp_path: Path, vit_t_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    boxes = tmp_path / "boxes.csv"
    boxes.write_text("left,top,right,bottom\n1,2,30,40\n")
    argv = ["sam", "--image", "sample:nuclei", "--boxes", str(boxes), "--weights",
            str(vit_t_checkpoint), "--out", str(tmp_path / "o")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "x0,y0,x1,y1" in err
    assert not (tmp_path / "o").exists()


def test_sam_with_a_missing_image(
    tmp_path: Path, vit_t_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.tif"
    argv = ["sam", "--image", str(missing), "--boxes", BOXES, "--weights",
            str(vit_t_checkpoint), "--out", str(tmp_path / "o")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "does not exist" in err


def test_sam_with_an_unreadable_image(
    tmp_path: Path, vit_t_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"not a tiff at all")
    argv = ["sam", "--image", str(broken), "--boxes", BOXES, "--weights",
            str(vit_t_checkpoint), "--out", str(tmp_path / "o")]  # fmt: skip
    assert main(argv) == 2
    assert "Could not read the image" in capsys.readouterr().err


def test_sam_with_an_unknown_sample(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["sam", "--image", "sample:cells", "--boxes", BOXES, "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    assert "Unknown sample" in capsys.readouterr().err


def test_sam_with_a_box_outside_the_image(
    sam_run, tmp_path: Path, vit_t_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    boxes = tmp_path / "boxes.csv"
    boxes.write_text("x0,y0,x1,y1\n10,10,40,40\n600,20,650,60\n")  # the image is 512 wide
    argv = ["sam", "--image", "sample:nuclei", "--boxes", str(boxes), "--weights",
            str(vit_t_checkpoint), "--device", "cpu", "--out", str(tmp_path / "o"),
            "--cache-dir", str(sam_run[2])]  # fmt: skip
    assert main(argv) == 2
    assert "Box 2 lies outside the image" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_weights_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["weights", "list"]) == 0
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    assert len(lines) == 5
    for model in ("vit_h", "vit_l", "vit_b", "vit_t"):
        assert any(line.startswith(model) and "missing" in line for line in lines)
    assert URL in out
    assert lines[-1] == f"cache folder: {weights_dir()}"


def test_weights_download_from_a_mirror(
    tmp_path: Path, vit_t_checkpoint: Path, http_server, capsys: pytest.CaptureFixture[str]
) -> None:
    served = tmp_path / "mirror"
    served.mkdir()
    (served / "mobile_sam.pt").symlink_to(vit_t_checkpoint)
    server = http_server(served)
    sha = sha256_of(vit_t_checkpoint)
    url = server.url("mobile_sam.pt")
    assert main(["weights", "download", "--model", "vit_t", "--url", url, "--sha256", sha]) == 0
    target = weights_dir() / "mobile_sam.pt"
    assert f"saved {target}" in capsys.readouterr().out
    assert sha256_of(target) == sha
    assert main(["weights", "list"]) == 0
    assert any(
        line.startswith("vit_t") and "cached" in line
        for line in capsys.readouterr().out.splitlines()
    )
    bad = ["weights", "download", "--model", "vit_t", "--url", url, "--sha256", "0" * 64]
    assert main(bad) == 2
    assert "checksum" in capsys.readouterr().err


def test_bad_arguments_exit_with_usage(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["sam", "--image", "sample:nuclei"])  # --boxes is required
    assert info.value.code == 2
    assert "--boxes" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["sam", "--image", "x", "--boxes", "y", "--model", "vit_z"])


def test_installed_console_script() -> None:
    script = Path(sys.executable).parent / "cellsparse"
    assert script.is_file()
    done = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "sam" in done.stdout and "weights" in done.stdout


@pytest.fixture(scope="module")
def large_tif(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from napari_cellsparse.samples.generated import make_nuclei

    image, _ = make_nuclei((640, 640), n_objects=40, radius=(8.0, 12.0), seed=4)
    path = tmp_path_factory.mktemp("large") / "slide.tif"
    tifffile.imwrite(path, image)
    return path


def test_sam_and_automask_tile_a_large_image(
    large_tif: Path, tmp_path: Path, vit_t_checkpoint: Path
) -> None:
    """``--tile 256`` on a 640 px image: the same objects as the engine's TiledImage."""
    from napari_cellsparse.core.progress import run_sync
    from napari_cellsparse.sam.embedding import EmbeddingCache
    from napari_cellsparse.sam.large_images import TiledImage
    from napari_cellsparse.sam.prompting import SamPrompter

    cache = tmp_path / "cache"
    boxes = tmp_path / "boxes.csv"
    boxes.write_text("x0,y0,x1,y1\n20,30,70,80\n560,570,620,630\n")
    common = ["--image", str(large_tif), "--weights", str(vit_t_checkpoint), "--device", "cpu",
              "--cache-dir", str(cache), "--tile", "256", "--overlap", "32"]  # fmt: skip
    assert main(["sam", *common, "--boxes", str(boxes), "--out", str(tmp_path / "sam")]) == 0
    assert len(list(cache.glob("*.pt"))) == 2  # the two tiles the boxes need, not all nine
    params = ["points_per_side=4", "pred_iou_thresh=0", "stability_score_thresh=0"]
    argv = ["automask", *common, "--out", str(tmp_path / "auto"), "--set", *params]
    assert main(argv) == 0
    assert len(list(cache.glob("*.pt"))) == 9

    image = tifffile.imread(large_tif)
    prompter = SamPrompter.load("vit_t", vit_t_checkpoint, "cpu", EmbeddingCache(disk_dir=cache))
    tiled = TiledImage(prompter, image, tile=256, overlap=32)
    masks = tiled.boxes([[20, 30, 70, 80], [560, 570, 620, 630]])
    labels = tifffile.imread(tmp_path / "sam" / "slide_labels.tif")
    assert labels.shape == image.shape
    for i, mask in enumerate(masks, start=2):  # box objects start at 2 (1 = background)
        np.testing.assert_array_equal(labels == i, mask.full())
    chosen = {"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}
    result = run_sync(tiled.automask(chosen))
    expected, scores = result.labels_with_scores()
    assert tiled.computed == 0  # everything came from the cache the CLI wrote
    records = json.loads((tmp_path / "auto" / "slide_automask_records.json").read_text())
    assert records["params"]["points_per_side"] == 4
    assert records["masks"] == json.loads(json.dumps(result.records())) and len(result) > 0
    found = tifffile.imread(tmp_path / "auto" / "slide_automask_labels.tif")
    np.testing.assert_array_equal(found, expected)
    table = read_table(tmp_path / "auto" / "slide_automask_objects.csv")
    assert {int(r["id"]): round(float(r["score"]), 4) for r in table} == {
        k: round(v, 4) for k, v in scores.items()
    }
    # Random weights decode noise: every mask breaks into specks, and a mask keeps its
    # label only when one connected piece holds half of it.
    assert len(table) == int(found.max())


def test_help_describes_every_command_and_option(capsys) -> None:
    from napari_cellsparse import __version__
    from napari_cellsparse.cli import build_parser

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"cellsparse {__version__}"
    parser = build_parser()
    assert "``" not in parser.format_help()
    commands = parser._subparsers._group_actions[0].choices
    assert {"sam", "train", "predict", "export", "batch", "serve", "weights"} <= set(commands)
    for name, command in commands.items():
        assert command.description, name
        silent = [
            a.option_strings
            for a in command._actions
            if a.option_strings and not a.help and a.dest != "help"
        ]
        assert not silent, (name, silent)
    assert "(default: 1024)" in commands["batch"].format_help()
