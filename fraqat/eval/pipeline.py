"""Evaluating a real pipeline: images from its own ``__call__``, scored like the default's.

Every model is run through the *same* pipeline object (text encoders, VAE, scheduler) with
only its transformer swapped, from the same prompts and the same seeded starting latents
(one generator per image), so per-image differences to the FP images are the quantization
error alone. Images are (N, 3, H, W) in [-1, 1].

FID features: clean-fid's Inception from ``eval.inception_path`` (``feature_space:
inception``), or, offline without it, the project's fallback: the digits classifier's
features of the images turned grey and area-resized to 8x8 (labelled
``classifier-8x8-grey`` in the results: it ranks models by coarse structure only). The
reference is a folder of real images (``eval.reference_path``) or the FP pipeline's own
images from the same prompts and seeds.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from fraqat.checked import from_pretrained, open_image
from fraqat.errors import FraqatError
from fraqat.eval.fid import FeatureFn, classifier_features, extract_clean, load_inception
from fraqat.models.families import Family
from fraqat.models.folder import reference_images
from fraqat.models.trajectory import call_options, initial_latents


@torch.no_grad()
def generate(pipe, family: Family, transformer: nn.Module, prompts: Sequence[str],
             seeds: Sequence[int], resolution: int, steps: int, guidance: float | None,
             batch_size: int, desc: str = "generate") -> torch.Tensor:
    """Images of ``prompts`` by the pipeline with ``transformer`` swapped in, in [-1, 1]."""
    from fraqat.models.families import latent_shape

    original = pipe.transformer
    pipe.transformer = transformer
    try:
        shape = latent_shape(pipe, family, resolution)
        opts = call_options(family, resolution, steps, guidance)
        out = []
        for i in tqdm(range(0, len(prompts), batch_size), desc=desc, unit="batch"):
            latents = initial_latents(pipe, family, shape, seeds[i : i + batch_size])
            images = pipe(list(prompts[i : i + batch_size]), latents=latents, output_type="pt",
                          **opts).images
            out.append(images.float().cpu() * 2.0 - 1.0)
        return torch.cat(out)
    finally:
        pipe.transformer = original


def grey_8x8(images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) -> (N, 1, 8, 8): channel mean, then area resize (the classifier's input)."""
    grey = images.float().mean(dim=1, keepdim=True)
    return torch.nn.functional.adaptive_avg_pool2d(grey, 8)


def image_features(space: str, classifier_dir: str | Path,
                   inception_path: str | None) -> tuple[FeatureFn, str]:
    """The FID feature function for RGB images and its label."""
    if space == "inception":
        model = load_inception(inception_path)
        return (lambda images: extract_clean(model, images)), "inception"
    from fraqat.eval.classifier import load_classifier

    features = classifier_features(load_classifier(classifier_dir))
    return (lambda images: features(grey_8x8(images))), "classifier-8x8-grey"


def load_reference_images(folder: str | Path, resolution: int) -> torch.Tensor:
    """The image files of ``folder`` as (N, 3, R, R) in [-1, 1] (bicubic resize to R)."""
    from PIL import Image

    out = []
    for f in reference_images(folder):
        img = open_image(f).resize((resolution, resolution), Image.Resampling.BICUBIC)
        out.append(torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1))
    return torch.stack(out).float() / 127.5 - 1.0


def clip_scorer(path: str | Path):
    """Per-image CLIP score, 100 * max(cos(image, prompt), 0) (Hessel et al. 2021, the
    definition torchmetrics' ``CLIPScore`` uses), from a local ``transformers`` CLIP folder.

    Computed with ``CLIPModel`` directly: torchmetrics 1.9.0's ``CLIPScore`` fails on
    transformers 5 (``get_image_features`` now returns an output object, not a tensor).
    """
    from transformers import CLIPModel, CLIPProcessor

    if not Path(path).is_dir():
        raise FraqatError(f"eval.clip_path={str(path)!r} is not a folder (allowed: a local "
                          "transformers CLIP model + processor folder, or null)")
    todo = "point eval.clip_path at a transformers CLIP model + processor folder, or null"
    model = from_pretrained(CLIPModel, path, todo, local_files_only=True).eval()
    processor = from_pretrained(CLIPProcessor, path, todo, local_files_only=True)

    @torch.no_grad()
    def score(images: torch.Tensor, prompts: Sequence[str], batch_size: int = 32
              ) -> torch.Tensor:
        out = []
        for i in range(0, len(prompts), batch_size):
            pixels = ((images[i : i + batch_size].clamp(-1, 1) + 1) * 127.5).round()
            inputs = processor(text=list(prompts[i : i + batch_size]),
                               images=list(pixels.to(torch.uint8)), return_tensors="pt",
                               padding=True, truncation=True)
            res = model(**inputs)
            img = torch.nn.functional.normalize(res.image_embeds, dim=-1)
            txt = torch.nn.functional.normalize(res.text_embeds, dim=-1)
            out.append(100.0 * (img * txt).sum(-1).clamp(min=0))
        return torch.cat(out)

    return score
