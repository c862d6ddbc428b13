"""The logical axis names shard the model: a forward with FSDP-sharded parameters on a (2, 4) mesh equals
the unsharded one."""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from magicface_jax import checkpoint
from magicface_jax.config import tiny_magicface_config
from magicface_jax.models.magicface import MagicFace, abstract_params
from magicface_jax.parallel.rules import FSDP, param_shardings


def test_fsdp_sharded_forward_equals_unsharded(converted):
    config = tiny_magicface_config()
    model = MagicFace(config)
    params = {
        name: checkpoint.read_params(converted, name) for name in ("identity_encoder", "denoiser", "vae")
    }
    mesh = Mesh(np.asarray(jax.devices()).reshape(2, 4), ("data", "fsdp"))
    shardings = {name: param_shardings(abstract_params(config, name), mesh, FSDP) for name in params}
    split = sum(any(axis is not None for axis in s.spec) for s in jax.tree.leaves(shardings))
    assert split > len(jax.tree.leaves(shardings)) // 2, "most parameters should be split"
    sharded = jax.device_put(params, shardings)

    rng = np.random.default_rng(0)
    identity, noisy = (rng.standard_normal((2, 16, 16, 4)).astype(np.float32) for _ in range(2))
    prompt = rng.standard_normal((1, 77, 32)).astype(np.float32)
    au = rng.standard_normal((2, 12)).astype(np.float32)

    @jax.jit
    def forward(params, identity, noisy, au):
        kv = model.identity_kv(
            params["denoiser"], model.identity_features(params["identity_encoder"], identity, prompt)
        )
        return model.predict_noise(params["denoiser"], noisy, identity, au, 300, kv, prompt)

    batch = NamedSharding(mesh, P("data"))
    ours = forward(sharded, *(jax.device_put(x, batch) for x in (identity, noisy, au)))
    np.testing.assert_allclose(np.asarray(ours), np.asarray(forward(params, identity, noisy, au)), atol=1e-5)
