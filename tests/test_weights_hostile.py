"""Hostile weights registrations: schemes, private addresses, redirects, size, time, cancel.

Every refusal is checked for its status and message, for the server answering afterwards,
and for the weights cache holding no new or partial file. Local servers run on 127.0.0.1, so
tests that must reach them use a policy that allows private addresses (as a server started
with ``--allow-private-weights``); caps and deadlines are small to keep each test short.
"""

from __future__ import annotations

import http.server
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("torch")

from fastapi.testclient import TestClient

from _live import live_server
from napari_cellsparse.cli import main
from napari_cellsparse.core.errors import BadInputError, WeightsError
from napari_cellsparse.core.progress import run_sync
from napari_cellsparse.sam import fetch
from napari_cellsparse.sam.fetch import DownloadPolicy, check_url
from napari_cellsparse.sam.registry import read_entries, register_entry, registry_path
from napari_cellsparse.sam.weights import CHECKPOINTS, download_weights, weights_dir
from napari_cellsparse.server.app import create_app
from napari_cellsparse.server.guards import LOOPBACK_HOSTS
from napari_cellsparse.server.images import encode_png
from napari_cellsparse.server.sam_service import SamService


def _app(*args: Any, **kwargs: Any) -> Any:
    """The application answering TestClient's requests (its Host header is "testserver")."""
    return create_app(*args, hosts=(*LOOPBACK_HOSTS, "testserver"), **kwargs)


PRIVATE_OK = DownloadPolicy(allow_private=True)
REFUSED_SCHEME = "must start with https:// or http://"
REFUSED_ADDRESS = "a loopback, private or reserved address"
NOT_DOWNLOADED = "Could not download a SAM checkpoint from"


def cache_files() -> list[str]:
    """Every file under the weights cache, partial ones included."""
    root = weights_dir()
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


# -- a misbehaving local server ---------------------------------------------------------------


class _Hostile(http.server.BaseHTTPRequestHandler):
    """``/redirect?URL``, ``/endless`` (no length), ``/declared`` (a huge Content-Length),
    ``/trickle`` (a few bytes at a time), ``/silent`` (headers, then nothing)."""

    protocol_version = "HTTP/1.1"
    requests: list[str]
    sent: list[int]

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _headers(self, length: int | None = None) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        if length is not None:
            self.send_header("Content-Length", str(length))
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True

    def _pour(self, piece: bytes, pause: float, limit_s: float = 20.0) -> None:
        end = time.monotonic() + limit_s
        try:
            while time.monotonic() < end:
                self.wfile.write(piece)
                self.wfile.flush()
                self.sent[0] += len(piece)
                time.sleep(pause)
        except OSError:
            pass  # the client hung up: what the tests expect

    def do_GET(self) -> None:
        self.requests.append(self.path)
        path, _, query = self.path.partition("?")
        if path == "/redirect":
            self.send_response(302)
            self.send_header("Location", query)
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path == "/endless":
            self._headers()
            self._pour(b"\0" * (256 * 1024), 0.0)
        elif path == "/declared":
            self._headers(10 * 2**30)
            self._pour(b"\0" * 1024, 0.05, limit_s=2.0)
        elif path == "/trickle":
            self._headers()
            self._pour(b"\0" * 64, 0.05)
        elif path == "/silent":
            self._headers(10 * 2**20)
            time.sleep(5)
        else:
            self.send_error(404)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass


@pytest.fixture
def hostile() -> Iterator[Any]:
    """A misbehaving server on 127.0.0.1; ``.url(path)``, ``.requests``, ``.sent[0]``."""
    requests: list[str] = []
    sent = [0]
    handler = type("Handler", (_Hostile,), {"requests": requests, "sent": sent})
    server = _Server(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02})
    thread.daemon = True
    thread.start()
    port = server.server_address[1]
    server.url = lambda path: f"http://127.0.0.1:{port}{path}"  # type: ignore[attr-defined]
    server.requests, server.sent = requests, sent  # type: ignore[attr-defined]
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


