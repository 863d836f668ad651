"""Every CUDA kernel (through the backend interface, ``cuda_ops``) against the
CPU backend and a float64 numpy reference.

Shapes are tiny (the simulator runs each GPU thread as a Python thread) but
awkward: with the 16-thread blocks and 4×4 tiles set in conftest.py, N is
never a multiple of the block, several blocks run, D spans several tiles,
and the parameter vector is longer than a block in some cases and shorter
than half a block (row groups) in others.
"""

from __future__ import annotations

import types

import numpy as np
import pytest

from fastlin import SGD, Adam, AdamW, schedules
from fastlin.backends import abi, cpu, cpu_ops
from tests.support import cuda_ref as ref
from tests.support.cuda_ref import assert_close, f64, to_host

# (N, D, O): the seed; E = 8 <= TPB/2 (row groups); 3 blocks and 3 column
# tiles; E = 30 > TPB (two gradient elements per thread); O > OMAX (the
# tiled plan, whatever the fixture asks).
SHAPES = [(1, 5, 2), (17, 3, 2), (37, 9, 1), (19, 9, 3), (6, 2, 17)]
DTYPES = [np.float32, np.float64]


def make(n, d, o, dtype, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)).astype(dtype)
    T = rng.standard_normal((n, o)).astype(dtype)
    W = (rng.standard_normal((o, d)) / np.sqrt(d)).astype(dtype)
    b = rng.standard_normal(o).astype(dtype)
    return X, T, W, b


def dev(cops, *arrays):
    return [cops.from_host(a) for a in arrays]


def test_geometry_runs_several_blocks(cops):
    """The small blocks set in conftest.py are in force, so the shapes above
    exercise multi-block grids and the cross-block reductions."""
    from fastlin.backends import cuda_config

    if (cuda_config.TPB, cuda_config.TS) != (16, 4):
        pytest.skip(
            f"FASTLIN_CUDA_TPB/TILE were set to {cuda_config.TPB}/{cuda_config.TS} before conftest.py could pick 16/4"
        )
    assert cops.plan_chunks(37) == (13, 3)
    assert cops.row_groups(2, 3) == 2
    assert cops.path_for(2, 3) == "rows"
    assert cops.path_for(17, 2) == "tiled"


def test_cuda_ops_conforms_to_the_contract(cops):
    """Every member of protocol.Ops, with the contract's parameter names in
    its order; the old entry points are gone."""
    from fastlin.backends import protocol

    assert protocol.missing_members(cops) == []
    assert cops.name == "cuda"
    assert not hasattr(cops, "sgd_update")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_forward(cops, shape, dtype):
    X, _, W, b = make(*shape, dtype)
    Y = cops.forward(cops.from_host(X), *dev(cops, W, b), True)
    assert Y.dtype == dtype and Y.shape == (shape[0], shape[2])
    assert_close(Y, ref.forward(X, W, b), dtype)
    assert_close(Y, cpu_ops.forward(X, W, b, True), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(37, 9, 1), (19, 9, 3)])
