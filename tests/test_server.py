"""The HTTP server: samapi's and cellsparse-api's bodies, through FastAPI's TestClient.

SAM runs with seeded random vit_t weights (installed as the cached official checkpoint);
where objects matter, the decoder is the label oracle of the automask tests. One test
starts the real server with uvicorn and sends the QuPath extensions' bodies over HTTP.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import threading
import time
import urllib.error
import urllib.request
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("torch")

from fastapi.testclient import TestClient

from _live import live_server
from napari_cellsparse._testing import LabelOracle, OracleDecoder
from napari_cellsparse.core.progress import run_sync
from napari_cellsparse.formats.geojson import features_to_labels
from napari_cellsparse.sam.automask import generate_masks
from napari_cellsparse.sam.fetch import DownloadPolicy
from napari_cellsparse.sam.prompting import SamPrompter
from napari_cellsparse.sam.weights import CHECKPOINTS, weights_dir
from napari_cellsparse.samples.generated import make_nuclei
from napari_cellsparse.samples.sparse_annotation import sparse_from_truth
from napari_cellsparse.server.app import create_app
from napari_cellsparse.server.guards import LOOPBACK_HOSTS
from napari_cellsparse.server.images import decode_image, encode_png
from napari_cellsparse.server.sam_service import SamService

BOX = [40, 50, 90, 100]
PRIVATE_OK = DownloadPolicy(allow_private=True)


def _app(*args, **kwargs):
    """The application answering TestClient's requests (its Host header is "testserver")."""
    return create_app(*args, hosts=(*LOOPBACK_HOSTS, "testserver"), **kwargs)


@pytest.fixture
def official(vit_t_checkpoint: Path) -> Path:
    """The random checkpoint where the official vit_t one is cached."""
    target = weights_dir() / CHECKPOINTS["vit_t"].filename
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(vit_t_checkpoint, target)
    return target


@pytest.fixture(scope="module")
def nuclei() -> tuple[np.ndarray, np.ndarray]:
    return make_nuclei((160, 192), n_objects=18, radius=(6.0, 10.0), seed=11)


@pytest.fixture
def client(official: Path) -> TestClient:
    return TestClient(_app(SamService(device="cpu")))


def _tiff(image: np.ndarray) -> str:
    import tifffile

    buffer = io.BytesIO()
    tifffile.imwrite(buffer, image)
    return base64.b64encode(buffer.getvalue()).decode()


def _mask(feature: dict, shape: tuple[int, int]) -> np.ndarray:
    return features_to_labels([feature], shape=shape, sparse=False).labels > 0


# -- images --------------------------------------------------------------------------------


def test_images_decode_png_tiff_and_refuse_bad_bytes(nuclei) -> None:
    from napari_cellsparse.core.errors import BadInputError

    image, _ = nuclei
    np.testing.assert_array_equal(decode_image(encode_png(image)), image)  # 16-bit PNG
    two = np.stack([image, image[::-1]], axis=-1)
    np.testing.assert_array_equal(decode_image(_tiff(two)), two)
    np.testing.assert_array_equal(decode_image(_tiff(np.moveaxis(two, -1, 0))), two)
    for b64, message in [
        ("%%%", "not valid base64"),
        (base64.b64encode(b"hello").decode(), "not an image"),
        ("", "empty"),
    ]:
        with pytest.raises(BadInputError, match=message):
            decode_image(b64)
    with pytest.raises(BadInputError, match="more than the server accepts"):
        decode_image(encode_png(np.zeros((100, 100), np.uint8)), max_pixels=5000)


def test_a_decompression_bomb_is_refused_before_decoding() -> None:
    from PIL import Image

    from napari_cellsparse.core.errors import BadInputError

    buffer = io.BytesIO()
    Image.new("1", (15000, 15000)).save(buffer, format="PNG")  # 225 Mpx in ~30 kB
    assert len(buffer.getvalue()) < 200_000
    with pytest.raises(BadInputError, match="pixels"):
        decode_image(base64.b64encode(buffer.getvalue()).decode())


# -- samapi ----------------------------------------------------------------------------------


