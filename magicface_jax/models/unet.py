"""The Stable Diffusion UNet in Flax, in MagicFace's two roles.

- Identity encoder (`au_dim == 0`, 4 input channels): run at timestep 0 on the identity latents; its
  product is the list of hidden states entering every transformer block (16 for SD1.5: down 2+2+2,
  mid 1, up 3+3+3). Its output sample is unused (XLA drops the work that only feeds it).
- Denoiser (`au_dim == 12`, 8 input channels): noisy latents and background latents concatenated at
  `conv_in`, the AU embedding added to the time embedding, and the identity keys/values of every
  transformer block's self-attention (`identity_kv`, computed once per identity image).

Module and parameter names follow diffusers' PyTorch names (`down_blocks.0.attentions.1` ->
`down_blocks_0/attentions_1`), which keeps the conversion table a plain rule.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from magicface_jax.config import CROSS_ATTN_DOWN, CROSS_ATTN_UP, UNetConfig
from magicface_jax.nn.attention import KeyValue
from magicface_jax.nn.cpu_kernels import PLAIN, Kernels
from magicface_jax.nn.embeddings import TimestepEmbedding, timestep_embedding
from magicface_jax.nn.layers import AU, TIME, conv, dense, group_norm
from magicface_jax.nn.resnet import Downsample2D, ResnetBlock2D, Upsample2D
from magicface_jax.nn.transformer import Transformer2D

Features = list[jax.Array]  # hidden states entering each transformer block, in execution order

# Rematerialization (gradient checkpointing) during training: "block" keeps only each down, mid and up
# block's inputs for the backward pass and recomputes the rest; "full" also recomputes each resnet and
# transformer inside a block from its own input, so that at most one layer's internals are held at once.
REMAT_POLICIES = ("none", "block", "full")


def _remat(module_class, enabled: bool):
    return (
        nn.remat(module_class, policy=jax.checkpoint_policies.nothing_saveable) if enabled else module_class
    )


class _Block(nn.Module):
    """A down, mid or up block: resnets, optionally each followed by a Transformer2D."""

    config: UNetConfig
    channels: int
    heads: int
    num_layers: int
    with_attention: bool
    dtype: jnp.dtype = jnp.float32
    kernels: Kernels = PLAIN
    remat_layers: bool = False

    def setup(self):
        c = self.config
        resnet = _remat(ResnetBlock2D, self.remat_layers)
        self.resnets = [
            resnet(self.channels, c.norm_num_groups, c.norm_eps, self.dtype, self.kernels)
            for _ in range(self.num_layers)
        ]
        if self.with_attention:
            transformer = _remat(Transformer2D, self.remat_layers)
            self.attentions = [
                transformer(
                    self.channels,
                    self.heads,
                    c.norm_num_groups,
                    c.use_linear_projection,
                    self.dtype,
                    self.kernels,
                )
                for _ in range(self.num_attention_layers)
            ]

    @property
    def num_attention_layers(self) -> int:
        return self.num_layers if self.with_attention else 0

    def identity_kv(self, features: Sequence[jax.Array]) -> list[KeyValue]:
        return [kv for attn, f in zip(self.attentions, features, strict=True) for kv in attn.identity_kv([f])]

    def _layer(self, i, x, temb, context, identity_kv, features):
        x = self.resnets[i](x, temb)
        if self.with_attention:
            x, inputs = self.attentions[i](
                x, context, None if identity_kv is None else identity_kv[i : i + 1]
            )
            features.extend(inputs)
        return x


class DownBlock(_Block):
    add_downsample: bool = True

    def setup(self):
        super().setup()
        if self.add_downsample:
            self.downsamplers_0 = Downsample2D(self.channels, False, self.dtype, self.kernels)

    def __call__(self, x, temb, context, identity_kv=None):
        skips, features = [], []
        for i in range(self.num_layers):
            x = self._layer(i, x, temb, context, identity_kv, features)
            skips.append(x)
        if self.add_downsample:
            x = self.downsamplers_0(x)
            skips.append(x)
        return x, skips, features


class MidBlock(_Block):
    """resnet -> (attention -> resnet); `num_layers` counts the resnets (2)."""

    @property
    def num_attention_layers(self) -> int:
        return self.num_layers - 1

    def __call__(self, x, temb, context, identity_kv=None):
        features = []
        x = self.resnets[0](x, temb)
        for i, attention in enumerate(self.attentions):
            x, inputs = attention(x, context, None if identity_kv is None else identity_kv[i : i + 1])
            features.extend(inputs)
            x = self.resnets[i + 1](x, temb)
        return x, features


class UpBlock(_Block):
    add_upsample: bool = True

    def setup(self):
        super().setup()
        if self.add_upsample:
            self.upsamplers_0 = Upsample2D(self.channels, self.dtype, self.kernels)

    def __call__(self, x, skips, temb, context, identity_kv=None):
        features = []
        for i in range(self.num_layers):
            x = jnp.concatenate([x, skips[-1 - i]], axis=-1)
            x = self._layer(i, x, temb, context, identity_kv, features)
        if self.add_upsample:
            x = self.upsamplers_0(x)
        return x, features


class UNet(nn.Module):
    """`__call__(sample, timesteps, context, au=None, background=None, identity_kv=None)`.

    Returns `(output, features)`: the predicted noise (B, h, w, out_channels) in float32 and the hidden
    states that entered each transformer block.
    """

    config: UNetConfig
    dtype: jnp.dtype = jnp.float32
    kernels: Kernels = PLAIN
    remat: str = "none"  # one of REMAT_POLICIES

    def setup(self):
        c = self.config
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"remat policy {self.remat!r} is not one of {REMAT_POLICIES}")
        widths = c.block_out_channels
        last = len(widths) - 1
        blocks = self.remat != "none"
        options = {"dtype": self.dtype, "kernels": self.kernels, "remat_layers": self.remat == "full"}
        self.conv_in = conv(widths[0], self.dtype, "conv_in", kernels=self.kernels)
        self.time_embedding = TimestepEmbedding(c.time_embed_dim, self.dtype)
        if c.au_dim:
            self.au_aug_mlp = dense(c.time_embed_dim, (AU, TIME), self.dtype, "au_aug_mlp")
        self.down_blocks = [
            _remat(DownBlock, blocks)(
                c,
                widths[i],
                c.attention_heads[i],
                c.layers_per_block,
                kind == CROSS_ATTN_DOWN,
                **options,
                add_downsample=i < last,
            )
            for i, kind in enumerate(c.down_block_types)
        ]
        self.mid_block = _remat(MidBlock, blocks)(c, widths[-1], c.attention_heads[-1], 2, True, **options)
        reversed_widths, reversed_heads = widths[::-1], c.attention_heads[::-1]
        self.up_blocks = [
            _remat(UpBlock, blocks)(
                c,
                reversed_widths[i],
                reversed_heads[i],
                c.layers_per_block + 1,
                kind == CROSS_ATTN_UP,
                **options,
                add_upsample=i < last,
            )
            for i, kind in enumerate(c.up_block_types)
        ]
        self.conv_norm_out = group_norm(c.norm_num_groups, c.norm_eps, self.dtype, "conv_norm_out")
        self.conv_out = conv(c.out_channels, self.dtype, "conv_out", kernels=self.kernels)

    def _blocks(self) -> list[_Block]:
        return [*self.down_blocks, self.mid_block, *self.up_blocks]

    def _split(self, items: Sequence) -> list[Sequence | None]:
        """Cuts a per-transformer-block list into one slice per down/mid/up block."""
        slices, start = [], 0
        for block in self._blocks():
            slices.append(items[start : start + block.num_attention_layers])
            start += block.num_attention_layers
        if start != len(items):
            raise ValueError(
                f"expected {start} identity entries (one per transformer block), got {len(items)}"
            )
        return slices

    def identity_kv(self, features: Sequence[jax.Array]) -> list[KeyValue]:
        """The denoiser's self-attention keys/values of the identity encoder's features, per block."""
        return [
            kv
            for block, part in zip(self._blocks(), self._split(features), strict=True)
            if block.with_attention
            for kv in block.identity_kv(part)
        ]

    def __call__(
        self,
        sample: jax.Array,
        timesteps: jax.Array | float,
        context: jax.Array,
        au: jax.Array | None = None,
        background: jax.Array | None = None,
        identity_kv: Sequence[KeyValue] | None = None,
    ) -> tuple[jax.Array, Features]:
        c = self.config
        batch = sample.shape[0]
        timesteps = jnp.broadcast_to(jnp.asarray(timesteps, jnp.float32).reshape(-1), (batch,))
        temb = timestep_embedding(timesteps, c.block_out_channels[0], c.flip_sin_to_cos, c.freq_shift)
        emb = self.time_embedding(temb.astype(self.dtype))
        if c.au_dim:
            if au is None:
                raise ValueError("the denoiser needs an AU vector")
            emb = emb + self.au_aug_mlp(jnp.asarray(au, self.dtype))
        if background is not None:
            sample = jnp.concatenate([sample, background.astype(sample.dtype)], axis=-1)
        context = context.astype(self.dtype)
        kv_parts = self._split(identity_kv) if identity_kv is not None else [None] * len(self._blocks())
        n_down = len(self.down_blocks)

        x = self.conv_in(sample.astype(self.dtype))
        skips, features = [x], []
        for block, kv in zip(self.down_blocks, kv_parts[:n_down], strict=True):
            x, block_skips, block_features = block(x, emb, context, kv)
            skips += block_skips
            features += block_features
        x, block_features = self.mid_block(x, emb, context, kv_parts[n_down])
        features += block_features
        for block, kv in zip(self.up_blocks, kv_parts[n_down + 1 :], strict=True):
            x, block_features = block(x, skips, emb, context, kv)
            skips = skips[: -block.num_layers]
            features += block_features
        x = self.conv_out(nn.silu(self.conv_norm_out(x)))
        return x.astype(jnp.float32), features
