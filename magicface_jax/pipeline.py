"""`MagicFacePipeline`: edit a portrait's expression by AU changes, as one compiled program.

    pipe = MagicFacePipeline.from_pretrained(ckpt_dir)
    images = pipe(face, background, {"AU12": 4})              # PIL images

What one call computes, as the authors' pipeline does: the source and background latents are the VAE's
posterior means, unscaled; the identity features come from one identity-encoder pass at timestep 0 (and
their self-attention keys/values from one more small pass, reused at every step); the denoising loop runs
the chosen sampler with AU guidance over the batch [AU-conditional ; AU = 0], combined as
uncond + s·(cond − uncond); the final latents are divided by the VAE scaling factor and decoded.

The loop and the decode are one jitted program (`lax.scan` over the steps), compiled once per (shapes,
steps, sampler, guided or not). A batch of edits is split over every device of the mesh with `shard_map`:
each device runs the whole program on its own edits, with no communication.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P
from PIL import Image

from magicface_jax import checkpoint
from magicface_jax.atomic import user_path
from magicface_jax.config import MagicFaceConfig, VAEConfig
from magicface_jax.convert.names import get_path, network_table
from magicface_jax.diffusion import NoiseSchedule, Sampler, make_sampler, sample_loop
from magicface_jax.errors import MagicFaceError
from magicface_jax.faces.aus import AU_NAMES, NUM_AUS, au_vector, out_of_range, parse_edit
from magicface_jax.images import ImageLike, as_batch, check_image_size, to_model_input, to_uint8
from magicface_jax.models.magicface import COMPONENTS, MagicFace, Params
from magicface_jax.nn.cpu_kernels import SAMPLING
from magicface_jax.parallel.mesh import (
    DATA,
    batch_sharded,
    data_mesh,
    pad_batch,
    replicate,
    to_global,
    to_host,
)

OUTPUT_TYPES = ("pil", "np", "latent")
PARALLELISMS = ("shard_map", "pmap")
DEFAULT_GUIDANCE = 3.0  # the paper's best (Table IV); the authors' script uses 1.5
COMPUTE_DTYPES = ("float32", "bfloat16")
MAX_SEED = 2**32 - 1

AUInput = str | Mapping[str, float] | Sequence[float] | np.ndarray


def check_guidance(scale: object) -> float:
    """The guidance scale as a float, or a clear error: the one check of it."""
    if isinstance(scale, bool) or not isinstance(scale, int | float | np.integer | np.floating):
        raise MagicFaceError(f"guidance scale must be a number, got {scale!r}")
    if not np.isfinite(scale) or scale < 0:
        raise MagicFaceError(
            f"guidance scale must be ≥ 0, got {scale!r} (3.0 is the paper's best, 1.5 the authors' script's)"
        )
    return float(scale)


def check_seed(seed: object, where: str = "seed") -> int:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or not 0 <= seed <= MAX_SEED:
        raise MagicFaceError(f"{where} must be a whole number in 0..{MAX_SEED}, got {seed!r}")
    return int(seed)


def check_dtype(dtype: object) -> str | None:
    """A compute dtype override: None (the checkpoint's) or one of `COMPUTE_DTYPES`."""
    if dtype is not None and dtype not in COMPUTE_DTYPES:
        raise MagicFaceError(f"unknown compute dtype {dtype!r}: use one of {', '.join(COMPUTE_DTYPES)}")
    return dtype


def initial_noise(vae: VAEConfig, seed: int, batch: int, height: int, width: int) -> np.ndarray:
    """Unit Gaussian noise (batch, h, w, C) for images of height × width: the one place it is drawn."""
    shape = (batch, height // vae.downsample_factor, width // vae.downsample_factor, vae.latent_channels)
    return np.asarray(jax.random.normal(jax.random.key(check_seed(seed)), shape, jnp.float32))


def guided_denoiser(
    model: MagicFace, params: Params, prompt_embeds, background_latents, au, identity_kv, scale
):
    """`denoise_fn(latents, t)` with AU guidance: uncond + scale·(cond − uncond).

    Each edit's conditional and unconditional rows sit next to each other ([x0, x0, x1, x1, ...]) rather
    than in two halves, so a batch split over devices keeps each pair on one device. Rows do not interact,
    so the result is the authors' [cond ; uncond] batch's.
    """

    def pair(x):
        return jnp.repeat(x, 2, axis=0)

    au_pairs = jnp.stack([au, jnp.zeros_like(au)], axis=1).reshape(-1, au.shape[-1])
    kv_pairs = [(pair(k), pair(v)) for k, v in identity_kv]
    background_pairs = pair(background_latents)

    def denoise(latents, t):
        eps = model.predict_noise(
            params, pair(latents), background_pairs, au_pairs, t, kv_pairs, prompt_embeds
        ).reshape(-1, 2, *latents.shape[1:])
        cond, uncond = eps[:, 0], eps[:, 1]
        return uncond + scale * (cond - uncond)

    return denoise


def edit_program(
    model: MagicFace,
    params: Params,
    prompt_embeds: jax.Array,
    sources: jax.Array,
    backgrounds: jax.Array,
    au: jax.Array,
    noise: jax.Array,
    scale: jax.Array,
    sampler: Sampler,
    *,
    guided: bool,
    decode: bool,
) -> jax.Array:
    """The whole edit for a batch: images in [-1, 1] -> images in [0, 1] (or final latents)."""
    vae, denoiser = params["vae"], params["denoiser"]
    source_latents = model.vae_encode(vae, sources)[0]
    background_latents = model.vae_encode(vae, backgrounds)[0]
    features = model.identity_features(params["identity_encoder"], source_latents, prompt_embeds)
    identity_kv = model.identity_kv(denoiser, features)
    if guided:
        denoise = guided_denoiser(model, denoiser, prompt_embeds, background_latents, au, identity_kv, scale)
    else:

        def denoise(latents, t):
            return model.predict_noise(
                denoiser, latents, background_latents, au, t, identity_kv, prompt_embeds
            )

    latents = sample_loop(sampler, denoise, noise)
    if not decode:
        return latents
    images = model.vae_decode(vae, latents / model.config.vae.scaling_factor)
    return jnp.clip(images / 2 + 0.5, 0.0, 1.0)


@functools.cache
def sharded_edit_program(model: MagicFace, mesh: Mesh, guided: bool, decode: bool):
    """`edit_program` jitted with `shard_map` over the mesh's data axis. Cached by (model, mesh, flags), so
    pipelines of one config share their compilations."""
    per_device = functools.partial(edit_program, model, guided=guided, decode=decode)
    batch = P(DATA)
    mapped = jax.shard_map(
        per_device,
        mesh=mesh,
        in_specs=(P(), P(), batch, batch, batch, batch, P(), P()),
        out_specs=batch,
        check_vma=False,
    )
    return jax.jit(mapped)


@functools.cache
def pmap_edit_program(model: MagicFace, devices: tuple[jax.Device, ...], guided: bool, decode: bool):
    """`edit_program` under `jax.pmap` over `devices` (every process's, in mesh order): parameters stacked
    per device, inputs split along a leading axis of this process's device count."""
    per_device = functools.partial(edit_program, model, guided=guided, decode=decode)
    return jax.pmap(per_device, in_axes=(0, 0, 0, 0, 0, 0, None, None), devices=devices)


def local_devices(mesh: Mesh) -> list[jax.Device]:
    """The mesh's devices that belong to this process, in mesh order."""
    return [d for d in mesh.devices.flat if d.process_index == jax.process_index()]


def place_weights(tree, mesh: Mesh, parallelism: str):
    """Parameters (and prompt) placed for a program: for "shard_map" replicated over the mesh, for "pmap"
    stacked along a new leading axis, one slice per local device (the classic pmap placement). Either way
    every device holds one copy."""
    if parallelism == "pmap":
        devices = local_devices(mesh)
        stacked = batch_sharded(data_mesh(devices))
        return jax.tree.map(
            lambda leaf: jax.device_put(np.broadcast_to(to_host(leaf), (len(devices), *leaf.shape)), stacked),
            tree,
        )
    return replicate(tree, mesh)


def edit_call(
    model: MagicFace,
    mesh: Mesh,
    parallelism: str,
    weights: tuple,
    arrays: Sequence[np.ndarray],
    scale: jax.Array,
    sampler: Sampler,
    *,
    guided: bool,
    decode: bool,
) -> tuple[Callable, tuple]:
    """The program of `parallelism` over `mesh` and its arguments. `weights`: (parameters, prompt) from
    `place_weights`; `arrays`: the host batches of `program_inputs`, padded to split evenly over the
    devices (shard_map: along the batch; pmap: along a new leading axis of the local device count)."""
    if parallelism == "pmap":
        devices = local_devices(mesh)
        stacked, count = batch_sharded(data_mesh(devices)), len(devices)
        split = [
            jax.device_put(pad_batch(a, count).reshape(count, -1, *a.shape[1:]), stacked) for a in arrays
        ]
        program = pmap_edit_program(model, tuple(mesh.devices.flat), guided, decode)
        return program, (*weights, *split, scale, sampler)
    sharding = batch_sharded(mesh)
    sharded = [to_global(pad_batch(a, mesh.devices.size), sharding) for a in arrays]
    return sharded_edit_program(model, mesh, guided, decode), (*weights, *sharded, scale, sampler)


def program_inputs(request: EditRequest) -> list[np.ndarray]:
    """The edit program's batched inputs on the host: sources, backgrounds, AU, noise."""
    return [to_model_input(request.sources), to_model_input(request.backgrounds), request.au, request.noise]


@functools.partial(jax.jit, static_argnums=0)
def _vae_encode(model: MagicFace, params: Params, images: jax.Array) -> jax.Array:
    return model.vae_encode(params["vae"], images)[0]


@functools.partial(jax.jit, static_argnums=0)
def _vae_decode(model: MagicFace, params: Params, latents: jax.Array) -> jax.Array:
    return model.vae_decode(params["vae"], latents)


@functools.partial(jax.jit, static_argnums=0)
def _identity_features(model: MagicFace, params: Params, prompt_embeds, latents) -> list[jax.Array]:
    return model.identity_features(params["identity_encoder"], latents, prompt_embeds)


@functools.partial(jax.jit, static_argnums=0)
def _predict_noise(
    model: MagicFace, params: Params, prompt_embeds, noisy, background, au, timestep, features
):
    kv = model.identity_kv(params["denoiser"], features)
    return model.predict_noise(params["denoiser"], noisy, background, au, timestep, kv, prompt_embeds)


@dataclasses.dataclass(frozen=True)
class EditRequest:
    """One call's inputs, validated and batched on the host."""

    sources: np.ndarray  # uint8 (B, H, W, 3)
    backgrounds: np.ndarray  # uint8 (B, H, W, 3)
    au: np.ndarray  # float32 (B, 12)
    noise: np.ndarray  # float32 (B, h, w, C), unit Gaussian

    @property
    def batch(self) -> int:
        return len(self.sources)


def check_params(params: Params, config: MagicFaceConfig) -> None:
    """Every parameter the config needs is present with its shape (a damaged checkpoint fails here)."""
    for name in COMPONENTS:
        for row in network_table(getattr(config, name)):
            try:
                shape = np.shape(get_path(params[name], row.flax_path))
            except KeyError:
                raise MagicFaceError(
                    f"checkpoint lacks {name}/{'/'.join(row.flax_path)}: it is incomplete; convert it again"
                ) from None
            if shape != row.flax_shape:
                raise MagicFaceError(
                    f"checkpoint's {name}/{'/'.join(row.flax_path)} has shape {shape}, the config says "
                    f"{row.flax_shape}; convert it again"
                )


class MagicFacePipeline:
    """MagicFace for inference. Parameters are replicated on every device of `mesh` (default: all)."""

    def __init__(
        self,
        config: MagicFaceConfig,
        params: Params,
        prompt_embeds: np.ndarray,
        schedule: NoiseSchedule,
        mesh: Mesh | None = None,
        default_steps: int = checkpoint.AUTHORS_STEPS,
    ):
        check_params(params, config)
        self.config = config
        self.default_steps = default_steps  # the checkpoint's measured steps, else the authors' 50
        self.model = MagicFace(config, kernels=SAMPLING)
        self.schedule = schedule
        self.mesh = mesh if mesh is not None else data_mesh()
        self.params = replicate(params, self.mesh)
        self.prompt_embeds = replicate(np.asarray(prompt_embeds, np.float32), self.mesh)
        self._replicas = None  # parameters stacked per local device, for parallelism="pmap"

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, dtype: str | None = None, mesh: Mesh | None = None
    ) -> MagicFacePipeline:
        """From an orbax checkpoint written by `convert_weights.py`. `dtype`: compute dtype override
        ("float32", "bfloat16"); parameters are loaded as float32 whatever their storage dtype."""
        directory = user_path(directory)
        dtype = check_dtype(dtype)
        info = checkpoint.read_info(directory)
        config = info.config if dtype is None else dataclasses.replace(info.config, dtype=dtype)
        params = {name: checkpoint.read_params(directory, name, np.float32) for name in COMPONENTS}
        return cls(
            config,
            params,
            checkpoint.read_prompt_embeds(directory),
            NoiseSchedule.from_diffusers(info.scheduler),
            mesh,
            info.default_steps,
        )

    @property
    def num_devices(self) -> int:
        return self.mesh.devices.size

    # ------------------------------------------------------------------------------- building blocks

    def vae_encode(self, images) -> jax.Array:
        """(B, H, W, 3) float in [-1, 1] -> latent mean (B, H/8, W/8, 4), NOT multiplied by the scaling
        factor (the identity and background latents are used unscaled)."""
        return _vae_encode(self.model, self.params, jnp.asarray(images, jnp.float32))

    def vae_decode(self, latents) -> jax.Array:
        """Latents -> raw decoder output (B, H, W, 3); no scaling applied."""
        return _vae_decode(self.model, self.params, jnp.asarray(latents, jnp.float32))

    def _check_latents(self, latents: jax.Array, what: str) -> jax.Array:
        """Latents the UNet can halve evenly at every level (the image-size rule, in latent pixels)."""
        if latents.ndim != 4:
            raise MagicFaceError(
                f"{what} have shape {latents.shape}; expected (batch, height, width, channels)"
            )
        check_image_size(latents.shape[1], latents.shape[2], self.config.denoiser.downsample_factor, what)
        return latents

    def identity_features(self, source_latents) -> list[jax.Array]:
        """One (B, tokens, C) array per transformer block (16 for SD1.5), from the unscaled source latents."""
        latents = self._check_latents(jnp.asarray(source_latents, jnp.float32), "source latents")
        return _identity_features(self.model, self.params, self.prompt_embeds, latents)

    def predict_noise(self, noisy_latents, background_latents, au, timestep, identity_features) -> jax.Array:
        """ε-prediction (B, h, w, 4); `au` (B, 12) ordered as `AU_NAMES`; `timestep` int, float or (B,)."""
        return _predict_noise(
            self.model,
            self.params,
            self.prompt_embeds,
            self._check_latents(jnp.asarray(noisy_latents, jnp.float32), "noisy latents"),
            jnp.asarray(background_latents, jnp.float32),
            jnp.asarray(au, jnp.float32),
            jnp.asarray(timestep, jnp.float32),
            identity_features,
        )

    # ----------------------------------------------------------------------------------------- edits

    def prepare(
        self,
        source: ImageLike | Sequence[ImageLike],
        background: ImageLike | Sequence[ImageLike],
        au: AUInput | Sequence[AUInput],
        seed: int = 0,
        latents: np.ndarray | None = None,
    ) -> EditRequest:
        """Validates and batches one call's inputs; a single source, background or AU is broadcast."""
        check_seed(seed)
        sources, backgrounds = as_batch(source, "source"), as_batch(background, "background")
        if sources.shape[1:] != backgrounds.shape[1:]:
            raise MagicFaceError(
                f"source is {sources.shape[2]}x{sources.shape[1]} but background is "
                f"{backgrounds.shape[2]}x{backgrounds.shape[1]}: they must have the same size"
            )
        check_image_size(sources.shape[1], sources.shape[2], self.config.size_multiple, "source")
        au_batch = _au_batch(au)
        batch = max(len(sources), len(backgrounds), len(au_batch))
        sources, backgrounds, au_batch = (
            _broadcast(x, batch, what)
            for x, what in ((sources, "source"), (backgrounds, "background"), (au_batch, "AU"))
        )
        height, width = sources.shape[1:3]
        if latents is None:
            noise = initial_noise(self.config.vae, seed, batch, height, width)
        else:
            factor = self.config.vae.downsample_factor
            latent_shape = (batch, height // factor, width // factor, self.config.vae.latent_channels)
            noise = np.asarray(latents, np.float32)
            if noise.shape != latent_shape:
                raise MagicFaceError(f"latents have shape {noise.shape}; this edit needs {latent_shape}")
        outside = out_of_range(au_batch)
        if outside:
            warnings.warn(
                f"AU variation of {', '.join(outside)} lies outside [-10, 10]; "
                "the authors report distortion there",
                stacklevel=3,
            )
        return EditRequest(sources, backgrounds, au_batch, noise)

    def compiled(
        self,
        request: EditRequest,
        sampler: Sampler,
        guidance_scale: float,
        output_type: str = "pil",
        parallelism: str = "shard_map",
    ):
        """The compiled program and its arguments for a request (benchmarks use it for cost analysis and
        timing). `parallelism`: "shard_map" over the mesh, or "pmap" over the mesh's devices."""
        weights = self._pmap_replicas() if parallelism == "pmap" else (self.params, self.prompt_embeds)
        guided, decode = guidance_scale != 1.0, output_type != "latent"
        return edit_call(
            self.model,
            self.mesh,
            parallelism,
            weights,
            program_inputs(request),
            jnp.float32(guidance_scale),
            sampler,
            guided=guided,
            decode=decode,
        )

    def __call__(
        self,
        source: ImageLike | Sequence[ImageLike],
        background: ImageLike | Sequence[ImageLike],
        au: AUInput | Sequence[AUInput],
        num_inference_steps: int | None = None,
        guidance_scale: float = DEFAULT_GUIDANCE,
        scheduler: str = "unipc",
        seed: int = 0,
        latents: np.ndarray | None = None,
        output_type: str = "pil",
        parallelism: str = "shard_map",
    ) -> list[Image.Image] | np.ndarray:
        """Edits: `au` is a dict such as {"AU4": 4, "AU1": 2}, a string such as "AU4=+4,AU1=+2", a list of
        those, or a (12,) or (B, 12) array (target − identity).

        Returns PIL images, a float array in [0, 1] (B, H, W, 3) for "np", or the final latents for "latent".
        Steps default to the checkpoint's measured ones (`CheckpointInfo.sampling`), else the authors' 50.
        The authors' script uses guidance 1.5; the default is the paper's best, 3.0. At 1.0 only the
        conditional branch runs (same result, half the work). `parallelism="pmap"` runs the classic
        `jax.pmap` over the mesh's devices instead of `shard_map` over the mesh (same results).
        """
        if parallelism not in PARALLELISMS:
            raise MagicFaceError(f"parallelism {parallelism!r} is not one of {', '.join(PARALLELISMS)}")
        if num_inference_steps is None:
            num_inference_steps = self.default_steps
        sampler = self.make_sampler(scheduler, num_inference_steps, guidance_scale, output_type)
        request = self.prepare(source, background, au, seed, latents)
        program, args = self.compiled(request, sampler, guidance_scale, output_type, parallelism)
        result = to_host(program(*args))
        if parallelism == "pmap":
            result = result.reshape(-1, *result.shape[2:])
        result = result[: request.batch]
        if output_type == "pil":
            return [Image.fromarray(image) for image in to_uint8(result)]
        return result

    def _pmap_replicas(self):
        if self._replicas is None:
            self._replicas = place_weights((self.params, self.prompt_embeds), self.mesh, "pmap")
        return self._replicas

    def make_sampler(self, name: str, steps: int, guidance_scale: float, output_type: str = "pil") -> Sampler:
        """Checks the settings of a call and builds its sampler (which checks its name and steps)."""
        check_guidance(guidance_scale)
        if output_type not in OUTPUT_TYPES:
            raise MagicFaceError(f"output_type {output_type!r} is not one of {', '.join(OUTPUT_TYPES)}")
        return make_sampler(name, self.schedule, steps)


def _edit_vector(edit: str | Mapping[str, float]) -> np.ndarray:
    return au_vector(parse_edit(edit) if isinstance(edit, str) else edit)


def _au_batch(au: AUInput | Sequence[AUInput]) -> np.ndarray:
    """(B, 12) float32 from a dict, a string "AU4=+2,AU1=-1", a list of those, or a (12,) / (B, 12) array."""
    if isinstance(au, str | Mapping):
        return _edit_vector(au)[None]
    if isinstance(au, Sequence) and au and all(isinstance(a, str | Mapping) for a in au):
        return np.stack([_edit_vector(a) for a in au])
    try:
        array = np.asarray(au, np.float32)
    except (TypeError, ValueError):
        raise MagicFaceError(
            f"AU input {au!r:.80} is not numbers: give a dict such as {{'AU12': 4}}, a string such as "
            f"'AU12=+4,AU4=-2', or a ({NUM_AUS},) or (B, {NUM_AUS}) array"
        ) from None
    if array.shape == (NUM_AUS,):
        array = array[None]
    if array.ndim != 2 or array.shape[1] != NUM_AUS:
        raise MagicFaceError(f"AU input has shape {array.shape}; expected ({NUM_AUS},) or (B, {NUM_AUS})")
    bad = ~np.isfinite(array).all(axis=0)
    if bad.any():
        names = ", ".join(AU_NAMES[i] for i in np.flatnonzero(bad))
        raise MagicFaceError(f"AU input holds NaN or infinite values (in {names}): give finite variations")
    return array


def _broadcast(array: np.ndarray, batch: int, what: str) -> np.ndarray:
    if len(array) == batch:
        return array
    if len(array) == 1:
        return np.repeat(array, batch, axis=0)
    raise MagicFaceError(f"{len(array)} {what} inputs for a batch of {batch}: give 1 or {batch}")
