"""One process of the two-process sampling test: `python -m tests.multihost_edit ID PORT CKPT OUT`.

Each process has 4 CPU devices; `jax.distributed` joins them into one 8-device mesh over loopback with
gloo collectives, and the pipeline shards a batch of edits over all 8.
"""

import os
import sys

os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=4"

import jax
import numpy as np


def main(process_id: int, port: int, checkpoint: str, out: str) -> None:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}",
        num_processes=2,
        process_id=process_id,
        initialization_timeout=120,
    )
    from magicface_jax.pipeline import MagicFacePipeline
    from tests.test_pipeline import AU, images

    pipe = MagicFacePipeline.from_pretrained(checkpoint)
    assert pipe.num_devices == 8 and jax.process_count() == 2
    result = pipe(images(5, 6), images(5, 7), np.tile(AU, (3, 1))[:5], 2, 3.0, seed=11, output_type="np")
    np.save(f"{out}.{process_id}.npy", result)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
