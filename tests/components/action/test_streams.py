import numpy as np
import pytest

from components.action.config import StreamsConfig
from components.action.streams import ACTIONS, BACKGROUND, progress, render_stream
from components.config import ConfigError, build

CONFIG = StreamsConfig(frames=1500)


@pytest.fixture(scope="module")
def streams():
    return [render_stream(CONFIG, "train", i) for i in range(3)]


def test_deterministic_by_seed_and_the_splits_share_no_stream(streams):
    again = render_stream(CONFIG, "train", 0)
    assert np.array_equal(again.frames, streams[0].frames)
    assert np.array_equal(again.labels, streams[0].labels)
    val = render_stream(CONFIG, "val", 0)
    test = render_stream(CONFIG, "test", 0)
    assert not np.array_equal(val.labels, streams[0].labels)
    assert not np.array_equal(val.frames[:50], test.frames[:50])
    other = render_stream(StreamsConfig(frames=1500, seed=1), "train", 0)
    assert not np.array_equal(other.labels, streams[0].labels)
    assert streams[0].frames.shape == (1500, 32, 32, 3) and streams[0].frames.dtype == np.uint8


def test_every_class_occurs_and_labels_agree_with_the_instances(streams):
    labels = np.concatenate([s.labels for s in streams])
    assert set(np.unique(labels)) == set(range(len(ACTIONS)))
    for s in streams:
        rebuilt = np.full(len(s.labels), BACKGROUND)
        for i in s.instances:
            assert CONFIG.min_length <= i.end - i.start <= CONFIG.max_length
            rebuilt[i.start : i.end] = i.label
        assert np.array_equal(rebuilt, s.labels)
        starts = [i.start for i in s.instances]
        ends = [i.end for i in s.instances]
        assert all(e <= b for e, b in zip(ends, starts[1:], strict=False))  # no overlap


def _inside(s, t):
    return s.shown[t] and all(0 <= v < 32 for v in s.centres[t])


def _centroid_x(frame, colour):
    """Mean column of the pixels near `colour` (camera noise aside)."""
    near = (np.abs(frame.astype(float) - colour) < 40).all(axis=-1)
    return np.argwhere(near)[:, 1].mean()


def test_labels_agree_with_the_rendered_motion(streams):
    for s in streams:
        for i in s.instances:
            a, b = i.start, i.end - 1
            dx, dy = s.centres[b] - s.centres[a]
            growth = s.extents[b] - s.extents[a]
            if i.name == "move_left":
                assert dx < -4 and dy == 0
                # in the pixels too: the actor's colour's centroid moves left
                colour = s.colours[a]
                xs = [_centroid_x(s.frames[t], colour) for t in (a, b) if _inside(s, t)]
                if len(xs) == 2:
                    assert xs[1] < xs[0]
            elif i.name == "move_right":
                assert dx > 4 and dy == 0
            elif i.name == "move_up":
                assert dy < -4 and dx == 0
            elif i.name == "move_down":
                assert dy > 4 and dx == 0
            elif i.name == "grow":
                assert growth > 0
            elif i.name == "shrink":
                assert growth < 0
            elif i.name == "change_colour":
                assert not np.allclose(s.colours[b], s.colours[a])
            elif i.name == "blink":
                assert not s.shown[a : b + 1].all() and s.shown[b]
            elif i.name == "enter":
                assert not 0 <= s.centres[a][0] < 32 or not 0 <= s.centres[a][1] < 32
                assert _inside(s, b)
            elif i.name == "leave":
                assert not s.shown[b]
            else:
                pytest.fail(f"background instance {i}")


def test_an_action_starts_looking_like_background():
    length, onset = 20, 4
    done = [progress(k, length, onset) for k in range(length)]
    assert done[onset - 1] == pytest.approx(0.02) and done[-1] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(done, done[1:], strict=False))
    assert progress(0, 10, 0) == pytest.approx(0.1)  # no onset: even steps


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [("frames", 50, "an int >= 4 × max_length = 160"), ("onset", 12, r"an int in \[0, min_length"),
     ("max_length", 5, "an int >= min_length = 12"), ("val_streams", 0, "an int >= 1")],
)  # fmt: skip
def test_bad_config_names_the_key(key, value, message):
    with pytest.raises(ConfigError, match=message):
        build(StreamsConfig, {key: value})
