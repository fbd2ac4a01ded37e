"""SAM checkpoints: finding them, downloading them safely, loading them with clear errors."""

from __future__ import annotations

import itertools
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from napari_cellsparse.core.errors import (
    BadInputError,
    CancelledError,
    CellsparseError,
    WeightsError,
)
from napari_cellsparse.core.progress import Progress, run_sync
from napari_cellsparse.sam.models import load_sam
from napari_cellsparse.sam.weights import (
    CHECKPOINTS,
    download,
    download_weights,
    find_weights,
    sha256_of,
    weights_dir,
)

OFFICIAL = CHECKPOINTS["vit_t"]


def leftovers(folder: Path) -> list[str]:
    """Every file in the weights folder (partial downloads start with a dot)."""
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.fixture
def served(tmp_path: Path, vit_t_checkpoint: Path) -> Path:
    """A folder to serve holding the random checkpoint and a 3 MiB random file."""
    root = tmp_path / "served"
    root.mkdir()
    shutil.copyfile(vit_t_checkpoint, root / "mobile_sam.pt")
    rng = np.random.default_rng(7)
    (root / "blob.bin").write_bytes(rng.bytes(3 * (1 << 20) + 12345))
    return root


# -- finding weights ------------------------------------------------------------------------


def test_weights_dir_is_under_the_overridden_home(cellsparse_home: Path) -> None:
    assert weights_dir() == cellsparse_home / "sam-weights"


def test_find_weights_without_a_file_says_what_to_download_and_where(
    cellsparse_home: Path,
) -> None:
    with pytest.raises(WeightsError) as info:
        find_weights("vit_t")
    message = str(info.value)
    assert "mobile_sam.pt" in message
    assert OFFICIAL.url in message
    assert str(cellsparse_home / "sam-weights") in message


def test_find_weights_finds_the_cached_official_file() -> None:
    target = weights_dir() / "mobile_sam.pt"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"x")
    assert find_weights("vit_t") == target
    # vit_b's file is a different one and is still missing
    with pytest.raises(WeightsError, match=r"sam_vit_b_01ec64\.pth"):
        find_weights("vit_b")


def test_find_weights_with_an_explicit_missing_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "weights.pt"
    with pytest.raises(WeightsError, match="does not exist") as info:
        find_weights("vit_t", missing)
    assert str(missing) in str(info.value)


def test_find_weights_with_an_explicit_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(WeightsError):
        find_weights("vit_t", tmp_path)


def test_find_weights_with_an_explicit_existing_path(vit_t_checkpoint: Path) -> None:
    assert find_weights("vit_t", vit_t_checkpoint) == vit_t_checkpoint
    assert find_weights("vit_t", str(vit_t_checkpoint)) == vit_t_checkpoint


@pytest.mark.parametrize("bad", ["vit_x", "", "VIT_T", "mobile_sam"])
def test_unknown_model_type(bad: str) -> None:
    with pytest.raises(BadInputError, match="vit_t"):
        find_weights(bad)
    with pytest.raises(BadInputError):
        load_sam(bad)
    with pytest.raises(BadInputError):
        next(download_weights(bad, "http://127.0.0.1:9/x"))


def test_official_checkpoint_table() -> None:
    assert set(CHECKPOINTS) == {"vit_h", "vit_l", "vit_b", "vit_t"}
    for ckpt in CHECKPOINTS.values():
        assert ckpt.url.startswith("https://")
        assert len(ckpt.sha256) == 64
        int(ckpt.sha256, 16)
        assert ckpt.filename == ckpt.url.rsplit("/", 1)[-1]
    assert CHECKPOINTS["vit_t"].filename == "mobile_sam.pt"


# -- downloading ----------------------------------------------------------------------------


def test_download_from_a_server(served: Path, http_server) -> None:
    server = http_server(served)
    source = served / "mobile_sam.pt"
    size = source.stat().st_size
    expected = sha256_of(source)
    events: list[Progress] = []
    path = run_sync(
        download_weights("vit_t", server.url("mobile_sam.pt"), expected.upper()),
        progress=events.append,
    )
    assert path == weights_dir() / "mobile_sam.pt"
    assert sha256_of(path) == expected
    assert path.stat().st_size == size
    assert leftovers(weights_dir()) == ["mobile_sam.pt"]
    # progress in bytes: from 0, strictly increasing, ending at the size
    steps = [e.step for e in events]
    assert steps[0] == 0
    assert all(b > a for a, b in itertools.pairwise(steps))
    assert steps[-1] == size
    assert all(e.total == size for e in events)
    assert len(events) >= 1 + size // (1 << 20)
    # the cached file is now what find_weights and load_sam use
    assert find_weights("vit_t") == path
    _, used = load_sam("vit_t")
    assert used == path


