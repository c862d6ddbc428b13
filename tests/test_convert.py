"""PyTorch <-> orbax conversion: exact values, round trips, the SD-initialised model, the original
single-file layout (checked against diffusers' own converters) and bad inputs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from safetensors.torch import save_file

import convert_weights
from magicface_jax import checkpoint, cli
from magicface_jax.config import AU_EMBED_NAME, tiny_magicface_config
from magicface_jax.convert import ldm
from magicface_jax.convert.convert import to_orbax, to_pytorch
from magicface_jax.convert.names import get_path, network_table
from magicface_jax.errors import MagicFaceError

REPO = Path(__file__).resolve().parents[1]
QUIET = {"log": lambda _: None}


def row_value(state: dict[str, torch.Tensor], row) -> np.ndarray:
    """A PyTorch tensor in the Flax layout of its table row."""
    from magicface_jax.convert.names import to_flax

    return to_flax(row.kind, state[row.torch_key].numpy())


def flax_leaf(params, torch_key: str, config) -> np.ndarray:
    row = next(r for r in network_table(config) if r.torch_key == torch_key)
    return np.asarray(get_path(params, row.flax_path))


def assert_same_params(ours: Path, expected: Path, names: tuple[str, ...]) -> None:
    """The named networks of two checkpoints hold identical parameters, path by path."""
    for name in names:
        got, want = checkpoint.read_params(ours, name), checkpoint.read_params(expected, name)
        for row in network_table(getattr(tiny_magicface_config(), name)):
            np.testing.assert_array_equal(get_path(got, row.flax_path), get_path(want, row.flax_path))


def test_release_converts_exactly(converted, torch_model):
    info = checkpoint.read_info(converted)
    assert info.config == tiny_magicface_config()
    assert info.scheduler["beta_schedule"] == "scaled_linear"
    denoiser = checkpoint.read_params(converted, "denoiser")
    state = torch_model.denoiser.magicface_state_dict()
    for key in ("conv_in.weight", f"{AU_EMBED_NAME}.weight", "down_blocks.0.attentions.1.proj_in.weight"):
        expected = state[key].numpy()
        ours = flax_leaf(denoiser, key, info.config.denoiser)
        layout = (2, 3, 1, 0) if expected.ndim == 4 else (1, 0)
        np.testing.assert_array_equal(ours, expected.transpose(layout))
    assert checkpoint.read_prompt_embeds(converted).shape == (1, 77, 32)


def test_round_trip_is_bit_identical(converted, sd_folder, release_folder, tmp_path):
    out = tmp_path / "pytorch"
    to_pytorch(converted, out, **QUIET)
    pairs = [
        (release_folder / "ID_enc", out / "ID_enc"),
        (release_folder / "denoising_unet", out / "denoising_unet"),
        (sd_folder / "vae", out / "vae"),
    ]
    for original, exported in pairs:
        ours = load_file(exported / "diffusion_pytorch_model.safetensors")
        theirs = load_file(original / "diffusion_pytorch_model.safetensors")
        assert ours.keys() == theirs.keys()
        for key in theirs:
            assert ours[key].dtype == theirs[key].dtype
            np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)
    config = json.loads((out / "denoising_unet" / "config.json").read_text())
    assert config["in_channels"] == 8 and config["_class_name"] == "UNetDeno2DConditionModel"
    assert (out / "scheduler" / "scheduler_config.json").is_file()


def test_exported_weights_load_into_the_reference(converted, torch_model, tmp_path):
    from tests.torch_reference import TorchMagicFace

    to_pytorch(converted, tmp_path / "pytorch", **QUIET)
    loaded = TorchMagicFace.from_pretrained(tmp_path / "pytorch")
    for ours, theirs in zip(loaded.state_dict().values(), torch_model.state_dict().values(), strict=True):
        assert torch.equal(ours, theirs)


def test_half_precision_release_round_trips(sd_folder, torch_model, tmp_path):
    from tests.fixtures import write_release_folder

    release = write_release_folder(tmp_path / "fp16", torch_model, dtype=torch.float16)
    to_orbax(sd_folder, tmp_path / "ckpt", magicface=release, **QUIET)
    to_pytorch(tmp_path / "ckpt", tmp_path / "back", dtype="float16", **QUIET)
    for folder in ("ID_enc", "denoising_unet"):
        ours = load_file(tmp_path / "back" / folder / "diffusion_pytorch_model.safetensors")
        theirs = load_file(release / folder / "diffusion_pytorch_model.safetensors")
        for key in theirs:
            assert ours[key].dtype == np.float16
            np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)


def test_bfloat16_storage(sd_folder, release_folder, tmp_path):
    to_orbax(sd_folder, tmp_path / "ckpt", magicface=release_folder, dtype="bfloat16", **QUIET)
    assert checkpoint.read_info(tmp_path / "ckpt").param_dtype == "bfloat16"
    params = checkpoint.read_params(tmp_path / "ckpt", "vae")
    assert params["encoder"]["conv_in"]["kernel"].dtype.name == "bfloat16"


def test_sd_initialised_model(sd_folder, torch_model, tmp_path):
    """Without --magicface: both UNets from SD's UNet; the new input channels and the AU linear are zero."""
    to_orbax(sd_folder, tmp_path / "ckpt", **QUIET)
    info = checkpoint.read_info(tmp_path / "ckpt")
    assert info.config.denoiser.in_channels == 8 and info.config.denoiser.au_dim == 12
    sd_unet = torch_model.identity_encoder.unet.state_dict()
    encoder = checkpoint.read_params(tmp_path / "ckpt", "identity_encoder")
    denoiser = checkpoint.read_params(tmp_path / "ckpt", "denoiser")
    for row in network_table(info.config.identity_encoder):
        np.testing.assert_array_equal(get_path(encoder, row.flax_path), row_value(sd_unet, row))
        if row.torch_key != "conv_in.weight":
            np.testing.assert_array_equal(get_path(denoiser, row.flax_path), row_value(sd_unet, row))
    conv_in = denoiser["conv_in"]["kernel"]  # (3, 3, 8, C)
    np.testing.assert_array_equal(conv_in[:, :, :4], encoder["conv_in"]["kernel"])
    assert not conv_in[:, :, 4:].any()
    assert not denoiser[AU_EMBED_NAME]["kernel"].any() and not denoiser[AU_EMBED_NAME]["bias"].any()


