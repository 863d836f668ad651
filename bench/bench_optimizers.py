"""Adam and a cosine schedule against plain SGD, and against torch and JAX.

Two cases of ``cases.py``:

- **tall** (1,000,000 × 64 → 1, float32): one full-batch step.  Memory-bound:
  the update touches 65 numbers, so Adam should cost within 10% of SGD
  (issue #13).
- **seed** (1 × 5 → 2): the blog's 100-step fit, in one call.  Call overhead
  and the per-step update dominate.

Each library runs SGD, Adam and Adam with a cosine schedule
(``T_max`` = 100 steps) in the same run:

- fastlin: ``model.step`` (tall) and ``model.fit(steps=100)`` (seed);
- torch: ``nn.Linear`` + ``mse_loss`` + ``torch.optim`` (+ ``CosineAnnealingLR``),
  one step per Python iteration;
- JAX: the step jitted with ``jax.value_and_grad``; optax's ``sgd``/``adam``
  (with a cosine schedule function) when optax is installed, and the seed fit
  as one jitted ``lax.fori_loop``.

Run: ``python -m pytest bench/bench_optimizers.py --benchmark-only``.
"""

from __future__ import annotations

import numpy as np
import pytest
from cases import CASES

import fastlin

FIT_STEPS = 100
RULES = ("sgd", "adam", "adam-cosine")
LIBRARIES = ("fastlin", "torch", "jax")
LR = {"sgd": 0.01, "adam": 1e-3, "adam-cosine": 1e-3}


def _data(case):
    c = CASES[case]
    rng = np.random.default_rng(0)
    X = rng.standard_normal((c.n_rows, c.n_in), dtype=np.float32)
    T = rng.standard_normal((c.n_rows, c.n_out), dtype=np.float32)
    W = (rng.standard_normal((c.n_out, c.n_in)) * 0.1).astype(np.float32)
    b = np.zeros(c.n_out, dtype=np.float32)
    return X, T, W, b


# --------------------------------------------------------------------------
# one runner per library: step() and fit(n)
# --------------------------------------------------------------------------
class _Fastlin:
    def __init__(self, X, T, W, b, rule):
        self.X, self.T = X, T
        self.model = fastlin.Linear.from_weights(W, b)
        if rule == "sgd":
            self.opt = fastlin.SGD(LR[rule])
        elif rule == "adam":
            self.opt = fastlin.Adam(LR[rule])
        else:
            self.opt = fastlin.Adam(LR[rule], schedule=fastlin.schedules.cosine(T_max=FIT_STEPS))

    def step(self):
        return self.model.step(self.X, self.T, self.opt)

    def fit(self, n):
        return self.model.fit(self.X, self.T, steps=n, opt=self.opt)


class _Torch:
    def __init__(self, X, T, W, b, rule):
        torch = pytest.importorskip("torch")
        self.torch = torch
        self.X, self.T = torch.from_numpy(X), torch.from_numpy(T)
        self.layer = torch.nn.Linear(W.shape[1], W.shape[0])
        with torch.no_grad():
            self.layer.weight.copy_(torch.from_numpy(W))
            self.layer.bias.copy_(torch.from_numpy(b))
        params = self.layer.parameters()
        self.opt = torch.optim.SGD(params, lr=LR[rule]) if rule == "sgd" else torch.optim.Adam(params, lr=LR[rule])
        self.sched = (
            torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, T_max=FIT_STEPS) if rule == "adam-cosine" else None
        )

    def step(self):
        self.opt.zero_grad(set_to_none=True)
        loss = self.torch.nn.functional.mse_loss(self.layer(self.X), self.T)
        loss.backward()
        self.opt.step()
        if self.sched is not None:
            self.sched.step()
        return loss

    def fit(self, n):
        losses = self.torch.empty(n, dtype=self.torch.float64)
        for k in range(n):
            losses[k] = self.step().detach()
        return losses


class _Jax:
    def __init__(self, X, T, W, b, rule):
        jax = pytest.importorskip("jax")
        optax = pytest.importorskip("optax")
        jnp = jax.numpy
        self.jax = jax
        self.X, self.T = jnp.asarray(X), jnp.asarray(T)
        self.params = (jnp.asarray(W), jnp.asarray(b))
        if rule == "sgd":
            tx = optax.sgd(LR[rule])
        elif rule == "adam":
            tx = optax.adam(LR[rule])
        else:  # torch's CosineAnnealingLR in closed form, eta_min = 0
            tx = optax.adam(lambda k: LR[rule] * 0.5 * (1.0 + jnp.cos(jnp.pi * k / FIT_STEPS)))
        self.state = tx.init(self.params)

        def loss_fn(params, X, T):
            W, b = params
            return jnp.mean((X @ W.T + b - T) ** 2)

        def step(params, state, X, T):
            loss, grads = jax.value_and_grad(loss_fn)(params, X, T)
            updates, state = tx.update(grads, state, params)
            return optax.apply_updates(params, updates), state, loss

        self._step = jax.jit(step)

        def fit(params, state, X, T, n):
            def body(k, carry):
                params, state, losses = carry
                params, state, loss = step(params, state, X, T)
                return params, state, losses.at[k].set(loss)

            return jax.lax.fori_loop(0, n, body, (params, state, jnp.zeros(n)))

        self._fit = jax.jit(fit, static_argnums=4)

    def step(self):
        self.params, self.state, loss = self._step(self.params, self.state, self.X, self.T)
        return loss.block_until_ready()

    def fit(self, n):
        self.params, self.state, losses = self._fit(self.params, self.state, self.X, self.T, n)
        return losses.block_until_ready()


RUNNERS = {"fastlin": _Fastlin, "torch": _Torch, "jax": _Jax}


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("library", LIBRARIES)
def test_tall_step(benchmark, library, rule):
    runner = RUNNERS[library](*_data("tall"), rule)
    benchmark.group = "optimizer-step:tall"
    benchmark.name = f"step[tall-{library}-{rule}]"
    for _ in range(3):  # compile and warm up
        runner.step()
    benchmark.pedantic(runner.step, rounds=15, iterations=1, warmup_rounds=1)
    benchmark.extra_info.update(case="tall", library=library, rule=rule)


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("library", LIBRARIES)
def test_seed_fit(benchmark, library, rule):
    runner = RUNNERS[library](*_data("seed"), rule)
    benchmark.group = f"optimizer-fit{FIT_STEPS}:seed"
    benchmark.name = f"fit{FIT_STEPS}[seed-{library}-{rule}]"
    for _ in range(3):
        runner.fit(FIT_STEPS)
    benchmark(runner.fit, FIT_STEPS)
    benchmark.extra_info.update(case="seed", library=library, rule=rule, steps=FIT_STEPS)
