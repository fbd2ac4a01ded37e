"""Hostile and malformed requests against the real server (uvicorn on 127.0.0.1).

Each request is sent raw (``http.client``) so that it can carry what a browser page or an
attacker on the same machine would send: a foreign ``Host`` header, a chunked body, NaN in
JSON, non-ASCII bytes in ``Authorization``. Every test checks the status and the message,
that the server still answers afterwards, and that nothing was written, inside the
temporary user folder or outside it. No SAM weights and no training are needed: every
request here is refused before either would start.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import socket
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

import tifffile

from napari_cellsparse.server.app import create_app
from napari_cellsparse.server.images import DEFAULT_MAX_PIXELS, decode_image
from napari_cellsparse.server.sam_service import SamService

TOKEN = "s3crét"  # non-ASCII on purpose: compared as UTF-8 bytes


def _strict_json(text: str) -> object:
    """The body as standard JSON (NaN and Infinity are not JSON)."""

    def refuse(constant: str) -> None:
        raise AssertionError(f"the server answered non-standard JSON ({constant})")

    return json.loads(text, parse_constant=refuse)


def _files(root: Path, skip: Path | None = None) -> set[str]:
    if not root.is_dir():
        return set()
    found = set()
    for folder, dirs, names in os.walk(root):
        found.update(os.path.join(folder, n) for n in names + dirs if Path(folder, n) != skip)
        dirs[:] = [d for d in dirs if Path(folder, d) != skip]
    return found


@dataclass
class Live:
    """A server on a free loopback port, and raw requests to it."""

    port: int

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str | bytes] | None = None,
        host: str | None = None,
    ) -> tuple[int, str]:
        """Status and text of one request; ``host`` replaces the Host header ("" omits it)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            host = f"127.0.0.1:{self.port}" if host is None else host
            if host:
                conn.putheader("Host", host)
            for name, value in (headers or {}).items():
                conn.putheader(name, value)
            if body is not None:
                conn.putheader("Content-Type", "application/json")
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            response = conn.getresponse()
            return response.status, response.read().decode()
        finally:
            conn.close()

    def post(self, path: str, text: str, **kwargs: object) -> tuple[int, str]:
        return self.request("POST", path, text.encode(), **kwargs)  # type: ignore[arg-type]

    def chunked(self, path: str, chunks: list[bytes]) -> tuple[int, str]:
        """A POST whose body is sent chunked, without a Content-Length."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.putrequest("POST", path, skip_accept_encoding=True)
            conn.putheader("Content-Type", "application/json")
            conn.putheader("Transfer-Encoding", "chunked")
            conn.endheaders()
            try:
                for chunk in chunks:
                    conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                conn.send(b"0\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server answered before reading it all
            response = conn.getresponse()
            return response.status, response.read().decode()
        finally:
            conn.close()

    def answers(self) -> bool:
        """Whether a plain request still gets its answer."""
        status, text = self.request("GET", "/sam/version/", None, self.auth, host="localhost")
        return status == 200 and bool(text)

    auth: dict[str, str | bytes] | None = None


@pytest.fixture
def serve(cellsparse_home: Path, tmp_path: Path) -> Iterator[Callable[..., Live]]:
    """Starts ``create_app(**kwargs)`` under uvicorn; at the end checks that each server
    still answers and that no file appeared in or beside the temporary user folder or in
    the working directory."""
    import uvicorn

    watched = {
        "home": lambda: _files(cellsparse_home),
        "tmp": lambda: _files(tmp_path, skip=cellsparse_home),
        "cwd": lambda: set(os.listdir(Path.cwd())),
    }
    before = {name: list_files() for name, list_files in watched.items()}
    started: list[tuple[uvicorn.Server, threading.Thread, Live]] = []

    def start(**kwargs: object) -> Live:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        app = create_app(SamService(device="cpu"), **kwargs)  # type: ignore[arg-type]
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical")
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 20
        while not server.started and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert server.started, "uvicorn did not start"
        live = Live(port)
        if kwargs.get("token"):
            live.auth = {"Authorization": f"Bearer {kwargs['token']}".encode()}
        started.append((server, thread, live))
        return live

    yield start
    try:
        for _, _, live in started:
            assert live.answers(), "the server stopped answering"
        after = {name: list_files() for name, list_files in watched.items()}
        assert after == before, "files appeared: " + repr(
            {name: sorted(after[name] - before[name]) for name in after}
        )
    finally:
        for server, thread, _ in started:
            server.should_exit = True
            thread.join(timeout=10)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _tiff(array: np.ndarray, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array, **kwargs)
    return buffer.getvalue()


def _patch_tags(raw: bytes, values: dict[str, int]) -> bytes:
    """``raw`` with the first page's (single-valued) tags set to ``values``."""
    out = bytearray(raw)
    with tifffile.TiffFile(io.BytesIO(raw)) as tif:
        tags = tif.pages[0].tags
        for name, value in values.items():
            tag = tags[name]
            struct.pack_into(
                {3: "<H", 4: "<I", 16: "<Q"}[int(tag.dtype)], out, tag.valueoffset, value
            )
    return bytes(out)


