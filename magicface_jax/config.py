"""Typed model configurations, readable from and writable to diffusers' `config.json` dictionaries.

`UNetConfig` covers the Stable Diffusion 1.x/2.x UNet layout in both MagicFace roles; `VAEConfig` the
AutoencoderKL; `MagicFaceConfig` ties the three networks together with the prompt and compute dtype.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from magicface_jax.errors import MagicFaceError

if TYPE_CHECKING:
    import jax.numpy as jnp

CROSS_ATTN_DOWN = "CrossAttnDownBlock2D"
PLAIN_DOWN = "DownBlock2D"
CROSS_ATTN_UP = "CrossAttnUpBlock2D"
PLAIN_UP = "UpBlock2D"
MID_CROSS_ATTN = "UNetMidBlock2DCrossAttn"

AUTHORS_PROMPT = "A close up of a person."
AU_EMBED_NAME = "au_aug_mlp"  # the authors' name for Linear(12 -> time_embed_dim)
TIME_EMBED_PER_WIDTH = 4  # diffusers' time-embedding width when the config names none: 4 x the first width

# diffusers keys whose value must be the SD default for us to compute the same function.
_UNET_DEFAULTS_REQUIRED: dict[str, Any] = {
    "center_input_sample": False,
    "mid_block_type": MID_CROSS_ATTN,
    "only_cross_attention": False,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "act_fn": "silu",
    "transformer_layers_per_block": 1,
    "encoder_hid_dim": None,
    "num_attention_heads": None,
    "dual_cross_attention": False,
    "class_embed_type": None,
    "addition_embed_type": None,
    "num_class_embeds": None,
    "resnet_time_scale_shift": "default",
    "time_embedding_type": "positional",
    "time_embedding_act_fn": None,
    "timestep_post_act": None,
    "time_cond_proj_dim": None,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "attention_type": "default",
    "cross_attention_norm": None,
}


def _require_defaults(kind: str, config: Mapping[str, Any], required: Mapping[str, Any]) -> None:
    for key, expected in required.items():
        value = config.get(key, expected)
        if isinstance(value, list | tuple) and not isinstance(expected, list | tuple):
            matches = all(v == expected for v in value)  # a per-block list of one repeated value
        else:
            matches = (list(value) if isinstance(value, tuple) else value) == expected
        if not matches:
            raise MagicFaceError(
                f"{kind} config has {key}={value!r}; only {expected!r} (the Stable Diffusion 1.x/2.x "
                "layout) is supported"
            )


@dataclasses.dataclass(frozen=True)
class UNetConfig:
    """A Stable Diffusion UNet. Defaults are SD1.5's; `au_dim > 0` makes it a MagicFace denoiser."""

    in_channels: int = 4
    out_channels: int = 4
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    down_block_types: tuple[str, ...] = (CROSS_ATTN_DOWN, CROSS_ATTN_DOWN, CROSS_ATTN_DOWN, PLAIN_DOWN)
    up_block_types: tuple[str, ...] = (PLAIN_UP, CROSS_ATTN_UP, CROSS_ATTN_UP, CROSS_ATTN_UP)
    layers_per_block: int = 2
    # diffusers' legacy `attention_head_dim` is the number of heads (SD1.5: 8; SD2.x: 5, 10, 20, 20).
    attention_heads: tuple[int, ...] = (8, 8, 8, 8)
    cross_attention_dim: int = 768
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    use_linear_projection: bool = False
    upcast_attention: bool = False
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    sample_size: int = 64
    au_dim: int = 0  # > 0: the denoiser's AU embedding Linear(au_dim -> time_embed_dim)
    # diffusers' `time_embedding_dim`; None: 4 x block_out_channels[0]. The authors' AU linear is
    # Linear(12 -> 1280) whatever the widths, so their releases with a first width other than 320 set it.
    time_embedding_dim: int | None = None

    def __post_init__(self):
        if self.time_embedding_dim == self.block_out_channels[0] * TIME_EMBED_PER_WIDTH:
            # One spelling per network, so that configs of the same network compare equal.
            object.__setattr__(self, "time_embedding_dim", None)
        if self.time_embedding_dim is not None and (
            not isinstance(self.time_embedding_dim, int) or self.time_embedding_dim < 1
        ):
            raise MagicFaceError(
                f"UNet config has time_embedding_dim={self.time_embedding_dim!r}; expected a positive integer"
            )
        n = len(self.block_out_channels)
        if len(self.down_block_types) != n or len(self.up_block_types) != n:
            raise MagicFaceError(
                f"UNet config lists {n} block widths but {len(self.down_block_types)} down and "
                f"{len(self.up_block_types)} up blocks"
            )
        if len(self.attention_heads) != n:
            raise MagicFaceError(f"UNet config needs one head count per block, got {self.attention_heads}")
        for kind in self.down_block_types:
            if kind not in (CROSS_ATTN_DOWN, PLAIN_DOWN):
                raise MagicFaceError(f"unsupported down block {kind!r}")
        for kind in self.up_block_types:
            if kind not in (CROSS_ATTN_UP, PLAIN_UP):
                raise MagicFaceError(f"unsupported up block {kind!r}")

    @property
    def time_embed_dim(self) -> int:
        """The width of the time embedding, of the AU embedding added to it, and of every resnet's input
        of it."""
        return self.time_embedding_dim or self.block_out_channels[0] * TIME_EMBED_PER_WIDTH

    @property
    def downsample_factor(self) -> int:
        """How much the UNet shrinks its input: one halving per block but the last."""
        return 2 ** (len(self.block_out_channels) - 1)

    @property
    def num_transformer_blocks(self) -> int:
        """How many transformer blocks run, i.e. how many identity features the encoder records."""
        down = sum(t == CROSS_ATTN_DOWN for t in self.down_block_types) * self.layers_per_block
        up = sum(t == CROSS_ATTN_UP for t in self.up_block_types) * (self.layers_per_block + 1)
        return down + 1 + up

    def replace(self, **changes) -> UNetConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_diffusers(cls, config: Mapping[str, Any]) -> UNetConfig:
        """From a diffusers `UNet2DConditionModel` config (the authors' classes use the same keys)."""
        _require_defaults("UNet", config, _UNET_DEFAULTS_REQUIRED)
        widths = tuple(config.get("block_out_channels", cls.block_out_channels))
        heads = config.get("attention_head_dim", 8)
        heads = tuple(heads) if isinstance(heads, list | tuple) else (heads,) * len(widths)
        return cls(
            in_channels=config.get("in_channels", 4),
            out_channels=config.get("out_channels", 4),
            block_out_channels=widths,
            down_block_types=tuple(config.get("down_block_types", cls.down_block_types)),
            up_block_types=tuple(config.get("up_block_types", cls.up_block_types)),
            layers_per_block=config.get("layers_per_block", 2),
            attention_heads=heads,
            cross_attention_dim=config.get("cross_attention_dim", 768),
            norm_num_groups=config.get("norm_num_groups", 32),
            norm_eps=config.get("norm_eps", 1e-5),
            use_linear_projection=config.get("use_linear_projection", False),
            upcast_attention=config.get("upcast_attention", False) or False,
            flip_sin_to_cos=config.get("flip_sin_to_cos", True),
            freq_shift=config.get("freq_shift", 0),
            sample_size=config.get("sample_size", 64),
            time_embedding_dim=config.get("time_embedding_dim"),
        )

    def to_diffusers(self) -> dict[str, Any]:
        """The diffusers `UNet2DConditionModel` config of the same network (the AU linear aside)."""
        return {
            "_class_name": "UNet2DConditionModel",
            "sample_size": self.sample_size,
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "down_block_types": list(self.down_block_types),
            "up_block_types": list(self.up_block_types),
            "mid_block_type": MID_CROSS_ATTN,
            "block_out_channels": list(self.block_out_channels),
            "layers_per_block": self.layers_per_block,
            "attention_head_dim": list(self.attention_heads),
            "cross_attention_dim": self.cross_attention_dim,
            "norm_num_groups": self.norm_num_groups,
            "norm_eps": self.norm_eps,
            "use_linear_projection": self.use_linear_projection,
            "upcast_attention": self.upcast_attention,
            "flip_sin_to_cos": self.flip_sin_to_cos,
            "freq_shift": self.freq_shift,
            "time_embedding_dim": self.time_embedding_dim,
            "act_fn": "silu",
            "center_input_sample": False,
            "downsample_padding": 1,
            "mid_block_scale_factor": 1,
        }