def test_sse_and_model_sse(cops, shape, dtype):
    X, T, W, b = make(*shape, dtype)
    P = ref.forward(X, W, b).astype(dtype)
    assert cops.sse(*dev(cops, P, T)) == pytest.approx(ref.sse(P, T), rel=1e-12)
    dX, dT, dW, db = dev(cops, X, T, W, b)
    expected = ref.sse(ref.forward(X, W, b), T)
    assert cops.model_sse(dX, dT, dW, db, True, {}) == pytest.approx(expected, rel=1e-12)
    rel = 1e-5 if dtype == np.float32 else 1e-12
    assert cpu_ops.model_sse(X, T, W, b, True, {}) == pytest.approx(expected, rel=rel)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_mse_grad(cops, path, shape, dtype, reduction):
    X, T, W, b = make(*shape, dtype)
    n, _, o = shape
    scale = 2.0 if reduction == "sum" else 2.0 / (n * o)
    loss, gW, gb = ref.gradients(X, T, W, b, reduction)
    sse, dW, db = cops.mse_grad(*dev(cops, X, T, W, b), True, scale, {})
    assert dW.dtype == dtype and db.dtype == dtype
    expected_sse = loss if reduction == "sum" else loss * n * o
    # Both plans form the products in the data's dtype, as the CPU does
    # (1e-5 of the terms' magnitude for float32).
    assert sse == pytest.approx(expected_sse, rel=1e-5 if dtype == np.float32 else 1e-12)
    assert_close(dW, gW, dtype)
    assert_close(db, gb, dtype)
    cpu_sse, cpu_dW, cpu_db = cpu_ops.mse_grad(X, T, W, b, True, scale, {})
    assert sse == pytest.approx(cpu_sse, rel=1e-6 if dtype == np.float32 else 1e-12)
    assert_close(dW, cpu_dW, dtype, scale=10)
    assert_close(db, cpu_db, dtype, scale=10)
    # float64 gradients of a float32 model (SGD.apply's path), on request
    _, dW64, _ = cops.mse_grad(*dev(cops, X, T, W, b), True, scale, {}, dtype=np.float64)
    assert dW64.dtype == np.float64
    # (both plans sum a float32 model's gradient in float32 runs, as the
    # CPU does: float32's tolerance)
    if dtype == np.float64:
        np.testing.assert_allclose(to_host(dW64), gW, rtol=1e-12, atol=1e-13)
    else:
        assert_close(dW64, gW, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_backward(cops, shape, dtype):
    X, _, W, _ = make(*shape, dtype)
    dY = np.random.default_rng(5).standard_normal((shape[0], shape[2])).astype(dtype)
    dX, dW, db = cops.backward(*dev(cops, X, dY, W), {})
    eX, eW, eb = ref.backward(X, dY, W)
    for got, want in ((dX, eX), (dW, eW), (db, eb)):
        assert got.dtype == dtype
        assert_close(got, want, dtype)
    for got, want in zip((dX, dW, db), cpu_ops.backward(X, dY, W, {})):
        assert_close(got, want, dtype, scale=10)


# SGD variants (checked against the float64 reference and the CPU) and the
# Adam family with schedules (against the CPU, which compiles the same
# rules.update_element: every slot j < k and the step-dependent rate).
OPTIMISERS = {
    "plain": lambda: SGD(lr=0.1),
    "momentum+decay": lambda: SGD(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=0.01),
    "nesterov": lambda: SGD(lr=0.05, momentum=0.8, nesterov=True),
    "adam+step": lambda: Adam(lr=0.05, weight_decay=0.01, schedule=schedules.step(1, gamma=0.5)),
    "adamw-amsgrad+cosine": lambda: AdamW(lr=0.05, amsgrad=True, schedule=schedules.cosine(3)),
}
SGD_KWARGS = {
    "plain": dict(lr=0.1),
    "momentum+decay": dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=0.01),
    "nesterov": dict(lr=0.05, momentum=0.8, nesterov=True),
}


def _state(ops, W, k):
    """An optimiser state with ``k`` slots on ``ops``'s device (abi.CNT_* counters on the host)."""
    n_out, n_in = W.shape
    return types.SimpleNamespace(
        slots_w=ops.zeros((k, n_out, n_in), W.dtype),
        slots_b=ops.zeros((k, n_out), W.dtype),
        counters=np.zeros(abi.CNT_SIZE, dtype=np.int64),
    )


def _sgd_state(ops, W, momentum):
    return _state(ops, W, 1 if momentum else 0)


@pytest.mark.parametrize("opt", list(OPTIMISERS))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 5, 2), (17, 3, 2), (19, 9, 3), (6, 2, 17)])
def test_fused_step(cops, path, shape, dtype, opt):
    """Three steps (the later ones use the slots and a moved schedule) match
    the CPU, and for SGD the reference; the loss is measured before each
    update; the counters follow."""
    X, T, W, b = make(*shape, dtype)
    optimiser = OPTIMISERS[opt]()
    hyper = optimiser.hyper()
    k = optimiser._n_slots()
    dX, dT, dW, db = dev(cops, X, T, W, b)
    st = _state(cops, W, k)
    cW, cb = W.copy(), b.copy()
    cst = _state(cpu_ops, W, k)
    kw = SGD_KWARGS.get(opt)
    pW, pb, rbW, rbb = f64(W), f64(b), None, None
    ws, cws = {}, {}
    rel = 1e-5 if dtype == np.float32 else 1e-12
    for step in range(3):
        loss, status = cops.fused_step(dX, dT, dW, db, True, st, hyper, False, ws)
        closs, cstatus = cpu_ops.fused_step(X, T, cW, cb, True, cst, hyper, False, cws)
        assert status == cstatus == abi.OK
        assert isinstance(loss, float)
        assert loss == pytest.approx(closs, rel=rel)
        np.testing.assert_array_equal(st.counters, cst.counters)
        # a lone step counts itself but never moves the fit position
        assert st.counters[abi.CNT_STEP] == step + 1
        assert st.counters[abi.CNT_EPOCH] == st.counters[abi.CNT_POS] == 0
        # the kernels round each step's result, as the CPU does
        assert_close(dW, cW, dtype, scale=5)
        assert_close(db, cb, dtype, scale=5)
        for j in range(k):
            assert_close(to_host(st.slots_w)[j], cst.slots_w[j], dtype, scale=5)
            assert_close(to_host(st.slots_b)[j], cst.slots_b[j], dtype, scale=5)
        if kw is not None:  # the reference rounds nothing
            rloss, gW, gb = ref.gradients(X, T, pW, pb)
            pW, rbW = ref.sgd(pW, gW, rbW, **kw)
            pb, rbb = ref.sgd(pb, gb, rbb, **kw)
            assert loss == pytest.approx(rloss, rel=rel)
            assert_close(dW, pW, dtype, scale=5)
            assert_close(db, pb, dtype, scale=5)
    if kw is not None and kw.get("momentum"):
        assert st.counters[abi.CNT_HAS_BUF] == 1
        assert_close(to_host(st.slots_w)[0], rbW, dtype, scale=5)
        assert_close(to_host(st.slots_b)[0], rbb, dtype, scale=5)
    elif kw is not None or k:
        assert st.counters[abi.CNT_HAS_BUF] == 0


