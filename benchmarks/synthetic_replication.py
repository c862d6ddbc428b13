"""The paper's findings replicated on procedural faces: its Table I (MagicFace against the no-edit
baseline), Table IV (AU dropout and the guidance scale), Table II (the identity encoder) and the fewest
sampling steps at equal quality, all on `synthetic_faces` at 64², on a CPU.

    python benchmarks/synthetic_replication.py --out runs/replication            # all but the demo's; resumes
    python benchmarks/synthetic_replication.py --out runs/replication --stages demo_model,demo  # ships it
    python benchmarks/synthetic_replication.py --out runs/replication --stages data,vae,latents
    python benchmarks/synthetic_replication.py --out runs/replication --stages report
    python benchmarks/synthetic_replication.py --out runs/rep --vae magicface_jax/assets/demo_model \
        --estimator magicface_jax/assets/synthetic_estimator    # a given VAE and estimator, as SD's VAE is

Stages, in order; each writes its result under OUT, and a rerun (also in a later session) skips what is
done and resumes what is not (the VAE and MagicFace trainings resume from their checkpoints):

    data        synthetic_faces 64², 4000 train pairs (1000 persons) whose pose and scene differ within a
                pair, 200 test pairs (50 other persons)
    vae         the frozen VAE (training.autoencoder, docs/evaluation.md): OUT/vae/export, its report;
                skipped with --vae
    estimator   the synthetic estimator of that world (evaluation.train_estimator), trained on each
                image and its round trip through that VAE, which every edit has been through:
                OUT/estimator; skipped with --estimator
    latents     the latent cache of both splits under that VAE (train.py --cache-latents)
    pretrain    the synthetic world's SD1.5: the identity encoder trained alone as a plain UNet on the
                target latents (`train.objective=unet`); its export, the UNet as both networks, is where
                every model starts, as the authors' start from SD's UNet
    magicface, no_au_dropout, no_identity_encoder
                the three models, each `train.py --config configs/synthetic_64.yaml` with its overrides,
                from the pretrain stage's export
    evaluations every (model, sampler, steps, guidance) of the tables, on the 200 test pairs
    report      OUT/report.md, OUT/au_mse_vs_guidance.png, OUT/steps.png, OUT/edits.png
    demo_model  the demo model: the magicface model trained further on pairs of this world that differ
                only in the AUs (`DEMO_MODEL`; built beside the data, with their own latent cache)
    demo        its steps study (`DEMO_STEPS_STUDY`: UniPC against 50, on the test pairs), then the
                package's demo assets from it, the fewest UniPC steps of equal quality recorded as its
                default, with the estimator stage's estimator (magicface_jax.demo.write_demo_assets)

The demo's two stages run only when named: the demo model's training takes about as long again as the
rest, and `demo` replaces the shipped demo model.

The metrics are the paper's four (docs/evaluation.md), read by the estimator stage's synthetic estimator
(its held-out errors are printed beside every table). Whether two settings differ is judged by a
paired bootstrap over the test pairs (`runner.bootstrap_noise`): a setting of the steps study is of equal
quality when none of its metrics (all errors) is worse than UniPC at 50 steps by more than two standard
errors of the difference and by more than 1% of UniPC 50's value (`runner.EQUAL_QUALITY_RULE`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from benchmarks import synthetic_vae
from benchmarks.denoiser_diagnostics import TIMESTEP_BANDS, au_use
from magicface_jax import cli
from magicface_jax.atomic import atomic_file
from magicface_jax.checkpoint import SamplingDefault, read_info
from magicface_jax.errors import MagicFaceError
from magicface_jax.evaluation.runner import EQUAL_QUALITY_RULE, Estimates, Setting
from magicface_jax.training import autoencoder

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "configs" / "synthetic_64.yaml"
TRAIN_PAIRS, TEST_PAIRS = 4000, 200
# The faces' size in the image: drawn 1.4 × larger than `synthetic_faces`' default, smiles and frowns
# show plainly at 64² and the estimator reads the AUs twice as well (docs/evaluation.md, "Larger faces").
# With the VAE's learning rate decaying as it should, the VAE below trains on them without incident.
FACE_SCALE = 1.4
ESTIMATOR = ("--train-pairs", "3000", "--test-pairs", "100", "--steps", "8000")  # train_estimator arguments
VAE = autoencoder.AutoencoderTrainConfig(
    vae=autoencoder.SYNTHETIC_VAE,
    resolution=64,
    steps=1500,
    batch_size=16,
    learning_rate=2e-3,
    face_weight=2.0,
    checkpoint_every=250,
)
VAE_PAIRS = 600  # train pairs whose two images the VAE trains on
# The plain UNet every model starts from: overrides of configs/synthetic_64.yaml (no validation edits: its
# denoiser ignores the conditions until MagicFace is trained from it).
PRETRAIN = ["train.objective=unet", "train.steps=4000", "evaluation.every_steps=0"]
# The three models: overrides of configs/synthetic_64.yaml.
MODELS = {
    "magicface": [],
    "no_au_dropout": ["train.au_dropout=0.0"],
    "no_identity_encoder": ["train.train_identity_features=false"],
}
# The demo model: overrides of configs/synthetic_64.yaml, from the magicface model's export, on same-pose
# pairs (docs/evaluation.md, "The demo model"): 8000 steps, the learning rate decaying to 0 on a cosine.
DEMO_MODEL = ["train.steps=8000", "optimizer.schedule=cosine", "optimizer.end_factor=0"]
GUIDANCES = (1.0, 1.5, 3.0, 5.0, 7.5)
REFERENCE = Setting("unipc", 50, 3.0)  # the authors' sampler and steps, the paper's guidance
UNIPC_STUDY = tuple(Setting("unipc", n, 3.0) for n in (10, 15, 20, 25))  # compared with REFERENCE
STEPS_STUDY = (
    *UNIPC_STUDY,
    *(Setting(sampler, n, 3.0) for sampler in ("ddim", "dpm++") for n in (20, 50)),
)
# UniPC only: a checkpoint records the UniPC steps it samples with (`SamplingDefault`).
DEMO_STEPS_STUDY = (*UNIPC_STUDY, REFERENCE)
EVALUATIONS = (
    *(("magicface", Setting("unipc", 50, g)) for g in GUIDANCES),
    ("no_au_dropout", Setting("unipc", 50, 1.0)),
    ("no_au_dropout", REFERENCE),
    ("no_identity_encoder", REFERENCE),
    *(("magicface", s) for s in STEPS_STUDY),
)
DEMO_STAGES = ("demo_model", "demo")
STAGES = ("data", "vae", "estimator", "latents", "pretrain", *MODELS, "evaluations", "report", *DEMO_STAGES)
ALL_STAGES = tuple(stage for stage in STAGES if stage not in DEMO_STAGES)
TRAINED_STAGES = ("pretrain", *MODELS, "demo_model")  # stages that a SIGTERM stops after a checkpoint
METRICS = ("au_mse", "id_l2", "background_rmse", "pose_rmse_degrees")
HEADER = "| | AU MSE ↓ | ID L2 ↓ | background RMSE ↓ | head-pose RMSE (°) ↓ |\n|---|---|---|---|---|"


@dataclasses.dataclass(frozen=True)
class Paths:
    out: Path
    given_vae: Path | None = None  # --vae: used instead of the vae stage's
    given_estimator: Path | None = None  # --estimator: used instead of the estimator stage's

    @property
    def data(self) -> Path:
        return self.out / "data"

    @property
    def estimator(self) -> Path:
        return self.given_estimator or self.out / "estimator"

    @property
    def vae(self) -> Path:
        return self.out / "vae"

    @property
    def vae_export(self) -> Path:
        """The frozen VAE every model trains on: the vae stage's export, or --vae."""
        return self.given_vae or self.vae / "export"

    @property
    def inputs(self) -> Path:
        return self.out / "inputs.json"

    def latents(self, same_pose_and_scene: bool = False) -> Path:
        return self.out / ("latents_same" if same_pose_and_scene else "latents")

    def model(self, name: str) -> Path:
        return self.out / "models" / name

    def evaluation(self, model: str, setting: Setting) -> Path:
        return self.out / "evaluations" / f"{model}_{setting.name}.json"

    def baseline(self, name: str) -> Path:
        return self.out / "evaluations" / f"{name}.json"

    @property
    def demo_steps(self) -> Path:
        return self.out / "evaluations" / "demo_steps.json"