def test_sam_box_and_points_give_the_engines_masks(client, nuclei, vit_t_model) -> None:
    image, _ = nuclei
    b64 = encode_png(image)
    prompter = SamPrompter(vit_t_model, "direct")
    run_sync(prompter.set_image(image))

    answer = client.post("/sam/", json={"type": "vit_t", "b64img": b64, "bbox": BOX})
    assert answer.status_code == 200, answer.text
    (feature,) = answer.json()
    props = feature["properties"]
    assert props == {
        "object_idx": 0,
        "label": "object",
        "quality": pytest.approx(props["quality"]),
        "sam_model": "vit_t",
    }
    (expected,) = prompter.boxes([BOX])
    np.testing.assert_array_equal(_mask(feature, image.shape), expected.full())
    assert props["quality"] == pytest.approx(expected.score, abs=1e-5)

    body = {"type": "vit_t", "b64img": b64, "bbox": BOX, "multimask_output": True}
    three = client.post("/sam/", json=body).json()
    expected = prompter.prompt(box=BOX, multimask=True)
    assert [f["properties"]["object_idx"] for f in three] == [0, 1, 2][: len(three)]
    assert [f["properties"]["quality"] for f in three] == pytest.approx(
        [m.score for m in expected if m.area], abs=1e-5
    )

    points = {"type": "vit_t", "b64img": b64, "point_coords": [[60, 70], [10, 10]],
              "point_labels": [1, 0]}  # fmt: skip
    (feature,) = client.post("/sam/", json=points).json()
    (expected,) = prompter.prompt([[60, 70], [10, 10]], [1, 0])
    np.testing.assert_array_equal(_mask(feature, image.shape), expected.full())
    assert client.get("/sam/progress/").json()["percent"] in range(-1, 101)


def test_the_same_image_is_embedded_once(client, nuclei) -> None:
    image, _ = nuclei
    body = {"type": "vit_t", "b64img": encode_png(image), "bbox": BOX}
    assert client.post("/sam/", json=body).status_code == 200
    (prompter,) = client.app.state.sam._prompters.values()
    calls: list[int] = []
    prompter.sam.image_encoder.patch_embed.register_forward_hook(lambda *_: calls.append(1))
    assert client.post("/sam/", json={**body, "bbox": [5, 5, 30, 40]}).status_code == 200
    assert calls == []  # the embedding of the same image was reused
    other = encode_png(image[::-1].copy())
    assert client.post("/sam/", json={**body, "b64img": other}).status_code == 200
    assert calls == [1]


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"type": "vit_x", "bbox": BOX}, 400, "Unknown SAM model type"),
        ({"b64img": "not base64!", "bbox": BOX}, 400, "valid base64"),
        ({"point_coords": [[1, 2]], "point_labels": [1, 0]}, 400, "same length"),
        ({}, 400, "Give bbox"),
        ({"bbox": [500, 500, 600, 600]}, 400, "outside the image"),
        ({"bbox": BOX, "checkpoint_url": "http://x/y.pth"}, 400, "not registered"),
        ({"bbox": "wide"}, 422, "bbox"),
    ],
)
def test_sam_bad_requests_are_4xx_with_a_message(client, nuclei, body, status, message) -> None:
    full = {"type": "vit_t", "b64img": encode_png(nuclei[0]), **body}
    answer = client.post("/sam/", json=full)
    assert answer.status_code == status
    assert message in json.dumps(answer.json()["detail"])


def test_missing_weights_are_a_503_naming_the_file(nuclei) -> None:
    client = TestClient(_app(SamService(device="cpu")))
    body = {"type": "vit_b", "b64img": encode_png(nuclei[0]), "bbox": BOX}
    answer = client.post("/sam/", json=body)
    assert answer.status_code == 503 and "sam_vit_b_01ec64.pth" in answer.json()["detail"]


def test_automask_objects_and_output_types(official, nuclei, vit_t_model) -> None:
    image, labels = nuclei
    service = SamService(device="cpu")
    oracle = SamPrompter(vit_t_model, "oracle")
    oracle.decoder = OracleDecoder(oracle.decoder, LabelOracle(labels))
    service._prompters[("vit_t", "")] = oracle  # the label oracle decodes; the rest is real
    client = TestClient(_app(service))
    body = {"type": "vit_t", "b64img": encode_png(image), "points_per_side": 16}

    found = {}
    for output in ("Multi-mask (all)", "Multi-mask (smallest)", "Multi-mask (largest)",
                   "Multi-mask (best quality)", "Single mask", "Single Mask"):  # fmt: skip
        answer = client.post("/sam/automask/", json={**body, "output_type": output})
        assert answer.status_code == 200, answer.text
        found[output] = answer.json()
    assert len(found["Multi-mask (all)"]) > 0
    direct = run_sync(generate_masks(oracle, image, {"points_per_side": 16}))
    assert len(found["Multi-mask (all)"]) == len(direct)
    for a, m in zip(found["Multi-mask (all)"], direct.masks, strict=True):
        np.testing.assert_array_equal(_mask(a, image.shape), m.full())
        assert a["properties"]["quality"] == pytest.approx(m.predicted_iou, abs=1e-5)
    assert len(found["Multi-mask (smallest)"]) <= len(found["Multi-mask (all)"])
    areas = {k: sum(_mask(f, image.shape).sum() for f in v) for k, v in found.items()}
    assert areas["Multi-mask (smallest)"] <= areas["Multi-mask (largest)"]
    assert found["Single Mask"] == found["Single mask"]

    answer = client.post("/sam/automask/", json={**body, "output_type": "Best"})
    assert answer.status_code == 400 and "output_type" in answer.json()["detail"]
    answer = client.post("/sam/automask/", json={**body, "points_per_side": 0})
    assert answer.status_code == 400 and "points_per_side" in answer.json()["detail"]


