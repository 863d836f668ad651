"""The small-problem path of the CPU backend and the caches of a repeated fit.

* ``cpu.update_kind``: plain SGD (no momentum, no weight decay) compiles its
  own copy of the update; every kind gives the same numbers for the same
  record.
* ``fused_step_small`` / ``fit_steps_small`` (batches of at most
  ``cpu.SMALL_WORK`` multiply-adds) against the float64 reference, at and
  across the threshold, for every rule, shuffled or not; a fit rounds as
  its lone steps do.
* A fit's plan and the ``lr=`` shortcut's optimiser are kept per model: a
  repeated fit gives what a fresh model gives, whatever came before.
"""

from __future__ import annotations

import numpy as np
import pytest

import fastlin
from fastlin.backends import abi, cpu, cpu_ops
from tests.support import naive
from tests.support.helpers import make_data

LIMIT32 = float(np.finfo(np.float32).max)


@pytest.mark.parametrize(
    "opt, plain",
    [
        (fastlin.SGD(0.1), True),
        (fastlin.SGD(0.1, schedule=fastlin.schedules.cosine(10)), True),
        (fastlin.SGD(0.1, momentum=0.9), "sgd"),
        (fastlin.SGD(0.1, weight_decay=1e-3), "sgd"),
        (fastlin.Adam(), "any"),
        (fastlin.AdamW(), "any"),
    ],
)
def test_update_kind_picks_the_copy_of_the_rule(opt, plain):
    kind = cpu.update_kind(opt.hyper()[0])
    assert kind is {True: cpu.PLAIN_SGD, "sgd": cpu.SGD, "any": cpu.ANY_RULE}[plain]
    assert cpu_ops._update_kind(opt.hyper()) is kind


def _kernel_run(kernel, kind, X, T, W, b, hyper, steps, batch, shuffle):
    """Run a CPU fit kernel directly; returns (losses, W, b, counters, status)."""
    n, d = X.shape
    o = W.shape[0]
    W, b = W.copy(), b.copy()
    slots_w, slots_b = np.zeros((0, o, d), W.dtype), np.zeros((0, o), W.dtype)
    counters = np.zeros(abi.CNT_SIZE, np.int64)
    work = np.zeros(cpu.scratch_layout(o, d, 1).size)
    acc = np.zeros((1, o, d), W.dtype)
    perm = np.empty(n if shuffle else 0, np.int64)
    losses = np.full(steps, np.nan)
    done, status = kernel(
        X, T, W, b, True, slots_w, slots_b, counters, hyper, kind, False, LIMIT32, batch, shuffle, np.uint64(3), n,
        perm, work, acc, losses,
    )  # fmt: skip
    assert done == steps
    return losses, W, b, counters, status


@pytest.mark.parametrize("kernel", [cpu.fit_steps, cpu.fit_steps_small], ids=["streaming", "small"])
@pytest.mark.parametrize("shuffle", [False, True])
def test_each_copy_equals_the_generic_one_bit_for_bit(kernel, shuffle):
    X, T, W, b = make_data(9, 5, 2, np.float32, seed=4)
    hyper = fastlin.SGD(0.05, schedule=fastlin.schedules.step(3, 0.5)).hyper()
    plain = _kernel_run(kernel, cpu.PLAIN_SGD, X, T, W, b, hyper, 12, 4, shuffle)
    for kind in (cpu.SGD, cpu.ANY_RULE):
        for a, g in zip(plain, _kernel_run(kernel, kind, X, T, W, b, hyper, 12, 4, shuffle)):
            np.testing.assert_array_equal(a, g)
    # SGD with weight decay (no slots): its own copy against the generic one
    hyper = fastlin.SGD(0.05, weight_decay=0.1).hyper()
    sgd = _kernel_run(kernel, cpu.SGD, X, T, W, b, hyper, 12, 4, shuffle)
    for a, g in zip(sgd, _kernel_run(kernel, cpu.ANY_RULE, X, T, W, b, hyper, 12, 4, shuffle)):
        np.testing.assert_array_equal(a, g)


def _fit(model, X, T, opt, steps, batch, shuffle):
    return model.fit(X, T, steps=steps, opt=opt, batch_size=batch, shuffle=shuffle, seed=11).loss


# (n, d, o): the seed's shape, and work n·d·o under, at and over SMALL_WORK (512)
SIZES = [(1, 5, 2), (4, 16, 4), (8, 16, 4), (9, 16, 4), (129, 4, 4)]