def dataset_name(same_pose_and_scene: bool = False) -> str:
    """The pairs the tables' models train on (pose and scene differ within a pair), or the demo model's."""
    from magicface_jax.data.synthetic_faces import SyntheticFacesSpec

    spec = SyntheticFacesSpec(
        resolution=64,
        train_pairs=TRAIN_PAIRS,
        test_pairs=TEST_PAIRS,
        seed=0,
        same_pose_and_scene=same_pose_and_scene,
        face_scale=FACE_SCALE,
    )
    return f"synthetic_faces/{spec.name}"


def run_config(paths: Paths, model: str, extra: tuple[str, ...] = ()):
    """The train.py run of `model`: "pretrain" on the frozen VAE, one of `MODELS` from its export, or
    "demo" from the magicface model's."""
    from magicface_jax.training.config import load_config

    if model == "pretrain":
        start = [f"model.vae_checkpoint={paths.vae_export}", *PRETRAIN]
    elif model == "demo":
        start = [f"init_checkpoint={paths.model('magicface') / 'export'}", *DEMO_MODEL]
    else:
        start = [f"init_checkpoint={paths.model('pretrain') / 'export'}", *MODELS[model]]
    same_pose_and_scene = model == "demo"
    overrides = [
        f"output_dir={paths.model(model)}",
        f"dataset={dataset_name(same_pose_and_scene)}",
        f"data.data_dir={paths.data}",
        f"data.latent_cache={paths.latents(same_pose_and_scene)}",
        "logging.progress=false",
        *start,
        *extra,
    ]
    return load_config(CONFIG, overrides)


