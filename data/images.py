"""Decoding images the way every script here needs them: RGB, upright, bounded in size."""
import io
from pathlib import Path
from typing import Optional, Union

import numpy as np
from PIL import Image, ImageOps

from common.errors import UserError

MAX_PIXELS = 50_000_000  # refuse decompression bombs well before they exhaust memory


class ImageTooLarge(UserError):
    """An image with more pixels than the limit it is decoded under."""


def decode_image(source: Union[str, Path, bytes], max_pixels: int = MAX_PIXELS,
                 name: Optional[str] = None) -> Image.Image:
    """Open a file path or encoded bytes as an upright 8-bit RGB image.

    EXIF orientation is applied; grey, palette, RGBA and 16-bit images are converted
    (16-bit scaled to 8-bit, alpha composited on white). Messages name the image `name`, by
    default its path (or "image data" for bytes).

    Raises:
        ImageTooLarge: it has more than `max_pixels` pixels.
        UserError: the data is not a decodable image.
    """
    if name is None:
        name = "image data" if isinstance(source, bytes) else str(source)
    if Image.MAX_IMAGE_PIXELS is not None and max_pixels > Image.MAX_IMAGE_PIXELS:
        # Pillow refuses images over twice its own cap before ours is checked, with its own words:
        # a limit raised above Pillow's must hold, so Pillow's follows it (ours is checked below).
        Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
        if image.width * image.height > max_pixels:
            raise ImageTooLarge(f"{name}: {image.width}x{image.height} pixels is over the limit of "
                            f"{max_pixels:,}; resize it first")
        image.load()
    except UserError:
        raise
    except Image.DecompressionBombError:  # PIL's own limit, past twice Image.MAX_IMAGE_PIXELS
        raise ImageTooLarge(f"{name}: its size is over the limit of {max_pixels:,} pixels; resize it first") from None
    except FileNotFoundError:
        raise UserError(f"{name}: no such file") from None
    except Exception as err:
        raise UserError(f"{name}: not a readable image ({err})") from None
    image = ImageOps.exif_transpose(image)
    return _to_rgb(image)


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "F":  # 32-bit float (TIFF): scientific images hold [0, 1], others 0-255
        arr = np.nan_to_num(np.asarray(image, dtype=np.float64))
        scale = 255.0 if arr.size and arr.max() <= 1.0 else 1.0
        image = Image.fromarray((arr * scale).clip(0, 255).round().astype(np.uint8), mode="L")
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if arr.max() > 255 else 255.0
        image = Image.fromarray((arr / peak * 255.0).clip(0, 255).astype(np.uint8), mode="L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA"):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    return image.convert("RGB")
