"""The paper's model configs that the benchmarks build with random weights (no download).

Sana-600M: ``SanaTransformer2DModel``, 592 M parameters, 230 Linear + 85 Conv2d, as in the
hub's ``Efficient-Large-Model/Sana_600M_1024px_diffusers`` transformer config.
"""

from __future__ import annotations

SANA_600M = dict(attention_head_dim=32, num_attention_heads=36, num_layers=28,
                 cross_attention_dim=1152, cross_attention_head_dim=72,
                 num_cross_attention_heads=16, caption_channels=2304, in_channels=32,
                 out_channels=32, patch_size=1, sample_size=32, mlp_ratio=2.5,
                 norm_elementwise_affine=False, norm_eps=1e-6, attention_bias=False)

# PixArt-Σ XL-2 1024-MS (``PixArt-alpha/PixArt-Sigma-XL-2-1024-MS``): 28 blocks of width 1152
PIXART_SIGMA = dict(sample_size=128, num_layers=28, attention_head_dim=72,
                    num_attention_heads=16, patch_size=2, in_channels=4, out_channels=8,
                    caption_channels=4096, cross_attention_dim=1152, attention_bias=True,
                    activation_fn="gelu-approximate", num_embeds_ada_norm=1000,
                    norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6,
                    use_additional_conditions=False, interpolation_scale=2)

# the hub's dc-ae-f32c32-sana-1.0 (diffusers' scripts/convert_dcae_to_diffusers.py)
DC_AE_SANA = dict(in_channels=3, latent_channels=32,
                  encoder_block_types=("ResBlock",) * 3 + ("EfficientViTBlock",) * 3,
                  decoder_block_types=("ResBlock",) * 3 + ("EfficientViTBlock",) * 3,
                  encoder_block_out_channels=(128, 256, 512, 512, 1024, 1024),
                  decoder_block_out_channels=(128, 256, 512, 512, 1024, 1024),
                  encoder_layers_per_block=(2, 2, 2, 3, 3, 3),
                  decoder_layers_per_block=(3, 3, 3, 3, 3, 3),
                  encoder_qkv_multiscales=((), (), (), (5,), (5,), (5,)),
                  decoder_qkv_multiscales=((), (), (), (5,), (5,), (5,)),
                  downsample_block_type="conv", upsample_block_type="interpolate",
                  decoder_norm_types="rms_norm", decoder_act_fns="silu", scaling_factor=0.41407)

# One transformer call of the Sana-600M pipeline at 1024 px with classifier-free guidance:
# batch 2 (conditional + unconditional) of 32x32x32 DC-AE latents, 300 Gemma-2 caption tokens
SANA_600M_CALL = dict(batch=2, latent=(32, 32, 32), tokens=300, timestep=500.0)
