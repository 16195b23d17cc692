"""Reading one image file into 8-bit RGB or grey pixels, by an explicit channel policy.

    image, source_mode = open_image(path)                     # BadImageError if unreadable
    image, converted = to_mode(image, source_mode, "rgb", "convert", "white", path)

What each source mode becomes (on_channels "convert"; "error" refuses all but the target):

    L / RGB            as is when it is the target; L -> RGB repeats the grey value,
                       RGB -> L is Pillow's ITU-R 601-2 luma (R·0.299 + G·0.587 + B·0.114)
    RGBA, LA, PA, and  composited over `alpha_background` (white or black), then as RGB
    P with a transparent index
    P (palette), 1,    Pillow's conversion to RGB (CMYK JPEGs from Adobe tools, stored
    CMYK, YCbCr        inverted, are read as Pillow reads them)
    I;16*, I           16-bit grey: scaled to 8 bits, v -> round(v · 255 / 65535) (not
                       clipped at 255); mode I is clipped to 0..65535 first; pixels
                       equal to a PNG tRNS grey value are transparent, composited as above
    RGB;16             16-bit RGB PNG: Pillow keeps each sample's high byte (v >> 8, within
                       1 of the scaled value) while reading; counted as converted
    anything else      (F, LAB, HSV, ...) a BadImageError: no defined 8-bit meaning

JPEG photos are turned upright by their EXIF orientation first, as viewers show them.
"""

from __future__ import annotations

import warnings
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from components.stage import StageInputError
from components.vision.data.config import AlphaBackground, Mode, OnChannels

TARGET_MODES = {"rgb": "RGB", "grey": "L"}
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")
VIA_RGB = ("P", "1", "CMYK", "YCbCr")
MODE_NAMES = {
    "1": "1-bit",
    "L": "grey",
    "LA": "grey with alpha",
    "P": "palette",
    "PA": "palette with alpha",
    "RGB": "RGB",
    "RGB;16": "16-bit RGB",
    "RGBA": "RGB with alpha",
    "CMYK": "CMYK",
    "YCbCr": "YCbCr",
    "I": "32-bit integer",
    "F": "32-bit float",
    **{mode: "16-bit grey" for mode in SIXTEEN_BIT[:4]},
}
# What Pillow raises on a corrupt, truncated or unidentifiable file.
DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    zlib.error,
    Image.DecompressionBombError,
)


class BadImageError(ValueError):
    """An image file that cannot be used (corrupt, truncated, unconvertible, wrong size): the
    message starts with the file. The folder reader skips it or stops, by `on_bad_image`."""


def open_image(path: Path) -> tuple[Image.Image, str]:
    """The decoded image of `path` (upright by EXIF orientation) and its source mode name
    ("RGB;16" for a 16-bit RGB PNG, else Pillow's mode). BadImageError if it does not decode."""
    try:
        with Image.open(path) as file, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            # Only known before load(): Pillow reduces 16-bit RGB samples to RGB as it reads.
            rawmodes = [str(tile.args) for tile in file.tile]
            file.load()
            mode = (
                "RGB;16" if file.mode == "RGB" and any(";16" in r for r in rawmodes) else file.mode
            )
            image = ImageOps.exif_transpose(file)
    except (*DECODE_ERRORS, Image.DecompressionBombWarning) as err:
        raise BadImageError(
            f"{path}: not a readable image (corrupt or truncated?): {err}"
        ) from None
    return image, mode


def to_mode(
    image: Image.Image,
    source_mode: str,
    mode: Mode,
    on_channels: OnChannels,
    alpha_background: AlphaBackground,
    path: Path,
) -> tuple[Image.Image, bool]:
    """`image` in the target mode ("RGB" or "L") and whether it was converted.

    StageInputError naming `path` and its mode under on_channels="error" when it is not
    already in the target mode; BadImageError for a mode with no 8-bit meaning."""
    target = TARGET_MODES[mode]
    if source_mode == target:
        return image, False
    described = f"{source_mode} ({MODE_NAMES.get(source_mode, 'unknown')})"
    if on_channels == "error":
        raise StageInputError(
            f"{path}: image mode {described}, expected {target} for mode {mode!r} "
            "(on_channels: convert converts it)"
        )
    if image.mode in SIXTEEN_BIT:
        # Before any alpha: Pillow's own I;16 -> RGBA clips at 255 instead of scaling.
        image = _eight_bit_grey(image)
    if image.mode in ALPHA_MODES or "transparency" in image.info:
        background = (255, 255, 255, 255) if alpha_background == "white" else (0, 0, 0, 255)
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", image.size, background), rgba)
    elif image.mode not in ("L", "RGB", *VIA_RGB):
        raise BadImageError(f"{path}: image mode {described} has no 8-bit {target} conversion")
    if image.mode != "L" or target != "L":
        image = image.convert("RGB")
    return image.convert(target), True


def _eight_bit_grey(image: Image.Image) -> Image.Image:
    """16-bit (or 32-bit, clipped to 0..65535) grey -> L, v -> round(v · 255 / 65535); LA
    where a PNG tRNS grey value marks the pixels equal to it transparent."""
    values = np.asarray(image).astype(np.int64)
    grey = Image.fromarray(((np.clip(values, 0, 65535) * 255 + 32767) // 65535).astype(np.uint8))
    transparent = image.info.get("transparency")
    if isinstance(transparent, int):
        grey.putalpha(Image.fromarray(np.where(values == transparent, 0, 255).astype(np.uint8)))
    return grey