def test_download_replaces_an_existing_file(served: Path, http_server) -> None:
    server = http_server(served)
    target = weights_dir() / "mobile_sam.pt"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"an old broken file")
    blob = served / "blob.bin"
    path = download("vit_t", server.url("blob.bin"), sha256_of(blob))
    assert path == target
    assert path.read_bytes() == blob.read_bytes()
    assert leftovers(weights_dir()) == ["mobile_sam.pt"]


def test_download_with_a_wrong_checksum_keeps_nothing(served: Path, http_server) -> None:
    server = http_server(served)
    with pytest.raises(WeightsError, match="checksum") as info:
        download("vit_t", server.url("blob.bin"), "0" * 64)
    assert "not kept" in str(info.value)
    assert leftovers(weights_dir()) == []
    assert server.requests == ["/full/blob.bin"]


def test_download_with_a_wrong_checksum_keeps_the_previous_file(served: Path, http_server) -> None:
    server = http_server(served)
    target = weights_dir() / "mobile_sam.pt"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"previous")
    with pytest.raises(WeightsError):
        download("vit_t", server.url("blob.bin"), "0" * 64)
    assert target.read_bytes() == b"previous"
    assert leftovers(weights_dir()) == ["mobile_sam.pt"]


@pytest.mark.parametrize("mode", ["truncated", "reset"])
def test_interrupted_download_keeps_nothing(
    served: Path, http_server, cellsparse_home: Path, mode: str
) -> None:
    server = http_server(served)
    blob = served / "blob.bin"
    # a reset can also arrive before the headers are read: then the download "failed"
    with pytest.raises(WeightsError, match=r"interrupted|Download failed") as info:
        download("vit_t", server.url("blob.bin", mode), sha256_of(blob))
    # the message still tells the user how to get the file by hand
    assert OFFICIAL.url in str(info.value)
    assert str(cellsparse_home / "sam-weights") in str(info.value)
    assert leftovers(weights_dir()) == []


def test_truncated_download_without_length_fails_on_the_checksum(served: Path, http_server) -> None:
    server = http_server(served)
    blob = served / "blob.bin"
    with pytest.raises(WeightsError, match="checksum"):
        download("vit_t", server.url("blob.bin", "no-length-truncated"), sha256_of(blob))
    assert leftovers(weights_dir()) == []


def test_interrupted_chunked_download_keeps_nothing(served: Path, http_server) -> None:
    server = http_server(served)
    blob = served / "blob.bin"
    with pytest.raises(WeightsError, match="interrupted") as info:
        download("vit_t", server.url("blob.bin", "chunked-truncated"), sha256_of(blob))
    assert OFFICIAL.url in str(info.value)
    assert leftovers(weights_dir()) == []


def test_http_error_is_a_weights_error(served: Path, http_server) -> None:
    server = http_server(served)
    with pytest.raises(WeightsError, match="404"):
        download("vit_t", server.url("absent.pt"), "0" * 64)
    assert leftovers(weights_dir()) == []


def test_unreachable_server(closed_port: int, cellsparse_home: Path) -> None:
    with pytest.raises(WeightsError, match="Download failed") as info:
        download("vit_t", f"http://127.0.0.1:{closed_port}/mobile_sam.pt", "0" * 64)
    message = str(info.value)
    assert OFFICIAL.url in message
    assert "mobile_sam.pt" in message
    assert str(cellsparse_home / "sam-weights") in message
    assert leftovers(weights_dir()) == []


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc (Linux)")
def test_failed_connections_do_not_leak_file_descriptors(closed_port: int) -> None:
    url = f"http://127.0.0.1:{closed_port}/mobile_sam.pt"
    with pytest.raises(WeightsError):
        download("vit_t", url, "0" * 64)  # warm-up: imports, caches
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(5):
        with pytest.raises(WeightsError):
            download("vit_t", url, "0" * 64)
    assert len(os.listdir("/proc/self/fd")) - before < 5


