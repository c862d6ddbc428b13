"""PyTorch -> orbax and orbax -> PyTorch for the whole MagicFace model.

`to_orbax` reads SD (diffusers folder or single file) and, optionally, the authors' MagicFace release; without
the release it initialises a new MagicFace from SD for training. `to_pytorch` writes the authors' layout.
Both check every source before writing anything, hold one network at a time, and leave nothing behind on
failure.
"""

from __future__ import annotations

import json
import resource
from collections.abc import Callable
from pathlib import Path

import numpy as np

from magicface_jax import atomic, checkpoint
from magicface_jax.config import AUTHORS_PROMPT, MagicFaceConfig, UNetConfig, VAEConfig
from magicface_jax.convert.layouts import (
    Network,
    read_magicface,
    read_sd,
    sd_initialised_denoiser,
)
from magicface_jax.convert.names import leaves, network_table
from magicface_jax.convert.safetensors_file import write_safetensors
from magicface_jax.convert.tensors import (
    check_flax_params,
    check_keys,
    check_shapes,
    to_flax_params,
    to_torch_array,
)
from magicface_jax.errors import MagicFaceError

# Folder names of the authors' release, and the class names their `config.json` files carry.
AUTHORS_FOLDERS = {
    "identity_encoder": ("ID_enc", "UNetID2DConditionModel"),
    "denoiser": ("denoising_unet", "UNetDeno2DConditionModel"),
    "vae": ("vae", "AutoencoderKL"),
}
WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"
# Marks a folder written by `to_pytorch`, so that `overwrite` may replace it (and no other folder).
EXPORT_MANIFEST = "magicface_export.json"
EXPORT_FORMAT = "magicface-jax-pytorch-export/1"
EARLIER_EXPORT = atomic.Manifest(EXPORT_MANIFEST, (EXPORT_FORMAT,))
STORAGE_DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": "bfloat16"}

Log = Callable[[str], None]


def _storage_dtype(name: str):
    if name not in STORAGE_DTYPES:
        raise MagicFaceError(f"--dtype {name!r} is not one of {', '.join(STORAGE_DTYPES)}")
    dtype = STORAGE_DTYPES[name]
    if dtype == "bfloat16":
        import ml_dtypes

        return ml_dtypes.bfloat16
    return dtype


def peak_memory_bytes() -> int:
    """Peak resident memory of this process so far (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _check_networks(identity: UNetConfig, denoiser: UNetConfig, vae: VAEConfig) -> None:
    """The three networks fit together: both UNets work on the VAE's latents, with the same layout."""
    latent = vae.latent_channels
    channels = {"identity encoder": (identity, latent), "denoiser": (denoiser, 2 * latent)}
    for what, (config, inputs) in channels.items():
        if (config.in_channels, config.out_channels) != (inputs, latent):
            raise MagicFaceError(
                f"the {what} has in_channels={config.in_channels} and out_channels={config.out_channels}; "
                f"with the VAE's {latent} latent channels it needs {inputs} and {latent}: "
                "is this the right model?"
            )
    as_encoder = denoiser.replace(
        in_channels=identity.in_channels, au_dim=0, sample_size=identity.sample_size
    )
    if as_encoder != identity:
        raise MagicFaceError(
            "identity encoder and denoiser differ in layout; their transformer blocks must match one to one"
        )