@pytest.mark.parametrize("n,d,o", SIZES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "opt_args",
    [dict(lr=0.05), dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-2)],
    ids=["plain", "momentum"],
)
@pytest.mark.parametrize("batch,shuffle", [(None, False), (7, True)])
def test_small_and_streaming_fits_match_the_float64_reference(n, d, o, dtype, opt_args, batch, shuffle):
    X, T, W, b = make_data(n, d, o, dtype, seed=n + d + o)
    model = fastlin.Linear.from_weights(W, b)
    losses = _fit(model, X, T, fastlin.SGD(**opt_args), 25, batch, shuffle)
    ref_losses, ref_W, ref_b = naive.fit(X, T, W, b, 25, batch_size=batch, shuffle=shuffle, seed=11, **opt_args)
    rtol = 2e-4 if dtype == np.float32 else 1e-10
    # (a fit that converges ends with losses far below float32's rounding of W)
    np.testing.assert_allclose(losses, ref_losses, rtol=rtol, atol=rtol * ref_losses[0])
    np.testing.assert_allclose(model.weight, ref_W, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(model.bias, ref_b, rtol=rtol, atol=rtol)


def test_the_threshold_is_the_batch_work():
    assert cpu.SMALL_WORK == 512
    assert cpu_ops._step_kernel(8, 4, 16, 1) is cpu.fused_step_small  # 512 multiply-adds
    assert cpu_ops._step_kernel(9, 4, 16, 1) is cpu.fused_step
    assert cpu_ops._fit_kernel(8, 4, 16, 1) is cpu.fit_steps_small
    assert cpu_ops._fit_kernel(9, 4, 16, 1) is cpu.fit_steps
    # a mini-batch fit is planned by its batch, not its data
    assert cpu_ops.fit_plan(10_000, 4, 16, 8, True, 1, np.float32).kernel is cpu.fit_steps_small


@pytest.mark.parametrize("n,d,o", [(1, 5, 2), (8, 16, 4), (5, 3, 1)])
@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_a_small_fit_rounds_as_its_steps_do(n, d, o, opt):
    X, T, W, b = make_data(n, d, o, np.float32, seed=2)
    make = (lambda: fastlin.SGD(0.05, momentum=0.5)) if opt == "sgd" else (lambda: fastlin.Adam(0.01))
    fitted, stepped = fastlin.Linear.from_weights(W, b), fastlin.Linear.from_weights(W, b)
    losses = fitted.fit(X, T, steps=6, opt=make()).loss
    step_opt = make()
    step_losses = [stepped.step(X, T, step_opt) for _ in range(6)]
    np.testing.assert_array_equal(losses, step_losses)
    np.testing.assert_array_equal(fitted.weight, stepped.weight)
    np.testing.assert_array_equal(fitted.bias, stepped.bias)


def test_a_small_fit_refuses_a_diverging_update_and_writes_nothing():
    X, T, W, b = make_data(4, 3, 2, np.float32, seed=5)
    X = X * 1e20  # the first update (about 1e40) is beyond float32's range
    model = fastlin.Linear.from_weights(W, b)
    with pytest.raises(fastlin.DivergenceError) as err:
        model.fit(X, T, steps=3, lr=1.0)
    assert err.value.step == 1
    np.testing.assert_array_equal(model.weight, W)
    np.testing.assert_array_equal(model.bias, b)


def test_repeated_fits_reuse_the_plan_and_give_what_a_fresh_model_gives():
    X, T, W, b = make_data(40, 6, 3, np.float32, seed=8)
    model = fastlin.Linear.from_weights(W, b)
    # many shapes of fit on one model: more plans than it keeps
    runs = [(None, False, 0), (8, True, 1), (8, True, 2), (5, True, 1), (16, False, 0), (8, True, 1), (None, False, 0)]
    for batch, shuffle, seed in runs:
        model.weight, model.bias = W, b
        got = model.fit(X, T, steps=9, opt=fastlin.SGD(0.02), batch_size=batch, shuffle=shuffle, seed=seed).loss
        fresh = fastlin.Linear.from_weights(W, b)
        want = fresh.fit(X, T, steps=9, opt=fastlin.SGD(0.02), batch_size=batch, shuffle=shuffle, seed=seed).loss
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(model.weight, fresh.weight)
    plans = [k for k in model._step_ws if isinstance(k, tuple) and k[0] == "fit-plan"]
    assert 1 <= len(plans) <= 4


def test_the_lr_shortcut_reuses_its_sgd_only_for_the_same_rate():
    X, T, W, b = make_data(12, 4, 2, np.float64, seed=9)
    model, ref = fastlin.Linear.from_weights(W, b), fastlin.Linear.from_weights(W, b)
    first = model.fit(X, T, steps=5, lr=0.1)
    again = model.fit(X, T, steps=5, lr=0.1)
    other = model.fit(X, T, steps=5, lr=0.05)
    want = [ref.fit(X, T, steps=5, opt=fastlin.SGD(rate)) for rate in (0.1, 0.1, 0.05)]
    for got, w in zip((first, again, other), want):
        np.testing.assert_array_equal(got.loss, w.loss)
        np.testing.assert_array_equal(got.lr, w.lr)
    np.testing.assert_array_equal(model.weight, ref.weight)
    # bad rates are still refused, before anything changes
    before = model.weight.copy()
    for bad, error in ((True, TypeError), (-0.1, ValueError), (float("nan"), ValueError), ("0.1", TypeError)):
        with pytest.raises(error):
            model.fit(X, T, steps=5, lr=bad)
        np.testing.assert_array_equal(model.weight, before)


def test_the_parallel_kernels_compile_one_copy_for_every_optimiser():
    # cpu_ops.GENERIC: a parallel step or fit runs every rule through the
    # generic copy of the update, so a second optimiser compiles nothing new;
    # the results are those of the rule's own copy (checked above)
    X, T, W, b = make_data(20_000, 16, 4, np.float32, seed=12)
    for make in (lambda: fastlin.SGD(1e-3), lambda: fastlin.SGD(1e-3, momentum=0.9), lambda: fastlin.Adam(1e-3)):
        fitted, stepped = fastlin.Linear.from_weights(W, b), fastlin.Linear.from_weights(W, b)
        losses = fitted.fit(X, T, steps=2, opt=make()).loss
        step_opt = make()
        step_losses = [stepped.step(X, T, step_opt) for _ in range(2)]
        np.testing.assert_array_equal(losses, step_losses)
        np.testing.assert_array_equal(fitted.weight, stepped.weight)
        (plan,) = [v for k, v in fitted._step_ws.items() if isinstance(k, tuple) and k[0] == "fit-plan"]
        (scratch,) = [v for k, v in stepped._step_ws.items() if isinstance(k, tuple) and k[0] == "scratch"]
        assert plan.kernel is cpu.fit_steps_parallel and scratch[4] is cpu.fused_step_parallel
        assert list(plan.entries) == [id(cpu.ANY_RULE)] and list(scratch[5]) == [id(cpu.ANY_RULE)]
