"""Shared fixtures: an isolated user folder, a random MobileSAM checkpoint, a local server;
a guard that fails the test after which TensorFlow is loaded in this process.

SAM weights cannot be downloaded in the test environment, so the checkpoint is the real
vit_t architecture with seeded random weights, saved exactly as a checkpoint file would be.
The HTTP server listens on 127.0.0.1 only and can misbehave on purpose (truncated bodies,
interrupted chunked transfers, connection resets) to test the download's error handling.
"""

from __future__ import annotations

import http.server
import importlib.abc
import socket
import struct
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from napari_cellsparse.core.paths import HOME_ENV

# -- no TensorFlow in the test process ------------------------------------------------------


class _TensorFlowImportWitness(importlib.abc.MetaPathFinder):
    """Remembers where ``tensorflow`` was last looked for (so, once it is loaded, where it was
    imported); finds nothing itself, so imports go on as usual."""

    stack: list[str] | None = None

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name == "tensorflow":
            frames = traceback.format_stack()[:-1]
            self.stack = [f for f in frames if not f.lstrip().startswith('File "<frozen')]
        return None


_TF_WITNESS = _TensorFlowImportWitness()
sys.meta_path.insert(0, _TF_WITNESS)
_TF_REPORTED: list[str] = []


def _tensorflow_loaded_message(when: str) -> str:
    frames = _TF_WITNESS.stack or ["(not seen)\n"]
    # From the first frame below pytest's own (the test's code or a fixture's) down.
    runner = [i for i, f in enumerate(frames) if "/_pytest/" in f or "/pluggy/" in f]
    frames = frames[runner[-1] + 1 if runner else 0 :]
    where = "".join(frames[:10]) + ("  ...\n" if len(frames) > 10 else "")
    return (
        f"TensorFlow was imported into the pytest process {when}. It crashes beside a napari "
        "viewer (Mesa's OpenGL; see the shared ENVIRONMENT.md): run TensorFlow work in a child "
        "process with tests/_subprocess.py's run_in_subprocess. Imported from:\n" + where
    )


@pytest.fixture(scope="session", autouse=True)
def _no_tensorflow_in_session() -> Iterator[None]:
    """Fails every test if TensorFlow is already loaded (by a plugin, a conftest or a test
    module at collection), and the last one if it was loaded after the last test's check."""
    if "tensorflow" in sys.modules:
        pytest.fail(_tensorflow_loaded_message("before the first test"), pytrace=False)
    yield
    if "tensorflow" in sys.modules and not _TF_REPORTED:
        pytest.fail(_tensorflow_loaded_message("during the session's teardown"), pytrace=False)


@pytest.fixture(autouse=True)
def _no_tensorflow_after_test(
    _no_tensorflow_in_session: None, request: pytest.FixtureRequest
) -> Iterator[None]:
    """Fails (at teardown) the test after which TensorFlow is loaded for the first time,
    whether the test, one of its fixtures (of any scope) or anything before it imported it."""
    yield
    if "tensorflow" in sys.modules and not _TF_REPORTED:
        _TF_REPORTED.append(request.node.nodeid)
        pytest.fail(
            _tensorflow_loaded_message(f"by or before {request.node.nodeid}"), pytrace=False
        )


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """pytest-randomly's seed, also with ``-q`` (which hides the header where it says it), so
    a failure that depends on the order can be run again in the same order."""
    config = terminalreporter.config
    if config.pluginmanager.hasplugin("randomly") and config.getoption("randomly_reorganize"):
        seed = config.getoption("randomly_seed")
        terminalreporter.write_line(
            f"tests ran in random order; again in this order: --randomly-seed={seed}"
        )


@pytest.fixture(autouse=True)
def cellsparse_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own empty user data folder (never the real one)."""
    home = tmp_path / "cellsparse-home"
    monkeypatch.setenv(HOME_ENV, str(home))
    return home


# -- SAM model ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def vit_t_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A MobileSAM (vit_t) checkpoint file with seeded random weights (about 40 MB)."""
    import torch

    from napari_cellsparse.sam.models import build_sam

    torch.manual_seed(1234)
    model = build_sam("vit_t")
    path = tmp_path_factory.mktemp("weights") / "random_mobile_sam.pt"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def vit_t_model(vit_t_checkpoint: Path):
    """The vit_t model loaded from :func:`vit_t_checkpoint` on the CPU (shared: don't modify)."""
    from napari_cellsparse.sam.models import load_sam

    model, path = load_sam("vit_t", vit_t_checkpoint, "cpu")
    assert path == vit_t_checkpoint
    return model


