"""MagicFace in PyTorch, built on diffusers' classes: the reference our tests and benchmarks compare with.

It computes what the authors' released classes compute, written independently on top of diffusers:

- identity encoder: a diffusers `UNet2DConditionModel`; forward pre-hooks record the hidden states entering
  every `BasicTransformerBlock` (before its first LayerNorm), in execution order;
- denoiser: a `UNet2DConditionModel` with an 8-channel `conv_in` and `class_embed_type="identity"`, which adds
  its class labels to the time embedding with nothing in between; the labels are `au_aug_mlp(au)`, the AU
  linear. Every self-attention attends over [own tokens ; identity tokens] with queries for both, as the
  authors do, then keeps the own tokens' rows.

Loading `TorchMagicFace.from_pretrained(dir)` reads the authors' layout (`denoising_unet/`, `ID_enc/`,
`vae/`), which `convert_weights.py --to-pytorch` writes. Requires the `torch` extra.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.models.attention import BasicTransformerBlock

from magicface_jax.config import AU_EMBED_NAME, MagicFaceConfig, UNetConfig, VAEConfig


class _IdentityTokens:
    """The identity features of the current forward pass, handed out block by block."""

    def __init__(self):
        self.features: Sequence[torch.Tensor] = ()
        self.index = 0

    def next(self) -> torch.Tensor:
        feature = self.features[self.index]
        self.index += 1
        return feature


class IdentityAttnProcessor:
    """Self-attention over [normed own tokens ; norm1(identity tokens)], returning the own tokens' rows."""

    def __init__(self, norm1: torch.nn.LayerNorm, tokens: _IdentityTokens):
        self.norm1 = norm1
        self.tokens = tokens

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
        own = hidden_states.shape[1]
        x = torch.cat([hidden_states, self.norm1(self.tokens.next())], dim=1)
        batch = x.shape[0]

        def heads(t):
            return t.view(batch, -1, attn.heads, t.shape[-1] // attn.heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(heads(attn.to_q(x)), heads(attn.to_k(x)), heads(attn.to_v(x)))
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * out.shape[-1])
        return attn.to_out[0](out)[:, :own]


def _unet_kwargs(config: UNetConfig, **extra) -> dict:
    return {k: v for k, v in config.to_diffusers().items() if not k.startswith("_")} | extra


def _transformer_blocks(unet: torch.nn.Module) -> list[BasicTransformerBlock]:
    return [m for m in unet.modules() if isinstance(m, BasicTransformerBlock)]


class IdentityEncoder(torch.nn.Module):
    def __init__(self, config: UNetConfig):
        super().__init__()
        self.unet = UNet2DConditionModel(**_unet_kwargs(config))
        self._recorded: list[torch.Tensor] = []
        for block in _transformer_blocks(self.unet):
            block.register_forward_pre_hook(self._record, with_kwargs=True)

    def _record(self, module, args, kwargs):
        self._recorded.append(args[0] if args else kwargs["hidden_states"])

    def forward(self, latents: torch.Tensor, prompt_embeds: torch.Tensor) -> list[torch.Tensor]:
        self._recorded = []
        self.unet(latents, 0, encoder_hidden_states=prompt_embeds)
        features, self._recorded = self._recorded, []
        return features


