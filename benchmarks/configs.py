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