def to_orbax(
    sd: str | Path,
    out: str | Path,
    magicface: str | Path | None = None,
    tokenizer: str | Path | None = None,
    prompt: str = AUTHORS_PROMPT,
    dtype: str = "float32",
    overwrite: bool = False,
    log: Log = print,
) -> checkpoint.CheckpointInfo:
    storage = _storage_dtype(dtype)
    sd = atomic.user_path(sd)
    magicface = None if magicface is None else atomic.user_path(magicface)
    tokenizer = None if tokenizer is None else atomic.user_path(tokenizer)
    inputs = (sd, magicface, tokenizer)
    out = checkpoint.check_output(out, overwrite, inputs)
    stable_diffusion = read_sd(sd, tokenizer)
    if magicface is not None:
        identity, denoiser = read_magicface(magicface, stable_diffusion.vae.config.latent_channels)
        origin = {"magicface": str(magicface)}
    else:
        identity, denoiser = stable_diffusion.unet, sd_initialised_denoiser(stable_diffusion.unet)
        origin = {"initialised_from_sd": True}
    _check_networks(identity.config, denoiser.config, stable_diffusion.vae.config)
    networks: dict[str, Network] = {
        "identity_encoder": identity,
        "denoiser": denoiser,
        "vae": stable_diffusion.vae,
    }
    tables = {name: network_table(net.config) for name, net in networks.items()}
    for name, net in networks.items():  # every check before the first byte is written
        check_keys(net.source, tables[name], name.replace("_", " "))
        check_shapes(net.source, tables[name], name.replace("_", " "))

    config = MagicFaceConfig(
        identity_encoder=identity.config,
        denoiser=denoiser.config,
        vae=stable_diffusion.vae.config,
        prompt=prompt,
    )
    info = checkpoint.CheckpointInfo(
        config=config,
        scheduler=stable_diffusion.scheduler,
        param_dtype=dtype,
        source={"sd": str(sd), "sd_layout": stable_diffusion.kind, **origin},
    )
    with checkpoint.writing_checkpoint(out, overwrite, inputs) as writer:
        for name, net in networks.items():
            params = to_flax_params(net.source, tables[name], name.replace("_", " "), storage)
            count = sum(a.size for _, a in leaves(params))
            writer.write_params(name, params)
            del params
            log(f"{name}: {len(tables[name])} tensors, {count / 1e6:.1f}M parameters")
        log(f"prompt embedding of {prompt!r}")
        writer.write_prompt_embeds(stable_diffusion.encode_prompt(prompt))
        writer.finish(info)
    log(f"wrote {out}; peak memory {peak_memory_bytes() / 2**30:.2f} GiB")
    return info


def to_pytorch(
    checkpoint_dir: str | Path,
    out: str | Path,
    dtype: str | None = None,
    overwrite: bool = False,
    log: Log = print,
) -> None:
    """Writes `ID_enc/`, `denoising_unet/`, `vae/` (diffusers folders: config.json + safetensors), plus
    `scheduler/scheduler_config.json`, `prompt_embeds.safetensors` and `magicface_export.json` (which marks
    the folder as an export that `overwrite` may replace). Tensors are converted and written
    one at a time."""
    checkpoint_dir = atomic.user_path(checkpoint_dir)
    out = atomic.check_output(
        out, (checkpoint_dir,), overwrite=overwrite, folder=True, manifest=EARLIER_EXPORT
    )
    info = checkpoint.read_info(checkpoint_dir)
    storage = np.dtype(_storage_dtype(dtype or info.param_dtype))
    with atomic.atomic_directory(
        out, overwrite, manifest=EARLIER_EXPORT, inputs=(checkpoint_dir,)
    ) as partial:
        for name, (folder, class_name) in AUTHORS_FOLDERS.items():
            net_config = getattr(info.config, name)
            rows = {row.torch_key: row for row in network_table(net_config)}
            params = checkpoint.read_params(checkpoint_dir, name)
            check_flax_params(params, rows.values())
            (partial / folder).mkdir()
            diffusers_config = net_config.to_diffusers() | {"_class_name": class_name}
            (partial / folder / "config.json").write_text(json.dumps(diffusers_config, indent=2))
            write_safetensors(
                partial / folder / WEIGHTS_FILE,
                {key: (storage, row.torch_shape) for key, row in rows.items()},
                lambda key, params=params, rows=rows: to_torch_array(params, rows[key], storage),
                metadata={"format": "pt"},
            )
            del params
            log(f"{folder}/: {len(rows)} tensors")
        (partial / "scheduler").mkdir()
        (partial / "scheduler" / "scheduler_config.json").write_text(json.dumps(info.scheduler, indent=2))
        prompt = checkpoint.read_prompt_embeds(checkpoint_dir)
        write_safetensors(
            partial / "prompt_embeds.safetensors",
            {"prompt_embeds": (prompt.dtype, prompt.shape)},
            lambda _: prompt,
            metadata={"format": "pt"},
        )
        export = {"format": EXPORT_FORMAT, "checkpoint": str(checkpoint_dir)}
        (partial / EXPORT_MANIFEST).write_text(json.dumps(export, indent=2))
    log(f"wrote {out}; peak memory {peak_memory_bytes() / 2**30:.2f} GiB")