@pytest.fixture
def encoder_calls(vit_t_model):
    """A list that grows by one each time the image encoder runs."""
    calls: list[int] = []
    handle = vit_t_model.image_encoder.patch_embed.register_forward_hook(lambda *_: calls.append(1))
    yield calls
    handle.remove()


# -- a local HTTP server ------------------------------------------------------------------

MODES = ("full", "truncated", "chunked-truncated", "reset", "no-length-truncated")


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves ``/<mode>/<file name>`` from ``root``; see :data:`MODES`."""

    protocol_version = "HTTP/1.1"
    root: Path = Path()
    requests: list[str]

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _send(self, data: bytes) -> bool:
        try:
            self.wfile.write(data)
            self.wfile.flush()
            return True
        except (BrokenPipeError, ConnectionResetError):
            return False

    def do_GET(self) -> None:
        self.requests.append(self.path)
        mode, _, name = self.path.lstrip("/").partition("/")
        path = self.root / name
        if mode not in MODES or not name or not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        half = len(data) // 2
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Connection", "close")
        self.close_connection = True
        if mode == "chunked-truncated":
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            step = 256 * 1024
            for start in range(0, half, step):
                piece = data[start : min(start + step, half)]
                if not self._send(b"%x\r\n" % len(piece) + piece + b"\r\n"):
                    return
            return  # no terminating zero-length chunk: the transfer is cut
        if mode == "no-length-truncated":
            self.end_headers()
            self._send(data[:half])
            return
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if mode == "full":
            step = 1 << 20
            for start in range(0, len(data), step):
                if not self._send(data[start : start + step]):
                    return
            return
        self._send(data[:half])
        if mode == "reset":
            # Abort with a TCP reset instead of an orderly close.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        # "truncated": the handler returns, the server closes the connection early.


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # clients that hang up (cancel) are expected


@dataclass
class LocalServer:
    """A running server; ``url(name, mode)`` is the address of a served file."""

    root: Path
    port: int
    requests: list[str]

    def url(self, name: str, mode: str = "full") -> str:
        assert mode in MODES
        return f"http://127.0.0.1:{self.port}/{mode}/{name}"


@pytest.fixture
def http_server() -> Iterator[Callable[[Path], LocalServer]]:
    """Factory: ``http_server(directory)`` serves that folder on a free 127.0.0.1 port."""
    running: list[tuple[_Server, threading.Thread]] = []

    def start(directory: Path) -> LocalServer:
        requests: list[str] = []
        handler = type("Handler", (_Handler,), {"root": Path(directory), "requests": requests})
        server = _Server(("127.0.0.1", 0), handler)
        thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        thread.start()
        running.append((server, thread))
        return LocalServer(Path(directory), server.server_address[1], requests)

    yield start
    for server, thread in running:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def closed_port() -> int:
    """A 127.0.0.1 port nothing listens on (connections are refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- a small trained segmentation model ------------------------------------------------------


@pytest.fixture(scope="session")
def nuclei_model_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model store holding one small U-Net, ``nuclei``, trained on 8 annotated cells of a
    synthetic image (about 16 px nuclei); shared by the block-wise and batch tests."""
    from napari_cellsparse.samples.generated import make_nuclei
    from napari_cellsparse.samples.sparse_annotation import sparse_from_truth
    from napari_cellsparse.training import train

    home = tmp_path_factory.mktemp("nuclei-home")
    image, truth = make_nuclei((192, 192), n_objects=30, radius=(7.0, 9.0), seed=1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(HOME_ENV, str(home))
        train(
            "unet",
            image,
            sparse_from_truth(image, truth, k=8, band=10),
            name="nuclei",
            steps=150,
            base_filters=8,
            patch_size=64,
            batch_size=4,
        )
    return home
