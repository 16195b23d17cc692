import numpy as np
import pytest

from components.vision.grid import decode_png, image_grid, png_bytes


def test_grid_places_each_image_in_its_cell():
    images = np.stack([np.full((4, 5, 3), 10 * (i + 1), np.uint8) for i in range(5)])
    grid = image_grid(images, columns=3, pad=2, pad_value=255)
    assert grid.shape == (2 * (4 + 2) + 2, 3 * (5 + 2) + 2, 3)
    for i in range(5):
        top, left = 2 + (i // 3) * 6, 2 + (i % 3) * 7
        assert (grid[top : top + 4, left : left + 5] == 10 * (i + 1)).all()
    assert (grid[8:12, 16:21] == 255).all()  # the empty sixth cell
    assert (grid[:2] == 255).all() and (grid[:, :2] == 255).all()


def test_grey_images_become_rgb_and_few_images_use_few_columns():
    images = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    grid = image_grid(images, columns=8, pad=1, pad_value=0)
    assert grid.shape == (5, 9, 3)
    assert (grid[1:4, 1:4] == images[0][..., None]).all()
    assert (grid[1:4, 5:8, 2] == images[1]).all()
    assert (image_grid(images[..., None], columns=8, pad=1, pad_value=0) == grid).all()


@pytest.mark.parametrize(
    "images",
    [
        np.zeros((0, 4, 4), np.uint8),
        np.zeros((2, 4, 4), np.float32),
        np.zeros((2, 4, 4, 2), np.uint8),
    ],
)
def test_grid_refuses_what_is_no_batch_of_images(images):
    with pytest.raises(ValueError, match="image_grid"):
        image_grid(images)


@pytest.mark.parametrize("shape", [(6, 7), (6, 7, 1), (6, 7, 3), (6, 7, 4)])
def test_png_round_trip_and_same_bytes_for_the_same_array(shape):
    array = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
    data = png_bytes(array)
    assert data == png_bytes(array.copy())
    assert data.startswith(b"\x89PNG")
    assert b"tIME" not in data and b"tEXt" not in data
    back = decode_png(data)
    assert back.dtype == np.uint8
    assert (back == (array[..., 0] if shape[-1:] == (1,) else array)).all()


def test_png_bytes_refuses_other_dtypes_and_decode_png_other_formats():
    with pytest.raises(ValueError, match="uint8"):
        png_bytes(np.zeros((4, 4), np.uint16))
    with pytest.raises(ValueError, match="channels"):
        png_bytes(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(OSError):
        decode_png(b"not a png")