def test_safetensors_streaming_matches_the_safetensors_package(tmp_path):
    """Our tensor-at-a-time reader and writer against the `safetensors` package, every dtype we store."""
    import ml_dtypes
    from safetensors.torch import load_file as load_torch

    from magicface_jax.convert.safetensors_file import write_safetensors
    from magicface_jax.convert.sources import SafetensorsSource

    rng = np.random.default_rng(0)
    arrays = {
        "w": rng.standard_normal((3, 4, 2, 2)).astype(np.float32),
        "h": rng.standard_normal(5).astype(np.float16),
        "b": rng.standard_normal((2, 3)).astype(ml_dtypes.bfloat16),
        "i": np.arange(7, dtype=np.int64),
        "empty": np.zeros((0, 3), np.float32),
    }

    def to_torch(array):
        if array.dtype == ml_dtypes.bfloat16:
            return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
        return torch.from_numpy(array)

    ours = tmp_path / "ours.safetensors"
    write_safetensors(ours, {k: (a.dtype, a.shape) for k, a in arrays.items()}, arrays.get, {"format": "pt"})
    theirs = tmp_path / "theirs.safetensors"
    save_file({k: to_torch(a) for k, a in arrays.items()}, theirs)
    loaded = load_torch(ours)
    source = SafetensorsSource(theirs)
    for key, array in arrays.items():
        assert torch.equal(loaded[key], to_torch(array)), key
        assert source.shape(key) == array.shape
        assert torch.equal(to_torch(source.get(key)), to_torch(array)), key


# ------------------------------------------------------------------------------------- single file


