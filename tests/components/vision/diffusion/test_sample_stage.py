import json

import pytest
import torch

from components.config import build
from components.stage import StageInputError, StageIO
from components.vision.diffusion.sample_stage import STAGE as SAMPLE
from components.vision.diffusion.sample_stage import slug
from components.vision.diffusion.samplers import SamplerConfig
from components.vision.grid import decode_png
from tests.components.vision.diffusion.tiny import tiny_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_model().save(tmp_path_factory.mktemp("diffusion") / "model")


def _config(**changes):
    data = {"prompts": ["a red circle", "a blue square"], "per_prompt": 3,
            "guidance": [1.0, 4.0], "sampler": {"kind": "ddim", "steps": 3},
            "batch_size": 4} | changes  # fmt: skip
    return build(SAMPLE.config, data)


def test_a_grid_per_guidance_and_per_prompt_with_an_index(model, tmp_path):
    out = tmp_path / "samples"
    result = SAMPLE.run(_config(), StageIO({"model": model}, {"samples": out}))
    index = json.loads((out / "index.json").read_text())
    assert index["prompts"] == ["a red circle", "a blue square"]
    assert index["files"]["a blue square"] == {
        "1": "01_a-blue-square/guidance_1.png", "4": "01_a-blue-square/guidance_4.png",
    }  # fmt: skip
    overview = decode_png((out / "guidance_4.png").read_bytes())
    assert overview.shape == (2 * 34 + 2, 3 * 34 + 2, 3)  # 2 prompts x 3 samples, 32 px
    own = decode_png((out / "01_a-blue-square/guidance_4.png").read_bytes())
    assert (own[2:34] == overview[36:68]).all()  # the prompt's row of the overview
    assert (overview != decode_png((out / "guidance_1.png").read_bytes())).any()
    assert result.metrics["images"] == 2 * 3 * 2
    # chunked sampling (batch_size 4: one prompt per loop) draws what one loop would
    again = tmp_path / "again"
    SAMPLE.run(_config(batch_size=64), StageIO({"model": model}, {"samples": again}))
    assert (again / "guidance_4.png").read_bytes() == (out / "guidance_4.png").read_bytes()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"prompts": []}, r"sample\.prompts: empty, but .* is a text-conditioned model"),
        ({"prompts": ["a circle", " "]}, r"sample\.prompts: an empty prompt"),
    ],
)
def test_prompts_that_cannot_be_drawn_fail_before_sampling(model, tmp_path, changes, message):
    with pytest.raises(StageInputError, match=message):
        SAMPLE.run(_config(**changes), StageIO({"model": model}, {"samples": tmp_path / "s"}))
    assert not (tmp_path / "s").exists()


def test_label_models_take_labels(tmp_path):
    model = tiny_model("label").save(tmp_path / "labels")
    with pytest.raises(StageInputError, match=r"sample\.labels: label 3: expected an int in"):
        SAMPLE.run(_config(labels=[0, 3]), StageIO({"model": model}, {"samples": tmp_path / "s"}))
    SAMPLE.run(_config(labels=[0, 2]), StageIO({"model": model}, {"samples": tmp_path / "ok"}))
    assert (tmp_path / "ok" / "01_2" / "guidance_4.png").is_file()


def test_slug():
    assert slug("A large RED circle, left of...") == "a-large-red-circle-left-of"
    assert slug("!!!") == "prompt" and slug(7) == "7"


def test_batched_generation_equals_one_call_and_cuts_the_noise_alike():
    model = tiny_model()
    sampler = SamplerConfig(kind="ddim", steps=2)
    prompts = ["a red circle", "a blue square", "a green triangle"]
    whole = model.generate(prompts, 2, guidance=2.0, sampler=sampler, seed=3)
    batched = model.generate_batched(prompts, 2, batch_size=2, guidance=2.0, sampler=sampler,
                                     seed=3)  # fmt: skip
    assert torch.equal(batched, whole)
    noise = torch.randn(3, *model.latent_shape, generator=torch.Generator().manual_seed(0))
    own = model.generate(prompts, 1, guidance=2.0, sampler=sampler, seed=3, noise=noise)
    cut = model.generate_batched(prompts, 1, batch_size=2, noise=noise, guidance=2.0,
                                 sampler=sampler, seed=3)  # fmt: skip
    assert torch.equal(cut, own)
