"""step and fit: against the float64 reference, torch, and across threads."""

from __future__ import annotations

import logging

import numba
import numpy as np
import pytest

import fastlin
from fastlin import training
from tests.support import naive
from tests.support.helpers import make_data, tol

OPTIMISERS = [
    dict(lr=0.05),
    dict(lr=0.05, momentum=0.9),
    dict(lr=0.05, momentum=0.8, dampening=0.3),
    dict(lr=0.05, momentum=0.9, nesterov=True),
    dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
    dict(lr=0.02, weight_decay=0.1),
]


@pytest.mark.parametrize("hyper", OPTIMISERS, ids=lambda h: ",".join(f"{k}={v}" for k, v in h.items()))
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_full_batch_fit_matches_reference(hyper, bias, reduction, chunking):
    X, T, W, b = make_data(101, 7, 3, np.float64, seed=4)
    if reduction == "sum":
        hyper = dict(hyper, lr=hyper["lr"] / 200)
    model = fastlin.Linear.from_weights(W, b if bias else None)
    hist = model.fit(X, T, steps=25, opt=fastlin.SGD(**hyper), reduction=reduction)
    ref_loss, ref_W, ref_b = naive.fit(X, T, W, b if bias else None, 25, reduction=reduction, **hyper)
    np.testing.assert_allclose(hist.loss, ref_loss, rtol=1e-12)
    np.testing.assert_allclose(model.weight, ref_W, rtol=1e-12, atol=1e-14)
    if bias:
        np.testing.assert_allclose(model.bias, ref_b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("batch_size,shuffle", [(1, True), (8, True), (8, False), (30, True), (64, True), (1000, True)])
def test_minibatch_fit_matches_reference(dtype, batch_size, shuffle, chunking):
    X, T, W, b = make_data(64, 5, 2, dtype, seed=9)
    model = fastlin.Linear.from_weights(W, b)
    opt = fastlin.SGD(0.03, momentum=0.5)
    hist = model.fit(X, T, steps=40, opt=opt, batch_size=batch_size, shuffle=shuffle, seed=2024)
    ref_loss, ref_W, ref_b = naive.fit(
        X, T, W, b, 40, lr=0.03, momentum=0.5, batch_size=batch_size, shuffle=shuffle, seed=2024
    )
    t = tol(dtype) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(hist.loss, ref_loss, **t)
    np.testing.assert_allclose(model.weight, ref_W, **t)
    np.testing.assert_allclose(model.bias, ref_b, **t)
    assert hist.seed == 2024


def test_epochs_count_partial_batches():
    X, T, W, b = make_data(10, 3, 1)
    hist = fastlin.Linear.from_weights(W, b).fit(X, T, epochs=3, batch_size=4, lr=0.01, seed=0)
    assert len(hist) == 9  # ceil(10 / 4) = 3 steps an epoch
    assert len(fastlin.Linear.from_weights(W, b).fit(X, T, epochs=2, lr=0.01)) == 2
    assert len(fastlin.Linear.from_weights(W, b).fit(X, T, lr=0.01)) == training.DEFAULT_STEPS
    assert len(fastlin.Linear.from_weights(W, b).fit(X, T, steps=0, lr=0.01)) == 0


def test_unseeded_shuffles_differ_and_the_seed_used_is_recorded():
    X, T, W, b = make_data(64, 3, 1)
    h1 = fastlin.Linear.from_weights(W, b).fit(X, T, steps=16, batch_size=4, lr=0.01)
    h2 = fastlin.Linear.from_weights(W, b).fit(X, T, steps=16, batch_size=4, lr=0.01)
    assert h1.seed != h2.seed and not np.array_equal(h1.loss, h2.loss)
    h3 = fastlin.Linear.from_weights(W, b).fit(X, T, steps=16, batch_size=4, lr=0.01, seed=h1.seed)
    np.testing.assert_array_equal(h1.loss, h3.loss)


def test_step_equals_one_full_batch_fit_step():
    X, T, W, b = make_data(300, 9, 4, np.float32)
    a, c = fastlin.Linear.from_weights(W, b), fastlin.Linear.from_weights(W, b)
    oa, oc = fastlin.SGD(0.1, momentum=0.9), fastlin.SGD(0.1, momentum=0.9)
    losses = [a.step(X, T, oa) for _ in range(5)]
    hist = c.fit(X, T, steps=5, opt=oc)
    np.testing.assert_array_equal(losses, hist.loss)
    np.testing.assert_array_equal(a.weight, c.weight)


def test_momentum_state_is_kept_per_model_and_across_calls():
    X, T, W, b = make_data(50, 4, 2)
    opt = fastlin.SGD(0.05, momentum=0.9)
    m1, m2 = fastlin.Linear.from_weights(W, b), fastlin.Linear.from_weights(W, b)
    ref = fastlin.Linear.from_weights(W, b)
    for _ in range(3):  # interleaved: each model must see only its own buffer
        m1.fit(X, T, steps=2, opt=opt)
        m2.step(X, T, opt)
        m2.step(X, T, opt)
    ref.fit(X, T, steps=6, opt=fastlin.SGD(0.05, momentum=0.9))
    np.testing.assert_allclose(m1.weight, ref.weight, rtol=1e-13)
    np.testing.assert_allclose(m2.weight, ref.weight, rtol=1e-13)
    opt.reset(m1)
    assert m1 not in opt._states and m2 in opt._states


def test_sgd_apply_matches_a_fused_step():
    X, T, W, b = make_data(40, 6, 3)
    a, c = fastlin.Linear.from_weights(W, b), fastlin.Linear.from_weights(W, b)
    oa, oc = fastlin.SGD(0.1, momentum=0.9, nesterov=True), fastlin.SGD(0.1, momentum=0.9, nesterov=True)
    for _ in range(3):
        a.step(X, T, oa)
        g = c.gradients(X, T)
        oc.apply(c, g.weight, g.bias)
    np.testing.assert_allclose(c.weight, a.weight, rtol=1e-13)
    np.testing.assert_allclose(c.bias, a.bias, rtol=1e-13)
    with pytest.raises(ValueError, match="bias_grad"):
        oc.apply(c, g.weight)
    with pytest.raises(ValueError, match="weight_grad must have shape"):
        oc.apply(c, g.weight.T, g.bias)


def test_two_layers_chained_through_backward_learn():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((200, 6))
    T = X @ rng.standard_normal((6, 2)) + 0.1
    l1 = fastlin.Linear(6, 4, dtype=np.float64, seed=1)
    l2 = fastlin.Linear(4, 2, dtype=np.float64, seed=2)
    opt = fastlin.SGD(0.05)
    first = None
    for _ in range(200):
        H = l1(X)
        Y = l2(H)
        loss = fastlin.mse_loss(Y, T)
        first = loss if first is None else first
        dY = 2 * (Y - T) / Y.size
        dH, dW2, db2 = l2.backward(H, dY)
        _, dW1, db1 = l1.backward(X, dH)
        opt.apply(l2, dW2, db2)
        opt.apply(l1, dW1, db1)
    assert loss < 0.05 * first


def test_torch_parity_100_steps_float64():
    torch = pytest.importorskip("torch")
    X, T, W, b = make_data(77, 6, 3, np.float64, seed=5)
    for hyper in OPTIMISERS:
        model = fastlin.Linear.from_weights(W, b)
        hist = model.fit(X, T, steps=100, opt=fastlin.SGD(**hyper))
        tl = torch.nn.Linear(6, 3, dtype=torch.float64)
        with torch.no_grad():
            tl.weight.copy_(torch.from_numpy(W))
            tl.bias.copy_(torch.from_numpy(b))
        topt = torch.optim.SGD(tl.parameters(), **hyper)
        Xt, Tt = torch.from_numpy(X), torch.from_numpy(T)
        losses = []
        for _ in range(100):
            topt.zero_grad()
            loss = torch.nn.functional.mse_loss(tl(Xt), Tt)
            loss.backward()
            topt.step()
            losses.append(loss.item())
        np.testing.assert_allclose(hist.loss, losses, rtol=1e-9, err_msg=str(hyper))
        np.testing.assert_allclose(model.weight, tl.weight.detach().numpy(), rtol=1e-9, atol=1e-12, err_msg=str(hyper))
        np.testing.assert_allclose(model.bias, tl.bias.detach().numpy(), rtol=1e-9, atol=1e-12, err_msg=str(hyper))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_results_are_bit_identical_for_any_thread_count(dtype):
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("numba sees one CPU: nothing to compare")
    # 20000 rows of 17 -> 3 outputs split into ~33 chunks: the parallel path runs.
    X, T, W, b = make_data(20000, 17, 3, dtype, seed=11)
    results = []
    before = numba.get_num_threads()
    try:
        for threads in (1, 2, numba.config.NUMBA_NUM_THREADS):
            numba.set_num_threads(threads)
            m = fastlin.Linear.from_weights(W, b)
            h = m.fit(X, T, steps=5, opt=fastlin.SGD(0.1, momentum=0.9))
            m.fit(X, T, steps=5, lr=0.01, batch_size=5000, seed=1)
            g = m.gradients(X, T)
            results.append((h.loss, m.weight.copy(), m.bias.copy(), g.weight, m(X), m.backward(X, T)[0]))
    finally:
        numba.set_num_threads(before)
    for other in results[1:]:
        for x, y in zip(results[0], other):
            np.testing.assert_array_equal(x, y)


def test_float32_loss_over_ten_million_rows_stays_accurate():
    # A float32 accumulator drifts by ~10% here; float64 sums stay within 1e-6.
    n = 10_000_000
    rng = np.random.default_rng(0)
    X = rng.random((n, 2), dtype=np.float32)
    T = rng.random((n, 1), dtype=np.float32)
    W = np.array([[0.25, -0.5]], dtype=np.float32)
    b = np.array([0.125], dtype=np.float32)
    model = fastlin.Linear.from_weights(W, b)
    R = X.astype(np.float64) @ W.T.astype(np.float64) + 0.125 - T
    ref = float(np.mean(R * R))
    assert abs(model.loss(X, T) - ref) <= 1e-6 * ref
    g = model.gradients(X, T)
    ref_dW = 2.0 / n * (R.T @ X.astype(np.float64))
    np.testing.assert_allclose(g.weight, ref_dW, rtol=1e-6)
    assert abs(model.step(X, T, fastlin.SGD(0.1)) - ref) <= 1e-6 * ref


# ---------------------------------------------------------------------------
# divergence
# ---------------------------------------------------------------------------
def test_divergence_stops_keeps_last_finite_weights_and_says_what_to_do():
    X, T, W, b = make_data(30, 4, 2, np.float32)
    X = X * 1e3
    model = fastlin.Linear.from_weights(W, b)
    with pytest.raises(fastlin.DivergenceError) as info:
        model.fit(X, T, steps=1000, lr=10.0)
    err = info.value
    assert isinstance(err, FloatingPointError) and isinstance(err, ValueError)
    assert "step" in str(err) and "smaller learning rate" in str(err)
    assert err.step == len(err.history) + 1 >= 2
    assert np.isfinite(model.weight).all() and np.isfinite(model.bias).all()
    # the kept weights are exactly those after the last successful step
    replay = fastlin.Linear.from_weights(W, b)
    replay_hist = replay.fit(X, T, steps=err.step - 1, lr=10.0)
    np.testing.assert_array_equal(model.weight, replay.weight)
    np.testing.assert_array_equal(err.history.loss, replay_hist.loss)


def test_divergence_in_a_single_step_changes_nothing():
    X, T, W, b = make_data(30, 4, 2, np.float32)
    model = fastlin.Linear.from_weights(W * 1e37, b)
    W0 = model.weight.copy()
    with pytest.raises(fastlin.DivergenceError) as info:
        model.step(X * 1e3, T, fastlin.SGD(1e3))
    assert info.value.step == 1
    np.testing.assert_array_equal(model.weight, W0)


# ---------------------------------------------------------------------------
# logging, callbacks, progress: observe a fit without changing its result
# ---------------------------------------------------------------------------
def test_logging_every_k_steps(caplog):
    X, T, W, b = make_data(20, 3, 1)
    model = fastlin.Linear.from_weights(W, b)
    with caplog.at_level(logging.INFO, logger="fastlin"):
        hist = model.fit(X, T, steps=10, lr=0.1, log_every=3)
    lines = [r.getMessage() for r in caplog.records if r.name == "fastlin"]
    assert [line.split(":")[0] for line in lines] == ["step 3/10", "step 6/10", "step 9/10"]
    assert lines[1].endswith(f"loss {hist.loss[5]:.9g}")


def test_hooks_do_not_change_the_result():
    X, T, W, b = make_data(64, 5, 2)
    plain = fastlin.Linear.from_weights(W, b)
    hooked = fastlin.Linear.from_weights(W, b)
    h1 = plain.fit(X, T, steps=30, lr=0.05, batch_size=10, seed=1)
    seen = []
    h2 = hooked.fit(
        X, T, steps=30, lr=0.05, batch_size=10, seed=1, log_every=1, callback=lambda s, l: seen.append((s, l))
    )
    np.testing.assert_array_equal(h1.loss, h2.loss)
    np.testing.assert_array_equal(plain.weight, hooked.weight)
    assert [s for s, _ in seen] == list(range(1, 31))
    assert [l for _, l in seen] == h1.loss.tolist()


def test_callback_returning_true_stops_early():
    X, T, W, b = make_data(20, 3, 1)
    hist = fastlin.Linear.from_weights(W, b).fit(X, T, steps=50, lr=0.1, callback=lambda step, loss: step == 7)
    assert len(hist) == 7 and hist.stopped_early


def test_long_fits_run_in_segments_with_identical_results(monkeypatch):
    X, T, W, b = make_data(50, 4, 2)
    one = fastlin.Linear.from_weights(W, b)
    h1 = one.fit(X, T, steps=200, lr=0.05, batch_size=7, seed=3)
    calls = []
    monkeypatch.setattr(training, "ONE_CALL_WORK", 0)  # force segmenting
    monkeypatch.setattr(training, "SEGMENT_SECONDS", 0.0)
    seg = fastlin.Linear.from_weights(W, b)
    orig = seg._ops.fit_steps
    monkeypatch.setattr(seg._ops, "fit_steps", lambda *a: calls.append(len(a[-1])) or orig(*a))
    h2 = seg.fit(X, T, steps=200, lr=0.05, batch_size=7, seed=3)
    assert len(calls) > 1 and sum(calls) == 200
    np.testing.assert_array_equal(h1.loss, h2.loss)
    np.testing.assert_array_equal(one.weight, seg.weight)


def test_history_fields():
    X, T, W, b = make_data(20, 3, 1)
    hist = fastlin.Linear.from_weights(W, b).fit(X, T, steps=12, lr=0.1)
    assert hist.steps == len(hist) == 12 and hist.loss.dtype == np.float64
    assert hist.seconds > 0 and not hist.stopped_early
    assert np.all(np.diff(hist.loss) < 0)  # convex problem, small lr


def _schedule(opt):
    """A hand-written schedule: halve lr at step 3, change momentum and
    weight decay at step 5 (each takes effect at the next step)."""

    def callback(step, loss):
        if step == 3:
            opt.lr = opt.lr / 2
        if step == 5:
            opt.momentum, opt.weight_decay = 0.5, 0.01
        return False

    return callback


@pytest.mark.parametrize("shape", [(60, 5, 2), (70, 9, 33)], ids=["streaming", "gemm"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_hyper_parameters_set_by_a_callback_take_effect_at_the_next_step(shape, dtype):
    X, T, W, b = make_data(*shape, dtype, seed=12)
    loop, fitted, fixed = (fastlin.Linear.from_weights(W, b) for _ in range(3))
    opt_loop, opt_fit = fastlin.SGD(0.05, momentum=0.9), fastlin.SGD(0.05, momentum=0.9)
    schedule = _schedule(opt_loop)
    losses = []
    for step in range(1, 9):
        losses.append(loop.step(X, T, opt_loop))
        schedule(step, losses[-1])
    hist = fitted.fit(X, T, steps=8, opt=opt_fit, callback=_schedule(opt_fit))
    np.testing.assert_array_equal(hist.loss, losses)
    assert fitted.weight.tobytes() == loop.weight.tobytes()
    assert fitted.bias.tobytes() == loop.bias.tobytes()
    # ... and the schedule did change the trajectory.
    fixed.fit(X, T, steps=8, opt=fastlin.SGD(0.05, momentum=0.9))
    assert fixed.weight.tobytes() != fitted.weight.tobytes()


def test_a_huge_step_count_with_early_stopping_allocates_little():
    import tracemalloc

    X, T, W, b = make_data(30, 4, 2, seed=13)
    model = fastlin.Linear.from_weights(W, b)
    model.fit(X, T, steps=2, lr=0.01)  # compile outside the trace
    tracemalloc.start()
    try:
        hist = model.fit(X, T, steps=2**40, lr=0.01, callback=lambda step, loss: step == 3)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(hist) == 3 and hist.stopped_early
    assert peak < 1 << 20, f"a 3-step fit peaked at {peak} bytes"


@pytest.mark.parametrize("shape", [(50, 4, 2), (40, 5, 33)], ids=["streaming", "gemm"])
def test_history_grown_in_segments_equals_one_call(shape, monkeypatch):
    X, T, W, b = make_data(*shape, seed=14)
    one = fastlin.Linear.from_weights(W, b)
    h1 = one.fit(X, T, steps=45, lr=0.05, batch_size=7, seed=3)
    monkeypatch.setattr(training, "ONE_CALL_WORK", 0)  # segments of about one step each
    monkeypatch.setattr(training, "SEGMENT_SECONDS", 0.0)
    monkeypatch.setattr(training, "HISTORY_START", 2)  # so the buffer grows many times
    seg = fastlin.Linear.from_weights(W, b)
    h2 = seg.fit(X, T, steps=45, lr=0.05, batch_size=7, seed=3)
    np.testing.assert_array_equal(h1.loss, h2.loss)
    assert one.weight.tobytes() == seg.weight.tobytes()
    # A divergence after the buffer grew still reports every step done.
    X_big = X * 1e3
    with pytest.raises(fastlin.DivergenceError) as info:
        fastlin.Linear.from_weights(W, b).fit(X_big, T, steps=10**6, lr=10.0, log_every=1000)
    err = info.value
    assert len(err.history.loss) == err.step - 1 and np.all(np.isfinite(err.history.loss))