def test_include_image_edge_keeps_or_drops_image_sized_masks(client, nuclei) -> None:
    """Random weights decode image-sized masks: kept only with include_image_edge."""
    image, _ = nuclei
    body = {"type": "vit_t", "b64img": encode_png(image), "points_per_side": 2,
            "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "box_nms_thresh": 1.0,
            "output_type": "Multi-mask (all)"}  # fmt: skip
    kept = client.post("/sam/automask/", json={**body, "include_image_edge": True}).json()
    dropped = client.post("/sam/automask/", json=body).json()
    h, w = image.shape

    def covers(feature: dict) -> bool:
        ys, xs = np.nonzero(_mask(feature, image.shape))
        return xs.min() <= 20 and ys.min() <= 20 and xs.max() >= w - 21 and ys.max() >= h - 21

    assert any(covers(f) for f in kept)
    assert not any(covers(f) for f in dropped)
    assert len(dropped) == sum(not covers(f) for f in kept)


def test_weights_list_register_and_use(
    official, vit_t_checkpoint, http_server, tmp_path, nuclei
) -> None:
    # the test server is on 127.0.0.1: a server started with --allow-private-weights
    client = TestClient(_app(SamService(device="cpu"), weights=PRIVATE_OK))
    listed = client.get("/sam/weights/").json()
    assert {"type": "vit_t", "name": "vit_t", "url": CHECKPOINTS["vit_t"].url} in listed
    assert client.get("/sam/weights/?type=vit_b").json() == []
    assert client.get("/sam/weights/?type=vit_q").status_code == 400

    served = tmp_path / "served"
    served.mkdir()
    shutil.copy(vit_t_checkpoint, served / "tuned.pt")
    (served / "broken.pt").write_bytes(b"not a checkpoint")
    server = http_server(served)
    url = server.url("tuned.pt")
    answer = client.post("/sam/weights/", json={"type": "vit_t", "name": "tuned", "url": url})
    assert answer.text == f"tuned ({url}) is registered."
    assert {"type": "vit_t", "name": "tuned", "url": url} in client.get("/sam/weights/").json()
    again = client.post("/sam/weights/", json={"type": "vit_t", "name": "tuned", "url": url})
    assert "already exists" in again.text
    body = {"type": "vit_t", "b64img": encode_png(nuclei[0]), "bbox": BOX, "checkpoint_url": url}
    assert client.post("/sam/", json=body).status_code == 200

    bad = {"type": "vit_t", "name": "broken", "url": server.url("broken.pt")}
    answer = client.post("/sam/weights/", json=bad)
    assert answer.status_code == 503
    assert answer.json()["detail"].startswith("Could not download a SAM checkpoint from")
    assert "broken" not in json.dumps(client.get("/sam/weights/").json())
    assert client.get("/sam/weights/cancel/").text == "Cancel signal sent"


def test_token_and_body_limit(official, nuclei) -> None:
    client = TestClient(_app(SamService(device="cpu"), token="s3cret", max_body_mb=0.5))
    assert client.get("/sam/version/").status_code == 401
    headers = {"Authorization": "Bearer s3cret"}
    assert client.get("/sam/version/", headers=headers).text
    assert client.get("/sam/version/", headers={"Authorization": "Bearer wrong"}).status_code == 401
    big = {"type": "vit_t", "b64img": "A" * 700_000, "bbox": BOX}
    answer = client.post("/sam/", json=big, headers=headers)
    assert answer.status_code == 413 and "larger than the server accepts" in answer.json()["detail"]


# -- cellsparse-api ----------------------------------------------------------------------------


def _sparse_body(nuclei, **extra) -> dict:
    image, truth = nuclei
    annotation = sparse_from_truth(image, truth, k=3)
    return {
        "modelname": "default",
        "b64img": _tiff(image),
        "b64lbl": _tiff(annotation.astype(np.uint16)),
        **extra,
    }