def _ldm_state(torch_model) -> dict[str, torch.Tensor]:
    """The tiny SD written in the original single-file layout, by our declared key functions."""
    config = tiny_magicface_config()
    state = {}
    for key, value in torch_model.identity_encoder.unet.state_dict().items():
        state[ldm.unet_ldm_key(key, config.identity_encoder)] = value
    for key, value in torch_model.vae.state_dict().items():
        value = value[:, :, None, None] if ldm.is_vae_attention_projection(key) else value
        state[ldm.vae_ldm_key(key, config.vae)] = value
    return state


def test_ldm_names_agree_with_diffusers_converters(torch_model):
    """diffusers' own single-file converters turn our original-layout names back into the diffusers state."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    state = _ldm_state(torch_model)
    unet = torch_model.identity_encoder.unet
    back = convert_ldm_unet_checkpoint(state, dict(unet.config))
    assert back.keys() == unet.state_dict().keys()
    assert all(torch.equal(back[k], v) for k, v in unet.state_dict().items())
    vae_back = convert_ldm_vae_checkpoint(state, dict(torch_model.vae.config))
    assert vae_back.keys() == torch_model.vae.state_dict().keys()
    assert all(torch.equal(vae_back[k].reshape(v.shape), v) for k, v in torch_model.vae.state_dict().items())


def test_single_file_converts_like_the_folder(
    monkeypatch, torch_model, sd_folder, release_folder, converted, tmp_path
):
    """A single file gives the same parameters and prompt embedding as the diffusers folder."""
    from transformers import CLIPTextModel

    from magicface_jax.convert import layouts

    text_encoder = CLIPTextModel.from_pretrained(sd_folder / "text_encoder")
    state = _ldm_state(torch_model) | {
        f"{ldm.CLIP_PREFIX}text_model.{k}": v for k, v in text_encoder.state_dict().items()
    }
    state["model_ema.decay"] = torch.tensor(0.9999)  # extra tensors outside the networks are ignored
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "sd.safetensors")
    # A single file names no config and the reader assumes SD1.x's; the tiny model has its own.
    tiny = tiny_magicface_config()
    configs = layouts.SingleFileConfigs(tiny.identity_encoder, tiny.vae, text_heads=2)
    monkeypatch.setattr(layouts, "single_file_configs", lambda source: configs)
    to_orbax(
        tmp_path / "sd.safetensors",
        tmp_path / "ckpt",
        magicface=release_folder,
        tokenizer=sd_folder / "tokenizer",
        **QUIET,
    )
    assert_same_params(tmp_path / "ckpt", converted, ("vae", "denoiser"))
    np.testing.assert_allclose(
        checkpoint.read_prompt_embeds(tmp_path / "ckpt"), checkpoint.read_prompt_embeds(converted), atol=1e-6
    )
    assert checkpoint.read_info(tmp_path / "ckpt").source["sd_layout"] == "single-file"


def test_authors_prompt_token_ids_need_no_tokenizer():
    from magicface_jax.config import AUTHORS_PROMPT
    from magicface_jax.convert.layouts import _single_file_token_ids

    ids = _single_file_token_ids(AUTHORS_PROMPT, None)
    assert len(ids) == 77 and ids[0] == 49406 and ids[8:] == [49407] * 69
    with pytest.raises(MagicFaceError, match="--tokenizer"):
        _single_file_token_ids("a portrait", None)


# -------------------------------------------------------------------------------------- bad inputs


def convert_cli(*argv: str) -> int:
    return cli.run(convert_weights.main, [str(a) for a in argv])


def assert_refused(capsys, out: Path, *argv, match: str):
    assert convert_cli(*argv, "--out", out) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    assert match in err, err
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}*")), "a partial output was left behind"


def test_missing_subfolder(sd_folder, tmp_path, capsys):
    broken = tmp_path / "sd"
    shutil.copytree(sd_folder, broken)
    shutil.rmtree(broken / "vae")
    assert_refused(capsys, tmp_path / "out", "--sd", broken, match="vae/")


def test_release_without_denoiser(sd_folder, release_folder, tmp_path, capsys):
    broken = tmp_path / "release"
    shutil.copytree(release_folder, broken)
    shutil.rmtree(broken / "denoising_unet")
    assert_refused(
        capsys, tmp_path / "out", "--sd", sd_folder, "--magicface", broken, match="denoising_unet/"
    )


def _edit_release(release_folder: Path, tmp_path: Path, edit) -> Path:
    broken = tmp_path / "release"
    shutil.copytree(release_folder, broken)
    weights = broken / "denoising_unet" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(weights)
    edit(tensors)
    from safetensors.numpy import save_file as save_numpy

    save_numpy(tensors, weights)
    return broken


def test_wrong_shape_names_key_and_shapes(sd_folder, release_folder, tmp_path, capsys):
    def shrink(tensors):
        tensors["conv_out.bias"] = tensors["conv_out.bias"][:3].copy()

    broken = _edit_release(release_folder, tmp_path, shrink)
    assert_refused(capsys, tmp_path / "out", "--sd", sd_folder, "--magicface", broken, match="conv_out.bias")


def test_unknown_and_missing_keys(sd_folder, release_folder, tmp_path, capsys):
    def add(tensors):
        tensors["extra.weight"] = np.zeros(3, np.float32)

    broken = _edit_release(release_folder, tmp_path, add)
    assert_refused(capsys, tmp_path / "out", "--sd", sd_folder, "--magicface", broken, match="extra.weight")

    def drop(tensors):
        del tensors["mid_block.resnets.0.conv1.bias"]

    broken = _edit_release(release_folder, tmp_path / "b", drop)
    assert_refused(capsys, tmp_path / "out", "--sd", sd_folder, "--magicface", broken, match="missing")


def test_not_a_checkpoint(tmp_path, capsys):
    fake = tmp_path / "model.safetensors"
    fake.write_text("this is not a checkpoint")
    assert_refused(capsys, tmp_path / "out", "--sd", fake, match="not a readable safetensors")
    other = tmp_path / "notes.txt"
    other.write_text("hello")
    assert_refused(capsys, tmp_path / "out", "--sd", other, match="unknown weights format")
    assert_refused(capsys, tmp_path / "out", "--sd", tmp_path / "nowhere", match="does not exist")


def test_existing_output_is_kept(sd_folder, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert convert_cli("--sd", sd_folder, "--out", out) == 2
    assert "already exists" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"


def test_incomplete_checkpoint_is_refused(converted, tmp_path, capsys):
    broken = tmp_path / "ckpt"
    shutil.copytree(converted, broken)
    shutil.rmtree(broken / "denoiser")
    assert_refused(capsys, tmp_path / "out", "--to-pytorch", "--checkpoint", broken, match="incomplete")
    assert_refused(capsys, tmp_path / "out", "--to-pytorch", match="--checkpoint")


def test_cli_exit_code_and_one_line(tmp_path):
    """The real entry point: exit status 2, one line on stderr, nothing written."""
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "convert_weights.py"),
            "--sd",
            str(tmp_path / "missing"),
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and result.stderr.startswith("error: ")
    assert not (tmp_path / "o").exists()


def test_bin_and_sharded_release_convert_like_safetensors(sd_folder, release_folder, converted, tmp_path):
    """The release's other file forms: a PyTorch pickle (.bin) and diffusers' sharded safetensors."""
    release = tmp_path / "release"
    shutil.copytree(release_folder, release)
    denoiser = release / "denoising_unet" / "diffusion_pytorch_model.safetensors"
    torch.save({k: torch.from_numpy(v) for k, v in load_file(denoiser).items()}, denoiser.with_suffix(".bin"))
    denoiser.unlink()
    encoder = release / "ID_enc" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(encoder)
    keys = sorted(tensors)
    shards = {"diffusion_pytorch_model-00001-of-00002.safetensors": keys[: len(keys) // 2]}
    shards["diffusion_pytorch_model-00002-of-00002.safetensors"] = keys[len(keys) // 2 :]
    from safetensors.numpy import save_file as save_numpy

    for name, shard_keys in shards.items():
        save_numpy({k: tensors[k] for k in shard_keys}, encoder.parent / name)
    weight_map = {k: name for name, shard_keys in shards.items() for k in shard_keys}
    (encoder.parent / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"weight_map": weight_map})
    )
    encoder.unlink()

    to_orbax(sd_folder, tmp_path / "ckpt", magicface=release, **QUIET)
    assert_same_params(tmp_path / "ckpt", converted, ("identity_encoder", "denoiser"))


# ------------------------------------------------------------------- time embedding wider than 4 x width


@pytest.fixture(scope="session")
def wide_time_release(tmp_path_factory):
    """A tiny release in the authors' layout whose configs set `time_embedding_dim` (48, not 4 x 32)."""
    from tests.fixtures import tiny_torch_magicface, wide_time_config, write_release_folder, write_sd_folder

    model = tiny_torch_magicface(seed=5, config=wide_time_config())
    root = tmp_path_factory.mktemp("wide-time")
    return model, write_sd_folder(root / "sd", model), write_release_folder(root / "release", model)