@pytest.fixture
def no_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Decoding pixels fails the test (the server would answer 500)."""
    from PIL import ImageFile

    def decoded(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("pixels were decoded")

    for owner in (
        tifffile.TiffFile,
        tifffile.TiffPage,
        tifffile.TiffPageSeries,
        ImageFile.ImageFile,
    ):
        name = "load" if owner is ImageFile.ImageFile else "asarray"
        monkeypatch.setattr(owner, name, decoded)


# -- Host header (DNS rebinding) ---------------------------------------------------------------


def test_requests_must_name_an_allowed_host(serve) -> None:
    live = serve()
    port = live.port
    refused = [
        *("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example", "::1"),
        *("localhost@evil.example", "evil.example#localhost", "localhost:x", "", "a b"),
    ]
    for host in refused:
        status, text = live.request("GET", "/sam/version/", host=host)
        assert status == 400, host
        if host not in ("", "a b"):  # uvicorn itself may refuse a header that is not a host
            assert "Invalid host header" in text and "--allow-host" in text
    for host in (f"localhost:{port}", "LOCALHOST", f"[::1]:{port}", "127.0.0.1"):
        assert live.request("GET", "/sam/version/", host=host)[0] == 200, host
    lab = serve(hosts=["localhost", "lab.example"])
    assert lab.request("GET", "/sam/version/", host=f"lab.example:{lab.port}")[0] == 200
    assert lab.request("GET", "/sam/version/", host="127.0.0.1")[0] == 400  # not listed


def test_allowed_hosts_for_a_host_a_wildcard_and_allow_host() -> None:
    from napari_cellsparse.core.errors import BadInputError
    from napari_cellsparse.server.guards import allowed_hosts

    assert allowed_hosts() == ["localhost", "127.0.0.1", "[::1]", "127.0.0.1"]
    named = allowed_hosts("10.1.2.3", ["lab.example", "[fe80::1]"])
    assert {"10.1.2.3", "lab.example", "[fe80::1]", "localhost"} <= set(named)
    assert socket.gethostname() not in named
    wildcard = allowed_hosts("0.0.0.0")
    assert {socket.gethostname(), socket.getfqdn()} <= set(wildcard)
    assert "0.0.0.0" not in wildcard
    with pytest.raises(BadInputError, match="--allow-host 'a/b' is not a host name"):
        allowed_hosts("127.0.0.1", ["a/b"])


def test_serve_passes_its_host_and_allow_host_names(monkeypatch) -> None:
    import uvicorn
    from fastapi.testclient import TestClient

    from napari_cellsparse.cli import main

    served = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: served.update(app=app, **kwargs))
    argv = ["serve", "--host", "10.1.2.3", "--allow-host", "lab.example", "--allow-host", "x.org"]
    assert main([*argv, "--token", "t"]) == 0
    assert served["host"] == "10.1.2.3"
    client = TestClient(served["app"], headers={"Authorization": "Bearer t"})
    for host, status in [("lab.example", 200), ("x.org:8000", 200), ("10.1.2.3", 200),
                         ("localhost", 200), ("testserver", 400)]:  # fmt: skip
        answer = client.get("/sam/version/", headers={"Host": host})
        assert answer.status_code == status, host


# -- the pixel limit over every decoded value -------------------------------------------------


PAGES = DEFAULT_MAX_PIXELS // 10**6 + 1  # pages of 1000 x 1000: just over the limit


@pytest.mark.parametrize(
    ("shape", "options", "dims"),
    [
        ((PAGES, 1000, 1000), {}, f"{PAGES} x 1000 x 1000"),  # pages
        ((1000, 1000, PAGES), {"planarconfig": "contig"}, f"1000 x 1000 x {PAGES}"),  # samples
        ((PAGES, 1000, 1000), {"planarconfig": "separate"}, f"{PAGES} x 1000 x 1000"),  # planes
    ],
    ids=["pages", "interleaved", "planar"],
)
def test_a_zlib_tiff_over_the_limit_is_refused_from_its_header(
    serve, no_decoding, shape, options, dims
) -> None:
    layout = np.lib.stride_tricks.as_strided(np.zeros(1, np.uint8), shape, (0,) * len(shape))
    raw = _tiff(layout, compression="zlib", photometric="minisblack", **options)
    assert len(raw) < 2_000_000  # ~1000:1
    live = serve()
    body = json.dumps({"type": "vit_t", "b64img": _b64(raw), "bbox": [0, 0, 10, 10]})
    started = time.perf_counter()
    status, text = live.post("/sam/", body)
    assert time.perf_counter() - started < 10
    assert status == 400, text
    detail = _strict_json(text)["detail"]
    assert f"b64img is a {dims} image" in detail
    assert f"more than the server accepts ({DEFAULT_MAX_PIXELS} values" in detail


def test_a_png_over_the_limit_counting_its_samples_is_refused(serve, no_decoding) -> None:
    from PIL import Image

    side = int(np.sqrt(DEFAULT_MAX_PIXELS / 4)) + 1  # RGBA: under the limit in pixels only
    buffer = io.BytesIO()
    Image.new("RGBA", (side, side)).save(buffer, format="PNG", compress_level=1)
    body = {"modelname": "m", "eval": True, "b64img": _b64(buffer.getvalue())}
    status, text = serve().post("/elephant/", json.dumps(body))
    assert status == 400
    assert f"b64img is a {side} x {side} x 4 image" in _strict_json(text)["detail"]


def test_tiff_strips_and_tiles_that_outgrow_their_header_decode_nothing_large() -> None:
    """A strip that inflates to 200 MB behind a 10 x 10 header, and a 10 x 10 image with
    65536 x 65536 tiles: refused, quickly, without the memory either would take."""
    from napari_cellsparse.core.errors import BadInputError

    small = _tiff(np.zeros((10, 10), np.uint8), compression="zlib")
    with tifffile.TiffFile(io.BytesIO(small)) as tif:
        strips = tif.pages[0].tags
        offset_tag, count_tag = strips["StripOffsets"], strips["StripByteCounts"]
    bomb = zlib.compress(bytes(200 * 2**20), 9)
    raw = bytearray(small + bomb)
    for tag, value in ((offset_tag, len(small)), (count_tag, len(bomb))):
        struct.pack_into({3: "<H", 4: "<I"}[int(tag.dtype)], raw, tag.valueoffset, value)
    started = time.perf_counter()
    with pytest.raises(BadInputError, match="b64lbl is not a readable TIFF"):
        decode_image(_b64(bytes(raw)), "b64lbl")
    assert time.perf_counter() - started < 5

    tiled = _tiff(np.zeros((16, 16), np.uint8), tile=(16, 16), compression="zlib")
    tiled = _patch_tags(tiled, {"TileWidth": 2**16, "TileLength": 2**16})
    with pytest.raises(BadInputError, match="b64img's tile is a 65536 x 65536 image"):
        decode_image(_b64(tiled))


# -- numbers: finite and bounded, always a 422 naming the field ---------------------------------

IMG = _b64(_tiff(np.zeros((32, 32), np.uint8)))
TRAIN = f'{{"modelname": "m", "b64img": "{IMG}", "b64lbl": "{IMG}", "train": true, '


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/sam/", f'{{"type": "vit_t", "b64img": "{IMG}", "bbox": [NaN, 0, 10, 10]}}', "bbox"),
        ("/sam/", f'{{"b64img": "{IMG}", "bbox": [0, 0, 1e400, 10]}}', "bbox"),
        ("/sam/", f'{{"b64img": "{IMG}", "bbox": [0, 0, {10**30}, 10]}}', "bbox"),
        (
            "/sam/",
            f'{{"b64img": "{IMG}", "point_coords": [[1, 2]], "point_labels": [7]}}',
            "point_labels",
        ),
        ("/sam/automask/", f'{{"b64img": "{IMG}", "points_per_side": NaN}}', "points_per_side"),
        (
            "/sam/automask/",
            f'{{"b64img": "{IMG}", "pred_iou_thresh": -Infinity}}',
            "pred_iou_thresh",
        ),
        ("/elephant/", TRAIN + '"lr": NaN}', "lr"),
        ("/elephant/", TRAIN + '"lr": -1}', "lr"),
        ("/cellpose/", TRAIN + '"minarea": Infinity}', "minarea"),
        ("/stardist/", TRAIN + '"trainpatch": 1000000, "batchsize": 1000000}', "trainpatch"),
        ("/elephant/", TRAIN + '"trainpatch": 1024, "batchsize": 256}', "trainpatch**2"),
        ("/elephant/", TRAIN + '"epochs": 1000, "steps": 100000}', "epochs * steps"),
        ("/elephant/", TRAIN + '"simplify_tol": -1}', "simplify_tol"),
        ("/stardist/", TRAIN + '"n_channels_in": 0}', "n_channels_in"),
        ("/sam/", '{"bbox": [0, 0, 1, 1], "pad": "' + "x" * 100_000 + '"}', "b64img"),
    ],
)
def test_bad_numbers_are_a_422_naming_the_field(serve, path, body, field) -> None:
    live = serve()
    status, text = live.post(path, body)
    assert status == 422, text
    assert field in json.dumps(_strict_json(text)["detail"])
    assert len(text) < 2000  # refused inputs are echoed short


# -- token, body size, OpenAPI pages ---------------------------------------------------------


def test_the_token_is_compared_as_bytes_and_guards_the_openapi_pages(serve) -> None:
    live = serve(token=TOKEN)
    for header in (b"Bearer \xff\xfe", "Bearer s3crét".encode("latin-1"), b"Bearer ", b"Basic x"):
        status, text = live.request("GET", "/sam/version/", headers={"Authorization": header})
        assert status == 401 and "bearer token" in text, header
    assert live.request("GET", "/sam/version/", headers=live.auth)[0] == 200  # UTF-8 bytes
    for page in ("/openapi.json", "/docs", "/redoc"):
        assert live.request("GET", page)[0] == 401, page
        status, text = live.request("GET", page, headers=live.auth)
        assert status == 200 and ("/sam/" in text or "openapi.json" in text), page
    open_server = serve()
    assert open_server.request("GET", "/openapi.json")[0] == 200


def test_bodies_over_the_limit_are_a_413_declared_or_chunked(serve) -> None:
    live = serve(max_body_mb=0.5)
    chunk = b"A" * 65536
    status, text = live.chunked("/sam/", [b'{"b64img": "'] + [chunk] * 12 + [b'"}'])
    assert status == 413, text
    assert "larger than the server accepts (0.5 MB)" in _strict_json(text)["detail"]
    status, text = live.request("POST", "/sam/", b"{" + b" " * 600_000 + b"}")
    assert status == 413 and "0.5 MB" in text
    status, text = live.chunked("/sam/", [b'{"b64img": "', b"!!", b'", "bbox": [0, 0, 1, 1]}'])
    assert status == 400 and "base64" in text  # a small chunked body is read as usual


# -- label images --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (np.full((32, 32), 1.5, np.float32), "whole-number label ids"),
        (np.full((32, 32), np.nan, np.float32), "whole-number label ids"),
        (np.full((32, 32), -2, np.int16), "between 0 and"),
    ],
    ids=["fraction", "nan", "negative"],
)
def test_label_images_must_hold_whole_number_ids(serve, labels, message) -> None:
    live = serve()
    body = {"modelname": "m", "b64img": IMG, "b64lbl": _b64(_tiff(labels)), "train": True}
    status, text = live.post("/elephant/", json.dumps(body))
    assert status == 400 and message in _strict_json(text)["detail"]


def test_float_labels_with_whole_values_are_ids() -> None:
    from napari_cellsparse.server.training_service import _label_ids

    ids = _label_ids(np.array([[0.0, 1.0], [2.0, 7.0]], np.float32))
    assert ids.dtype == np.int32 and ids.tolist() == [[0, 1], [2, 7]]
    assert _label_ids(np.eye(2, dtype=bool)).tolist() == [[1, 0], [0, 1]]
