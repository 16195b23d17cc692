"""The trained latent diffusion model as one object: denoiser, tokenizer, autoencoder, schedule.

    model = DiffusionModel.load("data/diffusion/shapes")
    images = model.generate(["a red circle"], per_prompt=8, guidance=3.0)   # uint8 [8, C, H, W]
    model.save(out)

Like a diffusers pipeline directory, a saved model is self-contained, so `loom generate` and
the MLflow model need nothing else:

    <dir>/config.json           format "loom-diffusion" v1: condition, schedule, prediction,
                                unet, text, latent_shape, classes, held_out (the
                                caption phrases its training data was kept free of)
    <dir>/model.safetensors     the denoiser (UNet + text encoder; EMA weights when trained
                                with EMA)
    <dir>/tokenizer/            the BPE tokenizer it was trained with (condition text)
    <dir>/autoencoder/          the autoencoder whose latents it denoises (decodes samples)

The training stage reads the tokenizer and autoencoder as DVC dependencies; saving copies them
here, so a registered model still generates after those stages' outputs have moved on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor

from components import artifact
from components.config import build, identity
from components.stage import StageInputError
from components.text.bpe.tokenizer import BpeTokenizer
from components.vision.autoencoder.saved import Autoencoder
from components.vision.autoencoder.task import to_uint8
from components.vision.diffusion.config import Condition as ConditionKind
from components.vision.diffusion.guidance import guided_denoiser
from components.vision.diffusion.prediction import PredictionType
from components.vision.diffusion.samplers import SamplerConfig, build_sampler, sample
from components.vision.diffusion.schedule import NoiseSchedule, ScheduleConfig
from components.vision.diffusion.task import Condition, Denoiser
from components.vision.diffusion.text_encoder import TextEncoderConfig, tokenize_prompts
from components.vision.diffusion.unet import UNetConfig

KIND, VERSION = "diffusion", 1
TOKENIZER_DIR, AUTOENCODER_DIR = "tokenizer", "autoencoder"


class DiffusionModel:
    def __init__(
        self,
        denoiser: Denoiser,
        schedule: ScheduleConfig,
        prediction: PredictionType,
        latent_shape: tuple[int, int, int],
        autoencoder: Autoencoder,
        tokenizer: BpeTokenizer | None,
        classes: Sequence[str] = (),
        held_out: Sequence[str] = (),
    ):
        self.denoiser = denoiser.eval()
        self.schedule_config = schedule
        self.schedule = NoiseSchedule(schedule)
        self.prediction = prediction
        self.latent_shape = tuple(latent_shape)
        self.autoencoder = autoencoder
        self.tokenizer = tokenizer
        self.classes = list(classes)
        self.held_out = list(held_out)  # caption phrases its training data had none of

    @property
    def condition(self) -> ConditionKind:
        return "text" if self.denoiser.text_encoder is not None else "label"

    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    def to(self, device: str | torch.device) -> DiffusionModel:
        self.denoiser.to(device)
        self.autoencoder.to(device)
        return self

    @torch.no_grad()
    def conditions(self, prompts: Sequence[str | int]) -> tuple[Condition, Condition]:
        """The conditions of `prompts` (strings for text, class indices for labels) and the
        null condition, each [len(prompts), ...], encoded once for every sampling step."""
        device = self.device
        if self.denoiser.text_encoder is not None:
            if self.tokenizer is None:
                raise ValueError("a text-conditioned model saved without its tokenizer")
            texts = [str(p) for p in prompts]
            for text in texts:
                if not text.strip():
                    raise ValueError(
                        "an empty prompt: give the text to draw (the empty prompt is the "
                        "model's unconditional input, not a request)"
                    )
            config = self.denoiser.text_encoder.config
            batch = tokenize_prompts(self.tokenizer, texts, config.max_tokens, config.truncate).to(
                device
            )
            null = tokenize_prompts(self.tokenizer, [""] * len(texts), config.max_tokens)
            null = null.to(device)
            return (
                self.denoiser.encode(batch.ids, batch.padding_mask),
                self.denoiser.encode(null.ids, null.padding_mask),
            )
        num_classes = self.denoiser.unet.config.num_classes
        assert num_classes is not None
        labels = []
        for p in prompts:
            if not isinstance(p, int) or not 0 <= p < num_classes:
                raise ValueError(f"label {p!r}: expected an int in [0, {num_classes})")
            labels.append(p)
        cond = torch.as_tensor(labels, dtype=torch.int64, device=device)
        return Condition(labels=cond), Condition(labels=torch.full_like(cond, num_classes))

    @torch.no_grad()
    def sample_latents(
        self,
        prompts: Sequence[str | int],
        per_prompt: int = 1,
        guidance: float = 3.0,
        sampler: SamplerConfig | None = None,
        seed: int = 0,
        on_step: Callable[[int], None] | None = None,
        noise: Tensor | None = None,
    ) -> Tensor:
        """Scaled latents [len(prompts) · per_prompt, c, h, w]: per_prompt samples of each
        prompt in turn, sample j of every prompt from the noise of seed (seed, j), so a grid's
        columns share their starting noise across prompts and guidance scales. `noise`
        [len(prompts) · per_prompt, c, h, w], when given, is the starting noise instead (an
        evaluation drawing every sample from its own); `seed` still seeds DDPM's steps."""
        if per_prompt < 1:
            raise ValueError(f"per_prompt = {per_prompt}: expected an int >= 1")
        sampler_config = sampler or SamplerConfig()
        cond, null = self.conditions(prompts)
        cond, null = cond.repeat(per_prompt), null.repeat(per_prompt)
        denoiser = self.denoiser

        def network(x: Tensor, t: Tensor, condition: Condition) -> Tensor:
            return denoiser.denoise(x, t, condition)

        denoise = guided_denoiser(network, cond, null, guidance)
        count = len(prompts) * per_prompt
        if noise is None:
            noise = self._noise(len(prompts), per_prompt, seed)
        elif tuple(noise.shape) != (count, *self.latent_shape):
            raise ValueError(
                f"noise {list(noise.shape)}: expected {[count, *self.latent_shape]} "
                f"({len(prompts)} prompts × {per_prompt})"
            )
        noise = noise.to(self.device)
        run = build_sampler(sampler_config, self.schedule, self.prediction)
        generator = torch.Generator(self.device).manual_seed(seed)
        return sample(run, denoise, noise, generator=generator, on_step=on_step)

    @torch.no_grad()
    def generate(self, prompts: Sequence[str | int], per_prompt: int = 1, **kwargs) -> Tensor:
        """uint8 images [len(prompts) · per_prompt, C, H, W] (see `sample_latents`)."""
        latents = self.sample_latents(prompts, per_prompt, **kwargs)
        return to_uint8(self.autoencoder.decode(latents)).cpu()

    def generate_batched(
        self,
        prompts: Sequence[str | int],
        per_prompt: int = 1,
        batch_size: int = 64,
        noise: Tensor | None = None,
        progress: str | None = None,
        **kwargs,
    ) -> Tensor:
        """`generate` in calls of at most `batch_size` images (at least one prompt each), the
        same images as one call (each prompt's noise does not depend on its batch); `noise`
        [len(prompts) · per_prompt, c, h, w] is cut alike. `progress`: a tqdm bar of that
        name over the calls."""
        from tqdm.auto import tqdm

        step = max(1, batch_size // per_prompt)
        starts = range(0, len(prompts), step)
        parts = []
        for i in tqdm(starts, desc=progress, disable=progress is None, leave=False):
            rows = slice(i * per_prompt, (i + step) * per_prompt)
            own = {} if noise is None else {"noise": noise[rows]}
            parts.append(self.generate(prompts[i : i + step], per_prompt, **kwargs, **own))
        return torch.cat(parts)

    def _noise(self, prompts: int, per_prompt: int, seed: int) -> Tensor:
        """[prompts · per_prompt, c, h, w]: column j from a CPU generator seeded (seed, j), so
        the same seed gives the same images on every device and batch size."""
        columns = []
        for j in range(per_prompt):
            generator = torch.Generator().manual_seed(seed * 100_003 + j)
            columns.append(torch.randn(self.latent_shape, generator=generator))
        noise = torch.stack(columns).repeat(prompts, 1, 1, 1)  # prompt-major, as conditions
        return noise.to(self.device)

    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        denoiser = self.denoiser
        text = denoiser.text_encoder
        fields = {
            "condition": self.condition,
            "schedule": identity(self.schedule_config),
            "prediction": self.prediction,
            "unet": identity(denoiser.unet.config),
            "text": None if text is None else identity(text.config),
            "latent_shape": list(self.latent_shape),
            "classes": self.classes,
            "held_out": self.held_out,
        }
        artifact.save(directory, KIND, VERSION, fields, artifact.module_state(denoiser))
        if self.tokenizer is not None:
            self.tokenizer.save(directory / TOKENIZER_DIR)
        self.autoencoder.save(directory / AUTOENCODER_DIR)
        return directory

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu") -> DiffusionModel:
        directory = Path(directory)
        fields = artifact.read_config(directory, KIND, VERSION)
        where = str(directory / artifact.CONFIG_FILE)
        try:
            unet = build(UNetConfig, fields["unet"], f"{where}: unet")
            text = (
                None
                if fields["text"] is None
                else build(TextEncoderConfig, fields["text"], f"{where}: text")
            )
            schedule = build(ScheduleConfig, fields["schedule"], f"{where}: schedule")
            prediction = fields["prediction"]
            c, h, w = (int(v) for v in fields["latent_shape"])
            classes = [str(name) for name in fields["classes"]]
            held_out = [str(phrase) for phrase in fields.get("held_out", [])]
        except (KeyError, TypeError, ValueError) as err:
            raise StageInputError(f"{where}: not a valid diffusion model config: {err}") from None
        denoiser = Denoiser(unet, text)
        artifact.load_module(directory, denoiser)
        tokenizer = None if text is None else BpeTokenizer.load(directory / TOKENIZER_DIR)
        autoencoder = Autoencoder.load(directory / AUTOENCODER_DIR)
        model = cls(
            denoiser, schedule, prediction, (c, h, w), autoencoder, tokenizer, classes, held_out
        )
        return model.to(device)
