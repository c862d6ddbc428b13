"""UniPC (Zhao et al. 2023, arXiv 2302.04867): the multistep predictor-corrector sampler MagicFace uses.

The authors build `UniPCMultistepScheduler.from_config(<SD1.5 scheduler config>)` under diffusers 0.25.1,
so UniPC's own defaults apply: data (x0) prediction, B(h) variant "bh2", solver order 2, "linspace"
timesteps (the config's `steps_offset` only affects "leading" spacing), lower order on the last steps,
the corrector after every step. Those are the defaults here.

What follows the last step differs across diffusers versions, and with it the final latents:

- diffusers 0.25.1 appends the noise level of timestep 0 after the last sampled timestep
  (σ = sqrt((1 − ᾱ_0) / ᾱ_0) ≈ 0.029 for SD1.5): the last step ends at that small noise level instead of
  at the x0 prediction. It has no `final_sigmas_type` option.
- Later versions (checked: 0.42) add `final_sigmas_type` with default "zero": the last step returns the
  x0 prediction of the last model call. A 0.25.1 config has no such key, so the authors' exact call run
  under a newer diffusers silently changes the last step.
- Run step by step on the same model outputs, 0.42 with `final_sigmas_type="sigma_min"` gives latents
  bit-identical to 0.25.1 at 1, 2, 8, 25 and 50 steps; with "zero" only the final step differs.

So `final_sigmas_type` defaults to "sigma_min", what the authors' pinned version computes; "zero" is
available. A note for callers: around guidance the authors' pipeline maps ε to x-space (x − σ·ε), mixes,
and maps back ((y − x) / −σ). Both halves of the guidance batch share x, so this returns exactly
ε_u + s·(ε_c − ε_u): feed the sampler the guided ε, nothing else.
"""

from __future__ import annotations

import math
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from magicface_jax.diffusion import _common as c
from magicface_jax.diffusion.schedule import NoiseSchedule
from magicface_jax.errors import MagicFaceError

SOLVER_TYPES = ("bh1", "bh2")


@struct.dataclass
class UniPCState:
    latents: jax.Array  # x_i: the model's input at step i, before the corrector revises it
    last_sample: jax.Array  # the corrected x_{i-1}, where the previous predictor started
    outputs: tuple[jax.Array, ...]  # x0 predictions of steps i-1, i-2, ... (solver_order of them)


@struct.dataclass
class UniPCSampler:
    """UniPC with x0 prediction. Build with `make_sampler("unipc", ...)` or `unipc_sampler`.

    Per step i, with m = x0 predicted from (x_i, model output) and h_k the previous predictions:
    corrector  x_c = a·x_i + b·last_sample + c·m + Σ d_k·h_k   (x_c = x_i when there is none),
    predictor  x_{i+1} = e·x_c + f·m + Σ g_k·h_k.
    """

    timesteps: jax.Array  # (steps,) float32, integer-valued
    convert: jax.Array  # (steps, 2): m = row · (x_i, model output)
    corrector: jax.Array  # (steps, 3 + order): row · (x_i, last_sample, m, h_1 .. h_order)
    predictor: jax.Array  # (steps, 1 + order): row · (x_c, m, h_1 .. h_{order-1})
    solver_order: int = struct.field(pytree_node=False)

    name: ClassVar[str] = "unipc"
    init_noise_sigma: ClassVar[float] = 1.0

    @property
    def num_inference_steps(self) -> int:
        return self.timesteps.shape[0]

    def init_state(self, noise: jax.Array, rng: jax.Array | None = None) -> UniPCState:
        """The state before step 0; `noise` is unit Gaussian noise (B, h, w, C). UniPC draws no noise."""
        del rng
        x = c.as_state_dtype(noise) * self.init_noise_sigma
        zeros = jnp.zeros_like(x)
        return UniPCState(latents=x, last_sample=zeros, outputs=(zeros,) * self.solver_order)

    def scale_model_input(self, x: jax.Array, i: jax.Array) -> jax.Array:
        del i
        return x

    def step(self, state: UniPCState, model_output: jax.Array, i: jax.Array) -> UniPCState:
        x, hist = state.latents, state.outputs
        m = c.lincomb(self.convert[i], x, c.as_state_dtype(model_output))
        x_c = c.lincomb(self.corrector[i], x, state.last_sample, m, *hist)
        x_next = c.lincomb(self.predictor[i], x_c, m, *hist[:-1])
        return UniPCState(latents=x_next, last_sample=x_c, outputs=(m, *hist[:-1]))


