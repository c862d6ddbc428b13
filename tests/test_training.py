"""Training in one process: one step gives the same loss and weights on any mesh and with gradient
accumulation; FSDP splits parameters and optimizer state; remat changes memory, not gradients; bad
configs are refused in one line."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from magicface_jax.errors import MagicFaceError
from magicface_jax.parallel.mesh import training_batch_sharding, training_mesh
from magicface_jax.training.config import load_config
from magicface_jax.training.init import load_start
from magicface_jax.training.step import draw, example_losses, loss_and_grads
from magicface_jax.training.trainer import make_trainer
from tests.training_fixtures import TINY_CONFIG, nano_batch, nano_run, synthetic_pairs

MESHES = {
    "one device": ((1, 1, 1), 1, 1),  # (data, fsdp, tensor), devices, accumulation steps
    "data=2 fsdp=4": ((2, 4, 1), 8, 1),
    "data=2 fsdp=2 tensor=2, 2 micro-batches": ((2, 2, 2), 8, 2),
}
# Each step is compiled once per test process: the tests that read one share an xdist group, so that the
# one-device reference is computed once.
MESH_GROUP = pytest.mark.xdist_group("training-meshes")


def one_step(mesh_sizes, devices, accumulation):
    run = nano_run(
        "unused",
        train__grad_accum_steps=accumulation,
        mesh__data=mesh_sizes[0],
        mesh__fsdp=mesh_sizes[1],
        mesh__tensor=mesh_sizes[2],
    )
    mesh = training_mesh(*mesh_sizes, devices=jax.devices()[:devices])
    trainer = make_trainer(run, mesh, load_start(run, mesh))
    state = trainer.initial_state()
    batch = jax.device_put(nano_batch(8), training_batch_sharding(mesh))
    state, metrics = trainer.jitted_step()(state, trainer.frozen, batch, trainer.prompt_embeds)
    return trainer, state, jax.device_get(metrics)


@functools.cache
def step_on(name: str):
    """(trainer, state, metrics) after one step on mesh `name` of `MESHES`, computed once per process."""
    return one_step(*MESHES[name])


@pytest.mark.slow
@MESH_GROUP
@pytest.mark.parametrize("name", ["data=2 fsdp=4", "data=2 fsdp=2 tensor=2, 2 micro-batches"])
def test_a_step_is_the_same_on_every_mesh_and_with_accumulation(name):
    _, reference, reference_metrics = step_on("one device")
    _, state, metrics = step_on(name)
    assert abs(metrics["loss"] - reference_metrics["loss"]) <= 1e-5 * abs(reference_metrics["loss"])
    np.testing.assert_allclose(metrics["grad_norm"], reference_metrics["grad_norm"], rtol=1e-5)
    expected, got = jax.device_get(reference.params), jax.device_get(state.params)
    for (path, a), b in zip(
        jax.tree_util.tree_flatten_with_path(expected)[0], jax.tree.leaves(got), strict=True
    ):
        np.testing.assert_allclose(b, a, atol=1e-5, err_msg=jax.tree_util.keystr(path))


@pytest.mark.slow
@MESH_GROUP
def test_fsdp_splits_parameters_and_optimizer_state():
    trainer, state, _ = step_on("data=2 fsdp=4")
    params = jax.tree_util.tree_flatten_with_path(state.params)[0]
    moments = [leaf for leaf in jax.tree.leaves(state.opt_state) if leaf.ndim]
    split = 0
    for (path, leaf), sharding in zip(params, jax.tree.leaves(trainer.shardings.params), strict=True):
        if "fsdp" not in jax.tree.leaves(tuple(sharding.spec)):
            continue
        split += 1
        for shard in leaf.addressable_shards:
            assert shard.data.size * 4 == leaf.size, jax.tree_util.keystr(path)
    assert split >= len(params) // 3
    fsdp_bytes = sum(
        s.data.nbytes for m in moments for s in m.addressable_shards if s.device == jax.devices()[0]
    )
    whole = sum(m.nbytes for m in moments)
    # The moments of the split weights take a quarter; norms and biases are replicated.
    assert fsdp_bytes <= 0.35 * whole


@pytest.mark.slow
def test_remat_gives_the_same_gradients_with_less_memory():
    """The memory remat controls is what the forward keeps for the backward: the residuals of `jax.vjp` of
    the loss. (XLA's CPU buffer assignment gives this nano step about the same temporaries either way,
    195 MB, so its memory analysis cannot show the difference at this size.)"""
    mesh = training_mesh(1, 1, 1, devices=jax.devices()[:1])
    rng = np.random.default_rng(0)
    # Latents, as from a latent cache: the frozen VAE's forward would only add what no policy changes.
    keys = ("identity_latents", "background_latents", "target_mean", "target_logvar")
    batch = {key: rng.standard_normal((4, 16, 16, 4)).astype(np.float32) for key in keys}
    batch["au_variation"] = rng.standard_normal((4, 12)).astype(np.float32)
    results = {}
    for policy in ("none", "block", "full"):
        run = nano_run("unused", model__remat=policy, train__batch_size=4)
        trainer = make_trainer(run, mesh, load_start(run, mesh))
        trained = {name: trainer.start.networks[name] for name in trainer.names}

        def loss_of(trained, batch, trainer=trainer):
            key = jax.random.key(0)
            return loss_and_grads(
                trainer.objective, trained, trainer.frozen, batch, key, trainer.prompt_embeds
            )

        def mean_loss(trained, batch, trainer=trainer):
            draws = draw(trainer.objective, jax.random.key(0), 4, (16, 16, 4))
            networks = {**trainer.frozen, **trained}
            return jnp.mean(example_losses(trainer.objective, networks, batch, draws, trainer.prompt_embeds))

        pullback = jax.eval_shape(lambda t, b: jax.vjp(lambda t: mean_loss(t, b), t)[1], trained, batch)
        kept = sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(pullback))
        results[policy] = (jax.jit(loss_of)(trained, batch), kept)
    (loss, reference), kept_none = results["none"]
    for policy in ("block", "full"):
        (other_loss, other), kept = results[policy]
        assert abs(other_loss - loss) <= 1e-6 * abs(loss)
        for a, b in zip(jax.tree.leaves(reference), jax.tree.leaves(other), strict=True):
            np.testing.assert_allclose(b, a, atol=1e-6)
        assert kept < kept_none / 2, (policy, kept, kept_none)
    assert results["full"][1] <= results["block"][1]


def test_the_target_is_the_posterior_mean_unless_sampled():
    """`train.sample_posterior` false trains on the target's posterior mean: the posterior draw no longer
    changes the loss, and the loss is the one of a posterior whose variance is zero."""
    mesh = training_mesh(1, 1, 1, devices=jax.devices()[:1])
    rng = np.random.default_rng(0)
    keys = ("identity_latents", "background_latents", "target_mean", "target_logvar")
    batch = {key: rng.standard_normal((2, 16, 16, 4)).astype(np.float32) for key in keys}
    batch["au_variation"] = rng.standard_normal((2, 12)).astype(np.float32)
    certain = {**batch, "target_logvar": np.full_like(batch["target_logvar"], -np.inf)}

    run = nano_run("unused", train__batch_size=2)
    trainer = make_trainer(run, mesh, load_start(run, mesh))  # one trainer: only the setting changes

    def losses(sample_posterior, batch, posterior_seed):
        settings = dataclasses.replace(trainer.objective.settings, sample_posterior=sample_posterior)
        objective = dataclasses.replace(trainer.objective, settings=settings)
        draws = draw(objective, jax.random.key(0), 2, (16, 16, 4))
        draws["posterior_noise"] = jax.random.normal(jax.random.key(posterior_seed), (2, 16, 16, 4))
        networks = trainer.start.networks
        return np.asarray(example_losses(objective, networks, batch, draws, trainer.prompt_embeds))

    mean = losses(False, batch, 1)
    np.testing.assert_array_equal(losses(False, batch, 2), mean)
    np.testing.assert_allclose(losses(True, certain, 1), mean, rtol=1e-6)
    assert not np.allclose(losses(True, batch, 1), losses(True, batch, 2))


def test_learning_rate_schedule_warms_up_then_decays():
    from magicface_jax.training.state import learning_rate_schedule

    run = nano_run("unused", optimizer__schedule="cosine", optimizer__warmup_steps=10, train__steps=110)
    schedule = learning_rate_schedule(run.optimizer, run.train.steps)
    rate = run.optimizer.learning_rate
    assert float(schedule(0)) == 0.0
    assert float(schedule(10)) == pytest.approx(rate)
    assert float(schedule(60)) == pytest.approx(rate / 2, rel=1e-3)
    assert float(schedule(110)) == pytest.approx(0.0, abs=1e-9)


def test_the_au_embedding_lr_factor_scales_only_the_au_linears_steps():
    from magicface_jax.training.state import make_optimizer

    run = nano_run("unused")
    mesh = training_mesh(1, 1, 1, devices=jax.devices()[:1])
    networks = load_start(run, mesh).networks
    params = {name: networks[name] for name in ("identity_encoder", "denoiser")}
    grads = jax.tree.map(jnp.ones_like, params)

    def first_update(factor):
        settings = dataclasses.replace(run.optimizer, au_embedding_lr_factor=factor, weight_decay=0.0)
        optimizer = make_optimizer(settings, run.train.steps)
        updates, _ = optimizer.update(grads, optimizer.init(params), params)
        return jax.device_get(updates)

    plain, scaled = first_update(1.0), first_update(10.0)
    au = scaled["denoiser"].pop("au_aug_mlp")
    for name in au:
        np.testing.assert_allclose(au[name], 10 * plain["denoiser"]["au_aug_mlp"][name], rtol=1e-6)
    del plain["denoiser"]["au_aug_mlp"]
    jax.tree.map(np.testing.assert_array_equal, scaled, plain)


def test_random_start_is_like_an_sd_start():
    run = nano_run("unused")
    mesh = training_mesh(1, 1, 1, devices=jax.devices()[:1])
    networks = jax.device_get(load_start(run, mesh).networks)
    encoder, denoiser = networks["identity_encoder"], networks["denoiser"]
    kernel = denoiser["conv_in"]["kernel"]
    np.testing.assert_array_equal(kernel[:, :, :4], encoder["conv_in"]["kernel"])
    assert not kernel[:, :, 4:].any() and not denoiser["au_aug_mlp"]["kernel"].any()
    np.testing.assert_array_equal(
        denoiser["down_blocks_0"]["resnets_0"]["conv1"]["kernel"],
        encoder["down_blocks_0"]["resnets_0"]["conv1"]["kernel"],
    )


def test_a_synthetic_vae_export_is_the_frozen_vae(tmp_path):
    from magicface_jax.training import autoencoder
    from magicface_jax.training.init import synthetic_magicface_config

    config = autoencoder.AutoencoderTrainConfig(vae=synthetic_magicface_config().vae, resolution=64)
    params = autoencoder.init_state(config).params
    images = np.random.default_rng(0).integers(0, 255, (4, 64, 64, 3), np.uint8)
    exported = autoencoder.export_vae(tmp_path / "vae", config, params, images, steps=7)
    run = nano_run("unused", model__preset="synthetic", model__vae_checkpoint=tmp_path / "vae")
    start = load_start(run, training_mesh(1, 1, 1, devices=jax.devices()[:1]))
    assert start.config.vae == exported and start.source["vae_checkpoint"] == str(tmp_path / "vae")
    for a, b in zip(jax.tree.leaves(start.networks["vae"]), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert start.prompt_embeds.shape == (1, 77, start.config.denoiser.cross_attention_dim)


def test_a_run_without_identity_features_exports_a_zero_identity_encoder():
    from magicface_jax.training.export import exported_networks
    from magicface_jax.training.state import TrainState

    run = nano_run("unused")
    start = load_start(run, training_mesh(1, 1, 1, devices=jax.devices()[:1]))
    trained = {n: start.networks[n] for n in ("identity_encoder", "denoiser")}
    state = TrainState(step=0, params=trained, opt_state=None, ema={}, rng=None)
    frozen = {"vae": start.networks["vae"]}
    zeroed = dataclasses.replace(run.train, train_identity_features=False)
    networks = exported_networks(state, frozen, "raw", zeroed, start.config)
    assert not any(np.asarray(leaf).any() for leaf in jax.tree.leaves(networks["identity_encoder"]))
    from magicface_jax.models.magicface import MagicFace

    model = MagicFace(start.config)
    latents = jnp.ones((1, 16, 16, 4))
    features = model.identity_features(networks["identity_encoder"], latents, start.prompt_embeds)
    assert features and not any(np.asarray(f).any() for f in features)  # a zero UNet's features are zero
    kept = exported_networks(state, frozen, "raw", run.train, start.config)
    assert np.asarray(kept["identity_encoder"]["conv_in"]["kernel"]).any()


def test_validation_edits_the_identity_image_with_its_own_condition():
    from magicface_jax.data import features
    from magicface_jax.data.png import encode_png
    from magicface_jax.data.synthetic_faces import IDENTITY_BACKGROUND
    from magicface_jax.images import to_model_input
    from magicface_jax.training.validation import validation_record

    images = [np.full((16, 16, 3), value, np.uint8) for value in (10, 20, 30, 40)]
    record = {
        features.IDENTITY_IMAGE: encode_png(images[0]),
        features.TARGET_IMAGE: encode_png(images[1]),
        features.BACKGROUND: encode_png(images[2]),  # the target's condition: another pose and scene
        IDENTITY_BACKGROUND: encode_png(images[3]),
        features.AU_VARIATION: np.zeros(12, np.float32),
        "index": 0,
    }
    np.testing.assert_array_equal(validation_record(record)["background"], to_model_input(images[3]))
    del record[IDENTITY_BACKGROUND]  # a dataset without it (magicface_pairs): the pair's condition
    np.testing.assert_array_equal(validation_record(record)["background"], to_model_input(images[2]))


def test_config_overrides_are_typed(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("output_dir: out\ndataset: data\ntrain:\n  steps: 5\n")
    run = load_config(path, ["train.batch_size=16", "optimizer.learning_rate=3e-4", "model.remat=block"])
    assert (run.train.steps, run.train.batch_size, run.model.remat) == (5, 16, "block")
    assert run.optimizer.learning_rate == 3e-4
    edits = load_config(path, ['evaluation.edits=[AU12=+4, "AU4=+4,AU1=+2"]']).evaluation.edits
    assert edits == ("AU12=+4", "AU4=+4,AU1=+2")
    assert dataclasses.asdict(run)["mesh"]["fsdp"] == 1


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.stepz=3"], "unknown config key train.stepz; train accepts steps"),
        (["train.steps=many"], "train.steps='many': expected an integer"),
        (["train.steps=0"], "train.steps=0: expected at least 1"),
        (["model.remat=some"], "model.remat='some': expected one of none, block, full"),
        (["mesh.data=-1", "mesh.fsdp=-1"], "at most one may be -1"),
        (["train.batch_size=6", "train.grad_accum_steps=4"], "does not split into"),
        (["train.steps.x=1"], "train.steps is a value"),
        (["output_dir="], "output_dir is not set"),
        (["nonsense"], "is not of the form dotted.key=value"),
        (["optimizer.au_embedding_lr_factor=0"], "optimizer.au_embedding_lr_factor=0.0: expected > 0"),
    ],
)
def test_bad_configs_are_refused_naming_the_key(tmp_path, overrides, message):
    path = tmp_path / "run.yaml"
    path.write_text("output_dir: out\ndataset: data\n")
    with pytest.raises(MagicFaceError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_config(path, overrides)


def test_bad_config_files(tmp_path):
    with pytest.raises(MagicFaceError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(MagicFaceError, match="must hold a mapping"):
        load_config(tmp_path / "list.yaml")
    (tmp_path / "bad.yaml").write_text("train: [unclosed\n")
    with pytest.raises(MagicFaceError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")


@pytest.fixture(scope="session")
def pairs(tmp_path_factory):
    return synthetic_pairs(str(tmp_path_factory.mktemp("pairs")), train_pairs=16, seed=5)


def test_an_sd_checkpoint_is_restored_straight_into_its_shards(converted):
    from magicface_jax import checkpoint

    run = nano_run("unused", init_checkpoint=str(converted), mesh__fsdp=4, mesh__data=2)
    mesh = training_mesh(2, 4, 1)
    start = load_start(run, mesh)
    kernel = start.networks["denoiser"]["down_blocks_0"]["attentions_0"]["transformer_blocks_0"]["ff"][
        "net_2"
    ]
    kernel = kernel["kernel"]
    assert {shard.data.size for shard in kernel.addressable_shards} == {kernel.size // 4}
    stored = checkpoint.read_params(converted, "denoiser")
    expected = stored["down_blocks_0"]["attentions_0"]["transformer_blocks_0"]["ff"]["net_2"]["kernel"]
    np.testing.assert_array_equal(np.asarray(kernel), expected)


@pytest.mark.parametrize(
    ("key", "network", "source"),
    [
        ("init_checkpoint", "identity_encoder", "init_checkpoint"),
        ("model__vae_checkpoint", "vae", "vae_checkpoint"),
    ],
)
def test_a_checkpoint_may_be_named_relative_to_the_working_folder(
    converted, monkeypatch, key, network, source
):
    from magicface_jax import checkpoint

    monkeypatch.chdir(converted.parent)
    start = load_start(nano_run("unused", **{key: converted.name}), training_mesh(-1, 1, 1))
    restored, stored = (
        jax.tree.leaves(p) for p in (start.networks[network], checkpoint.read_params(converted, network))
    )
    assert len(restored) == len(stored)
    for ours, theirs in zip(restored, stored, strict=True):
        np.testing.assert_array_equal(np.asarray(ours), theirs)
    assert start.source[source] == str(converted.resolve())
    assert start.source.get("steps_before", 0) == 0  # a converted checkpoint has no training behind it


def test_a_run_counts_the_steps_behind_the_checkpoint_it_starts_from():
    from magicface_jax import checkpoint

    assert checkpoint.steps_behind({}) == 0
    first = {"trained_steps": 4000}
    second = {"trained_steps": 5000, "steps_before": checkpoint.steps_behind(first)}
    assert (
        checkpoint.steps_behind({"trained_steps": 3000, "steps_before": checkpoint.steps_behind(second)})
        == 12000
    )


def train_cli(capsys, *args) -> tuple[int, str]:
    import train
    from magicface_jax import cli

    status = cli.run(train.main, [*args])
    return status, capsys.readouterr().err


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["mesh.data=3"], "mesh data=3 x fsdp=1 x tensor=1 needs 3 devices; there are 8"),
        (["train.batch_size=4", "mesh.fsdp=8"], "train.batch_size=4 does not divide over the mesh"),
        (["dataset=/nowhere/pairs"], "dataset '/nowhere/pairs' is not a dataset folder"),
        (["init_checkpoint=/nowhere/init"], "init_checkpoint=/nowhere/init does not exist"),
        (["model.vae_checkpoint=/nowhere/vae"], "model.vae_checkpoint=/nowhere/vae does not exist"),
        (["train.stepz=1"], "unknown config key train.stepz"),
        (["train.steps=1.5"], "train.steps='1.5': expected an integer"),
    ],
)
def test_train_cli_refuses_bad_runs_in_one_line(tmp_path, capsys, pairs, overrides, message):
    status, err = train_cli(
        capsys,
        "--config",
        str(TINY_CONFIG),
        f"output_dir={tmp_path / 'out'}",
        f"dataset={pairs}",
        "data.data_dir=",
        *overrides,
    )
    assert status == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err, err
    assert not (tmp_path / "out").exists()


def test_train_cli_refuses_an_output_that_is_a_file_or_the_dataset(tmp_path, capsys, pairs):
    (tmp_path / "file").write_text("")
    status, err = train_cli(
        capsys, "--config", str(TINY_CONFIG), f"output_dir={tmp_path / 'file'}", f"dataset={pairs}"
    )
    assert status == 2 and "is a file" in err
    status, err = train_cli(capsys, "--config", str(TINY_CONFIG), f"output_dir={pairs}", f"dataset={pairs}")
    assert status == 2 and "overlaps dataset" in err


def test_train_cli_turns_on_the_compilation_cache_before_training(tmp_path, capsys, monkeypatch):
    from magicface_jax import cache
    from magicface_jax.training import loop

    calls = []
    monkeypatch.setattr(
        cache, "enable_compilation_cache", lambda directory: calls.append(("cache", directory))
    )
    monkeypatch.setattr(loop, "train", lambda run, export_only: calls.append(("train", export_only)))
    status, _ = train_cli(capsys, "--config", str(TINY_CONFIG), "--compilation-cache", str(tmp_path))
    assert status == 0 and calls == [("cache", str(tmp_path)), ("train", False)]


@pytest.mark.slow
def test_a_sigterm_late_in_a_step_saves_the_next_step_and_stops(tmp_path, pairs, monkeypatch):
    import os
    import signal

    from magicface_jax.training import loop

    class SignalOnThirdUpdate:  # the progress bar's update comes after the step's save decision
        def __init__(self, *args, **kwargs):
            self.updates = 0

        def update(self, n):
            self.updates += n
            if self.updates == 3:
                os.kill(os.getpid(), signal.SIGTERM)

        def set_postfix(self, **kwargs):
            pass

        def close(self):
            pass

    monkeypatch.setattr(loop, "tqdm", SignalOnThirdUpdate)
    out = tmp_path / "run"
    run = nano_run(str(pairs), output_dir=str(out), train__steps=8, train__batch_size=8)
    result = loop.train(run, log=lambda _: None)
    assert result.stopped_by_signal and result.step == 4 and result.export_dir is None
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["4"]


def test_a_save_is_checked_on_disk_before_a_stop_reports_it(tmp_path):
    import orbax.checkpoint as ocp

    from magicface_jax.training import checkpoints
    from magicface_jax.training.config import CheckpointSettings

    manager = checkpoints.checkpoint_manager(tmp_path / "checkpoints", CheckpointSettings())
    state = {"w": jnp.ones(3)}
    manager.save(3, args=ocp.args.Composite(**{checkpoints.STATE: ocp.args.StandardSave(state)}), force=True)
    manager.wait_until_finished()
    checkpoints.check_saved(manager, 3)
    with pytest.raises(MagicFaceError, match="the checkpoint of step 4 is not in"):
        checkpoints.check_saved(manager, 4)
    manager.close()


@pytest.mark.slow
def test_a_non_finite_loss_stops_the_run_without_saving_it(tmp_path, pairs):
    from magicface_jax.training.loop import train

    out = tmp_path / "out"
    run = nano_run(
        str(pairs),
        output_dir=str(out),
        train__steps=6,
        train__batch_size=8,
        optimizer__learning_rate=1e30,
        optimizer__grad_clip_norm=0,
        optimizer__warmup_steps=0,
        checkpoint__every_steps=1,
        checkpoint__async_save=False,
    )
    with pytest.raises(
        MagicFaceError, match=r"the loss is (nan|inf|-inf) at step \d+; stopped without saving"
    ) as err:
        train(run, log=lambda _: None)
    failed = int(str(err.value).split("at step ")[1].split(";")[0])
    saved = sorted(int(p.name) for p in (out / "checkpoints").iterdir() if p.name.isdigit())
    assert saved and max(saved) == failed - 1