def test_wide_time_embedding_release_converts_both_ways(wide_time_release, tmp_path):
    from tests.fixtures import WIDE_TIME_EMBEDDING, denoiser_predictions, wide_time_config
    from tests.torch_reference import TorchMagicFace

    model, sd, release = wide_time_release
    config = json.loads((release / "denoising_unet" / "config.json").read_text())
    assert config["time_embedding_dim"] == WIDE_TIME_EMBEDDING != 4 * config["block_out_channels"][0]
    to_orbax(sd, tmp_path / "ckpt", magicface=release, **QUIET)
    info = checkpoint.read_info(tmp_path / "ckpt")
    assert info.config == wide_time_config()
    rows = {row.torch_key: row for row in network_table(info.config.denoiser)}
    assert rows[f"{AU_EMBED_NAME}.weight"].torch_shape == (WIDE_TIME_EMBEDDING, 12)
    assert rows["time_embedding.linear_1.weight"].torch_shape == (WIDE_TIME_EMBEDDING, 32)
    assert rows["down_blocks.1.resnets.0.time_emb_proj.weight"].torch_shape == (64, WIDE_TIME_EMBEDDING)

    pair = tuple(checkpoint.read_params(tmp_path / "ckpt", n) for n in ("identity_encoder", "denoiser"))
    ours, expected = denoiser_predictions(model, info.config, pair, 500.0)
    assert np.abs(ours - expected).max() <= 2e-4

    to_pytorch(tmp_path / "ckpt", tmp_path / "back", **QUIET)
    for folder in ("ID_enc", "denoising_unet"):
        exported = json.loads((tmp_path / "back" / folder / "config.json").read_text())
        assert exported["time_embedding_dim"] == WIDE_TIME_EMBEDDING
        ours = load_file(tmp_path / "back" / folder / "diffusion_pytorch_model.safetensors")
        theirs = load_file(release / folder / "diffusion_pytorch_model.safetensors")
        assert ours.keys() == theirs.keys()
        for key in theirs:
            np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)
    loaded = TorchMagicFace.from_pretrained(tmp_path / "back")
    assert loaded.config == info.config
    for mine, theirs in zip(loaded.state_dict().values(), model.state_dict().values(), strict=True):
        assert torch.equal(mine, theirs)


