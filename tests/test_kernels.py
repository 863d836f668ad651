"""Every CPU kernel against the float64 reference, on awkward shapes.

Shapes: N in {1, 17, 33, 1000}, D in {1, 5, 63}, O in {1, 2, 7}; float32 and
float64; with and without bias; C- and Fortran-ordered inputs; fastlin's own
work split and a forced split into many chunks (so the parallel twins and the
chunk-ordered reduction run even on small N).
"""

from __future__ import annotations

import itertools
import types

import numpy as np
import pytest

import fastlin
from fastlin.backends import abi, cpu, cpu_ops, rules
from tests.support import naive
from tests.support.helpers import assert_sums_close, make_data, tol

SHAPES = list(itertools.product([1, 17, 33, 1000], [1, 5, 63], [1, 2, 7]))


def _model(W, b, bias):
    return fastlin.Linear.from_weights(W, b if bias else None)


@pytest.mark.parametrize("n,d,o", SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("order", ["C", "F"])
def test_every_operation_matches_reference(n, d, o, dtype, bias, order, chunking):
    X, T, W, b = make_data(n, d, o, dtype, seed=n * 100 + d * 10 + o, order=order)
    b_ref = b if bias else None
    model = _model(W, b, bias)
    t = tol(dtype)

    # forward
    np.testing.assert_allclose(model(X), naive.forward(X, W, b_ref), **t)
    assert model(X).dtype == dtype

    for reduction in ("mean", "sum"):
        loss, dW, db = naive.mse_grad(X, T, W, b_ref, reduction)
        # loss without storing the prediction, and mse_loss on a stored one
        np.testing.assert_allclose(model.loss(X, T, reduction=reduction), loss, **t)
        np.testing.assert_allclose(
            fastlin.mse_loss(model(X), T, reduction=reduction), naive.mse(model(X), T, reduction), **t
        )
        # analytic gradient
        g = model.gradients(X, T, reduction=reduction)
        np.testing.assert_allclose(g.loss, loss, **t)
        assert_sums_close(g.weight, dW, naive.mse_grad_magnitude(X, T, W, b_ref, reduction), dtype)
        if bias:
            np.testing.assert_allclose(g.bias, db, **t)
        else:
            assert g.bias is None

    # backward with an arbitrary upstream gradient
    dY = np.random.default_rng(7).standard_normal((n, o)).astype(dtype)
    dX, dW_b, db_b = model.backward(X, dY)
    rX, rW, rb = naive.backward(X, dY, W)
    np.testing.assert_allclose(dX, rX, **t)
    np.testing.assert_allclose(dW_b, rW, **t)
    if bias:
        np.testing.assert_allclose(db_b, rb, **t)
    else:
        assert db_b is None

    # fused step: returns the loss before the update, then updates in place
    lr = 0.05
    loss, dW, db = naive.mse_grad(X, T, W, b_ref)
    got = model.step(X, T, fastlin.SGD(lr))
    np.testing.assert_allclose(got, loss, **t)
    # the new weight rounds to the dtype; its step carries the gradient's error
    W_ref = W.astype(np.float64) - lr * dW
    magnitude = lr * naive.mse_grad_magnitude(X, T, W, b_ref)
    assert_sums_close(model.weight, W_ref, magnitude, dtype, rounding=np.finfo(dtype).eps * np.abs(W_ref))
    if bias:
        np.testing.assert_allclose(model.bias, b.astype(np.float64) - lr * db, **t)


@pytest.mark.parametrize("n,d,o", [(1, 5, 2), (33, 63, 7), (1000, 5, 1)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_single_sample_shapes(n, d, o, dtype):
    X, T, W, b = make_data(n, d, o, dtype)
    model = _model(W, b, True)
    x, t_ = X[0], T[0]
    assert model(x).shape == (o,)
    np.testing.assert_allclose(model(x), naive.forward(X[:1], W, b)[0], **tol(dtype))
    dX, dW, db = model.backward(x, t_)
    assert dX.shape == (d,) and dW.shape == (o, d) and db.shape == (o,)
    np.testing.assert_allclose(model.loss(x, t_), naive.mse_grad(X[:1], T[:1], W, b)[0], **tol(dtype))


def test_one_output_accepts_1d_targets():
    X, T, W, b = make_data(50, 4, 1)
    model = _model(W, b, True)
    assert model.loss(X, T[:, 0]) == model.loss(X, T)
    g1, g2 = model.gradients(X, T[:, 0]), model.gradients(X, T)
    np.testing.assert_array_equal(g1.weight, g2.weight)


@pytest.mark.parametrize("seed", [0, 1, 2**63 + 5, 2**64 - 1])
@pytest.mark.parametrize("epoch", [0, 1, 7])
@pytest.mark.parametrize("n", [1, 2, 17, 100])
def test_epoch_permutation_matches_documented_shuffle(seed, epoch, n):
    perm = np.empty(n, dtype=np.int64)
    cpu.epoch_permutation(np.uint64(seed), epoch, perm)
    np.testing.assert_array_equal(perm, naive.epoch_permutation(seed, epoch, n))
    assert sorted(perm.tolist()) == list(range(n))


def test_epoch_permutations_differ_between_epochs_and_seeds():
    perms = set()
    for seed, epoch in itertools.product([1, 2], [0, 1, 2]):
        perm = np.empty(50, dtype=np.int64)
        cpu.epoch_permutation(np.uint64(seed), epoch, perm)
        perms.add(tuple(perm))
    assert len(perms) == 6


def test_all_finite_kernel_finds_each_kind_of_bad_value():
    a = np.random.default_rng(0).standard_normal(1001)
    assert cpu.all_finite(a)
    for bad in (np.nan, np.inf, -np.inf):
        b = a.copy()
        b[-1] = bad
        assert not cpu.all_finite(b)


# --------------------------------------------------------------------------
# The optimiser contract at the ops level (cpu_ops, with a hand-made state):
# any rule of abi.HYPER, any schedule, through fused_step, fit_steps and
# apply_update.  The public optimiser classes are tested through the API.
# --------------------------------------------------------------------------
def _state(k, W):
    n_out, n_in = W.shape
    return types.SimpleNamespace(
        slots_w=np.zeros((k, n_out, n_in), W.dtype),
        slots_b=np.zeros((k, n_out), W.dtype),
        counters=np.zeros(abi.CNT_SIZE, np.int64),
    )


def _hyper(**fields):
    hyper = abi.new_hyper()
    for name, value in fields.items():
        hyper[0][name] = value
    return hyper


ADAM = dict(rule=abi.RULE_ADAM, lr=0.03, beta1=0.9, beta2=0.99, eps=1e-8)
OPTIMISERS = {
    "adam": (ADAM, lambda torch, p: torch.optim.Adam(p, lr=0.03, betas=(0.9, 0.99), eps=1e-8), None),
    "adam-l2-amsgrad": (
        dict(ADAM, weight_decay=0.05, amsgrad=True),
        lambda torch, p: torch.optim.Adam(p, lr=0.03, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.05, amsgrad=True),
        None,
    ),
    "adamw-cosine": (
        dict(ADAM, weight_decay=0.1, decoupled=True, schedule=abi.SCHEDULE_COSINE, t_max=4, eta_min=0.001),
        lambda torch, p: torch.optim.AdamW(p, lr=0.03, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1),
        lambda torch, opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=4, eta_min=0.001),
    ),
    "sgd-nesterov-steplr": (
        dict(
            lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01, schedule=abi.SCHEDULE_STEP, step_size=2, gamma=0.5
        ),
        lambda torch, p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
        lambda torch, opt: torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5),
    ),
}


def _torch_steps(torch, make_opt, make_sched, X, T, W, b, batches, reduction):
    """torch's parameters after one optimiser step per batch (rows of X), float64."""
    w = torch.tensor(W, dtype=torch.float64, requires_grad=True)
    c = torch.tensor(b, dtype=torch.float64, requires_grad=True)
    opt = make_opt(torch, [w, c])
    sched = make_sched(torch, opt) if make_sched else None
    losses = []
    for rows in batches:
        x, t = torch.tensor(X[rows]), torch.tensor(T[rows])
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(x @ w.T + c, t, reduction=reduction)
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        losses.append(loss.item())
    return w.detach().numpy(), c.detach().numpy(), losses


def _shuffled_batches(n, batch, seed, steps):
    """The rows of a shuffled fit's first ``steps`` batches (the documented walk)."""
    out, epoch, pos = [], 0, 0
    for _ in range(steps):
        order = naive.epoch_permutation(seed, epoch, n)
        out.append(order[pos : pos + batch])
        pos += batch
        if pos >= n:
            epoch, pos = epoch + 1, 0
    return out, epoch, pos


@pytest.mark.parametrize("name", sorted(OPTIMISERS))
@pytest.mark.parametrize("n,d,o", [(37, 5, 3), (130, 9, 33)])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_any_rule_and_schedule_reaches_torch_through_the_ops(name, n, d, o, reduction, chunking):
    """A RULE_ADAM record (and SGD with a schedule) trains as torch does, to
    1e-9, through fused_step, then fit_steps with shuffled mini-batches
    across an epoch's end, then apply_update: one count of steps for all."""
    torch = pytest.importorskip("torch")
    fields, make_opt, make_sched = OPTIMISERS[name]
    hyper = _hyper(**fields)
    reduce_sum = reduction == "sum"
    X, T, W0, b0 = make_data(n, d, o, np.float64, seed=n + o)
    W, b = W0.copy(), b0.copy()
    k = rules.slot_count(int(hyper[0]["rule"]), float(hyper[0]["momentum"]), bool(hyper[0]["amsgrad"]))
    state = _state(k, W)
    ws = {}
    got = [cpu_ops.fused_step(X, T, W, b, True, state, hyper, reduce_sum, ws) for _ in range(2)]
    assert [status for _, status in got] == [abi.OK, abi.OK]
    assert state.counters[abi.CNT_STEP] == 2 and state.counters[abi.CNT_POS] == state.counters[abi.CNT_EPOCH] == 0
    plan = cpu_ops.fit_plan(n, o, d, 16, True, 11, np.float64)
    losses = np.empty(5)
    assert cpu_ops.fit_steps(X, T, W, b, True, state, hyper, reduce_sum, plan, losses) == (5, abi.OK)
    minibatches, epoch, pos = _shuffled_batches(n, 16, 11, 5)
    assert state.counters[abi.CNT_STEP] == 7
    assert (state.counters[abi.CNT_EPOCH], state.counters[abi.CNT_POS]) == (epoch, pos)
    # a lone update from a given gradient (the loss's gradient over all rows)
    _, gW, gb = naive.mse_grad(X, T, W, b, reduction)
    assert cpu_ops.apply_update(gW, gb, 1.0, W, b, True, state, hyper) == abi.OK
    assert state.counters[abi.CNT_STEP] == 8 and state.counters[abi.CNT_POS] == pos

    everything = np.arange(n)
    batches = [everything, everything, *minibatches, everything]
    tw, tc, tl = _torch_steps(torch, make_opt, make_sched, X, T, W0, b0, batches, reduction)
    np.testing.assert_allclose(W, tw, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(b, tc, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose([loss for loss, _ in got] + list(losses), tl[:7], rtol=1e-9)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_refused_update_writes_nothing(dtype):
    """NaN in the gradient: NONFINITE_LOSS; an update beyond the dtype's
    range (in a parameter or in a slot): NONFINITE_UPDATE; neither writes
    the parameters, the slots or the counters."""
    X, T, W, b = make_data(20, 4, 2, dtype)
    hyper = _hyper(**ADAM)
    state = _state(2, W)
    assert cpu_ops.fused_step(X, T, W, b, True, state, hyper, False, {})[1] == abi.OK
    before = (W.copy(), b.copy(), state.slots_w.copy(), state.slots_b.copy(), state.counters.copy())
    gW = np.ones((2, 4))
    gW[1, 3] = np.nan
    assert cpu_ops.apply_update(gW, np.ones(2), 1.0, W, b, True, state, hyper) == abi.NONFINITE_LOSS
    # Adam's step is bounded by lr, but its second moment (g²) is not: it overflows first
    huge = np.full((2, 4), 1e200 if dtype == np.float64 else 1e30)
    assert cpu_ops.apply_update(huge, np.ones(2), 1.0, W, b, True, state, hyper) == abi.NONFINITE_UPDATE
    Xbad = X.copy()
    Xbad[3, 1] = np.inf
    assert cpu_ops.fused_step(Xbad, T, W, b, True, state, hyper, False, {})[1] == abi.NONFINITE_LOSS
    for was, now in zip(before, (W, b, state.slots_w, state.slots_b, state.counters)):
        np.testing.assert_array_equal(was, now)