class Denoiser(torch.nn.Module):
    def __init__(self, config: UNetConfig):
        super().__init__()
        self.unet = UNet2DConditionModel(**_unet_kwargs(config, class_embed_type="identity"))
        setattr(self, AU_EMBED_NAME, torch.nn.Linear(config.au_dim, config.time_embed_dim))
        self._tokens = _IdentityTokens()
        self.unet.set_attn_processor(
            {
                name: IdentityAttnProcessor(block.norm1, self._tokens)
                if name.endswith("attn1.processor")
                else processor
                for name, processor, block in self._named_processors()
            }
        )

    def _named_processors(self):
        blocks = {id(b.attn1): b for b in _transformer_blocks(self.unet)}
        for name, module in self.unet.named_modules():
            if hasattr(module, "set_processor"):
                yield f"{name}.processor", module.processor, blocks.get(id(module))

    def forward(self, noisy, background, au, timestep, identity_features, prompt_embeds) -> torch.Tensor:
        self._tokens.features, self._tokens.index = identity_features, 0
        au_embedding = getattr(self, AU_EMBED_NAME)(au.to(noisy.dtype))
        sample = torch.cat([noisy, background], dim=1)
        return self.unet(
            sample, timestep, encoder_hidden_states=prompt_embeds, class_labels=au_embedding
        ).sample

    def magicface_state_dict(self) -> dict[str, torch.Tensor]:
        """Keys as the authors' denoiser stores them: the UNet's plus `au_aug_mlp.*`."""
        au = {f"{AU_EMBED_NAME}.{k}": v for k, v in getattr(self, AU_EMBED_NAME).state_dict().items()}
        return dict(self.unet.state_dict()) | au

    def load_magicface_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        prefix = f"{AU_EMBED_NAME}."
        getattr(self, AU_EMBED_NAME).load_state_dict(
            {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        )
        self.unet.load_state_dict({k: v for k, v in state.items() if not k.startswith(prefix)})


class TorchMagicFace(torch.nn.Module):
    def __init__(self, config: MagicFaceConfig):
        super().__init__()
        self.config = config
        self.identity_encoder = IdentityEncoder(config.identity_encoder)
        self.denoiser = Denoiser(config.denoiser)
        self.vae = AutoencoderKL(
            **{k: v for k, v in config.vae.to_diffusers().items() if not k.startswith("_")}
        )

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> TorchMagicFace:
        """From the authors' layout: `ID_enc/`, `denoising_unet/`, `vae/` (diffusers folders)."""
        from safetensors.torch import load_file

        directory = Path(directory)

        def read(sub):
            config = json.loads((directory / sub / "config.json").read_text())
            return config, load_file(directory / sub / "diffusion_pytorch_model.safetensors")

        encoder_config, encoder_state = read("ID_enc")
        denoiser_config, denoiser_state = read("denoising_unet")
        vae_config, vae_state = read("vae")
        denoiser = UNetConfig.from_diffusers(denoiser_config)
        config = MagicFaceConfig(
            identity_encoder=UNetConfig.from_diffusers(encoder_config),
            denoiser=denoiser.replace(au_dim=denoiser_state[f"{AU_EMBED_NAME}.weight"].shape[1]),
            vae=VAEConfig.from_diffusers(vae_config),
        )
        model = cls(config)
        model.identity_encoder.unet.load_state_dict(encoder_state)
        model.denoiser.load_magicface_state_dict(denoiser_state)
        model.vae.load_state_dict(vae_state)
        return model.eval()


def authors_unipc(scheduler_config: dict):
    """The authors' sampler: `UniPCMultistepScheduler.from_config(<SD1.5 config>)` as their pinned diffusers
    (0.25) computes it; newer diffusers need `final_sigmas_type="sigma_min"` for the same last step."""
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler.from_config(scheduler_config, final_sigmas_type="sigma_min")


@torch.no_grad()
def authors_edit(
    model: TorchMagicFace,
    source: torch.Tensor,
    background: torch.Tensor,
    au: torch.Tensor,
    prompt_embeds: torch.Tensor,
    scheduler,
    num_inference_steps: int,
    guidance_scale: float,
    latents: torch.Tensor,
    decode: bool = True,
) -> torch.Tensor:
    """The authors' sampling loop, step for step: images (B, 3, H, W) in [-1, 1] -> images in [0, 1]
    (or the final latents with `decode=False`).

    As their pipeline does it: source and background latents are the unscaled posterior modes; guidance is
    on for scales ≥ 1 over the batch [AU ; AU = 0] with everything else duplicated; the identity encoder runs
    once, at timestep 0, on the duplicated batch; the noise prediction makes a round trip through x-space
    when the scheduler has `sigmas` (UniPC does); the final latents are divided by the scaling factor.
    """
    scheduler.set_timesteps(num_inference_steps)
    guided = guidance_scale >= 1.0

    def double(x):
        return torch.cat([x, x]) if guided else x

    source_latents = double(model.vae.encode(source).latent_dist.mode())
    background_latents = double(model.vae.encode(background).latent_dist.mode())
    au = torch.cat([au, torch.zeros_like(au)]) if guided else au
    prompt = prompt_embeds.expand(source_latents.shape[0], -1, -1)
    features = model.identity_encoder(source_latents, prompt)
    latents = latents * scheduler.init_noise_sigma
    in_sigma_space = hasattr(scheduler, "sigmas")
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(double(latents), t)
        noise_pred = model.denoiser(model_input, background_latents, au, t, features, prompt)
        if in_sigma_space:
            sigma = scheduler.sigmas[(scheduler.timesteps == t).nonzero()[0].item()]
            noise_pred = model_input - sigma * noise_pred
        if guided:
            cond, uncond = noise_pred.chunk(2)
            noise_pred = uncond + guidance_scale * (cond - uncond)
        if in_sigma_space:
            noise_pred = (noise_pred - latents) / (-sigma)
        latents = scheduler.step(noise_pred, t, latents).prev_sample
    if not decode:
        return latents
    images = model.vae.decode(latents / model.vae.config.scaling_factor).sample
    return (images / 2 + 0.5).clamp(0, 1)