def _done(marker: Path, what: str) -> bool:
    if marker.exists():
        print(f"{what}: done ({marker})")
        return True
    print(f"{what}: running")
    return False


def stage_data(paths: Paths, args, same_pose_and_scene: bool = False) -> None:
    name = dataset_name(same_pose_and_scene)
    built = sorted((paths.data / name).glob("*/dataset_info.json"))
    if _done(built[0] if built else paths.data / name, f"data ({name})"):
        return
    from magicface_jax.data import build

    build.main(
        [
            "synthetic_faces",
            *("--resolution", "64", "--num-pairs", str(TRAIN_PAIRS), "--num-test-pairs", str(TEST_PAIRS)),
            *(["--same-pose-and-scene"] if same_pose_and_scene else []),
            *("--face-scale", str(FACE_SCALE), "--workers", "2", "--data-dir", str(paths.data)),
        ]
    )


def stage_estimator(paths: Paths, args) -> None:
    from magicface_jax.evaluation import synthetic, train_estimator

    if paths.given_estimator is not None:
        print(f"estimator: given ({paths.given_estimator})")
        return
    if _done(paths.estimator / synthetic.CONFIG_FILE, "estimator"):
        return
    train_estimator.main(
        [
            *("--resolution", "64", "--face-scale", str(FACE_SCALE), *ESTIMATOR),
            *("--vae", str(paths.vae_export), "--out", str(paths.estimator)),
        ]
    )


def _exported_steps(directory: Path) -> int:
    return autoencoder.load_vae(directory).steps if autoencoder.is_vae_export(directory) else -1


def stage_vae(paths: Paths, args) -> None:
    if paths.given_vae is not None:
        print(f"vae: given ({paths.given_vae})")
        return
    if _exported_steps(paths.vae / "export") < VAE.steps:
        print("vae: training")
        synthetic_vae.train_and_export(VAE, paths.vae, VAE_PAIRS, face_scale=FACE_SCALE)
    report = paths.vae / "result.json"
    result = json.loads(report.read_text()) if report.exists() else {}
    if "posterior_by_channel" not in result:  # not measured yet, or before the channels were
        print("vae report: measuring")
        result = synthetic_vae.measure(
            paths.vae / "export", paths.vae, test_pairs=16, probe_people=8, face_scale=FACE_SCALE
        )
    kept = ", ".join(f"{au} {r['kept']:.2f}" for au, r in result["au_change_vs_vae_error_255"].items())
    collapsed = [c for c, channel in enumerate(result["posterior_by_channel"]) if channel["collapsed"]]
    print(
        f"vae: face-box RMSE {result['face_box_rmse_01']:.4f}; AU change kept: {kept}; latent channels "
        f"collapsed to the prior: {collapsed or 'none'}"
    )


def stage_latents(paths: Paths, args, model: str = "pretrain") -> None:
    """The latent cache of `model`'s pairs (the pretrain stage's serve every model of the tables)."""
    run = run_config(paths, model)
    if _done(Path(run.data.latent_cache), f"latents ({run.dataset})"):
        return
    from magicface_jax.training.caching import cache_latents

    cache_latents(run)


def _trained_steps(export: Path) -> int:
    try:
        return int(read_info(export).source.get("trained_steps", -1))
    except MagicFaceError:
        return -1


def stage_model(paths: Paths, name: str, args) -> bool:
    """Trains the model `name` (or resumes it); true when SIGTERM stopped it (after saving a checkpoint)."""
    if name in MODELS and _trained_steps(paths.model("pretrain") / "export") < 0:
        raise MagicFaceError(f"{name} starts from the pretrain stage's export: run --stages pretrain first")
    if name == "demo" and _trained_steps(paths.model("magicface") / "export") < 0:
        raise MagicFaceError("the demo model starts from the magicface model: run --stages magicface first")
    run = run_config(paths, name, tuple(args.train_overrides) if name in MODELS else ())
    if _trained_steps(paths.model(name) / "export") >= run.train.steps:
        print(f"{name}: done ({paths.model(name) / 'export'})")
        return False
    if name == "demo":  # its own pairs and their latents
        stage_data(paths, args, same_pose_and_scene=True)
        stage_latents(paths, args, "demo")
    print(f"{name}: training")
    from magicface_jax.training.loop import train

    return train(run).stopped_by_signal