def test_time_embedding_dim_in_configs():
    from magicface_jax.config import UNetConfig

    tiny = tiny_magicface_config().identity_encoder
    spelled_out = UNetConfig.from_diffusers(tiny.to_diffusers() | {"time_embedding_dim": 128})
    assert spelled_out == tiny and spelled_out.time_embed_dim == 128
    wide = UNetConfig.from_diffusers(tiny.to_diffusers() | {"time_embedding_dim": 1280})
    assert wide.time_embed_dim == 1280 and wide.to_diffusers()["time_embedding_dim"] == 1280
    with pytest.raises(MagicFaceError, match="time_embedding_dim=0"):
        UNetConfig.from_diffusers(tiny.to_diffusers() | {"time_embedding_dim": 0})


# ----------------------------------------------------------------------- weights checked, data verified


def test_denoiser_conv_in_must_take_noisy_and_background_latents(sd_folder, release_folder, tmp_path, capsys):
    """A denoiser whose conv_in takes 4 channels (an SD UNet with an AU linear) is refused by its shape."""

    def four_channels(tensors):
        tensors["conv_in.weight"] = tensors["conv_in.weight"][:, :4].copy()

    broken = _edit_release(release_folder, tmp_path, four_channels)
    assert_refused(
        capsys,
        tmp_path / "out",
        "--sd",
        sd_folder,
        "--magicface",
        broken,
        match="conv_in.weight has shape (32, 4, 3, 3), the denoiser expects (32, 8, 3, 3)",
    )