@dataclasses.dataclass(frozen=True)
class VAEConfig:
    """AutoencoderKL. Defaults are SD1.5's."""

    in_channels: int = 3
    out_channels: int = 3
    latent_channels: int = 4
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    norm_num_groups: int = 32
    scaling_factor: float = 0.18215
    sample_size: int = 512

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    @classmethod
    def from_diffusers(cls, config: Mapping[str, Any]) -> VAEConfig:
        widths = tuple(config.get("block_out_channels", cls.block_out_channels))
        _require_defaults(
            "VAE",
            config,
            {
                "act_fn": "silu",
                "down_block_types": ["DownEncoderBlock2D"] * len(widths),
                "up_block_types": ["UpDecoderBlock2D"] * len(widths),
                "use_quant_conv": True,
                "use_post_quant_conv": True,
                "mid_block_add_attention": True,
                "shift_factor": None,
            },
        )
        return cls(
            in_channels=config.get("in_channels", 3),
            out_channels=config.get("out_channels", 3),
            latent_channels=config.get("latent_channels", 4),
            block_out_channels=widths,
            layers_per_block=config.get("layers_per_block", 2),
            norm_num_groups=config.get("norm_num_groups", 32),
            scaling_factor=config.get("scaling_factor", 0.18215),
            sample_size=config.get("sample_size", 512),
        )

    def to_diffusers(self) -> dict[str, Any]:
        n = len(self.block_out_channels)
        return {
            "_class_name": "AutoencoderKL",
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "latent_channels": self.latent_channels,
            "down_block_types": ["DownEncoderBlock2D"] * n,
            "up_block_types": ["UpDecoderBlock2D"] * n,
            "block_out_channels": list(self.block_out_channels),
            "layers_per_block": self.layers_per_block,
            "norm_num_groups": self.norm_num_groups,
            "act_fn": "silu",
            "scaling_factor": self.scaling_factor,
            "sample_size": self.sample_size,
        }