def held_out(paths: Paths, num_pairs: int):
    """The first `num_pairs` test pairs, and the estimators of this world that every evaluation reads them
    with."""
    from magicface_jax.evaluation import runner

    estimators, _ = runner.estimators_for(runner.SYNTHETIC, paths.estimator)
    return runner.load_pairs(dataset_name(), "test", paths.data, num_pairs), estimators


def stage_evaluations(paths: Paths, args) -> None:
    from magicface_jax.evaluation import runner
    from magicface_jax.pipeline import MagicFacePipeline

    pairs, estimators = held_out(paths, args.pairs)
    for name, images in BASELINES.items():
        target = paths.baseline(name)
        if not _current(target, len(pairs)):
            found = runner.estimate(
                pairs, images(paths, pairs), [f"{n}_{name}" for n in pairs.names], estimators
            )
            _write_json(
                target,
                {
                    "pairs": len(pairs),
                    "metrics": runner.metrics_of(pairs, found),
                    "estimates": found.to_json(),
                },
            )
    pipes = {}
    for model, setting in EVALUATIONS:
        target = paths.evaluation(model, setting)
        export = paths.model(model) / "export"
        steps = _trained_steps(export)
        if steps < 0:
            print(f"evaluations: {model} is not trained yet; skipping {setting.name}")
            continue
        if _current(target, len(pairs), trained_steps=steps):
            continue  # done, for the model as it is now and these pairs
        if model not in pipes:
            pipes[model] = MagicFacePipeline.from_pretrained(export)
        start = time.perf_counter()
        edited = runner.edit_pairs(pipes[model], pairs, setting, batch_size=args.batch_size)
        seconds = time.perf_counter() - start
        found = runner.estimate(pairs, edited, [f"{n}_{setting.name}" for n in pairs.names], estimators)
        metrics = runner.metrics_of(pairs, found)
        _write_json(
            target,
            {
                "model": model,
                "setting": dataclasses.asdict(setting),
                "trained_steps": steps,
                "pairs": len(pairs),
                "metrics": metrics,
                "seconds": seconds,
                "estimates": found.to_json(),
            },
        )
        print(f"{model} {setting.name}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
    print(f"evaluations: the estimator's own held-out errors: {estimators.aus.held_out()}")


def _current(path: Path, pairs: int, **expected) -> bool:
    """An evaluation written for `pairs` test pairs (and the `expected` values, such as the model's
    trained steps): a rerun with other pairs or a model trained further evaluates again."""
    if not path.exists():
        return False
    found = json.loads(path.read_text())
    return found.get("pairs") == pairs and all(found.get(k) == v for k, v in expected.items())


def _vae_round_trip(paths: Paths, pairs) -> np.ndarray:
    return autoencoder.round_trip(paths.vae_export)(pairs.sources)


# The references every table shows: the source returned unchanged (the paper's no-edit baseline), and the
# source through the frozen VAE and back (what any edit costs before the denoiser does anything).
BASELINES = {"no_edit": lambda paths, pairs: pairs.sources, "vae_round_trip": _vae_round_trip}
BASELINE_LABELS = {
    "no_edit": "no edit (source returned)",
    "vae_round_trip": "no edit, through the VAE and back",
}


def _write_json(path: Path, data: dict) -> None:
    with atomic_file(path, overwrite=True) as partial:  # an evaluation of a model trained further
        partial.write_text(json.dumps(data, indent=1))


def _evaluation(paths: Paths, model: str, setting: Setting) -> dict | None:
    path = paths.evaluation(model, setting)
    return json.loads(path.read_text()) if path.exists() else None


def _cells(metrics: dict, noise: dict | None = None) -> str:
    formats = {"au_mse": ".3f", "id_l2": ".3f", "background_rmse": ".4f", "pose_rmse_degrees": ".2f"}
    cells = []
    for key in METRICS:
        cell = format(metrics[key], formats[key])
        if noise is not None:
            cell += f" ± {format(noise[key], formats[key])}"
        cells.append(cell)
    return " | ".join(cells)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_figure(plt, figure, path: Path) -> None:
    figure.tight_layout()
    with atomic_file(path, overwrite=True) as partial:  # the report's own, replaced
        figure.savefig(partial, format="png", dpi=120)
    plt.close(figure)


class Report:
    """The tables, plots and edits grid from the evaluations found under OUT."""

    def __init__(self, paths: Paths, num_pairs: int):
        from magicface_jax.evaluation import runner

        self.paths, self.runner = paths, runner
        self.pairs, self.estimators = held_out(paths, num_pairs)
        self.baselines = {
            name: runner.Estimates.from_json(json.loads(paths.baseline(name).read_text())["estimates"])
            for name in BASELINES
        }
        self.baseline = self.baselines["no_edit"]

    def estimates(self, model: str, setting: Setting):
        found = _evaluation(self.paths, model, setting)
        return None if found is None else self.runner.Estimates.from_json(found["estimates"])

    def row(self, label: str, model: str, setting: Setting) -> str:
        found = self.estimates(model, setting)
        if found is None:
            return f"| {label} | not evaluated yet | | | |"
        return self._measured_row(label, found)

    def _measured_row(self, label: str, found) -> str:
        metrics = self.runner.metrics_of(self.pairs, found)
        return f"| {label} | {_cells(metrics, self.runner.bootstrap_noise(self.pairs, found))} |"

    def baseline_rows(self) -> list[str]:
        return [self._measured_row(BASELINE_LABELS[name], found) for name, found in self.baselines.items()]

    def by_au_table(self) -> list[str]:
        """AU MSE of each AU: the references, then the models at the reference setting and MagicFace over
        the guidance scales (which AUs an edit follows, and which the guidance moves)."""
        from magicface_jax.faces.aus import AU_NAMES

        rows = [(BASELINE_LABELS[name], found) for name, found in self.baselines.items()]
        rows += [
            (f"MagicFace, guidance {g:g}", self.estimates("magicface", Setting("unipc", 50, g)))
            for g in GUIDANCES
        ]
        rows += [
            ("without AU dropout, guidance 3", self.estimates("no_au_dropout", REFERENCE)),
            ("without the identity encoder, guidance 3", self.estimates("no_identity_encoder", REFERENCE)),
        ]
        lines = ["| | " + " | ".join(AU_NAMES) + " |", "|---|" + "---|" * len(AU_NAMES)]
        for label, found in rows:
            if found is not None:
                by_au = self.runner.summary(self.pairs, found)["au_mse_by_au"]
                lines.append(f"| {label} | " + " | ".join(f"{by_au[au]:.2f}" for au in AU_NAMES) + " |")
        return lines

    def au_use_row(self, model: str) -> str:
        if _trained_steps(self.paths.model(model) / "export") < 0:
            return f"| {model} | not trained yet |" + " |" * (3 + len(TIMESTEP_BANDS))
        u = au_use(self.paths.model(model), self.paths.latents())
        cells = " | ".join(f"{u[k]:.5f}" for k in ("true AU", "AU = 0", "shuffled AU"))
        bands = " | ".join(f"{g * 1e5:+.1f} ± {se * 1e5:.1f}" for g, se in u["bands"].values())
        return f"| {model} | {cells} | {u['gain']:+.5f} ± {u['gain_se']:.5f} | {bands} |"

    def steps_table(self) -> tuple[list[str], list[Setting]]:
        """Each setting of the steps study against the reference: the difference of every metric with its
        paired standard error; the settings of equal quality (`runner.EQUAL_QUALITY_RULE`; every
        metric is an error, lower is better)."""
        settings = (REFERENCE, *STEPS_STUDY)
        rows = [(f"{s.sampler} {s.steps}", self.estimates("magicface", s)) for s in settings]
        lines, not_worse = self.paired_table("sampler, steps", rows)
        within = [s for s, ok in zip(settings, not_worse, strict=True) if ok]
        return lines, within

    def ablations_table(self) -> list[str]:
        """The rows of Tables IV and II against MagicFace at the reference setting, pair by pair: the
        tables' ± are mostly the spread between pairs, which every row shares."""
        rows = [
            *(
                (f"MagicFace, guidance {g:g}", self.estimates("magicface", Setting("unipc", 50, g)))
                for g in GUIDANCES
                if g != REFERENCE.guidance
            ),
            ("without AU dropout, guidance 1", self.estimates("no_au_dropout", Setting("unipc", 50, 1.0))),
            ("without AU dropout, guidance 3", self.estimates("no_au_dropout", REFERENCE)),
            ("without the identity encoder, guidance 3", self.estimates("no_identity_encoder", REFERENCE)),
            (BASELINE_LABELS["vae_round_trip"], self.baselines["vae_round_trip"]),
        ]
        return self.paired_table("", rows)[0]

    def paired_table(
        self, heading: str, rows: list[tuple[str, Estimates | None]]
    ) -> tuple[list[str], list[bool]]:
        """Each row's metrics minus MagicFace's at the reference setting over the same pairs, with their
        paired standard errors, and whether the row is of equal quality or better (`runner.versus`)."""
        reference = self.estimates("magicface", REFERENCE)
        lines = [f"| {heading} | " + " | ".join(f"Δ {m}" for m in METRICS) + " | not worse |"]
        lines.append("|---|" + "---|" * (len(METRICS) + 1))
        not_worse = []
        for label, found in rows:
            if found is None or reference is None:
                lines.append(f"| {label} | not evaluated yet |" + " |" * len(METRICS))
                not_worse.append(False)
                continue
            compared = self.runner.versus(self.pairs, found, reference)
            delta, noise, ok = compared["delta"], compared["standard_error"], compared["not_worse"]
            not_worse.append(ok)
            cells = " | ".join(f"{delta[k]:+.4g} ± {noise[k]:.2g}" for k in METRICS)
            lines.append(f"| {label} | {cells} | {'yes' if ok else 'no'} |")
        return lines, not_worse

    def guidance_plot(self, path: Path) -> None:
        plt = _pyplot()
        xs, ys, errors = [], [], []
        for g in GUIDANCES:
            found = self.estimates("magicface", Setting("unipc", 50, g))
            if found is not None:
                xs.append(g)
                ys.append(self.runner.metrics_of(self.pairs, found)["au_mse"])
                errors.append(self.runner.bootstrap_noise(self.pairs, found)["au_mse"])
        figure, axis = plt.subplots(figsize=(5, 3.5))
        axis.errorbar(xs, ys, yerr=errors, marker="o", capsize=3, label="MagicFace (AU dropout 0.1)")
        no_dropout = self.estimates("no_au_dropout", Setting("unipc", 50, 1.0))
        if no_dropout is not None:
            axis.axhline(
                self.runner.metrics_of(self.pairs, no_dropout)["au_mse"],
                ls="--",
                c="C1",
                label="without AU dropout (guidance 1)",
            )
        axis.axhline(
            self.runner.metrics_of(self.pairs, self.baseline)["au_mse"], ls=":", c="gray", label="no edit"
        )
        axis.set(xlabel="AU guidance scale", ylabel="AU MSE", title="UniPC, 50 steps, 64² synthetic faces")
        axis.legend(fontsize=8)
        _save_figure(plt, figure, path)

    def steps_plot(self, path: Path) -> None:
        plt = _pyplot()
        figure, axes = plt.subplots(1, 2, figsize=(9, 3.5))
        for sampler in ("unipc", "ddim", "dpm++"):
            points = []
            for setting in (REFERENCE, *STEPS_STUDY):
                found = self.estimates("magicface", setting)
                if setting.sampler == sampler and found is not None:
                    points.append((setting.steps, self.runner.metrics_of(self.pairs, found)))
            points.sort(key=lambda p: p[0])
            for axis, metric in zip(axes, ("au_mse", "id_l2"), strict=True):
                axis.plot([p[0] for p in points], [p[1][metric] for p in points], marker="o", label=sampler)
        for axis, metric in zip(axes, ("AU MSE", "ID L2"), strict=True):
            axis.set(xlabel="sampling steps", ylabel=metric, title=f"{metric}, guidance 3")
            axis.legend(fontsize=8)
        _save_figure(plt, figure, path)

    def edits_grid(self, path: Path, count: int = 6) -> None:
        """For `count` test pairs: the source, its condition, then each trained model's edit (reference
        setting) of the source by the pair's AU variation."""
        from magicface_jax.images import save_image
        from magicface_jax.pipeline import MagicFacePipeline

        columns = [self.pairs.sources[:count], self.pairs.backgrounds[:count]]
        subset = dataclasses.replace(
            self.pairs,
            **{f.name: getattr(self.pairs, f.name)[:count] for f in dataclasses.fields(self.pairs)},
        )
        for model in MODELS:
            export = self.paths.model(model) / "export"
            if _trained_steps(export) >= 0:
                pipe = MagicFacePipeline.from_pretrained(export)
                columns.append(self.runner.edit_pairs(pipe, subset, REFERENCE, batch_size=count))
        grid = np.concatenate([np.concatenate(list(column), axis=0) for column in columns], axis=1)
        save_image(grid, path, overwrite=True)


def stage_report(paths: Paths, args) -> None:
    report = Report(paths, args.pairs)
    held = report.estimators.aus.held_out()
    held = (
        f"AU MSE {held['au_mse']:.2f} (a constant's {held['au_mse_constant']:.2f}), pose RMSE "
        f"{held['pose_rmse_degrees']:.1f}° (a constant's {held['pose_rmse_degrees_constant']:.1f}°), ID L2 "
        f"{held['id_l2_same_person']:.2f} between two images of one person, "
        f"{held['id_l2_different_persons']:.2f} of different persons"
        + (
            f"; on their round trips through the VAE, AU MSE {held['au_mse_vae_round_trip']:.2f} and "
            f"pose RMSE {held['pose_rmse_degrees_vae_round_trip']:.1f}°"
            if "au_mse_vae_round_trip" in held
            else ""
        )
    )
    steps_lines, within = report.steps_table()
    fewest = min(within, key=lambda s: s.steps) if within else None
    lines = [
        "# Synthetic replication",
        "",
        f"{len(report.pairs)} test pairs of {dataset_name()} (persons unseen in training); each source "
        "edited by its pair's AU variation with its own background condition. ± is a bootstrap standard "
        f"error over the pairs. The estimator's own held-out errors: {held}. Every model trained "
        f"{_trained_steps(paths.model('magicface') / 'export')} steps from the pretrain stage's plain UNet "
        f"({_trained_steps(paths.model('pretrain') / 'export')} steps on the target latents: the synthetic "
        "world's SD1.5).",
        "",
        "## Table I analogue (UniPC 50 steps, guidance 3)",
        "",
        HEADER,
        *report.baseline_rows(),
        report.row("MagicFace", "magicface", REFERENCE),
        "",
        "## Table IV analogue: AU dropout and guidance (UniPC 50 steps)",
        "",
        HEADER,
        report.row("without AU dropout, guidance 1", "no_au_dropout", Setting("unipc", 50, 1.0)),
        report.row("without AU dropout, guidance 3", "no_au_dropout", REFERENCE),
        *(
            report.row(f"AU dropout 0.1, guidance {g:g}", "magicface", Setting("unipc", 50, g))
            for g in GUIDANCES
        ),
        "",
        "## Table II analogue: the identity encoder (UniPC 50 steps, guidance 3)",
        "",
        HEADER,
        report.row(
            "without the identity encoder (features zeroed, trained so)", "no_identity_encoder", REFERENCE
        ),
        report.row("with the identity encoder", "magicface", REFERENCE),
        "",
        "## Tables IV and II pair by pair: differences from MagicFace at guidance 3 (negative: better)",
        "",
        *report.ablations_table(),
        "",
        "## AU MSE by AU (UniPC 50 steps): which AUs the edits follow",
        "",
        *report.by_au_table(),
        "",
        "## Does the denoiser use the AUs? Held-out loss (cached latents, the same noise and timesteps)",
        "",
        "| model | true AU | AU = 0 | shuffled AU | AU = 0 minus true | "
        + " | ".join(f"the same, t {lo}–{hi - 1} (×1e-5)" for lo, hi in TIMESTEP_BANDS)
        + " |",
        "|---|---|---|---|---|" + "---|" * len(TIMESTEP_BANDS),
        *(report.au_use_row(model) for model in MODELS),
        "",
        "## Sampling steps (guidance 3): differences from UniPC at 50 steps (negative: better)",
        "",
        *steps_lines,
        "",
        f"Fewest steps of equal quality to UniPC 50 ({EQUAL_QUALITY_RULE}): "
        f"{f'{fewest.sampler} {fewest.steps}' if fewest else 'none'}.",
    ]
    report.guidance_plot(paths.out / "au_mse_vs_guidance.png")
    report.steps_plot(paths.out / "steps.png")
    report.edits_grid(paths.out / "edits.png")
    text = "\n".join(lines) + "\n"
    with atomic_file(paths.out / "report.md", overwrite=True) as partial:
        partial.write_text(text)
    print(text)


def stage_demo(paths: Paths, args) -> None:
    from magicface_jax import demo

    export = paths.model("demo") / "export"
    if not export.exists():  # a damaged export is named by the study's read_info instead
        raise MagicFaceError("the demo stage ships the demo model: run --stages demo_model first")
    sampling = demo_sampling(demo_steps_study(paths, args, export))
    shipped = paths.estimator.resolve() == demo.SYNTHETIC_ESTIMATOR.resolve()  # given: already there
    size = demo.write_demo_assets(
        export,
        note=args.demo_note,
        face_scale=FACE_SCALE,
        estimator=None if shipped else paths.estimator,
        sampling=sampling,
    )
    print(
        f"demo: wrote {demo.DEMO_MODEL} ({size / 2**20:.1f} MB, sampled with {sampling.steps} UniPC steps), "
        f"{demo.DEMO_FACES} and {demo.SYNTHETIC_ESTIMATOR}"
    )


def demo_steps_study(paths: Paths, args, export: Path) -> dict:
    """The edits of the test pairs by the demo model `export` with each of `DEMO_STEPS_STUDY`, compared
    with the reference pair by pair (`runner.evaluate`); written once for these weights (their checksums),
    settings, pairs and rule of equal quality."""
    current = {
        "checksums": read_info(export).checksums,
        "study": [dataclasses.asdict(setting) for setting in DEMO_STEPS_STUDY],
        "equal_quality_rule": EQUAL_QUALITY_RULE,
    }
    if _current(paths.demo_steps, args.pairs, **current):
        print(f"demo steps study: done ({paths.demo_steps})")
        return json.loads(paths.demo_steps.read_text())
    from magicface_jax.evaluation import runner
    from magicface_jax.pipeline import MagicFacePipeline

    pairs, estimators = held_out(paths, args.pairs)
    pipe = MagicFacePipeline.from_pretrained(export)
    study = runner.evaluate(
        pipe, pairs, DEMO_STEPS_STUDY, estimators, batch_size=args.batch_size, reference=REFERENCE
    )
    study |= current
    _write_json(paths.demo_steps, study)
    return study


def demo_sampling(study: dict) -> SamplingDefault:
    """The demo model's recorded default: the fewest steps of its study (all UniPC) of equal quality to
    the reference, as `runner.evaluate` named them."""
    fewest = study["fewest_steps_of_equal_quality"]
    return SamplingDefault(
        fewest["steps"],
        f"benchmarks/synthetic_replication.py, demo stage: the fewest UniPC steps of equal quality to UniPC "
        f"{REFERENCE.steps} (guidance {REFERENCE.guidance:g}) on {study['pairs']} held-out pairs, pair by "
        f"pair: {study['equal_quality_rule']}",
    )


STAGE_FUNCTIONS = {
    "data": stage_data,
    "estimator": stage_estimator,
    "vae": stage_vae,
    "latents": stage_latents,
    "evaluations": stage_evaluations,
    "report": stage_report,
    "demo": stage_demo,
}


def _parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="the replication's folder (created; reruns resume)")
    parser.add_argument(
        "--stages",
        default="all",
        help=f"comma-separated, from {', '.join(STAGES)}; or all (every one but {' and '.join(DEMO_STAGES)})",
    )
    parser.add_argument(
        "--vae",
        type=Path,
        help="a frozen VAE to use instead of training one (a VAE export or a MagicFace checkpoint of this "
        "world, such as the demo model): the vae stage is skipped",
    )
    parser.add_argument(
        "--estimator",
        type=Path,
        help="a synthetic estimator of this world to use instead of training one (trained on round trips "
        "through that VAE): the estimator stage is skipped",
    )
    parser.add_argument("--pairs", type=int, default=TEST_PAIRS, help="test pairs evaluated")
    parser.add_argument("--batch-size", type=int, default=8, help="edits per sampling call")
    parser.add_argument("--demo-note", default="", help="demo stage: what users should know about the model")
    parser.add_argument(
        "--train-overrides",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="for the train.py runs of the tables' three models",
    )
    return parser