def test_malformed_url_is_an_engine_error() -> None:
    with pytest.raises(CellsparseError):
        download("vit_t", "127.0.0.1/mobile_sam.pt", "0" * 64)
    assert leftovers(weights_dir()) == []


def test_cancel_after_the_first_chunk_keeps_nothing(served: Path, http_server) -> None:
    server = http_server(served)
    blob = served / "blob.bin"
    assert blob.stat().st_size > 2 * (1 << 20)
    cancel = threading.Event()
    events: list[Progress] = []

    def on_progress(event: Progress) -> None:
        events.append(event)
        if event.step > 0:
            cancel.set()

    with pytest.raises(CancelledError):
        run_sync(
            download_weights("vit_t", server.url("blob.bin"), sha256_of(blob)),
            progress=on_progress,
            cancel=cancel,
        )
    assert [e.step for e in events] == [0, 1 << 20]
    assert leftovers(weights_dir()) == []


def test_download_cancelled_before_it_starts(served: Path, http_server) -> None:
    server = http_server(served)
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(CancelledError):
        download("vit_t", server.url("blob.bin"), sha256_of(served / "blob.bin"), cancel=cancel)
    assert leftovers(weights_dir()) == []


# -- loading --------------------------------------------------------------------------------


def test_load_sam_gives_the_saved_weights(vit_t_checkpoint: Path, vit_t_model) -> None:
    import torch

    saved = torch.load(vit_t_checkpoint, map_location="cpu", weights_only=True)
    loaded = vit_t_model.state_dict()
    assert saved.keys() == loaded.keys()
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)
    assert not vit_t_model.training
    assert str(next(vit_t_model.parameters()).device) == "cpu"


def test_load_sam_accepts_a_wrapped_state_dict(tmp_path: Path, vit_t_checkpoint: Path) -> None:
    import torch

    state = torch.load(vit_t_checkpoint, map_location="cpu", weights_only=True)
    wrapped = tmp_path / "wrapped.pt"
    torch.save({"model": state, "epoch": 3}, wrapped)
    model, path = load_sam("vit_t", wrapped)
    assert path == wrapped
    name = "mask_decoder.iou_token.weight"
    assert torch.equal(model.state_dict()[name], state[name])


def test_load_sam_of_random_bytes(tmp_path: Path) -> None:
    bad = tmp_path / "mobile_sam.pt"
    bad.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(WeightsError, match="corrupted") as info:
        load_sam("vit_t", bad)
    assert str(bad) in str(info.value)


def test_load_sam_of_a_truncated_checkpoint(tmp_path: Path, vit_t_checkpoint: Path) -> None:
    data = vit_t_checkpoint.read_bytes()
    bad = tmp_path / "mobile_sam.pt"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="corrupted"):
        load_sam("vit_t", bad)


def test_load_sam_of_the_cached_corrupted_file() -> None:
    target = weights_dir() / "mobile_sam.pt"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"<html>404 Not Found</html>")
    with pytest.raises(WeightsError, match="corrupted") as info:
        load_sam("vit_t")
    assert str(target) in str(info.value)


def test_load_sam_of_a_checkpoint_of_another_model(vit_t_checkpoint: Path) -> None:
    with pytest.raises(WeightsError, match="does not fit a vit_b") as info:
        load_sam("vit_b", vit_t_checkpoint)
    assert str(vit_t_checkpoint) in str(info.value)


def test_load_sam_of_a_partial_state_dict(tmp_path: Path, vit_t_checkpoint: Path) -> None:
    import torch

    state = torch.load(vit_t_checkpoint, map_location="cpu", weights_only=True)
    partial = {k: v for k, v in state.items() if not k.startswith("mask_decoder.")}
    path = tmp_path / "partial.pt"
    torch.save(partial, path)
    with pytest.raises(WeightsError, match="does not fit a vit_t"):
        load_sam("vit_t", path)


def test_load_sam_without_weights_names_the_download(cellsparse_home: Path) -> None:
    with pytest.raises(WeightsError) as info:
        load_sam("vit_t")
    assert OFFICIAL.url in str(info.value)
    assert "mobile_sam.pt" in str(info.value)
    assert str(cellsparse_home / "sam-weights") in str(info.value)
