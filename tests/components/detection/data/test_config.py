import pytest

from components.config import ConfigError, build
from components.detection.data.config import DetectionDataConfig


@pytest.mark.parametrize(
    "params, key",
    [
        ({"source": "cifar"}, "data.source"),
        ({"size": 31}, "data.size"),
        ({"count": 0}, "data.count"),
        ({"min_objects": 0}, "data.min_objects"),
        ({"min_objects": 4, "max_objects": 3}, "data.max_objects"),
        ({"max_objects": 33}, "data.max_objects"),
        ({"seed": -1}, "data.seed"),
        ({"val_fraction": 1.0}, "data.val_fraction"),
        ({"split_seed": -1}, "data.split_seed"),
        ({"classes": "colour"}, "data.classes"),
        ({"max_overlap": 1.0}, "data.max_overlap"),
        ({"shape_scale": 0}, "data.shape_scale"),
        ({"background": "noisy"}, "data.background"),
        ({"source": "digits", "classes": "shape_colour"}, "data.classes"),
        ({"source": "digits", "digit_min_side": 5}, "data.digit_min_side"),
        ({"source": "digits", "digit_min_side": 20, "digit_max_side": 19}, "data.digit_max_side"),
        ({"source": "digits", "size": 32, "digit_max_side": 33}, "data.digit_max_side"),
    ],
)
def test_errors_name_the_key(params, key):
    with pytest.raises(ConfigError) as err:
        build(DetectionDataConfig, params, "data")
    assert err.value.key == key


def test_max_objects_defaults_by_source_and_explicit_values_stay():
    assert build(DetectionDataConfig, {}).max_objects == 8
    assert build(DetectionDataConfig, {"source": "digits"}).max_objects == 5
    assert build(DetectionDataConfig, {"source": "digits", "max_objects": 3}).max_objects == 3


def test_digit_sides_are_only_checked_for_digits():
    # A shapes config keeps the (unused) digit defaults even on a canvas smaller than them.
    config = build(DetectionDataConfig, {"size": 32})
    assert (config.size, config.digit_max_side) == (32, 40)
