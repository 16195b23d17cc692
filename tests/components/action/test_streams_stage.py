import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from components.action.store import read_meta, read_stream, write_stream
from components.action.streams import ACTIONS, render_stream
from components.action.streams_stage import STAGE as STREAMS
from components.config import build
from components.stage import StageInputError, StageIO
from components.vision.grid import decode_png

SMALL = {"frames": 400, "train_streams": 2, "val_streams": 1, "test_streams": 1}


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    out = tmp_path_factory.mktemp("streams") / "streams"
    result = STREAMS.run(build(STREAMS.config, SMALL), StageIO({}, {"streams": out}))
    return out, result


def test_every_split_is_stored_and_reads_back_as_rendered(stored):
    out, result = stored
    meta = read_meta(out)
    assert meta["classes"] == list(ACTIONS) and meta["size"] == 32
    assert [len(meta["streams"][s]) for s in ("train", "val", "test")] == [2, 1, 1]
    entry = meta["streams"]["val"][0]
    back = read_stream(out, meta, entry)
    drawn = render_stream(build(STREAMS.config, SMALL), "val", 0)
    assert np.array_equal(back.frames.numpy(), drawn.frames)
    assert np.array_equal(back.labels.numpy(), drawn.labels)
    assert back.instances == [i.to_json() for i in drawn.instances]
    assert result.metrics["train_frames"] == 800 and 0 < result.metrics["background_share"] < 1
    grid = decode_png((out / "preview.png").read_bytes())
    assert grid.shape[1] == 12 * 34 + 2  # twelve 32-px frames per row


def _broken(tmp_path, frames, labels):
    meta = {"classes": list(ACTIONS), "size": 32}
    file = write_stream(tmp_path, "train", 0, frames, labels)
    return meta, {"file": file}


def test_bad_stream_files_are_refused_naming_them(tmp_path):
    meta, entry = _broken(tmp_path, np.zeros((5, 32, 32, 3)), np.array([0, 1, 2, 3, 11]))
    with pytest.raises(StageInputError, match=r"000\.safetensors: label 11 is outside the 11"):
        read_stream(tmp_path, meta, entry)
    meta, entry = _broken(tmp_path, np.zeros((5, 32, 32, 3)), np.zeros(4))
    with pytest.raises(StageInputError, match="4 labels for 5 frames"):
        read_stream(tmp_path, meta, entry)
    meta, entry = _broken(tmp_path, np.zeros((5, 16, 16, 3)), np.zeros(5))
    with pytest.raises(StageInputError, match=r"expected uint8 \[T, 32, 32, 3\]"):
        read_stream(tmp_path, meta, entry)
    save_file({"x": torch.zeros(1)}, tmp_path / "train" / "000.safetensors")
    with pytest.raises(StageInputError, match="needs tensors 'frames' and 'labels'"):
        read_stream(tmp_path, meta, entry)
    (tmp_path / "meta.json").write_text(json.dumps({"format": "loom-latents"}))
    wanted = "format 'loom-latents' version None, expected format 'loom-streams' version 1"
    with pytest.raises(StageInputError, match=wanted):
        read_meta(tmp_path)
