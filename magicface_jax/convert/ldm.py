"""Original Stable Diffusion single-file layout (`model.diffusion_model.*`, `first_stage_model.*`,
`cond_stage_model.transformer.*`) <-> diffusers keys, declared per diffusers key.

`ldm_key(component, diffusers_key, ...)` gives the original key of a diffusers key; views built on it
(`ldm_view`) present a single-file checkpoint under diffusers names, so the one Flax table serves it too.
The VAE's attention projections are 1x1 convolutions in the original layout and linears in diffusers'.
"""

from __future__ import annotations

import re

import numpy as np

from magicface_jax.config import UNetConfig, VAEConfig
from magicface_jax.convert.sources import MappedSource, TensorSource
from magicface_jax.errors import MagicFaceError

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."

_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_UNET_TOP = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}


def _resnet(rest: str) -> str:
    layer, _, leaf = rest.partition(".")
    return f"{_RESNET[layer]}.{leaf}"


def unet_ldm_key(key: str, config: UNetConfig) -> str:
    """`down_blocks.1.attentions.0.proj_in.weight` -> `model.diffusion_model.input_blocks.4.1.proj_in.weight`
    (for SD1.x's two layers per block)."""
    per_block = config.layers_per_block + 1
    for name, old in _UNET_TOP.items():
        if key.startswith(name + "."):
            return UNET_PREFIX + old + key[len(name) :]
    if match := re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
        block, kind, layer, rest = int(match[1]), match[2], int(match[3]), match[4]
        index = 1 + block * per_block + layer
        return UNET_PREFIX + (
            f"input_blocks.{index}.0.{_resnet(rest)}"
            if kind == "resnets"
            else f"input_blocks.{index}.1.{rest}"
        )
    if match := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key):
        return (
            UNET_PREFIX
            + f"input_blocks.{1 + int(match[1]) * per_block + config.layers_per_block}.0.op.{match[2]}"
        )
    if match := re.match(r"mid_block\.resnets\.(\d+)\.(.*)", key):
        return UNET_PREFIX + f"middle_block.{2 * int(match[1])}.{_resnet(match[2])}"
    if match := re.match(r"mid_block\.attentions\.0\.(.*)", key):
        return UNET_PREFIX + f"middle_block.1.{match[1]}"
    if match := re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
        block, kind, layer, rest = int(match[1]), match[2], int(match[3]), match[4]
        index = block * per_block + layer
        return UNET_PREFIX + (
            f"output_blocks.{index}.0.{_resnet(rest)}"
            if kind == "resnets"
            else f"output_blocks.{index}.1.{rest}"
        )
    if match := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", key):
        block = int(match[1])
        position = 2 if config.up_block_types[block] == "CrossAttnUpBlock2D" else 1
        return (
            UNET_PREFIX
            + f"output_blocks.{block * per_block + config.layers_per_block}.{position}.conv.{match[2]}"
        )
    raise KeyError(key)


def vae_ldm_key(key: str, config: VAEConfig) -> str:
    """`decoder.up_blocks.0.resnets.2.conv1.weight` -> `first_stage_model.decoder.up.3.block.2.conv1.weight`:
    the original decoder numbers its levels from the bottom."""
    last = len(config.block_out_channels) - 1
    replacements = [
        (r"^(encoder|decoder)\.conv_norm_out\.", r"\1.norm_out."),
        (r"^encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block."),
        (r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample."),
        (r"^(encoder|decoder)\.mid_block\.resnets\.0\.", r"\1.mid.block_1."),
        (r"^(encoder|decoder)\.mid_block\.resnets\.1\.", r"\1.mid.block_2."),
    ]
    for pattern, new in replacements:
        key = re.sub(pattern, new, key)
    key = re.sub(
        r"^decoder\.up_blocks\.(\d+)\.(resnets|upsamplers\.0)\.",
        lambda m: f"decoder.up.{last - int(m[1])}.{'block' if m[2] == 'resnets' else 'upsample'}.",
        key,
    )
    key = key.replace(".conv_shortcut.", ".nin_shortcut.")
    if match := re.match(r"^(encoder|decoder)\.mid_block\.attentions\.0\.(.*)\.(weight|bias)$", key):
        key = f"{match[1]}.mid.attn_1.{_VAE_ATTENTION[match[2]]}.{match[3]}"
    return VAE_PREFIX + key


def is_vae_attention_projection(key: str) -> bool:
    return bool(re.search(r"mid_block\.attentions\.0\.to_(q|k|v|out\.0)\.weight$", key))


def clip_ldm_key(key: str) -> str:
    return CLIP_PREFIX + key


def _squeeze_1x1(array: np.ndarray) -> np.ndarray:
    return array.reshape(array.shape[:2]) if array.ndim == 4 else array


def ldm_view(
    source: TensorSource, diffusers_keys: list[str], key_fn, squeeze=lambda key: False
) -> TensorSource:
    """The single-file `source` seen under diffusers keys; errors name any key that is not there."""
    available = set(source.keys())
    mapping, shapes, missing = {}, {}, []
    for key in diffusers_keys:
        old = key_fn(key)
        if old not in available:
            missing.append(old)
            continue
        if squeeze(key):
            mapping[key] = (old, _squeeze_1x1)
            shapes[key] = tuple(source.shape(old)[:2])
        else:
            mapping[key] = (old, None)
    if missing:
        raise MagicFaceError(
            f"{source.name} lacks {len(missing)} tensors of the original SD layout, e.g. {missing[:3]}: "
            "is it a Stable Diffusion 1.x checkpoint?"
        )
    return MappedSource(source, mapping, shapes)