def test_identity_encoder_must_take_latents(sd_folder, release_folder, tmp_path, capsys):
    broken = tmp_path / "release"
    shutil.copytree(release_folder, broken)
    config_file = broken / "ID_enc" / "config.json"
    config_file.write_text(json.dumps(json.loads(config_file.read_text()) | {"in_channels": 8}))
    assert_refused(
        capsys,
        tmp_path / "out",
        "--sd",
        sd_folder,
        "--magicface",
        broken,
        match="identity encoder has in_channels=8",
    )


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_tensor_is_refused_by_name(sd_folder, release_folder, tmp_path, capsys, value):
    def poison(tensors):
        tensors["up_blocks.1.attentions.0.proj_out.weight"].flat[3] = value

    broken = _edit_release(release_folder, tmp_path, poison)
    assert_refused(
        capsys,
        tmp_path / "out",
        "--sd",
        sd_folder,
        "--magicface",
        broken,
        match="up_blocks.1.attentions.0.proj_out.weight has 1 non-finite values",
    )


def _largest_file(folder: Path) -> Path:
    return max((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def _flip_bit(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


def _zero(path: Path) -> None:
    path.write_bytes(bytes(path.stat().st_size))


def _drop(path: Path) -> None:
    path.unlink()


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (_flip_bit, "does not match its checksum"),
        (_zero, "does not match its checksum"),
        (_drop, "is missing"),
    ],
    ids=["bit-flip", "zeroed", "deleted"],
)
def test_damaged_network_is_refused_by_name(converted, tmp_path, capsys, damage, match):
    """Every stored file is checksummed: a flipped bit, a zeroed or a deleted file is refused, naming the
    network, by the converter and by the pipeline."""
    from magicface_jax.pipeline import MagicFacePipeline

    broken = tmp_path / "ckpt"
    shutil.copytree(converted, broken)
    damage(_largest_file(broken / "denoiser"))
    with pytest.raises(MagicFaceError, match=f"'denoiser'.* is damaged: .*{match}"):
        checkpoint.read_params(broken, "denoiser")
    with pytest.raises(MagicFaceError, match="'denoiser'"):
        MagicFacePipeline.from_pretrained(broken)
    assert_refused(capsys, tmp_path / "out", "--to-pytorch", "--checkpoint", broken, match="'denoiser'")
    checkpoint.read_params(broken, "vae")  # the intact networks still read


def test_a_stray_file_is_no_damage(converted, tmp_path):
    """Files the manifest does not list are never read by orbax: ignored, not refused."""
    copy = tmp_path / "ckpt"
    shutil.copytree(converted, copy)
    (copy / "denoiser" / ".DS_Store").write_bytes(b"desktop metadata")
    checkpoint.read_params(copy, "denoiser")


def test_manifest_records_a_checksum_per_file(converted):
    info = checkpoint.read_info(converted)
    for name in (*checkpoint.COMPONENTS, checkpoint.PROMPT_EMBEDS):
        stored = {
            p.relative_to(converted / name).as_posix() for p in (converted / name).rglob("*") if p.is_file()
        }
        assert set(info.checksums[name]) == stored
        assert all(len(digest) == 64 for digest in info.checksums[name].values())


def test_checkpoint_from_before_checksums_is_refused(converted, tmp_path, capsys):
    old = tmp_path / "ckpt"
    shutil.copytree(converted, old)
    manifest = json.loads((old / checkpoint.MANIFEST).read_text())
    del manifest["checksums"]
    (old / checkpoint.MANIFEST).write_text(json.dumps(manifest | {"format": checkpoint.BEFORE_CHECKSUMS}))
    assert_refused(capsys, tmp_path / "out", "--to-pytorch", "--checkpoint", old, match="convert it again")
