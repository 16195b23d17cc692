import pytest

from components.config import ConfigError, build
from components.vision.data.config import FolderImagesConfig, ImagesConfig


@pytest.mark.parametrize(
    "params, key",
    [
        ({"source": "cifar"}, "images.source"),
        ({"size": 7, "source": "shapes"}, "images.size"),
        ({"size": 27}, "images.size"),  # digits are 28×28, never cropped
        ({"val_fraction": 0.0}, "images.val_fraction"),
        ({"val_fraction": 1.0}, "images.val_fraction"),
        ({"split_seed": -1}, "images.split_seed"),
        ({"grid": 0}, "images.grid"),
        ({"limit": 0}, "images.limit"),
        ({"shapes": {"count": 0}}, "images.shapes.count"),
        ({"shapes": {"seed": -1}}, "images.shapes.seed"),
        ({"shapes": {"min_objects": 0}}, "images.shapes.min_objects"),
        ({"shapes": {"min_objects": 3, "max_objects": 2}}, "images.shapes.max_objects"),
        ({"shapes": {"background": "noisy"}}, "images.shapes.background"),
        ({"shapes": {"max_overlap": 1.0}}, "images.shapes.max_overlap"),
        ({"shapes": {"scale": 0}}, "images.shapes.scale"),
        ({"shapes": {"colours": 3}}, "images.shapes.colours"),
    ],
)
def test_images_config_errors_name_the_key(params, key):
    with pytest.raises(ConfigError) as err:
        build(ImagesConfig, params, "images")
    assert err.value.key == key


def test_digits_may_be_28_and_shapes_8_pixels():
    assert build(ImagesConfig, {"size": 28}).size == 28
    assert build(ImagesConfig, {"source": "shapes", "size": 8}).size == 8


@pytest.mark.parametrize(
    "params, key",
    [
        ({"fit": "crop"}, "folder.fit"),
        ({"size": 4}, "folder.size"),
        ({"captions": "/etc/captions.csv"}, "folder.captions"),
        ({"captions": "../captions.csv"}, "folder.captions"),
        ({"captions": "captions.txt"}, "folder.captions"),
        ({"on_bad_image": "ignore"}, "folder.on_bad_image"),
        ({"mode": "rgba"}, "folder.mode"),
        ({"on_channels": "drop"}, "folder.on_channels"),
        ({"alpha_background": "grey"}, "folder.alpha_background"),
    ],
)
def test_folder_config_errors_name_the_key(params, key):
    with pytest.raises(ConfigError) as err:
        build(FolderImagesConfig, params, "folder")
    assert err.value.key == key


def test_captions_may_sit_in_a_subfolder():
    assert build(FolderImagesConfig, {"captions": "meta/captions.jsonl"}).captions