def _check_given(paths: Paths) -> None:
    """The given VAE and estimator exist, and are those OUT was started with (its models, latents and
    evaluations depend on them): recorded in OUT/inputs.json on the first run."""
    from magicface_jax.evaluation import synthetic

    if paths.given_vae is not None:
        autoencoder.frozen_vae(paths.given_vae)  # one clear line if it holds no VAE
    if paths.given_estimator is not None and not (paths.given_estimator / synthetic.CONFIG_FILE).is_file():
        raise MagicFaceError(
            f"--estimator {paths.given_estimator} holds no synthetic estimator ({synthetic.CONFIG_FILE} is "
            "missing): give a folder train_estimator wrote"
        )
    given = {
        flag: None if path is None else str(path.resolve())
        for flag, path in (("--vae", paths.given_vae), ("--estimator", paths.given_estimator))
    }
    if paths.inputs.exists():
        started = json.loads(paths.inputs.read_text())
        for flag, path in given.items():
            if started.get(flag) != path:
                was = f"{flag} {started.get(flag)}" if started.get(flag) else f"no {flag}"
                raise MagicFaceError(
                    f"{paths.out} was started with {was}; rerun with the same, or give another --out"
                )
        return
    paths.out.mkdir(parents=True, exist_ok=True)
    _write_json(paths.inputs, given)