# -- the URL check -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    ["file:///dev/zero", "file:///etc/passwd", "ftp://example.org/w.pth",
     "data:application/octet-stream;base64,AAAA", "gopher://example.org/", "/etc/passwd",
     "127.0.0.1:80/w.pth", "javascript:alert(1)"],
)  # fmt: skip
def test_only_http_and_https_urls(url: str) -> None:
    for policy in (DownloadPolicy(), PRIVATE_OK):
        with pytest.raises(BadInputError, match=REFUSED_SCHEME):
            check_url(url, policy)


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "127.1.2.3", "localhost", "[::1]", "10.0.0.1", "172.16.5.4", "192.168.1.1",
     "169.254.169.254", "0.0.0.0", "224.0.0.1", "240.0.0.1", "100.64.0.1", "[fe80::1]",
     "[fc00::1]", "[::ffff:127.0.0.1]", "[2002:7f00:1::1]", "[ff02::1]"],
)  # fmt: skip
def test_non_public_addresses_are_refused_unless_allowed(host: str) -> None:
    url = f"http://{host}:8080/w.pth"
    with pytest.raises(BadInputError, match=REFUSED_ADDRESS) as info:
        check_url(url, DownloadPolicy())
    assert "--allow-private-weights" in str(info.value)
    check_url(url, PRIVATE_OK)


def test_public_addresses_pass() -> None:
    for url in ("https://93.184.216.34/w.pth", "http://[2606:2800:220:1::1]:8000/w.pth"):
        check_url(url, DownloadPolicy())


def test_every_resolved_address_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    answers = [("93.184.216.34", 443), ("10.1.2.3", 443)]
    monkeypatch.setattr(fetch, "_resolve", lambda host, port: [(2, 1, 6, "", a) for a in answers])
    with pytest.raises(BadInputError, match=r"10\.1\.2\.3"):
        check_url("https://weights.example/w.pth", DownloadPolicy())


def test_the_address_connected_to_is_the_checked_one(
    monkeypatch: pytest.MonkeyPatch, hostile
) -> None:
    """DNS rebinding: the name is public when checked, loopback when connecting."""
    port = hostile.server_address[1]
    calls: list[str] = []

    def resolve(host: str, port_: int) -> list[tuple]:
        calls.append(host)
        address = "93.184.216.34" if len(calls) == 1 else "127.0.0.1"
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]

    monkeypatch.setattr(fetch, "_resolve", resolve)
    with pytest.raises(BadInputError, match=r"leads to 127\.0\.0\.1"):
        fetch.open_url(f"http://rebind.example:{port}/endless", DownloadPolicy())
    assert len(calls) == 2
    assert hostile.requests == []


def test_redirects_to_other_schemes_or_private_addresses_are_refused(
    monkeypatch: pytest.MonkeyPatch, hostile
) -> None:
    with pytest.raises(BadInputError, match=REFUSED_SCHEME):
        fetch.open_url(hostile.url("/redirect?file:///dev/zero"), PRIVATE_OK)
    # The test server's own address counts as public here; [::1] does not.
    public = fetch._refused
    monkeypatch.setattr(fetch, "_refused", lambda a: a != "127.0.0.1" and public(a))
    port = hostile.server_address[1]
    with pytest.raises(BadInputError, match=r"leads to ::1"):
        fetch.open_url(hostile.url(f"/redirect?http://[::1]:{port}/endless"), DownloadPolicy())
    assert hostile.requests == [
        "/redirect?file:///dev/zero",
        f"/redirect?http://[::1]:{port}/endless",
    ]


# -- size and time -----------------------------------------------------------------------------


def test_a_declared_length_over_the_cap_is_refused_before_reading(hostile) -> None:
    with pytest.raises(WeightsError, match="larger than 1 MB"):
        run_sync(download_weights("vit_t", hostile.url("/declared"), policy=replace_mb(1)))
    assert cache_files() == []
    assert not weights_dir().exists()


def replace_mb(max_mb: float, **limits: float) -> DownloadPolicy:
    return DownloadPolicy(allow_private=True, max_mb=max_mb, **limits)


def test_an_endless_body_stops_at_the_cap(hostile) -> None:
    started = time.monotonic()
    with pytest.raises(WeightsError, match="larger than 2 MB"):
        run_sync(download_weights("vit_t", hostile.url("/endless"), policy=replace_mb(2)))
    assert time.monotonic() - started < 10
    assert cache_files() == []
    time.sleep(0.2)
    # the server could fill the socket buffers, but was stopped soon after the cap
    assert hostile.sent[0] < 2 * 2**20 + 16 * 2**20


