"""The family calls equal what each diffusers pipeline does inside its own ``__call__``."""

from __future__ import annotations

import pytest
import torch

from fraqat.models import families
from fraqat.models.families import FAMILIES, encode_prompts, latent_shape, predict, t_of_timestep
from fraqat.models.folder import load_pipeline
from fraqat.models.registry import TextToImage
from fraqat.models.trajectory import call_options, recorded_calls
from tests.tiny_pipelines import FAMILY_NAMES, MODEL_OF

PROMPTS = ["a red cat on a house", "a blue car in the city at night"]


def test_pack_unpack_match_flux_pipeline():
    from diffusers import FluxPipeline

    x = torch.randn(2, 4, 6, 8)
    packed = families.pack(x)
    assert torch.equal(packed, FluxPipeline._pack_latents(x, 2, 4, 6, 8))
    assert torch.equal(families.unpack(packed, 6, 8), x)
    ids = FluxPipeline._prepare_latent_image_ids(2, 3, 4, "cpu", torch.float32)
    assert torch.equal(families.image_ids(6, 8), ids)


def test_unknown_class_is_one_line():
    with pytest.raises(Exception, match="not a known family"):
        families.family_of_class("UNet2DConditionModel")


def _record_call(pipe, family):
    """Run the pipeline (no CFG) and keep the transformer's first call and its output."""
    opts = call_options(family, 32, 2, guidance=1.0)
    with recorded_calls(pipe.transformer) as calls:
        pipe(PROMPTS, generator=torch.Generator().manual_seed(0), output_type="latent", **opts)
    return calls[0], calls[0]["output"]


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_predict_equals_the_pipelines_own_call(name, tiny_pipeline_dir):
    pipe = load_pipeline(MODEL_OF[name], str(tiny_pipeline_dir(name)))
    family = FAMILIES[name]
    kw, out = _record_call(pipe, family)
    shape = latent_shape(pipe, family, 32)
    x = families.to_unpacked(family, kw["hidden_states"], shape)
    assert tuple(x.shape[1:]) == shape
    t = t_of_timestep(family, pipe.transformer, kw["timestep"])
    assert 0 < float(t[0]) <= 1
    cond = encode_prompts(pipe, family, PROMPTS, guidance=1.0)
    assert len(cond) == len(family.cond_keys)
    with torch.no_grad():
        ours = predict(family, pipe.transformer, x, t, cond)
        model = TextToImage(pipe.transformer, None, shape, prompt_table=cond)
        via_model = model.predict(x, t, *model.prompt_conditioning([]))
    want = families.unpack(out, *shape[1:]) if name == "flux" else out[:, : shape[0]]
    # same inputs, same call: equal up to float reassociation of the re-encoded prompts
    torch.testing.assert_close(ours, want, rtol=1e-5, atol=1e-5)
    assert torch.equal(ours, via_model)
