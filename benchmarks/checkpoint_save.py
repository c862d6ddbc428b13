"""Time of one train-checkpoint save with and without orbax's replica-parallel writes, on CPU devices.

    python benchmarks/checkpoint_save.py [--devices 8] [--mesh 2,4] [--repeats 3] [--json OUT]

The state is configs/tiny.yaml's (the nano model the training tests run, its AdamW moments and EMA),
sharded over a (data, fsdp) mesh as a run shards it, saved by `training.checkpoints` as a run saves it.
The two settings alternate (A B A B ...), so that a change of load falls on both alike. On CPU devices,
which share one host's memory, the training loop turns replica-parallel writes off
(`checkpoints.checkpoint_manager`); this measures why.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common
from magicface_jax.cli import ArgumentParser, run
from magicface_jax.errors import MagicFaceError

REPO = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=8, help="CPU devices (default 8)")
    parser.add_argument("--mesh", default="2,4", help="data,fsdp axes of the mesh (default 2,4)")
    parser.add_argument("--repeats", type=int, default=3, help="timed saves per setting (default 3)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    axes = common.whole_numbers(args.mesh, "--mesh", "2,4")
    if len(axes) != 2 or axes[0] * axes[1] > args.devices:
        raise MagicFaceError(f"--mesh {args.mesh}: give data,fsdp with data x fsdp at most --devices")
    data, fsdp = axes
    common.check_json_path(args.json)
    common.ensure_devices(args.devices, "the checkpoint benchmark")
    import jax

    from magicface_jax.parallel.mesh import training_mesh
    from magicface_jax.training import checkpoints
    from magicface_jax.training.config import CheckpointSettings, load_config
    from magicface_jax.training.init import load_start
    from magicface_jax.training.trainer import make_trainer

    config = load_config(
        REPO / "configs" / "tiny.yaml", ["dataset=unused", f"mesh.data={data}", f"mesh.fsdp={fsdp}"]
    )
    mesh = training_mesh(data, fsdp, 1, devices=jax.devices()[: data * fsdp])
    state = make_trainer(config, mesh, load_start(config, mesh)).initial_state()
    import orbax.checkpoint as ocp

    with tempfile.TemporaryDirectory() as scratch:
        saves = iter(range(1, 10_000))

        def save(parallel: bool):
            def once():
                manager = checkpoints.checkpoint_manager(Path(scratch) / str(parallel), CheckpointSettings())
                checkpoints.use_replica_parallel(parallel)  # after the manager's own choice
                args = ocp.args.Composite(**{checkpoints.STATE: ocp.args.StandardSave(state)})
                manager.save(next(saves), args=args, force=True)
                manager.wait_until_finished()
                manager.close()

            return once

        timings = common.time_alternating(
            {"replica_parallel": save(True), "one_writer_per_shard": save(False)}, args.repeats
        )
    rows = [(name, f"{t.median:.2f}", f"{t.best:.2f}") for name, t in timings.items()]
    ratio = timings["replica_parallel"].median / timings["one_writer_per_shard"].median
    print(common.markdown_table(("save", "median s", "best s"), rows))
    print(f"replica-parallel / one writer per shard: {ratio:.2f}x ({len(jax.tree.leaves(state))} arrays)")
    if args.json:
        report = {name: t.to_json() for name, t in timings.items()}
        common.write_json(args.json, {"machine": common.machine(), "mesh": [data, fsdp], **report})


if __name__ == "__main__":
    sys.exit(run(main))
