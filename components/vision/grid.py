"""Image grids and PNG bytes: the figures vision stages write and log.

    grid = image_grid(images, columns=8)      # uint8 [N, H, W] or [N, H, W, 1|3] -> [H', W', 3]
    data = png_bytes(grid)                     # the same array gives the same bytes, always
    assert (decode_png(data) == grid).all()

`png_bytes` writes no metadata (no time, no text chunks) at a fixed compression level, so a
figure in a DVC-versioned output is byte-for-byte reproducible.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

PNG_COMPRESS_LEVEL = 6  # zlib level: fixed, because the bytes must not vary


def image_grid(
    images: np.ndarray, columns: int = 8, pad: int = 2, pad_value: int = 255
) -> np.ndarray:
    """Tile `images` row-major into one RGB image, `pad` pixels of `pad_value` around each.

    images: uint8 [N, H, W] (grey), [N, H, W, 1] (grey) or [N, H, W, 3] (RGB), N >= 1.
    Returns uint8 [rows·(H+pad)+pad, cols·(W+pad)+pad, 3] with cols = min(columns, N) and
    rows = ceil(N / cols); cells past the last image are `pad_value`.

    >>> image_grid(np.zeros((3, 2, 2), np.uint8), columns=2, pad=1).shape
    (7, 7, 3)
    """
    images = _as_rgb(np.asarray(images))
    if columns < 1 or pad < 0 or not 0 <= pad_value <= 255:
        raise ValueError(f"image_grid: columns={columns}, pad={pad}, pad_value={pad_value}")
    n, h, w, _ = images.shape
    cols = min(columns, n)
    rows = -(-n // cols)
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), pad_value, np.uint8)
    for i, image in enumerate(images):
        top, left = pad + (i // cols) * (h + pad), pad + (i % cols) * (w + pad)
        grid[top : top + h, left : left + w] = image
    return grid


def png_bytes(array: np.ndarray) -> bytes:
    """PNG of uint8 [H, W] / [H, W, 1] (grey), [H, W, 3] (RGB) or [H, W, 4] (RGBA), with no
    metadata: identical arrays give identical bytes."""
    array = np.asarray(array)
    if array.dtype != np.uint8 or array.ndim not in (2, 3):
        raise ValueError(f"png_bytes: expected uint8 [H, W(, C)], got {array.dtype} {array.shape}")
    if array.ndim == 3:
        if array.shape[2] not in (1, 3, 4):
            raise ValueError(f"png_bytes: expected 1, 3 or 4 channels, got {array.shape}")
        if array.shape[2] == 1:
            array = array[:, :, 0]
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(
        buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL
    )
    return buffer.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """The pixels of PNG `data` as uint8 [H, W] (grey), [H, W, 3] (RGB) or [H, W, 4] (RGBA),
    as stored (no conversion). Raises ValueError for anything but an 8-bit L/RGB/RGBA PNG."""
    with Image.open(io.BytesIO(data)) as image:
        if image.format != "PNG" or image.mode not in ("L", "RGB", "RGBA"):
            found = f"{image.format} {image.mode}"
            raise ValueError(f"decode_png: expected an 8-bit L/RGB/RGBA PNG, got {found}")
        return np.asarray(image, dtype=np.uint8).copy()


def _as_rgb(images: np.ndarray) -> np.ndarray:
    """uint8 [N, H, W] / [N, H, W, 1] / [N, H, W, 3] -> [N, H, W, 3]."""
    if images.dtype != np.uint8:
        raise ValueError(f"image_grid: expected uint8 images, got {images.dtype}")
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[3] not in (1, 3) or images.shape[0] == 0:
        raise ValueError(f"image_grid: expected [N>=1, H, W(, 1|3)], got {images.shape}")
    return np.repeat(images, 3, axis=3) if images.shape[3] == 1 else images