def test_the_default_cap_follows_the_model() -> None:
    policy = DownloadPolicy()
    assert policy.max_bytes(CHECKPOINTS["vit_t"].size_mb) < 100 * 2**20
    assert policy.max_bytes(CHECKPOINTS["vit_h"].size_mb) < 3.2 * 2**30
    for ckpt in CHECKPOINTS.values():
        assert policy.max_bytes(ckpt.size_mb) > ckpt.size_mb * 2**20


def test_a_trickling_server_is_stopped_at_the_deadline(hostile) -> None:
    started = time.monotonic()
    policy = replace_mb(100, timeout_s=5.0, deadline_s=1.0)
    with pytest.raises(WeightsError, match="did not finish in time"):
        run_sync(download_weights("vit_t", hostile.url("/trickle"), policy=policy))
    assert 0.9 < time.monotonic() - started < 4
    assert cache_files() == []


def test_a_silent_server_times_out(hostile) -> None:
    started = time.monotonic()
    policy = replace_mb(100, timeout_s=0.5, deadline_s=60.0)
    with pytest.raises(WeightsError):
        run_sync(download_weights("vit_t", hostile.url("/silent"), policy=policy))
    assert time.monotonic() - started < 3
    assert cache_files() == []


# -- the route -------------------------------------------------------------------------------


def register(client: TestClient, url: str, name: str = "tuned") -> Any:
    return client.post("/sam/weights/", json={"type": "vit_t", "name": name, "url": url})


@pytest.mark.parametrize(
    "url", ["file:///dev/zero", "file:///etc/passwd", "ftp://127.0.0.1/x", "data:,x"]
)
def test_route_refuses_other_schemes(url: str) -> None:
    client = TestClient(_app(SamService(device="cpu"), weights=PRIVATE_OK))
    started = time.monotonic()
    answer = register(client, url)
    assert answer.status_code == 400
    assert REFUSED_SCHEME in answer.json()["detail"]
    assert time.monotonic() - started < 5
    assert client.get("/sam/version/").status_code == 200
    assert cache_files() == []


def test_route_refuses_private_addresses_by_default(hostile) -> None:
    client = TestClient(_app(SamService(device="cpu")))
    for url in (hostile.url("/endless"), "http://localhost:1/w.pth", "http://169.254.169.254/"):
        answer = register(client, url)
        assert answer.status_code == 400
        assert REFUSED_ADDRESS in answer.json()["detail"]
    assert hostile.requests == []
    assert cache_files() == []


