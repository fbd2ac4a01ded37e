"""SAM checkpoints: official URLs and checksums, the local cache, and a safe download.

A download streams to a temporary file beside the target, checks the SHA-256 (or, for other
weights, that they load), then renames (never a half-written checkpoint under the final
name); it reports progress, stops at the next chunk when cancelled, and stops at a size cap
and a deadline (:mod:`.fetch`, which also keeps the server's downloads to http(s) URLs of
public addresses). Without network, the error names the file, the URL and the folder
to put it in, so a user can fetch it by hand.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO

from ..core.errors import BadInputError, CancelledError, WeightsError
from ..core.paths import data_home
from ..core.progress import Progress, run_sync
from .fetch import DownloadPolicy, open_url, read_chunk

__all__ = [
    "CHECKPOINTS",
    "MODEL_TYPES",
    "Checkpoint",
    "download",
    "download_weights",
    "find_weights",
    "sha256_of",
    "weights_dir",
]

log = logging.getLogger(__name__)

_CHUNK = 1 << 20


@dataclass(frozen=True)
class Checkpoint:
    """One official SAM checkpoint."""

    model_type: str
    url: str
    sha256: str
    size_mb: int
    description: str

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


CHECKPOINTS: dict[str, Checkpoint] = {
    c.model_type: c
    for c in (
        Checkpoint(
            "vit_h",
            "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
            "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
            2446,
            "SAM ViT-H (largest, most accurate, slow on a CPU)",
        ),
        Checkpoint(
            "vit_l",
            "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
            "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
            1191,
            "SAM ViT-L",
        ),
        Checkpoint(
            "vit_b",
            "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
            "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
            358,
            "SAM ViT-B (smallest of the original SAM models)",
        ),
        Checkpoint(
            "vit_t",
            "https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt",
            "6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f",
            39,
            "MobileSAM ViT-T (fast on a laptop CPU)",
        ),
    )
}

MODEL_TYPES: tuple[str, ...] = tuple(CHECKPOINTS)


def _checkpoint(model_type: str) -> Checkpoint:
    try:
        return CHECKPOINTS[model_type]
    except KeyError:
        raise BadInputError(
            f"Unknown SAM model type {model_type!r}; choose one of {', '.join(MODEL_TYPES)}."
        ) from None


def weights_dir() -> Path:
    """Folder of downloaded SAM checkpoints."""
    return data_home() / "sam-weights"


def sha256_of(path: Path) -> str:
    """SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _missing_message(ckpt: Checkpoint, target: Path, reason: str) -> str:
    return (
        f"{reason} The {ckpt.model_type} weights are needed: download {ckpt.filename} "
        f"({ckpt.size_mb} MB) from {ckpt.url} and put it in {target.parent} "
        f"(or choose the file with --weights / the Weights field)."
    )


def find_weights(model_type: str, weights: str | os.PathLike | None = None) -> Path:
    """The checkpoint to load: ``weights`` when given, else the cached official file.

    Raises :class:`WeightsError` naming the file to download and where to put it.
    """
    ckpt = _checkpoint(model_type)
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise WeightsError(f"The weights file {path} does not exist.")
        return path
    target = weights_dir() / ckpt.filename
    if not target.is_file():
        raise WeightsError(_missing_message(ckpt, target, "No SAM weights found."))
    return target