def test_fused_step_is_deterministic(cops, path):
    """Same inputs, same launch plan: bit-identical results (no atomics in
    any sum)."""
    X, T, W, b = make(37, 9, 3, np.float32)
    hyper = SGD(0.1, momentum=0.5).hyper()
    results = []
    for _ in range(2):
        dX, dT, dW, db = dev(cops, X, T, W, b)
        st = _sgd_state(cops, W, True)
        loss, _ = cops.fused_step(dX, dT, dW, db, True, st, hyper, False, {})
        results.append((loss, to_host(dW), to_host(db)))
    assert results[0][0] == results[1][0]
    np.testing.assert_array_equal(results[0][1], results[1][1])
    np.testing.assert_array_equal(results[0][2], results[1][2])


@pytest.mark.parametrize("dtype", DTYPES)
def test_no_bias_leaves_b_alone(cops, path, dtype):
    X, T, W, _ = make(17, 3, 2, dtype)
    zero_b = np.zeros(2, dtype=dtype)
    dX, dT, dW, db = dev(cops, X, T, W, zero_b)
    st = _sgd_state(cops, W, True)
    hyper = SGD(0.1, momentum=0.9).hyper()
    cops.fused_step(dX, dT, dW, db, False, st, hyper, False, {})
    np.testing.assert_array_equal(to_host(db), zero_b)
    np.testing.assert_array_equal(to_host(st.slots_b)[0], zero_b)
    _, gW, _ = ref.gradients(X, T, W, zero_b)
    assert_close(dW, f64(W) - 0.1 * gW, dtype)


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_fit_steps(cops, path, launches, dtype, shuffle):
    """A fit run as two calls (4 + 5 steps: it resumes mid-epoch) matches the
    CPU's fit and the reference, mini-batches of 7 rows over 17 (a short
    last batch each epoch), shuffled on the device."""
    X, T, W, b = make(17, 3, 2, dtype)
    kw = dict(lr=0.05, momentum=0.9, weight_decay=0.01)
    hyper = SGD(**kw).hyper()
    seed = 12345
    dX, dT, dW, db = dev(cops, X, T, W, b)
    st = _sgd_state(cops, W, True)
    plan = cops.fit_plan(17, 2, 3, 7, shuffle, seed, dtype)
    assert plan.one_launch == (launches == "one-launch" and path == "auto")
    losses = cops.empty((9,), np.float64)
    assert cops.fit_steps(dX, dT, dW, db, True, st, hyper, False, plan, losses[:4]) == (4, abi.OK)
    assert cops.fit_steps(dX, dT, dW, db, True, st, hyper, False, plan, losses[4:]) == (5, abi.OK)
    cW, cb = W.copy(), b.copy()
    cst = _sgd_state(cpu_ops, W, True)
    closses = np.empty(9)
    cplan = cpu_ops.fit_plan(17, 2, 3, 7, shuffle, seed, dtype)
    assert cpu_ops.fit_steps(X, T, cW, cb, True, cst, hyper, False, cplan, closses) == (9, abi.OK)
    rlosses, rW, rb = ref.fit(X, T, W, b, 9, batch_size=7, shuffle=shuffle, seed=seed, **kw)
    np.testing.assert_array_equal(st.counters, cst.counters)
    # 9 steps of 7+7+3 rows: exactly 3 epochs; the buffers hold values
    expected = np.zeros(abi.CNT_SIZE, dtype=np.int64)
    expected[[abi.CNT_HAS_BUF, abi.CNT_EPOCH, abi.CNT_POS, abi.CNT_STEP]] = [1, 3, 0, 9]
    np.testing.assert_array_equal(st.counters, expected)
    rtol = 1e-4 if dtype == np.float32 else 1e-11
    np.testing.assert_allclose(to_host(losses), rlosses, rtol=rtol)
    np.testing.assert_allclose(to_host(losses), closses, rtol=rtol)
    np.testing.assert_allclose(f64(dW), rW, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(f64(dW), cW, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(f64(db), cb, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(f64(db), rb, rtol=rtol, atol=rtol)
    if shuffle:
        # the last epoch drawn (epoch 2): the same rows, in the same order, on both
        np.testing.assert_array_equal(to_host(plan.perm), cplan.perm)
        np.testing.assert_array_equal(cplan.perm, ref.epoch_permutation(seed, 2, 17))


@pytest.mark.parametrize("dtype", DTYPES)
def test_apply_update(cops, dtype):
    """The update from a given float64 gradient (SGD.apply), twice (momentum)."""
    _, _, W, b = make(1, 5, 3, dtype)
    rng = np.random.default_rng(9)
    kw = dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.1)
    hyper = SGD(**kw).hyper()
    dW, db = dev(cops, W, b)
    st = _sgd_state(cops, W, True)
    pW, pb, rbW, rbb = f64(W), f64(b), None, None
    for step in range(2):
        gW, gb = rng.standard_normal((3, 5)), rng.standard_normal(3)
        assert cops.apply_update(gW, gb, 1.0, dW, db, True, st, hyper) == abi.OK
        pW, rbW = ref.sgd(pW, gW, rbW, **kw)
        pb, rbb = ref.sgd(pb, gb, rbb, **kw)
        assert st.counters[abi.CNT_HAS_BUF] == 1
        assert st.counters[abi.CNT_STEP] == step + 1
    assert_close(dW, pW, dtype, scale=5)
    assert_close(db, pb, dtype, scale=5)
    assert_close(to_host(st.slots_w)[0], rbW, dtype, scale=5)


def test_apply_update_adam_matches_cpu(cops):
    """Adam with amsgrad from a given gradient: all three slots, as the CPU."""
    _, _, W, b = make(1, 5, 3, np.float64)
    rng = np.random.default_rng(4)
    hyper = Adam(lr=0.1, amsgrad=True, weight_decay=0.05).hyper()
    dW, db = dev(cops, W, b)
    st, cst = _state(cops, W, 3), _state(cpu_ops, W, 3)
    cW, cb = W.copy(), b.copy()
    for _ in range(3):
        gW, gb = rng.standard_normal((3, 5)), rng.standard_normal(3)
        assert cops.apply_update(gW, gb, 0.5, dW, db, True, st, hyper) == abi.OK
        assert cpu_ops.apply_update(gW, gb, 0.5, cW, cb, True, cst, hyper) == abi.OK
    np.testing.assert_array_equal(st.counters, cst.counters)
    # (the same float64 arithmetic, but the CPU compiler may contract a
    # multiply-add into an FMA: not bit for bit, within a few ulps of the
    # step's size)
    for got, want in ((dW, cW), (db, cb), (st.slots_w, cst.slots_w), (st.slots_b, cst.slots_b)):
        np.testing.assert_allclose(to_host(got), want, rtol=1e-12, atol=1e-13)


def _snapshot(*arrays):
    return [to_host(a).copy() for a in arrays]


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_apply_update_refuses_nonfinite(cops):
    """A NaN gradient (NONFINITE_LOSS), a weight beyond float32's range or a
    momentum buffer beyond it (NONFINITE_UPDATE, see abi.py) writes nothing
    and counts no step.  (The warning filters matter in the simulator only:
    numpy warns where the GPU silently produces Inf/NaN, which the kernels
    then detect.)"""
    _, _, W, b = make(1, 5, 3, np.float32)
    dW, db = dev(cops, W, b)
    st = _sgd_state(cops, W, True)
    before = _snapshot(dW, db, st.slots_w, st.slots_b)
    gW, gb = np.zeros((3, 5)), np.zeros(3)
    cases = [
        (0.1, np.nan, abi.NONFINITE_LOSS),
        (10.0, 1e38, abi.NONFINITE_UPDATE),  # the weight: 1e39 > float32 max
        (0.1, 1e39, abi.NONFINITE_UPDATE),  # the weight is -1e38, the buffer 1e39
    ]
    for lr, g, status in cases:
        hyper = SGD(lr, momentum=0.9).hyper()
        gW[1, 2] = g
        assert cops.apply_update(gW, gb, 1.0, dW, db, True, st, hyper) == status
        for got, want in zip(_snapshot(dW, db, st.slots_w, st.slots_b), before):
            np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(st.counters, 0)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("failure", ["nan-target", "huge-lr"])
def test_fit_stops_at_first_failure(cops, path, launches, failure):
    """A failing step writes nothing, records its loss and status, and the
    steps queued after it do nothing; the steps before it stand."""
    X, T, W, b = make(17, 3, 2, np.float32)
    if failure == "nan-target":
        T[12, 1] = np.nan  # in the second batch of 7 rows (no shuffle)
        hyper, expected, done = SGD(0.05).hyper(), abi.NONFINITE_LOSS, 1
    else:
        X[:] *= 1e18  # finite float32, but the gradient step overflows it
        hyper, expected, done = SGD(1e3).hyper(), abi.NONFINITE_UPDATE, 0
    dX, dT, dW, db = dev(cops, X, T, W, b)
    st = _sgd_state(cops, W, False)
    plan = cops.fit_plan(17, 2, 3, 7, False, 0, np.float32)
    losses = cops.from_host(np.full(6, -1.0))
    cW, cb = W.copy(), b.copy()
    cst = _sgd_state(cpu_ops, W, False)
    closses = np.full(6, -1.0)
    cplan = cpu_ops.fit_plan(17, 2, 3, 7, False, 0, np.float32)
    got = cops.fit_steps(dX, dT, dW, db, True, st, hyper, False, plan, losses)
    want = cpu_ops.fit_steps(X, T, cW, cb, True, cst, hyper, False, cplan, closses)
    assert got == want == (done, expected)
    np.testing.assert_array_equal(st.counters, cst.counters)
    assert st.counters[abi.CNT_STEP] == done
    host_losses = to_host(losses)
    if failure == "nan-target":
        assert np.isnan(host_losses[done])
    assert np.all(host_losses[done + 1 :] == -1.0)  # later steps wrote nothing
    np.testing.assert_allclose(f64(dW), cW, rtol=1e-5)  # steps before the failure stand
    if done == 0:
        np.testing.assert_array_equal(to_host(dW), W)


@pytest.mark.parametrize("dtype", DTYPES)
def test_all_finite(cops, dtype):
    a = np.arange(37, dtype=dtype).reshape(37, 1)
    assert cops.all_finite(cops.from_host(a))
    for bad in (np.nan, np.inf, -np.inf):
        b = a.copy()
        b[36, 0] = bad
        assert not cops.all_finite(cops.from_host(b))


@pytest.mark.parametrize("blocks", [1, 2, None])
@pytest.mark.parametrize(
    "seed, epoch, n", [(0, 0, 1), (7, 0, 17), (7, 3, 17), (2**64 - 1, 5, 40), (2**63 + 11, 2, 23), (99, 2**33, 70)]
)
def test_epoch_permutation(cops, kernels, seed, epoch, n, blocks):
    """The device shuffle (one thread per row, or fewer threads than rows: the
    grid-stride loop) draws the CPU's order, and the documented one."""
    from fastlin.backends.cuda_config import TPB

    counters = np.zeros(abi.CNT_DEVICE_SIZE, dtype=np.int64)
    counters[abi.CNT_EPOCH] = epoch
    perm = cops.empty((n,), np.int64)
    grid = -(-n // TPB) if blocks is None else blocks
    cops._launch(kernels.shuffle_epoch, grid, TPB)(cops.from_host(counters), np.uint64(seed), perm)
    expected = ref.epoch_permutation(seed, epoch, n)
    np.testing.assert_array_equal(to_host(perm), expected)
    cpu_perm = np.empty(n, dtype=np.int64)
    cpu.epoch_permutation(np.uint64(seed), epoch, cpu_perm)
    np.testing.assert_array_equal(cpu_perm, expected)


@pytest.mark.parametrize("field, value", [("CNT_POS", 5), ("CNT_STATUS", abi.NONFINITE_LOSS)])
def test_shuffle_epoch_only_at_an_epoch_start(cops, kernels, field, value):
    """Mid-epoch, or after a failed step, the order is left alone."""
    from fastlin.backends.cuda_config import TPB

    counters = np.zeros(abi.CNT_DEVICE_SIZE, dtype=np.int64)
    counters[getattr(abi, field)] = value
    before = np.arange(40, dtype=np.int64)[::-1].copy()
    perm = cops.from_host(before)
    cops._launch(kernels.shuffle_epoch, 3, TPB)(cops.from_host(counters), np.uint64(3), perm)
    np.testing.assert_array_equal(to_host(perm), before)