@dataclasses.dataclass(frozen=True)
class MagicFaceConfig:
    """The whole model: identity encoder, denoiser, VAE, the prompt, and the compute dtype."""

    identity_encoder: UNetConfig = UNetConfig()
    denoiser: UNetConfig = UNetConfig(in_channels=8, au_dim=12)
    vae: VAEConfig = VAEConfig()
    prompt: str = AUTHORS_PROMPT
    dtype: str = "float32"  # compute dtype; parameters are always float32

    @property
    def compute_dtype(self) -> jnp.dtype:
        import jax.numpy as jnp  # here, so that preprocessing can read configs without JAX

        return jnp.dtype(self.dtype)

    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this: the VAE's factor times the UNet's downsampling, so that
        every UNet level halves evenly and its skips match (64 for SD1.5)."""
        return self.vae.downsample_factor * self.denoiser.downsample_factor

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MagicFaceConfig:
        try:
            return cls(
                identity_encoder=_dataclass_from_dict(UNetConfig, data["identity_encoder"]),
                denoiser=_dataclass_from_dict(UNetConfig, data["denoiser"]),
                vae=_dataclass_from_dict(VAEConfig, data["vae"]),
                prompt=data.get("prompt", AUTHORS_PROMPT),
                dtype=data.get("dtype", "float32"),
            )
        except (KeyError, TypeError) as err:
            raise MagicFaceError(f"model config is incomplete or malformed ({err})") from None


def _dataclass_from_dict(cls, data: Mapping[str, Any]):
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - fields
    if unknown:
        raise TypeError(f"unknown {cls.__name__} keys {sorted(unknown)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def sd15_magicface_config(**changes) -> MagicFaceConfig:
    """The published MagicFace model: two SD1.5 UNets (denoiser with 8 input channels) and SD1.5's VAE."""
    return dataclasses.replace(MagicFaceConfig(), **changes)


# The size multiple of the published model, for what is made without a checkpoint at hand (face crops,
# training data): images made for it fit every model of its layout.
SD15_SIZE_MULTIPLE = sd15_magicface_config().size_multiple


def tiny_magicface_config(**changes) -> MagicFaceConfig:
    """A small model of the same layout for tests, demos and quick benchmarks (runs in seconds on a CPU)."""
    unet = UNetConfig(
        block_out_channels=(32, 64, 64, 64),
        attention_heads=(2, 2, 2, 2),
        cross_attention_dim=32,
        norm_num_groups=8,
        sample_size=8,
    )
    vae = VAEConfig(
        block_out_channels=(32, 32, 64, 64), layers_per_block=1, norm_num_groups=8, sample_size=64
    )
    base = MagicFaceConfig(
        identity_encoder=unet,
        denoiser=unet.replace(in_channels=8, au_dim=12),
        vae=vae,
    )
    return dataclasses.replace(base, **changes)
