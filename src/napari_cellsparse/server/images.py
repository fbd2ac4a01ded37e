"""Images in request bodies: base64 PNG, TIFF or JPEG, decoded with guards.

A body holds untrusted bytes: base64 that does not decode, a format nobody reads, or a
small file that claims billions of values (a decompression bomb: many pages, planes or
samples count as much as rows and columns) each become a
:class:`~napari_cellsparse.core.errors.BadInputError` naming the field, the limit and the
image's size, before any pixel buffer is allocated. A TIFF strip that inflates to more
than its header claims stops at the claimed size (tifffile decodes through imagecodecs
into a buffer of that size).
"""

from __future__ import annotations

import base64
import binascii
import io
import math

import numpy as np

from ..core.errors import BadInputError
from ..core.images import MAX_CHANNELS

__all__ = ["DEFAULT_MAX_PIXELS", "decode_image", "encode_png"]

# Values, not pixels: a 10k x 10k two-channel slide fits, a bomb does not.
DEFAULT_MAX_PIXELS = 200_000_000
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def _bytes(b64: str, field: str) -> bytes:
    text = b64.split(",", 1)[1] if b64.startswith("data:") else b64
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as err:
        raise BadInputError(f"{field} is not valid base64 ({err}).") from None
    if not raw:
        raise BadInputError(f"{field} is empty.")
    return raw


def _check_size(shape: tuple[int, ...], field: str, max_pixels: int) -> None:
    """Refuse an image whose header claims more values (pages x height x width x samples,
    every axis counted) than ``max_pixels``, before any of it is decoded."""
    values = math.prod(int(n) for n in shape)
    if values > max_pixels:
        dims = " x ".join(str(int(n)) for n in shape)
        raise BadInputError(
            f"{field} is a {dims} image ({values} values), more than the server accepts "
            f"({max_pixels} values: pages x height x width x samples); send a smaller region "
            "or a downsampled image."
        )


def decode_image(
    b64: str, field: str = "b64img", max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """The pixels of a base64 image (YX or YXC, its own dtype: 8 and 16 bit kept)."""
    raw = _bytes(b64, field)
    if raw[:4] in _TIFF_MAGIC:
        import tifffile

        try:
            with tifffile.TiffFile(io.BytesIO(raw)) as tif:
                series = tif.series[0]
                shape = tuple(int(n) for n in series.shape)
                _check_size(shape, field, max_pixels)  # all pages, planes and samples
                # A strip or tile is decoded whole before it is cropped to the image.
                _check_size(tuple(series.keyframe.chunks), f"{field}'s tile", max_pixels)
                # Channels first (QuPath writes CYX; an unnamed first axis of up to four
                # planes is channels too): the engine takes them last.
                if (
                    len(shape) == 3
                    and series.axes[0] in "CSQI"
                    and shape[0] <= MAX_CHANNELS < shape[-1]
                ):
                    return np.moveaxis(series.asarray(), 0, -1)
                return series.asarray()
        except BadInputError:
            raise
        except Exception as err:
            raise BadInputError(f"{field} is not a readable TIFF ({err}).") from None
    from PIL import Image

    try:
        # Only the formats served (TIFF went to tifffile): unknown bytes never make PIL load
        # every plugin and its native codecs.
        with Image.open(io.BytesIO(raw), formats=("PNG", "JPEG")) as picture:
            width, height = picture.size
            samples = 4 if picture.mode == "P" else len(picture.getbands())  # P: RGB(A)
            _check_size((height, width, samples), field, max_pixels)
            if picture.mode == "P":
                picture = picture.convert("RGBA" if "transparency" in picture.info else "RGB")
            return np.asarray(picture)
    except BadInputError:
        raise
    except Image.DecompressionBombError as err:
        raise BadInputError(
            f"{field} claims more pixels than the server accepts ({max_pixels} values): {err}"
        ) from None
    except Exception as err:
        raise BadInputError(
            f"{field} is not an image this server reads (PNG, TIFF or JPEG): {err}"
        ) from None


def encode_png(image: np.ndarray) -> str:
    """Base64 PNG of a uint8 or uint16 image (what the QuPath extensions send)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")