def test_elephant_trains_segments_and_resets(nuclei) -> None:
    from napari_cellsparse.training import list_models

    client = TestClient(_app(SamService(device="cpu")))
    image, _ = nuclei
    body = _sparse_body(nuclei, train=True, eval=True, epochs=2, steps=10, minarea=5)
    answer = client.post("/elephant/", json=body)
    assert answer.status_code == 200, answer.text
    features = answer.json()
    assert [f["properties"]["object_idx"] for f in features] == list(range(len(features)))
    assert all(f["properties"]["label"] == "object" for f in features)
    names = [m["name"] for m in list_models()]
    assert "elephant-default" in names  # the widget's store
    only_eval = client.post(
        "/elephant/", json={"modelname": "default", "b64img": _tiff(image), "eval": True}
    )
    assert only_eval.status_code == 200 and only_eval.json() == features  # same model, same answer
    assert client.post("/elephant/", json={**body, "eval": False, "steps": 1}).json() == []

    assert (
        client.post(
            "/elephant/reset/", json={"modelname": "default", "pretrained": "random"}
        ).json()
        == ""
    )
    gone = client.post(
        "/elephant/", json={"modelname": "default", "b64img": _tiff(image), "eval": True}
    )
    assert gone.status_code == 400 and "train it first" in gone.json()["detail"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"b64lbl": None}, "no b64lbl"),
        ({"b64lbl": encode_png(np.zeros((10, 10), np.uint8))}, "size"),
        ({"modelname": "../etc"}, "cannot be a model name"),
        ({"steps": 0}, "steps"),
    ],
)
def test_training_bad_requests(nuclei, change, message) -> None:
    client = TestClient(_app(SamService(device="cpu")))
    body = {**_sparse_body(nuclei, train=True), **change}
    answer = client.post("/cellpose/", json=body)
    assert answer.status_code in (400, 422)
    assert message in json.dumps(answer.json()["detail"])


def test_a_long_training_does_not_block_sam_prompts(official, nuclei) -> None:
    client = TestClient(_app(SamService(device="cpu")))
    image, _ = nuclei
    body = _sparse_body(nuclei, train=True, eval=False, steps=120)
    done: dict[str, float] = {}

    def training() -> None:
        done["status"] = client.post("/elephant/", json=body).status_code
        done["training"] = time.perf_counter()

    worker = threading.Thread(target=training)
    worker.start()
    time.sleep(2.0)  # training is under way (it takes far longer than a prompt)
    prompt = {"type": "vit_t", "b64img": encode_png(image), "bbox": BOX}
    for _ in range(3):
        assert client.post("/sam/", json=prompt).status_code == 200
    done["prompts"] = time.perf_counter()
    assert worker.is_alive(), "the training finished before the prompts could be compared"
    worker.join()
    assert done["status"] == 200 and done["prompts"] < done["training"]


# -- the real server ------------------------------------------------------------------------


def test_real_server_with_qupath_bodies(official, nuclei) -> None:
    """uvicorn on a free loopback port; bodies as the QuPath extensions build them."""
    stack = ExitStack()
    base = stack.enter_context(live_server(create_app(SamService(device="cpu"))))

    def post(path: str, body: dict) -> tuple[int, object]:
        request = urllib.request.Request(
            base + path,
            data=json.dumps(body).encode(),
            headers={
                "accept": "application/json",
                "Content-Type": "application/json; charset=utf-8",
            },
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    try:
        image, _ = nuclei
        rgb = np.dstack([(image / image.max() * 255).astype(np.uint8)] * 3)  # a rendered view
        box = {"type": "vit_t", "bbox": [40, 50, 90, 100], "b64img": encode_png(rgb),
               "multimask_output": False}  # fmt: skip
        status, features = post("sam/", box)
        assert status == 200 and features[0]["geometry"]["type"] in ("Polygon", "MultiPolygon")
        status, features = post("sam/automask/", {
            "type": "vit_t", "b64img": encode_png(rgb), "points_per_side": 16,
            "points_per_batch": 64,
            "pred_iou_thresh": 0.88, "stability_score_thresh": 0.95, "stability_score_offset": 1.0,
            "box_nms_thresh": 0.2, "crop_n_layers": 0, "crop_nms_thresh": 0.7,
            "crop_overlap_ratio": 512 / 1500, "crop_n_points_downscale_factor": 1,
            "min_mask_region_area": 0, "output_type": "Multi-mask (smallest)",
            "include_image_edge": False})  # fmt: skip
        assert status == 200 and isinstance(features, list)
        train = _sparse_body(nuclei, train=True, eval=True, trainpatch=64, batchsize=4, epochs=1,
                             steps=5, lr=0.001, minarea=10, simplify_tol=0)  # fmt: skip
        status, features = post("elephant/", train)
        assert status == 200 and isinstance(features, list)
        infer = {"modelname": "default", "b64img": train["b64img"], "eval": True,
                 "minarea": 10, "simplify_tol": 0}  # fmt: skip
        status, features = post("elephant/", infer)
        assert status == 200
        status, error = post("sam/", {"type": "vit_t", "b64img": "!!"})
        assert status == 400 and "base64" in error["detail"]
        with urllib.request.urlopen(base + "sam/version/", timeout=10) as response:
            assert response.read().decode() == __import__("napari_cellsparse").__version__
    finally:
        stack.close()
