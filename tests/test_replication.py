"""benchmarks/synthetic_replication.py: its stages, the runs it configures, and its bad arguments."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from benchmarks import synthetic_replication as replication
from magicface_jax.cli import run


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--stages", "data,tables"], "unknown stage 'tables'"),
        (["--pairs", "0"], "--pairs must be in [1, 200]"),
        (["--pairs", "201"], "--pairs must be in [1, 200]"),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
    ],
)
def test_bad_arguments(capsys, tmp_path, argv, message):
    assert run(replication.main, ["--out", str(tmp_path / "out"), *argv]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines
    assert not (tmp_path / "out").exists()


def test_an_out_that_is_a_file_is_refused_and_kept(capsys, tmp_path):
    out = tmp_path / "notes.txt"
    out.write_text("mine")
    assert run(replication.main, ["--out", str(out), "--stages", "report"]) == 2
    assert "is a file" in capsys.readouterr().err and out.read_text() == "mine"


def test_all_stages_leave_the_shipped_demo_model_alone():
    assert replication.DEMO_STAGES == replication.STAGES[-2:] == ("demo_model", "demo")
    assert set(replication.ALL_STAGES) == set(replication.STAGES) - {"demo_model", "demo"}


def test_the_demo_model_records_the_fewest_steps_its_study_found():
    study = {
        "pairs": 200,
        "fewest_steps_of_equal_quality": {"sampler": "unipc", "steps": 15, "guidance": 3.0},
        "equal_quality_rule": "no metric worse by > 2 SE and > 1%",
    }
    found = replication.demo_sampling(study)
    assert found.steps == 15 and "on 200 held-out pairs" in found.measured and "UniPC 50" in found.measured
    assert found.measured.endswith("no metric worse by > 2 SE and > 1%")
    assert {s.sampler for s in replication.DEMO_STEPS_STUDY} == {"unipc"}  # what a checkpoint records
    assert replication.REFERENCE in replication.DEMO_STEPS_STUDY


def test_a_damaged_demo_model_is_named_and_nothing_is_shipped(capsys, tmp_path):
    from magicface_jax import demo

    export = tmp_path / "out" / "models" / "demo" / "export"
    export.mkdir(parents=True)
    (export / "magicface.json").write_text('{"broken')
    shipped = sorted(p.stat().st_mtime_ns for p in demo.DEMO_MODEL.rglob("*"))
    assert run(replication.main, ["--out", str(tmp_path / "out"), "--stages", "demo"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and f"{export / 'magicface.json'} is not valid JSON" in lines[0], lines
    assert (export / "magicface.json").read_text() == '{"broken'
    assert sorted(p.stat().st_mtime_ns for p in demo.DEMO_MODEL.rglob("*")) == shipped


def test_the_demo_steps_study_is_made_once_for_its_weights_settings_pairs_and_rule(tmp_path, monkeypatch):
    from magicface_jax.evaluation import runner
    from magicface_jax.pipeline import MagicFacePipeline
    from tests.random_checkpoint import write_random_checkpoint

    made = []

    def evaluate(pipe, pairs, settings, estimators, batch_size, reference):
        made.append(tuple(settings))
        fewest = {"sampler": "unipc", "steps": 10, "guidance": 3.0}
        return {"pairs": len(pairs), "settings": [], "fewest_steps_of_equal_quality": fewest}

    monkeypatch.setattr(runner, "estimators_for", lambda *args: (None, None))
    monkeypatch.setattr(runner, "load_pairs", lambda dataset, split, data_dir, num: list(range(num)))
    monkeypatch.setattr(runner, "evaluate", evaluate)
    monkeypatch.setattr(MagicFacePipeline, "from_pretrained", classmethod(lambda cls, path: None))
    paths, args = replication.Paths(tmp_path / "out"), argparse.Namespace(pairs=4, batch_size=2)
    export = write_random_checkpoint(tmp_path / "export")

    first = replication.demo_steps_study(paths, args, export)
    assert made == [replication.DEMO_STEPS_STUDY] and first["equal_quality_rule"] == runner.EQUAL_QUALITY_RULE
    assert replication.demo_steps_study(paths, args, export) == first and len(made) == 1  # read back
    replication.demo_steps_study(paths, argparse.Namespace(pairs=3, batch_size=2), export)  # other pairs
    other_weights = write_random_checkpoint(tmp_path / "other", seed=1)
    replication.demo_steps_study(paths, argparse.Namespace(pairs=3, batch_size=2), other_weights)
    monkeypatch.setattr(replication, "DEMO_STEPS_STUDY", replication.DEMO_STEPS_STUDY[1:])
    replication.demo_steps_study(paths, argparse.Namespace(pairs=3, batch_size=2), other_weights)
    monkeypatch.setattr(runner, "EQUAL_QUALITY_RULE", "another rule")
    monkeypatch.setattr(replication, "EQUAL_QUALITY_RULE", "another rule")
    replication.demo_steps_study(paths, argparse.Namespace(pairs=3, batch_size=2), other_weights)
    assert len(made) == 5  # each change made the study again


def test_the_demo_model_continues_magicface_on_same_pose_pairs(tmp_path):
    paths = replication.Paths(tmp_path)
    main, demo = replication.run_config(paths, "magicface"), replication.run_config(paths, "demo")
    assert demo.init_checkpoint == str(tmp_path / "models" / "magicface" / "export")
    assert demo.output_dir == str(tmp_path / "models" / "demo")
    assert demo.dataset == "synthetic_faces/64px_4000x200_p4_a0.4_s0_same_f1.4"
    assert demo.data.data_dir == main.data.data_dir
    assert demo.data.latent_cache == str(tmp_path / "latents_same") != main.data.latent_cache
    assert (demo.train.steps, demo.optimizer.schedule, demo.optimizer.end_factor) == (8000, "cosine", 0.0)
    assert demo.model == main.model and demo.train.au_dropout == main.train.au_dropout
    assert demo.optimizer.learning_rate == main.optimizer.learning_rate


@pytest.mark.parametrize(
    ("stage", "message"),
    [("demo_model", "run --stages magicface first"), ("demo", "run --stages demo_model first")],
)
def test_the_demo_stages_before_their_model_are_refused(capsys, tmp_path, stage, message):
    from magicface_jax import demo

    shipped = sorted(p.stat().st_mtime_ns for p in demo.DEMO_MODEL.rglob("*"))
    assert run(replication.main, ["--out", str(tmp_path / "out"), "--stages", stage]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines
    assert not (tmp_path / "out" / "models").exists() and not (tmp_path / "out" / "data").exists()
    assert sorted(p.stat().st_mtime_ns for p in demo.DEMO_MODEL.rglob("*")) == shipped


def test_the_three_models_differ_only_where_the_tables_say(tmp_path):
    paths = replication.Paths(tmp_path)
    runs = {name: replication.run_config(paths, name) for name in replication.MODELS}
    main = runs["magicface"]
    assert main.model.preset == "synthetic" and main.train.au_dropout == 0.1
    assert main.init_checkpoint == str(tmp_path / "models" / "pretrain" / "export")
    assert main.data.latent_cache == str(tmp_path / "latents")
    assert runs["no_au_dropout"].train.au_dropout == 0.0
    assert not runs["no_identity_encoder"].train.train_identity_features
    for name, config in runs.items():
        assert config.output_dir == str(tmp_path / "models" / name)
        assert (config.train.steps, config.optimizer) == (main.train.steps, main.optimizer)
    assert replication.dataset_name() == "synthetic_faces/64px_4000x200_p4_a0.4_s0_f1.4"
    assert main.dataset == replication.dataset_name()


def test_every_model_starts_from_the_plain_unet_trained_on_the_frozen_vae(tmp_path):
    paths = replication.Paths(tmp_path)
    pretrain = replication.run_config(paths, "pretrain")
    assert pretrain.train.objective == "unet" and not pretrain.init_checkpoint
    assert pretrain.model.vae_checkpoint == str(tmp_path / "vae" / "export")
    assert pretrain.data.latent_cache == str(tmp_path / "latents")
    assert replication.STAGES.index("pretrain") < min(replication.STAGES.index(m) for m in replication.MODELS)
    for name in replication.MODELS:
        assert replication.run_config(paths, name).train.objective == "magicface"


def test_a_model_before_its_pretrained_start_is_refused(capsys, tmp_path):
    assert run(replication.main, ["--out", str(tmp_path / "out"), "--stages", "magicface"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "run --stages pretrain first" in lines[0], lines
    assert not (tmp_path / "out" / "models").exists()


def test_a_given_vae_and_estimator_replace_their_stages(tmp_path):
    vae, estimator = tmp_path / "my_vae", tmp_path / "my_estimator"
    paths = replication.Paths(tmp_path / "out", vae, estimator)
    assert replication.run_config(paths, "pretrain").model.vae_checkpoint == str(vae)
    assert paths.estimator == estimator and paths.vae_export == vae


@pytest.mark.parametrize(
    ("flag", "message"),
    [("--vae", "holds no VAE"), ("--estimator", "holds no synthetic estimator")],
)
def test_a_given_folder_that_is_not_one_is_refused(capsys, tmp_path, flag, message):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "out"
    assert (
        run(replication.main, ["--out", str(out), flag, str(tmp_path / "empty"), "--stages", "report"]) == 2
    )
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines
    assert not out.exists()


def test_a_rerun_must_give_what_the_first_run_was_given(capsys, tmp_path):
    from magicface_jax.assets import DEMO_MODEL, SYNTHETIC_ESTIMATOR

    out = tmp_path / "out"
    given = ["--vae", str(DEMO_MODEL), "--estimator", str(SYNTHETIC_ESTIMATOR)]
    assert run(replication.main, ["--out", str(out), *given, "--stages", "vae,estimator"]) == 0
    printed = capsys.readouterr().out
    assert f"vae: given ({DEMO_MODEL})" in printed and f"estimator: given ({SYNTHETIC_ESTIMATOR})" in printed
    assert run(replication.main, ["--out", str(out), "--stages", "vae"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and f"was started with --vae {DEMO_MODEL.resolve()}" in lines[0], lines
    assert list(out.iterdir()) == [out / "inputs.json"]  # nothing trained, nothing else written


def test_a_model_stopped_by_sigterm_ends_the_replication_there(capsys, tmp_path, monkeypatch):
    called = []

    def stopped_model(paths, name, args):
        called.append(name)
        return True  # as `train` returns when SIGTERM stopped it after saving

    monkeypatch.setattr(replication, "stage_model", stopped_model)
    monkeypatch.setitem(replication.STAGE_FUNCTIONS, "report", lambda paths, args: called.append("report"))
    assert (
        run(replication.main, ["--out", str(tmp_path / "out"), "--stages", "pretrain,magicface,report"]) == 0
    )
    assert called == ["pretrain"]
    assert "[pretrain: stopped by SIGTERM; the same command resumes it" in capsys.readouterr().out
    called.clear()
    monkeypatch.setitem(replication.STAGE_FUNCTIONS, "demo", lambda paths, args: called.append("demo"))
    assert run(replication.main, ["--out", str(tmp_path / "out"), "--stages", "demo_model,demo"]) == 0
    assert called == ["demo"]  # the demo model's training stopped: nothing shipped
    assert "[demo_model: stopped by SIGTERM; the same command resumes it" in capsys.readouterr().out


class ConstructedReport(replication.Report):
    """The report's tables over 50 constructed pairs (every requested AU 2): MagicFace at the reference
    reads each AU 1 off, a guidance that reads them exactly, one whose edits drift 3 off, and no other
    evaluation yet."""

    def __init__(self):
        from magicface_jax.evaluation import runner

        n = 50
        images = np.zeros((n, 8, 8, 3), np.uint8)
        self.runner = runner
        self.pairs = runner.EvalPairs(
            images, images, np.ones((n, 12)), np.ones((n, 12)), np.zeros((n, 8, 8), bool), ()
        )
        reads = {3.0: 3.0, 1.0: 2.0, 7.5: 5.0}
        rng = np.random.default_rng(0)
        self.found = {
            g: runner.Estimates(
                aus=np.full((n, 12), read) + rng.normal(0, 0.01, (n, 12)),
                source_embeddings=np.zeros((n, 4)),
                edit_embeddings=np.ones((n, 4)),
                source_poses=np.zeros((n, 3)),
                edit_poses=np.ones((n, 3)),
                background_rmse=np.full(n, 0.1),
            )
            for g, read in reads.items()
        }
        self.baselines = {name: self.found[3.0] for name in replication.BASELINES}

    def estimates(self, model, setting):
        return self.found.get(setting.guidance) if model == "magicface" and setting.steps == 50 else None


def test_the_ablations_are_compared_with_magicface_pair_by_pair():
    lines = ConstructedReport().ablations_table()
    cells = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    assert all(len(row) == len(cells[0]) == 6 for row in cells)  # the row, four metrics, the verdict
    rows = {label: rest for label, *rest in cells[2:]}

    def au_mse_delta(label):
        delta, standard_error = map(float, rows[label][0].split(" ± "))
        return delta, standard_error

    assert au_mse_delta("MagicFace, guidance 1") == pytest.approx((-1, 0), abs=0.01)  # AU MSE 0 against 1
    assert au_mse_delta("MagicFace, guidance 7.5") == pytest.approx((8, 0), abs=0.01)  # 9 against 1
    assert rows["MagicFace, guidance 1"][-1] == "yes" and rows["MagicFace, guidance 7.5"][-1] == "no"
    assert rows["without the identity encoder, guidance 3"] == ["not evaluated yet", "", "", "", ""]
    assert rows["no edit, through the VAE and back"] == ["+0 ± 0"] * 4 + ["yes"]
