"""Images in request bodies: base64 PNG, TIFF or JPEG, decoded with guards.

A body holds untrusted bytes: base64 that does not decode, a format nobody reads, or a
small file that claims billions of pixels (a decompression bomb) each become a
:class:`~napari_cellsparse.errors.BadInputError` naming the field, before any pixel
buffer is allocated.
"""

from __future__ import annotations

import base64
import binascii
import io

import numpy as np

from ..errors import BadInputError

__all__ = ["DEFAULT_MAX_PIXELS", "decode_image", "encode_png"]

DEFAULT_MAX_PIXELS = 200_000_000  # a 10k x 10k two-channel slide fits, a bomb does not
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
    pixels = int(np.prod(shape[:2], dtype=np.int64)) if len(shape) >= 2 else 0
    if pixels > max_pixels:
        raise BadInputError(
            f"{field} is {shape[1]} x {shape[0]} pixels, more than the server accepts "
            f"({max_pixels} pixels); send a smaller region or a downsampled image."
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
                axes = series.axes
                # Channels first (QuPath writes CYX; an unnamed first axis of up to four
                # planes is channels too): the engine takes them last.
                if len(shape) == 3 and axes[0] in "CSQI" and shape[0] <= 4 < shape[-1]:
                    _check_size(shape[1:], field, max_pixels)
                    return np.moveaxis(series.asarray(), 0, -1)
                _check_size(shape, field, max_pixels)
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
            _check_size((height, width), field, max_pixels)
            if picture.mode == "P":
                picture = picture.convert("RGBA" if "transparency" in picture.info else "RGB")
            return np.asarray(picture)
    except BadInputError:
        raise
    except Image.DecompressionBombError:
        raise BadInputError(
            f"{field} claims more pixels than the server accepts ({max_pixels})."
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