def test_open_and_closed_ports_get_the_same_answer(
    closed_port: int, http_server, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    served = tmp_path / "served"
    served.mkdir()
    (served / "page.html").write_text("<html>an open port</html>")
    server = http_server(served)
    client = TestClient(_app(SamService(device="cpu"), weights=PRIVATE_OK))
    urls = {
        "closed": f"http://127.0.0.1:{closed_port}/w.pth",
        "open": server.url("page.html"),
        "missing": server.url("absent.pth"),
    }
    details = {}
    for kind, url in urls.items():
        answer = register(client, url, kind)
        assert answer.status_code == 503
        details[kind] = answer.json()["detail"].replace(url, "<url>")
    assert details["closed"] == details["open"] == details["missing"]
    assert details["open"].startswith(f"{NOT_DOWNLOADED} <url>")
    # the reasons are in the server's log only
    assert "refused" in caplog.text.lower() and "corrupted" in caplog.text
    assert cache_files() == []


def test_route_cap_and_deadline_keep_nothing(hostile, caplog: pytest.LogCaptureFixture) -> None:
    policy = replace_mb(1, deadline_s=1.0)
    client = TestClient(_app(SamService(device="cpu"), weights=policy))
    for path, reason in [("/endless", "larger than 1 MB"), ("/trickle", "did not finish in time")]:
        answer = register(client, hostile.url(path), path.strip("/"))
        assert answer.status_code == 503
        assert answer.json()["detail"].startswith(NOT_DOWNLOADED)
        assert reason in caplog.text
        assert client.get("/sam/version/").status_code == 200
    assert cache_files() == []


def test_cancel_stops_a_download_and_nothing_else(
    vit_t_checkpoint: Path, http_server, tmp_path: Path
) -> None:
    served = tmp_path / "served"
    served.mkdir()
    (served / "tuned.pt").symlink_to(vit_t_checkpoint)
    server = http_server(served)
    (weights_dir()).mkdir(parents=True)
    official = weights_dir() / CHECKPOINTS["vit_t"].filename
    official.write_bytes(vit_t_checkpoint.read_bytes())
    before = cache_files()
    service = SamService(device="cpu")
    client = TestClient(_app(service, weights=PRIVATE_OK))
    update = service.progress.update
    cancels: list[str] = []

    def cancel_on_progress(event: Any) -> None:
        """Another client presses cancel while this request is under way."""
        update(event)
        if event.step > 0 and not cancels:
            cancels.append(client.get("/sam/weights/cancel/").text)

    service.progress.update = cancel_on_progress  # type: ignore[method-assign]
    image = encode_png((np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8))
    prompt = client.post("/sam/", json={"type": "vit_t", "b64img": image, "bbox": [5, 5, 40, 40]})
    assert cancels == ["Cancel signal sent"]
    assert prompt.status_code == 200  # a cancel for downloads does not stop a prompt
    cancels.clear()
    answer = register(client, server.url("tuned.pt"))
    assert cancels == ["Cancel signal sent"]
    assert answer.status_code == 200 and answer.text.startswith("Cancelled to register tuned")
    assert cache_files() == before
    assert service.cancel_downloads() == 0


# -- registered.json ---------------------------------------------------------------------------


_WRITER = """
import sys
from pathlib import Path
from napari_cellsparse.sam.registry import register_entry
tag, count, folder = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
for i in range(count):
    path = folder / f"{tag}-{i}.pth"
    path.write_bytes(b"x")
    assert register_entry("vit_t", f"{tag}-{i}", f"https://example.org/{tag}/{i}", path)
"""


def test_processes_registering_at_once_lose_nothing(cellsparse_home: Path, tmp_path: Path) -> None:
    import os

    folder = tmp_path / "files"
    folder.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    writers = [
        subprocess.Popen([sys.executable, "-c", _WRITER, tag, "15", str(folder)], env=env)
        for tag in ("a", "b", "c")
    ]
    assert [w.wait(timeout=120) for w in writers] == [0, 0, 0]
    names = sorted(e["name"] for e in read_entries())
    assert names == sorted(f"{t}-{i}" for t in "abc" for i in range(15))
    leftovers = [p.name for p in weights_dir().iterdir() if p.name.endswith(".part")]
    assert leftovers == []


def test_a_writer_waits_for_the_lock(tmp_path: Path) -> None:
    from filelock import FileLock

    weights_dir().mkdir(parents=True)
    path = tmp_path / "w.pth"
    path.write_bytes(b"x")
    done = threading.Event()
    with FileLock(weights_dir() / "registered.json.lock"):
        thread = threading.Thread(
            target=lambda: (
                done.set() if register_entry("vit_t", "w", "https://e.org/w", path) else None
            )
        )
        thread.start()
        assert not done.wait(0.5)
        assert not registry_path().exists()
    thread.join(timeout=30)
    assert done.is_set()
    assert [e["name"] for e in read_entries()] == ["w"]
    assert not register_entry("vit_t", "w", "https://e.org/other", path)


def test_a_failed_write_keeps_the_previous_list(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "w.pth"
    path.write_bytes(b"x")
    assert register_entry("vit_t", "first", "https://e.org/1", path)
    before = registry_path().read_bytes()

    def broken_dump(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(json, "dump", broken_dump)
    with pytest.raises(OSError, match="disk full"):
        register_entry("vit_t", "second", "https://e.org/2", path)
    assert registry_path().read_bytes() == before
    assert sorted(p.name for p in weights_dir().iterdir()) == [
        "registered.json",
        "registered.json.lock",
    ]


# -- cellsparse weights add / serve ------------------------------------------------------------


def test_weights_add_registers_a_local_file_the_server_uses(
    vit_t_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(["weights", "add", str(vit_t_checkpoint), "--model", "vit_t", "--name", "mine"]) == 0
    )
    url = vit_t_checkpoint.resolve().as_uri()
    assert url in capsys.readouterr().out
    [entry] = read_entries()
    assert entry["name"] == "mine" and entry["url"] == url
    assert Path(entry["path"]).read_bytes() == vit_t_checkpoint.read_bytes()
    assert main(["weights", "list"]) == 0
    assert f"vit_t\tmine\tregistered\t{url}" in capsys.readouterr().out
    # again under the same name: refused, nothing new
    before = cache_files()
    assert main(["weights", "add", str(vit_t_checkpoint), "--name", "mine"]) == 2
    assert "already registered" in capsys.readouterr().err
    assert cache_files() == before
    # the server lists it and prompts with it, but will not fetch a file: URL itself
    client = TestClient(_app(SamService(device="cpu")))
    assert {"type": "vit_t", "name": "mine", "url": url} in client.get("/sam/weights/").json()
    image = encode_png((np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8))
    body = {"type": "vit_t", "b64img": image, "bbox": [5, 5, 40, 40], "checkpoint_url": url}
    assert client.post("/sam/", json=body).status_code == 200
    assert register(client, url, "again").status_code == 400


def test_weights_add_refuses_what_is_not_a_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    assert main(["weights", "add", str(junk)]) == 2
    assert "corrupted" in capsys.readouterr().err
    assert main(["weights", "add", str(tmp_path / "absent.pth")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["weights", "add"]) == 2
    assert "FILE" in capsys.readouterr().err
    assert cache_files() == []
    assert read_entries() == []


def test_serve_options_reach_the_app(monkeypatch: pytest.MonkeyPatch, hostile) -> None:
    import uvicorn

    apps: list[Any] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: apps.append(app))
    assert main(["serve", "--device", "cpu"]) == 0
    assert (
        main(["serve", "--device", "cpu", "--allow-private-weights", "--max-weights-mb", "1"]) == 0
    )
    # the apps answer only their own names: the client addresses them as localhost
    strict, lenient = (TestClient(app, base_url="http://localhost") for app in apps)
    assert register(strict, hostile.url("/endless")).status_code == 400
    assert hostile.requests == []
    answer = register(lenient, hostile.url("/endless"))
    assert answer.status_code == 503 and "larger than 1 MB" in answer.json()["detail"]
    assert hostile.requests == ["/endless"]
    assert cache_files() == []


# -- the real server -------------------------------------------------------------------------


live = live_server


def post(url: str, body: dict) -> tuple[int, str]:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())["detail"]


def test_real_server_refuses_file_urls_and_private_addresses(
    cellsparse_home: Path, hostile
) -> None:
    cellsparse_home.mkdir(parents=True, exist_ok=True)
    before = sorted(p for p in cellsparse_home.rglob("*"))
    with live(create_app(SamService(device="cpu"))) as base:
        started = time.monotonic()
        for url, message in [
            ("file:///dev/zero", REFUSED_SCHEME),
            (hostile.url("/endless"), REFUSED_ADDRESS),
            (f"http://[::1]:{hostile.server_address[1]}/endless", REFUSED_ADDRESS),
            (hostile.url("/redirect?file:///dev/zero"), REFUSED_ADDRESS),
        ]:
            status, detail = post(base + "sam/weights/", {"type": "vit_t", "name": "x", "url": url})
            assert (status, message in detail) == (400, True), detail
        assert time.monotonic() - started < 10
        with urllib.request.urlopen(base + "sam/version/", timeout=10) as response:
            assert response.status == 200
    assert hostile.requests == []
    # allowed to reach 127.0.0.1, it still follows no redirect to a file
    with live(create_app(SamService(device="cpu"), weights=PRIVATE_OK)) as base:
        url = hostile.url("/redirect?file:///dev/zero")
        status, detail = post(base + "sam/weights/", {"type": "vit_t", "name": "x", "url": url})
        assert status == 400 and REFUSED_SCHEME in detail
        with urllib.request.urlopen(base + "sam/version/", timeout=10) as response:
            assert response.status == 200
    assert hostile.requests == ["/redirect?file:///dev/zero"]
    assert sorted(p for p in cellsparse_home.rglob("*")) == before
