"""The PyTorch layouts we read: a diffusers Stable Diffusion folder, an original single-file SD checkpoint,
and the authors' MagicFace release (`denoising_unet/`, `ID_enc/`). Each becomes `Network`s: a typed config
and a `TensorSource` under diffusers' key names.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from magicface_jax.config import AU_EMBED_NAME, UNetConfig, VAEConfig
from magicface_jax.convert import ldm
from magicface_jax.convert.names import network_table
from magicface_jax.convert.sources import (
    ArraySource,
    MappedSource,
    TensorSource,
    UnionSource,
    open_model_folder,
    open_weights,
)
from magicface_jax.diffusion.schedule import SD15_SCHEDULER_CONFIG
from magicface_jax.errors import MagicFaceError

# CLIP BPE token ids of the authors' prompt "A close up of a person." (start, 7 tokens, end), padded with
# <|endoftext|> to 77 as SD1.5's tokenizer pads. Lets a single-file checkpoint, which carries no tokenizer,
# be converted with the default prompt.
AUTHORS_PROMPT_TOKEN_IDS = (49406, 320, 2660, 705, 539, 320, 2533, 269, 49407)
CLIP_END_OF_TEXT = 49407
CLIP_CONTEXT_LENGTH = 77

PromptEncoder = Callable[[str], np.ndarray]


@dataclasses.dataclass(frozen=True)
class Network:
    config: UNetConfig | VAEConfig
    source: TensorSource


@dataclasses.dataclass(frozen=True)
class StableDiffusion:
    unet: Network
    vae: Network
    scheduler: dict
    encode_prompt: PromptEncoder
    kind: str  # "diffusers" or "single-file"


# ---------------------------------------------------------------------------------------------- SD folder


def read_sd(path: str | Path, tokenizer: str | Path | None = None) -> StableDiffusion:
    """A diffusers SD folder or an original-layout single file (`.safetensors`/`.ckpt`)."""
    path = Path(path)
    if path.is_dir():
        return _read_sd_folder(path)
    if path.is_file():
        return _read_sd_single_file(path, tokenizer)
    raise MagicFaceError(
        f"--sd {path} does not exist: give a diffusers SD folder or a single-file checkpoint"
    )


def _read_sd_folder(path: Path) -> StableDiffusion:
    missing = [s for s in ("unet", "vae", "text_encoder", "tokenizer") if not (path / s).is_dir()]
    if missing:
        raise MagicFaceError(
            f"{path} lacks {', '.join(s + '/' for s in missing)}: a diffusers Stable Diffusion folder has "
            "unet/ vae/ text_encoder/ tokenizer/ scheduler/"
        )
    unet_config, unet = open_model_folder(path / "unet")
    vae_config, vae = open_model_folder(path / "vae")
    scheduler_file = path / "scheduler" / "scheduler_config.json"
    scheduler = json.loads(scheduler_file.read_text()) if scheduler_file.is_file() else SD15_SCHEDULER_CONFIG

    def encode_prompt(prompt: str) -> np.ndarray:
        from transformers import CLIPTextModel, CLIPTokenizer
        from transformers.utils import logging

        logging.disable_progress_bar()

        tok = CLIPTokenizer.from_pretrained(path / "tokenizer")
        model = CLIPTextModel.from_pretrained(path / "text_encoder").float().eval()
        ids = tok(prompt, padding="max_length", max_length=tok.model_max_length, truncation=True).input_ids
        return _run_text_encoder(model, ids)

    return StableDiffusion(
        unet=Network(UNetConfig.from_diffusers(unet_config), unet),
        vae=Network(VAEConfig.from_diffusers(vae_config), vae),
        scheduler=scheduler,
        encode_prompt=encode_prompt,
        kind="diffusers",
    )


def _run_text_encoder(model, ids) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.tensor([ids], dtype=torch.long))[0].float().numpy()


# ---------------------------------------------------------------------------------------- single file


def _read_sd_single_file(path: Path, tokenizer: str | Path | None) -> StableDiffusion:
    source = open_weights(path)
    keys = source.keys()
    if not any(k.startswith(ldm.UNET_PREFIX) for k in keys):
        raise MagicFaceError(
            f"{path} has no '{ldm.UNET_PREFIX}*' tensors: "
            "it is not an original-layout Stable Diffusion checkpoint"
        )
    configs = single_file_configs(source)
    unet_config, vae_config = configs.unet, configs.vae
    unet = _single_file_view(
        source, network_table(unet_config), ldm.UNET_PREFIX, lambda k: ldm.unet_ldm_key(k, unet_config)
    )
    vae = _single_file_view(
        source,
        network_table(vae_config),
        ldm.VAE_PREFIX,
        lambda k: ldm.vae_ldm_key(k, vae_config),
        ldm.is_vae_attention_projection,
    )

    def encode_prompt(prompt: str) -> np.ndarray:
        text_encoder = _single_file_text_encoder(source, configs.text_heads)
        return _run_text_encoder(text_encoder, _single_file_token_ids(prompt, tokenizer))

    return StableDiffusion(
        unet=Network(unet_config, unet),
        vae=Network(vae_config, vae),
        scheduler=SD15_SCHEDULER_CONFIG,
        encode_prompt=encode_prompt,
        kind="single-file",
    )


@dataclasses.dataclass(frozen=True)
class SingleFileConfigs:
    unet: UNetConfig
    vae: VAEConfig
    text_heads: int  # attention heads of the CLIP text encoder (shapes cannot tell)


def single_file_configs(source: TensorSource) -> SingleFileConfigs:
    """An original-layout file names no config: it is SD1.x's (checked where the shapes can tell)."""
    cross_dim = source.shape(ldm.UNET_PREFIX + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight")[1]
    if cross_dim != UNetConfig.cross_attention_dim:
        raise MagicFaceError(
            f"{source.name} is not Stable Diffusion 1.x (context width {cross_dim}); only 1.x single "
            "files are read: convert from a diffusers folder instead"
        )
    in_channels = source.shape(ldm.UNET_PREFIX + "input_blocks.0.0.weight")[1]
    return SingleFileConfigs(UNetConfig(in_channels=in_channels), VAEConfig(), text_heads=12)


def _single_file_view(source, rows, prefix, key_fn, squeeze=lambda key: False) -> TensorSource:
    """A network's tensors of a single file under diffusers keys; refuses tensors the table does not use."""
    view = ldm.ldm_view(source, [row.torch_key for row in rows], key_fn, squeeze)
    used = {key_fn(row.torch_key) for row in rows}
    unused = sorted(k for k in source.keys() if k.startswith(prefix) and k not in used)
    if unused:
        raise MagicFaceError(
            f"{source.name}: {len(unused)} tensors under '{prefix}' are not part of a Stable Diffusion 1.x "
            f"network, e.g. {unused[:3]}"
        )
    return view


def _single_file_text_encoder(source: TensorSource, heads: int):
    """transformers' CLIPTextModel from the `cond_stage_model.transformer.*` tensors of a single file."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    # Original files name tensors `text_model.*` (transformers 4); transformers 5 drops that prefix.
    mapping = {}
    for key in source.keys():
        if key.startswith(ldm.CLIP_PREFIX) and not key.endswith("position_ids"):
            mapping[key[len(ldm.CLIP_PREFIX) :].removeprefix("text_model.")] = key
    prefix = "encoder.layers."
    layers = {int(k[len(prefix) :].split(".")[0]) for k in mapping if k.startswith(prefix)}
    vocab, hidden = source.shape(mapping["embeddings.token_embedding.weight"])
    config = CLIPTextConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=source.shape(mapping[f"{prefix}0.mlp.fc1.weight"])[0],
        num_hidden_layers=len(layers),
        num_attention_heads=heads,
        max_position_embeddings=source.shape(mapping["embeddings.position_embedding.weight"])[0],
        hidden_act="quick_gelu",
    )
    model = CLIPTextModel(config).eval()
    own = set(model.state_dict())
    state = {
        (bare if bare in own else f"text_model.{bare}"): torch.from_numpy(
            np.asarray(source.get(old), np.float32)
        )
        for bare, old in mapping.items()
    }
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise MagicFaceError(
            f"{source.name}: text encoder tensors do not match CLIP "
            f"(missing {missing[:3]}, unknown {unexpected[:3]})"
        )
    return model


def _single_file_token_ids(prompt: str, tokenizer: str | Path | None) -> list[int]:
    from magicface_jax.config import AUTHORS_PROMPT

    if tokenizer is not None:
        from transformers import CLIPTokenizer

        tok = CLIPTokenizer.from_pretrained(tokenizer)
        return tok(prompt, padding="max_length", max_length=tok.model_max_length, truncation=True).input_ids
    if prompt != AUTHORS_PROMPT:
        raise MagicFaceError(
            "a single-file checkpoint carries no tokenizer: pass --tokenizer DIR (a CLIP tokenizer folder, "
            "such as the tokenizer/ of an SD1.5 diffusers folder) to encode a custom prompt"
        )
    ids = list(AUTHORS_PROMPT_TOKEN_IDS)
    return ids + [CLIP_END_OF_TEXT] * (CLIP_CONTEXT_LENGTH - len(ids))


# ------------------------------------------------------------------------------------ MagicFace release


def read_magicface(path: str | Path, latent_channels: int) -> tuple[Network, Network]:
    """The authors' release folder: `ID_enc/` (identity encoder) and `denoising_unet/` (denoiser), for a
    VAE of `latent_channels`."""
    path = Path(path)
    if not path.is_dir():
        raise MagicFaceError(
            f"--magicface {path} is not a folder: expected one with ID_enc/ and denoising_unet/"
        )
    missing = [s for s in ("ID_enc", "denoising_unet") if not (path / s).is_dir()]
    if missing:
        raise MagicFaceError(
            f"{path} lacks {' and '.join(s + '/' for s in missing)} (the authors' release layout)"
        )
    encoder_config, encoder = open_model_folder(path / "ID_enc")
    denoiser_config, denoiser = open_model_folder(path / "denoising_unet")
    au_key = f"{AU_EMBED_NAME}.weight"
    if au_key not in denoiser.keys():
        raise MagicFaceError(f"{path / 'denoising_unet'} has no {au_key}: it is not a MagicFace denoiser")
    # The denoiser's input is the noisy latents and the background latents, whatever config.json says; the
    # shape check then names conv_in.weight if its weights take anything else.
    denoiser_unet = UNetConfig.from_diffusers(denoiser_config).replace(
        in_channels=2 * latent_channels, au_dim=denoiser.shape(au_key)[1]
    )
    return (
        Network(UNetConfig.from_diffusers(encoder_config), encoder),
        Network(denoiser_unet, denoiser),
    )


def sd_initialised_denoiser(unet: Network, au_dim: int = 12) -> Network:
    """A new denoiser from SD's UNet: 4 more `conv_in` input channels and the AU linear, all zero, so that
    it starts out computing exactly what SD's UNet computes."""
    config = unet.config.replace(in_channels=unet.config.in_channels + 4, au_dim=au_dim)
    conv_in = "conv_in.weight"
    out_channels, in_channels, kh, kw = unet.source.shape(conv_in)

    def pad(weight: np.ndarray) -> np.ndarray:
        return np.concatenate([weight, np.zeros((out_channels, 4, kh, kw), weight.dtype)], axis=1)

    mapping = {k: (k, pad if k == conv_in else None) for k in unet.source.keys()}
    padded = MappedSource(unet.source, mapping, {conv_in: (out_channels, in_channels + 4, kh, kw)})
    au = ArraySource(
        {
            f"{AU_EMBED_NAME}.weight": np.zeros((config.time_embed_dim, au_dim), np.float32),
            f"{AU_EMBED_NAME}.bias": np.zeros((config.time_embed_dim,), np.float32),
        }
    )
    return Network(config, UnionSource([padded, au], unet.source.name))