def download_weights(
    model_type: str,
    url: str | None = None,
    sha256: str | None = None,
    timeout: float | None = None,
    target: Path | None = None,
    verify: bool = True,
    policy: DownloadPolicy | None = None,
    check: Callable[[Path], object] | None = None,
) -> Generator[Progress, None, Path]:
    """Download a checkpoint into the cache, yielding progress in bytes; returns its path.

    ``url``/``sha256`` override the official ones (a mirror, or a test server). ``target``
    and ``verify=False`` register other weights (fine-tuned ones) under another file name,
    without a checksum to compare; ``check`` (e.g. loading it) then runs on the complete
    temporary file before it is renamed. ``policy`` sets the limits (default: the caller's
    own URL, private addresses allowed; the server passes its own): only http(s), a size
    cap, a deadline. Closing the generator (cancel) or any failure removes the partial file.
    """
    ckpt = _checkpoint(model_type)
    url = url or ckpt.url
    expected = (sha256 or ckpt.sha256).lower()
    target = target or weights_dir() / ckpt.filename
    policy = policy or DownloadPolicy(allow_private=True)
    if timeout is not None:
        policy = replace(policy, timeout_s=timeout)
    cap = policy.max_bytes(ckpt.size_mb)
    deadline = time.monotonic() + policy.deadline_s
    try:
        response = open_url(url, policy)
    except BadInputError:
        raise
    except (OSError, ValueError, http.client.HTTPException) as err:  # URLError is an OSError
        raise WeightsError(_missing_message(ckpt, target, f"Download failed ({err}).")) from err
    with response:
        total = _declared_length(response)
        if total > cap:
            raise _too_large(url, model_type, cap)
        made = [p for p in (target.parent, *target.parent.parents) if not p.exists()]
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(
            prefix=f".{target.name}.", suffix=".part", dir=target.parent
        )
        tmp = Path(tmp_name)
        kept = False
        try:
            with os.fdopen(fd, "wb") as out:
                yield Progress(0, total, f"downloading {ckpt.filename}")
                digest = yield from _stream(response, out, cap, deadline, ckpt, target, total, url)
            _check_complete(digest, expected, verify, url)
            if check is not None:
                check(tmp)
            os.replace(tmp, target)
            kept = True
            log.info("downloaded %s to %s", url, target)
            return target
        finally:
            tmp.unlink(missing_ok=True)
            if not kept:
                for folder in made:
                    with contextlib.suppress(OSError):
                        folder.rmdir()


def _declared_length(response: http.client.HTTPResponse) -> int:
    try:
        return max(0, int(response.headers.get("Content-Length") or 0))
    except ValueError:
        return 0


def _too_large(url: str, model_type: str, cap: int) -> WeightsError:
    return WeightsError(
        f"The download from {url} is larger than {cap / 2**20:.0f} MB, the most a "
        f"{model_type} checkpoint may be here; it was stopped and nothing was kept "
        "(a server can raise the limit with --max-weights-mb)."
    )


def _stream(
    response: http.client.HTTPResponse,
    out: BinaryIO,
    cap: int,
    deadline: float,
    ckpt: Checkpoint,
    target: Path,
    total: int,
    url: str,
) -> Generator[Progress, None, Any]:
    """Copy the body to ``out`` in chunks within the cap and the deadline; returns the
    SHA-256 digest. The declared length, when there is one, must be met."""
    digest = hashlib.sha256()
    done = 0
    while True:
        try:
            chunk = read_chunk(response, _CHUNK, deadline)
        except TimeoutError as err:
            raise WeightsError(
                f"The download from {url} did not finish in time ({err}); nothing was kept."
            ) from err
        except (OSError, http.client.HTTPException) as err:
            raise WeightsError(
                _missing_message(ckpt, target, f"The download was interrupted ({err}).")
            ) from err
        if not chunk:
            break
        done += len(chunk)
        if done > cap:
            raise _too_large(url, ckpt.model_type, cap)
        out.write(chunk)
        digest.update(chunk)
        yield Progress(done, max(total, done), f"downloading {ckpt.filename}")
    if total and done != total:
        raise WeightsError(
            _missing_message(
                ckpt, target, f"The download was interrupted ({done} of {total} bytes)."
            )
        )
    return digest


def _check_complete(digest: Any, expected: str, verify: bool, url: str) -> None:
    if verify and digest.hexdigest() != expected:
        raise WeightsError(
            f"The downloaded file from {url} does not have the expected checksum "
            f"(got {digest.hexdigest()}, expected {expected}); it was not kept."
        )


def download(
    model_type: str,
    url: str | None = None,
    sha256: str | None = None,
    cancel: threading.Event | None = None,
) -> Path:
    """Synchronous :func:`download_weights`; raises :class:`CancelledError` when cancelled."""
    try:
        return run_sync(download_weights(model_type, url, sha256), cancel=cancel)
    except CancelledError:
        log.info("download of %s weights cancelled", model_type)
        raise
