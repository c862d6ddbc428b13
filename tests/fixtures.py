"""Tiny models and checkpoint folders for the tests: random weights, every parameter perturbed so that no
zero-initialised layer can hide a bug."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from magicface_jax.config import tiny_magicface_config
from magicface_jax.diffusion import SD15_SCHEDULER_CONFIG

TINY_TEXT_WIDTH = 32  # = tiny_magicface_config().denoiser.cross_attention_dim
WIDE_TIME_EMBEDDING = 48  # differs from 4 x the tiny model's first width (128)


def perturb(module: torch.nn.Module, seed: int, scale: float = 0.05) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * scale)
    return module.eval()


def tiny_torch_magicface(seed: int = 0, config=None):
    from tests.torch_reference import TorchMagicFace

    torch.manual_seed(seed)
    return perturb(TorchMagicFace(config or tiny_magicface_config()), seed + 1)


def wide_time_config():
    """The tiny model with a time embedding of 48 channels instead of 4 x 32, as the authors' releases have
    whenever the first width is not 320 (their AU linear is always Linear(12 -> 1280))."""
    import dataclasses

    config = tiny_magicface_config()
    return dataclasses.replace(
        config,
        identity_encoder=config.identity_encoder.replace(time_embedding_dim=WIDE_TIME_EMBEDDING),
        denoiser=config.denoiser.replace(time_embedding_dim=WIDE_TIME_EMBEDDING),
    )


def _byte_symbols() -> list[str]:
    """The 256 printable symbols byte-level BPE uses for the bytes 0..255 (the GPT-2/CLIP convention)."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    extra = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]


def tiny_tokenizer(directory: Path):
    """A CLIP tokenizer with a byte-level vocabulary and no merges (the real vocabulary is not shipped)."""
    from transformers import CLIPTokenizer

    chars = _byte_symbols()
    vocab = {token: i for i, token in enumerate(chars + [c + "</w>" for c in chars])}
    vocab |= {"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1}
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], pad_token="<|endoftext|>", model_max_length=77)
    tokenizer.save_pretrained(directory)
    return tokenizer


def tiny_text_encoder(vocab_size: int, seed: int = 3):
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=TINY_TEXT_WIDTH,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
    )
    return perturb(CLIPTextModel(config), seed)


def write_sd_folder(directory: Path, model) -> Path:
    """unet/ (the reference's identity encoder UNet), vae/, text_encoder/, tokenizer/, scheduler/."""
    model.identity_encoder.unet.save_pretrained(directory / "unet")
    model.vae.save_pretrained(directory / "vae")
    tokenizer = tiny_tokenizer(directory / "tokenizer")
    tiny_text_encoder(len(tokenizer)).save_pretrained(directory / "text_encoder")
    (directory / "scheduler").mkdir()
    (directory / "scheduler" / "scheduler_config.json").write_text(json.dumps(SD15_SCHEDULER_CONFIG))
    return directory


def write_release_folder(directory: Path, model, dtype: torch.dtype = torch.float32) -> Path:
    """The authors' release layout: ID_enc/ and denoising_unet/ with config.json and safetensors."""
    from safetensors.torch import save_file

    for folder, unet, state in (
        ("ID_enc", model.identity_encoder.unet, model.identity_encoder.unet.state_dict()),
        ("denoising_unet", model.denoiser.unet, model.denoiser.magicface_state_dict()),
    ):
        (directory / folder).mkdir(parents=True)
        config = {k: v for k, v in unet.config.items() if not k.startswith("_")} | {"class_embed_type": None}
        (directory / folder / "config.json").write_text(json.dumps(config))
        tensors = {k: v.detach().to(dtype).contiguous() for k, v in state.items()}
        save_file(tensors, directory / folder / "diffusion_pytorch_model.safetensors")
    return directory


def nchw(array) -> np.ndarray:
    return np.asarray(array).transpose(0, 3, 1, 2)


def nhwc(array) -> np.ndarray:
    return np.asarray(array).transpose(0, 2, 3, 1)


def random(shape, seed) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def denoiser_predictions(torch_model, config, pair, timestep) -> tuple[np.ndarray, np.ndarray]:
    """One guided-batch noise prediction (NCHW) of our denoiser with Flax parameters `pair` (identity
    encoder, denoiser), and of the PyTorch reference `torch_model`, on the same random inputs."""
    from magicface_jax.models.magicface import MagicFace

    model = MagicFace(config)
    width = config.denoiser.cross_attention_dim
    noisy, background = random((2, 4, 16, 16), 6), random((2, 4, 16, 16), 7)
    identity = random((2, 4, 16, 16), 8)
    au = np.array([[0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 2], [1, -3, 0, 0, 0, 0, 5, 0, 0, 0, 0, 0]], np.float32)
    prompt = random((1, 77, width), 9)
    with torch.no_grad():
        prompt_t = torch.from_numpy(prompt).expand(2, -1, -1)
        features = torch_model.identity_encoder(torch.from_numpy(identity), prompt_t)
        expected = torch_model.denoiser(
            torch.from_numpy(noisy),
            torch.from_numpy(background),
            torch.from_numpy(au),
            timestep,
            features,
            prompt_t,
        ).numpy()
    encoder_params, denoiser_params = pair
    ours_features = model.identity_features(encoder_params, nhwc(identity), prompt)
    kv = model.identity_kv(denoiser_params, ours_features)
    ours = model.predict_noise(denoiser_params, nhwc(noisy), nhwc(background), au, timestep, kv, prompt)
    return nchw(ours), expected