def unipc_sampler(
    schedule: NoiseSchedule,
    num_inference_steps: int,
    *,
    final_sigmas_type: str = "sigma_min",
    solver_order: int = 2,
    solver_type: str = "bh2",
    lower_order_final: bool = True,
    disable_corrector: tuple[int, ...] = (),
) -> UniPCSampler:
    """UniPC as diffusers' `UniPCMultistepScheduler` computes it with the same options.

    `disable_corrector` lists steps k whose result is not corrected (the corrector runs at the start of
    step k + 1), as in diffusers. `final_sigmas_type`: see the module docstring.
    """
    n = c.check_steps(num_inference_steps, schedule.num_train_timesteps)
    c.check_choice("final_sigmas_type", final_sigmas_type, c.FINAL_SIGMAS_TYPES)
    c.check_choice("solver_type", solver_type, SOLVER_TYPES)
    if isinstance(solver_order, bool) or solver_order not in (1, 2, 3):
        raise MagicFaceError(f"solver_order={solver_order!r}: UniPC supports orders 1, 2 and 3")
    spacing = c.spacing(schedule, "linspace")
    timesteps = c.grid_timesteps(schedule, n, spacing)
    c.require_distinct("unipc", timesteps, n, spacing)

    # The order of step i: warm up from 1, and (lower_order_final) never use more points than steps left.
    orders = [min(solver_order, n - i if lower_order_final else solver_order, i + 1) for i in range(n)]
    if final_sigmas_type == "zero" and orders[-1] > 1:
        raise MagicFaceError(
            "unipc with final_sigmas_type='zero' needs lower_order_final=True: a multistep update that "
            "ends at noise level zero divides by zero"
        )
    levels = c.vp_coefficients(c.sigmas_at(schedule, timesteps, final_sigmas_type))
    alpha, sigma, _ = levels
    disabled = {int(k) for k in disable_corrector}

    convert, corrector, predictor = [], [], []
    for i in range(n):
        if schedule.prediction_type == "epsilon":  # x0 = (x − σ·ε) / α
            convert.append([1.0 / alpha[i], -sigma[i] / alpha[i]])
        else:  # v-prediction: x0 = α·x − σ·v
            convert.append([alpha[i], -sigma[i]])

        if i > 0 and i - 1 not in disabled:
            # The corrector redoes step i−1 at that step's order, now that m_i is known; the previous
            # step's prediction h_1 plays the role of m0 and x_i itself is not used.
            p = orders[i - 1]
            x_coef, m0_coef, h_coefs, t_coef = _update(
                levels, solver_type, i, i - 1, range(i - 2, i - 1 - p, -1)
            )
            row = [0.0, x_coef, t_coef, m0_coef, *h_coefs]
        else:
            row = [1.0]
        corrector.append(row + [0.0] * (3 + solver_order - len(row)))

        p = orders[i]
        x_coef, m0_coef, h_coefs, _ = _update(levels, solver_type, i + 1, i, range(i - 1, i - p, -1), False)
        row = [x_coef, m0_coef, *h_coefs]
        predictor.append(row + [0.0] * (1 + solver_order - len(row)))

    return UniPCSampler(
        timesteps=c.table(timesteps),
        convert=c.table(convert),
        corrector=c.table(corrector),
        predictor=c.table(predictor),
        solver_order=solver_order,
    )


def _update(
    levels: tuple[np.ndarray, np.ndarray, np.ndarray],
    solver_type: str,
    t: int,
    s0: int,
    previous: range,
    corrector: bool = True,
) -> tuple[float, float, list[float], float]:
    """Coefficients of one UniP (predictor) or UniC (corrector) update from noise level s0 to t.

    x_t = (σ_t/σ_s0)·x − α_t·(e^{−h} − 1)·m0 − α_t·B(h)·[Σ_k ρ_k·(m_k − m0)/r_k + ρ_t·(m_t − m0)]
    with h = λ_t − λ_s0 and r_k = (λ_{s_k} − λ_s0)/h for the earlier points s_k in `previous`; the ρ_t term
    (the model output at the end point) is the corrector's only. `levels` are (α, σ, λ) per noise level.
    Returns the coefficients of (x, m0, [m_k for s_k in previous], m_t).
    """
    alpha, sigma, lam = levels
    order = len(previous) + 1
    h = lam[t] - lam[s0]
    hh = -h  # the data-prediction form integrates in −λ
    h_phi_1 = math.expm1(hh)
    b_h = hh if solver_type == "bh1" else math.expm1(hh)
    rks = np.array([(lam[s] - lam[s0]) / h for s in previous] + [1.0])

    # Order conditions R·ρ = b: R[k] = r^k, b_k = (k+1)!·hh·φ_{k+2}(hh)/B(h), φ the exponential-integrator
    # functions, by the recurrence φ_{k+1}(z) = (φ_k(z) − 1/k!)/z.
    rows, b = [], []
    h_phi_k = h_phi_1 / hh - 1.0
    factorial = 1
    for k in range(1, order + 1):
        rows.append(rks ** (k - 1))
        b.append(h_phi_k * factorial / b_h)
        factorial *= k + 1
        h_phi_k = h_phi_k / hh - 1.0 / factorial
    r_mat, b = np.stack(rows), np.array(b)

    # The corrector at order 1 and the predictor at order 2 use a fixed ρ = 1/2, as UniPC's authors do.
    if corrector:
        rhos = np.array([0.5]) if order == 1 else np.linalg.solve(r_mat, b)
        rhos_prev, rho_t = rhos[:-1], rhos[-1]
    elif order == 1:
        rhos_prev = np.zeros(0)
    elif order == 2:
        rhos_prev = np.array([0.5])
    else:
        rhos_prev = np.linalg.solve(r_mat[:-1, :-1], b[:-1])

    x_coef = sigma[t] / sigma[s0]
    m0_coef = -alpha[t] * h_phi_1
    scale = -alpha[t] * b_h
    h_coefs = []
    for rho, rk in zip(rhos_prev, rks[:-1], strict=True):
        h_coefs.append(scale * rho / rk)
        m0_coef -= scale * rho / rk
    t_coef = 0.0
    if corrector:  # guarded: at σ_t = 0 with "bh1", scale is infinite (a predictor-only case)
        t_coef = scale * rho_t
        m0_coef -= t_coef
    return x_coef, m0_coef, h_coefs, t_coef