def main(argv=None) -> None:
    args = _parser().parse_args(argv)
    # "all" leaves out the demo's stages (`demo` replaces the package's shipped demo model): only when named.
    stages = ALL_STAGES if args.stages == "all" else tuple(s.strip() for s in args.stages.split(","))
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise MagicFaceError(f"unknown stage {unknown[0]!r}: choose from {', '.join(STAGES)}, or all")
    if not 1 <= args.pairs <= TEST_PAIRS:
        raise MagicFaceError(f"--pairs must be in [1, {TEST_PAIRS}], got {args.pairs}")
    if args.batch_size < 1:
        raise MagicFaceError(f"--batch-size must be at least 1, got {args.batch_size}")
    paths = Paths(Path(args.out).expanduser(), args.vae, args.estimator)
    if paths.out.exists() and not paths.out.is_dir():
        raise MagicFaceError(f"--out {args.out} is a file; give a folder (it is created)")
    _check_given(paths)
    for stage in STAGES:
        if stage not in stages:
            continue
        start = time.perf_counter()
        if stage in TRAINED_STAGES:
            if stage_model(paths, "demo" if stage == "demo_model" else stage, args):
                print(f"[{stage}: stopped by SIGTERM; the same command resumes it and the stages after it]")
                return
        else:
            STAGE_FUNCTIONS[stage](paths, args)
        print(f"[{stage}: {time.perf_counter() - start:.0f} s]")


if __name__ == "__main__":
    sys.exit(cli.run(main))
