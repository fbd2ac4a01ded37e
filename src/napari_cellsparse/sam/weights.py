"""SAM checkpoints: official URLs and checksums, the local cache, and a safe download.

A download streams to a temporary file beside the target, checks the SHA-256, then renames
(never a half-written checkpoint under the final name); it reports progress and stops at the
next chunk when cancelled. Without network, the error names the file, the URL and the folder
to put it in, so a user can fetch it by hand.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import tempfile
import threading
import urllib.request
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path

from ..errors import BadInputError, CancelledError, WeightsError
from ..paths import data_home
from ..progress import Progress, run_sync

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
    timeout: float = 30.0,
    target: Path | None = None,
    verify: bool = True,
) -> Generator[Progress, None, Path]:
    """Download a checkpoint into the cache, yielding progress in bytes; returns its path.

    ``url``/``sha256`` override the official ones (a mirror, or a test server). ``target``
    and ``verify=False`` register other weights (fine-tuned ones) under another file name,
    without a checksum to compare (the caller checks them by loading). Closing the
    generator (cancel) removes the partial file.
    """
    ckpt = _checkpoint(model_type)
    url = url or ckpt.url
    expected = (sha256 or ckpt.sha256).lower()
    target = target or weights_dir() / ckpt.filename
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        response = urllib.request.urlopen(url, timeout=timeout)
    except (OSError, ValueError, http.client.HTTPException) as err:  # URLError is an OSError
        raise WeightsError(_missing_message(ckpt, target, f"Download failed ({err}).")) from err
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    tmp = Path(tmp_name)
    digest = hashlib.sha256()
    done = 0
    try:
        with response, os.fdopen(fd, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0)
            yield Progress(0, total, f"downloading {ckpt.filename}")
            while True:
                try:
                    chunk = response.read(_CHUNK)
                except (OSError, http.client.HTTPException) as err:
                    raise WeightsError(
                        _missing_message(ckpt, target, f"The download was interrupted ({err}).")
                    ) from err
                if not chunk:
                    break
                out.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                yield Progress(done, max(total, done), f"downloading {ckpt.filename}")
        if total and done != total:
            raise WeightsError(
                _missing_message(
                    ckpt, target, f"The download was interrupted ({done} of {total} bytes)."
                )
            )
        if verify and digest.hexdigest() != expected:
            raise WeightsError(
                f"The downloaded file from {url} does not have the expected checksum "
                f"(got {digest.hexdigest()}, expected {expected}); it was not kept."
            )
        os.replace(tmp, target)
        log.info("downloaded %s to %s", url, target)
        return target
    finally:
        tmp.unlink(missing_ok=True)


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
