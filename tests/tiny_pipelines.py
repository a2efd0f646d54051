"""Tiny random-weight diffusers pipelines of the four families, built offline from configs.

Each is a real pipeline class (``SanaPipeline``, ``PixArtSigmaPipeline``,
``StableDiffusion3Pipeline``, ``FluxPipeline``) with a few-channel transformer, VAE and text
encoder(s) from ``transformers`` configs, and a word-level tokenizer built with the
``tokenizers`` library; ``save_pretrained`` writes the folder layout the hub holds.
"""

from __future__ import annotations

from pathlib import Path

import torch

FAMILY_NAMES = ("sana", "pixart", "sd3", "flux")
MODEL_OF = {"sana": "sana-600m", "pixart": "pixart-sigma", "sd3": "sd3.5-medium",
            "flux": "flux-schnell"}
WORDS = ("a photo of an the cat dog red blue car house tree on in with at night small big "
         "green painting mountain lake sunset city street bird flower").split()
VOCAB = 64


def tokenizer(max_length: int, bos_eos: bool = False):
    """A word-level fast tokenizer: <pad>=0, <unk>=1, <s>=2, </s>=3, then ``WORDS``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<pad>", "<unk>", "<s>", "</s>", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if bos_eos:  # CLIP-style: pooled output is read at the end-of-text token
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A </s>", special_tokens=[("<s>", 2), ("</s>", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
                                   bos_token="<s>", eos_token="</s>", model_max_length=max_length)


def _clip(seed: int):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    return CLIPTextModelWithProjection(CLIPTextConfig(
        vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, projection_dim=16, max_position_embeddings=16, pad_token_id=0,
        bos_token_id=2, eos_token_id=3))


def _t5(d_model: int = 16):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(vocab_size=VOCAB, d_model=d_model, d_ff=32, d_kv=8,
                                   num_heads=2, num_layers=1, pad_token_id=0,
                                   decoder_start_token_id=0))


def _kl_vae(latent_channels: int, levels: int = 2, shift_factor: float | None = None):
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=latent_channels,
                         block_out_channels=(8,) * levels, layers_per_block=1,
                         down_block_types=("DownEncoderBlock2D",) * levels,
                         up_block_types=("UpDecoderBlock2D",) * levels, norm_num_groups=4,
                         sample_size=32, shift_factor=shift_factor)


def build_sana():
    from diffusers import (
        AutoencoderDC,
        FlowMatchEulerDiscreteScheduler,
        SanaPipeline,
        SanaTransformer2DModel,
    )
    from transformers import Gemma2Config, Gemma2Model

    transformer = SanaTransformer2DModel(
        in_channels=4, out_channels=4, sample_size=16, patch_size=1, num_layers=1,
        num_attention_heads=2, attention_head_dim=8, cross_attention_dim=16,
        num_cross_attention_heads=2, cross_attention_head_dim=8, caption_channels=16)
    vae = AutoencoderDC(in_channels=3, latent_channels=4, attention_head_dim=2,
                        encoder_block_types=("ResBlock", "EfficientViTBlock"),
                        decoder_block_types=("ResBlock", "EfficientViTBlock"),
                        encoder_block_out_channels=(8, 8), decoder_block_out_channels=(8, 8),
                        encoder_qkv_multiscales=((), (5,)), decoder_qkv_multiscales=((), (5,)),
                        encoder_layers_per_block=(1, 1), decoder_layers_per_block=(1, 1),
                        downsample_block_type="conv", upsample_block_type="interpolate",
                        decoder_norm_types="rms_norm", decoder_act_fns="silu",
                        scaling_factor=0.41407)
    text_encoder = Gemma2Model(Gemma2Config(
        vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, head_dim=8, max_position_embeddings=512,
        pad_token_id=0, bos_token_id=2, eos_token_id=3))
    return SanaPipeline(tokenizer=tokenizer(300), text_encoder=text_encoder, vae=vae,
                        transformer=transformer,
                        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0))


def build_pixart():
    from diffusers import DPMSolverMultistepScheduler, PixArtSigmaPipeline, PixArtTransformer2DModel

    transformer = PixArtTransformer2DModel(
        sample_size=8, num_layers=1, patch_size=2, attention_head_dim=8, num_attention_heads=2,
        caption_channels=16, in_channels=4, cross_attention_dim=16, out_channels=8,
        attention_bias=True, activation_fn="gelu-approximate", num_embeds_ada_norm=1000,
        norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6)
    return PixArtSigmaPipeline(tokenizer=tokenizer(300), text_encoder=_t5(16), vae=_kl_vae(4),
                               transformer=transformer, scheduler=DPMSolverMultistepScheduler())


def build_sd3():
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )

    transformer = SD3Transformer2DModel(
        sample_size=16, patch_size=2, in_channels=4, out_channels=4, num_layers=1,
        attention_head_dim=8, num_attention_heads=2, joint_attention_dim=16,
        caption_projection_dim=16, pooled_projection_dim=32, pos_embed_max_size=32)
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_kl_vae(4, shift_factor=0.06), text_encoder=_clip(0),
        tokenizer=tokenizer(16, bos_eos=True),
        text_encoder_2=_clip(1), tokenizer_2=tokenizer(16, bos_eos=True),
        text_encoder_3=_t5(16), tokenizer_3=tokenizer(64))


def build_flux():
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel

    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, out_channels=None, num_layers=1, num_single_layers=1,
        attention_head_dim=8, num_attention_heads=2, joint_attention_dim=16,
        pooled_projection_dim=16, guidance_embeds=False, axes_dims_rope=(2, 2, 4))
    torch.manual_seed(0)
    clip = CLIPTextModel(CLIPTextConfig(
        vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=16, pad_token_id=0, bos_token_id=2,
        eos_token_id=3))
    return FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0),
                        vae=_kl_vae(4, shift_factor=0.06),
                        text_encoder=clip, tokenizer=tokenizer(16, bos_eos=True),
                        text_encoder_2=_t5(16), tokenizer_2=tokenizer(64),
                        transformer=transformer)


BUILDERS = {"sana": build_sana, "pixart": build_pixart, "sd3": build_sd3, "flux": build_flux}


def save_tiny_pipeline(family: str, folder: Path, seed: int = 0) -> Path:
    """Build the tiny ``family`` pipeline with seeded random weights and save it to ``folder``."""
    torch.manual_seed(seed)
    pipe = BUILDERS[family]()
    pipe.save_pretrained(folder)
    return folder


def save_tiny_clip(folder: Path, seed: int = 0) -> Path:
    """A random-weight ``CLIPModel`` + ``CLIPProcessor`` at 32 px (for the CLIP score)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    torch.manual_seed(seed)
    text = dict(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                num_attention_heads=2, max_position_embeddings=16, pad_token_id=0,
                bos_token_id=2, eos_token_id=3)
    vision = dict(image_size=32, patch_size=8, hidden_size=16, intermediate_size=32,
                  num_hidden_layers=1, num_attention_heads=2)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
              ).save_pretrained(folder)
    CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                     crop_size={"height": 32, "width": 32}),
                  tokenizer=tokenizer(16, bos_eos=True)).save_pretrained(folder)
    return folder
