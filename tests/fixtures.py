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


def perturb(module: torch.nn.Module, seed: int, scale: float = 0.05) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * scale)
    return module.eval()


def tiny_torch_magicface(seed: int = 0):
    from tests.torch_reference import TorchMagicFace

    torch.manual_seed(seed)
    return perturb(TorchMagicFace(tiny_magicface_config()), seed + 1)


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
