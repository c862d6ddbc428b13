"""One process of the two-process sampling test: `python -m tests.multihost_edit ID PORT CKPT OUT`.

Each process has 4 CPU devices; `jax.distributed` joins them into one 8-device mesh over loopback with
gloo collectives, and the pipeline shards a batch of edits over all 8.
"""

import sys

import jax
import numpy as np

from magicface_jax.parallel.hosts import join_processes


def main(process_id: int, port: int, checkpoint: str, out: str) -> None:
    jax.config.update("jax_num_cpu_devices", 4)
    join_processes(f"127.0.0.1:{port}", num_processes=2, process_id=process_id)
    from jax._src.distributed import global_state

    from magicface_jax.parallel.mesh import to_host
    from magicface_jax.pipeline import MagicFacePipeline
    from tests.test_pipeline import MULTIHOST_EDIT

    pipe = MagicFacePipeline.from_pretrained(checkpoint)
    assert pipe.num_devices == 8 and jax.process_count() == 2
    sources, backgrounds, au, steps, guidance, seed = MULTIHOST_EDIT
    request = pipe.prepare(sources, backgrounds, au, seed)
    program, args = pipe.compiled(request, pipe.make_sampler("unipc", steps, guidance), guidance, "latent")
    sharded = program(*args).block_until_ready()  # each process computes its own shards, no collective
    # gloo gives up on a collective whose peers come more than ~30 s apart; compile times can differ that
    # much on a loaded machine, so meet at the coordination service's barrier first.
    global_state.client.wait_at_barrier("edits_computed", 300_000)
    np.save(f"{out}.{process_id}.npy", to_host(sharded)[: request.batch])
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
