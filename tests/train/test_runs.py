"""A saved run loads back in one call and swaps into its diffusers pipeline."""

from __future__ import annotations

import pytest
import torch

from fraqat.errors import FraqatError
from fraqat.models.folder import load_pipeline
from fraqat.models.registry import TextToImage
from fraqat.models.trajectory import call_options
from fraqat.quant.layers import QuantConfig, calibrate_activations
from fraqat.train.runs import load_quantized_transformer, quantized_copy, save_run

PROMPTS = ["a red cat on a house", "a blue car in the city"]


def _images(pipe) -> torch.Tensor:
    return pipe(PROMPTS, generator=torch.Generator().manual_seed(0), output_type="pt",
                **call_options(pipe_family(pipe), 32, 2, None)).images


def pipe_family(pipe):
    from fraqat.models.families import family_of_transformer

    return family_of_transformer(pipe.transformer)


def test_saved_run_swaps_into_the_pipeline(tiny_pipeline_dir, tmp_path):
    pipe = load_pipeline("sana-600m", str(tiny_pipeline_dir("sana")))
    config = QuantConfig(weight_bits=4, act_bits=8)
    student = quantized_copy(TextToImage(pipe.transformer, None, (4, 16, 16)), config).transformer
    fp = pipe.transformer
    pipe.transformer = student
    calibrate_activations(student, [0], lambda model, _: _images(pipe))  # one real call
    want = _images(pipe)

    save_run(tmp_path / "run", TextToImage(student, None, (4, 16, 16)), config, {"method": "x"})
    loaded = load_quantized_transformer(tmp_path / "run")  # as the README shows it
    from diffusers import SanaPipeline

    swapped = SanaPipeline.from_pretrained(tiny_pipeline_dir("sana"), transformer=loaded)
    torch.testing.assert_close(_images(swapped), want, rtol=0, atol=0)
    pipe.transformer = fp
    assert not torch.equal(_images(pipe), want)  # the quantized model is what generated


def test_missing_run_is_one_line(tmp_path):
    with pytest.raises(FraqatError, match="config.json: missing"):
        load_quantized_transformer(tmp_path)
