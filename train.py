"""Train MagicFace: one command from a 2-core CPU to a TPU pod slice.

    python train.py --config configs/tiny.yaml                       # train (or resume) the run
    python train.py --config configs/tiny.yaml train.steps=2000 mesh.fsdp=4   # dotted.key=value overrides
    python train.py --config configs/tiny.yaml --export              # write OUTPUT_DIR/export now
    python train.py --config configs/synthetic_128.yaml --cache-latents   # the VAE's latents, once

Multi-host: on a TPU pod slice add --distributed to every host's command (the environment describes the
slice); elsewhere give --coordinator HOST:PORT --num-processes N --process-id I. See docs/training.md.
"""

from __future__ import annotations

import sys

from magicface_jax import cache, cli


def parse_args(argv):
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="the run's YAML config (configs/*.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config keys to override")
    action = parser.add_mutually_exclusive_group()
    action.add_argument(
        "--export", action="store_true", help="write the inference checkpoint of the latest step"
    )
    action.add_argument(
        "--cache-latents", action="store_true", help="write the frozen VAE's latents to data.latent_cache"
    )
    parser.add_argument(
        "--distributed", action="store_true", help="join the processes the environment describes"
    )
    parser.add_argument("--coordinator", help="HOST:PORT of process 0, for a multi-process run")
    parser.add_argument("--num-processes", type=int)
    parser.add_argument("--process-id", type=int)
    parser.add_argument(
        "--compilation-cache",
        metavar="DIR",
        help=cache.COMPILATION_CACHE_HELP + ": a rerun, such as a resume after a preemption, loads the step",
    )
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    from magicface_jax.training.config import load_config

    run = load_config(args.config, args.overrides)
    if args.distributed or args.coordinator is not None or args.num_processes is not None:
        from magicface_jax.parallel.hosts import join_processes

        join_processes(args.coordinator, args.num_processes, args.process_id)
    cache.enable_compilation_cache(args.compilation_cache)
    if args.cache_latents:
        from magicface_jax.training.caching import cache_latents

        cache_latents(run)
        return
    from magicface_jax.training.loop import train

    train(run, export_only=args.export)


if __name__ == "__main__":
    sys.exit(cli.run(main))
