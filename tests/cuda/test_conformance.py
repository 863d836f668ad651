"""One suite of the public API, run on every device: what a ``cpu`` model does,
a ``cuda`` model must do too, to the same float64 references.

Every test takes the ``device`` fixture (tests/cuda/conftest.py): ``"cpu"``
always, ``"cuda"`` on a GPU or in numba's simulator (``NUMBA_ENABLE_CUDASIM=1``,
as CI runs ``tests/cuda``), skipped with the reason anywhere else.  The file
lives in tests/cuda so that the simulator run collects it; ``NEEDS_CUDA =
False`` lets its CPU half run in the plain ``python -m pytest`` too.

Only the public API is used (``fastlin.Linear``, ``fastlin.SGD``,
``fastlin.load``, ``fastlin.mse_loss``, pickle), so that the suite holds
whatever the backends look like inside.  Results are compared with the float64
numpy references of :mod:`tests.support.naive`, with torch in float64 where it
is installed, and, on CUDA, with the same call on the CPU.  Launch plans that
only the CUDA backend has (tiled, one launch or one per step) are varied in
test_cuda_model.py.

Shapes are small and awkward: 19 rows span two 16-thread blocks (the second
one partial) and 5 inputs, 3 outputs leave partial 4-wide tiles (the
simulator's block and tile sizes, set in conftest.py).
"""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest

import fastlin
from tests.support import naive
from tests.support.cuda_ref import to_host
from tests.support.helpers import make_data, tol

NEEDS_CUDA = False  # the device fixture skips the cuda half itself

N, D, O = 19, 5, 3
DTYPES = [np.float32, np.float64]
# Losses and weights after a fit, against float64 maths: a float32 fit's
# rounding compounds over the steps.
FIT_RTOL = {np.float32: 1e-4, np.float64: 1e-10}


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------
def lives_on(a, device):
    """Whether ``a`` is an array of ``device`` (numpy on the CPU, a numba
    device array on CUDA)."""
    on_gpu = hasattr(a, "copy_to_host") and not isinstance(a, np.ndarray)
    return on_gpu if device == "cuda" else isinstance(a, np.ndarray)


def device_array(a, device):
    """``a`` as the given device's array (a numba device array on CUDA)."""
    if device == "cpu":
        return a
    from numba import cuda  # only where CUDA (or its simulator) runs

    return cuda.to_device(a)


def layer(W, b, device):
    return fastlin.Linear.from_weights(W, b, device=device)


def assert_close(got, ref, dtype, scale=1.0):
    t = tol(dtype)
    np.testing.assert_allclose(
        np.asarray(to_host(got), dtype=np.float64), ref, rtol=scale * t["rtol"], atol=scale * t["atol"]
    )


def assert_same_model(a, b):
    """Bit-identical parameters (the same float operations on the same device)."""
    (Wa, ba), (Wb, bb) = a.numpy(), b.numpy()
    np.testing.assert_array_equal(Wa, Wb)
    assert (ba is None) == (bb is None)
    if ba is not None:
        np.testing.assert_array_equal(ba, bb)


# ---------------------------------------------------------------------------
# forward, loss, gradients, backward, mse_loss
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
def test_forward_loss_gradients_and_backward_match_the_reference(device, dtype, bias):
    X, T, W, b = make_data(N, D, O, dtype, seed=1)
    b = b if bias else None
    model = layer(W, b, device)

    Y = model(X)
    assert lives_on(Y, device) and Y.shape == (N, O)
    assert_close(Y, naive.forward(X, W, b), dtype)
    y3 = model(X[3])  # one sample in, one sample out
    assert y3.shape == (O,)
    assert_close(y3, naive.forward(X[3:4], W, b)[0], dtype)

    for reduction in ("mean", "sum"):
        loss = model.loss(X, T, reduction=reduction)
        assert type(loss) is float
        assert loss == pytest.approx(naive.mse(naive.forward(X, W, b), T, reduction), rel=tol(dtype)["rtol"])
        ref_loss, ref_dW, ref_db = naive.mse_grad(X, T, W, b, reduction)
        g = model.gradients(X, T, reduction=reduction)
        assert type(g.loss) is float and g.loss == pytest.approx(ref_loss, rel=tol(dtype)["rtol"])
        assert lives_on(g.weight, device) and g.weight.shape == (O, D)
        assert_close(g.weight, ref_dW, dtype)
        if bias:
            assert_close(g.bias, ref_db, dtype)
        else:
            assert g.bias is None

    dY = np.random.default_rng(2).standard_normal((N, O)).astype(dtype)
    dX, dW, db = model.backward(X, dY)
    ref_dX, ref_dW, ref_db = naive.backward(X, dY, W)
    assert lives_on(dX, device) and dX.shape == (N, D)
    assert_close(dX, ref_dX, dtype)
    assert_close(dW, ref_dW, dtype)
    if bias:
        assert_close(db, ref_db, dtype)
    else:
        assert db is None


@pytest.mark.parametrize("dtype", DTYPES)
def test_mse_loss_takes_the_devices_arrays(device, dtype):
    X, T, W, b = make_data(N, D, O, dtype, seed=3)
    P = layer(W, b, device)(X)
    for target in (T, device_array(T, device)):  # a host target, and the device's own
        for reduction in ("mean", "sum"):
            got = fastlin.mse_loss(P, target, reduction=reduction)
            assert type(got) is float
            assert got == pytest.approx(naive.mse(naive.forward(X, W, b), T, reduction), rel=tol(dtype)["rtol"])
    assert fastlin.mse_loss(P, P) == 0.0
    with pytest.raises(ValueError, match="same shape"):
        fastlin.mse_loss(P, T[:-1])


# ---------------------------------------------------------------------------
# step, SGD.apply, fit
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_step_and_sgd_apply_match_the_reference(device, dtype):
    X, T, W, b = make_data(N, D, O, dtype, seed=4)
    hyper = dict(lr=0.1, momentum=0.9, dampening=0.0, weight_decay=0.01, nesterov=True)
    ref_losses, ref_W, ref_b = naive.fit(X, T, W, b, 3, **hyper)  # three full-batch steps

    stepped, opt = layer(W, b, device), fastlin.SGD(**hyper)
    losses = [stepped.step(X, T, opt) for _ in range(3)]
    assert all(type(loss) is float for loss in losses)
    np.testing.assert_allclose(losses, ref_losses, rtol=FIT_RTOL[dtype])
    assert_close(stepped.numpy()[0], ref_W, dtype, scale=10)
    assert_close(stepped.numpy()[1], ref_b, dtype, scale=10)

    # Gradients from elsewhere, applied by the optimiser: the same three updates.
    applied, opt = layer(W, b, device), fastlin.SGD(**hyper)
    for _ in range(3):
        g = applied.gradients(X, T)
        opt.apply(applied, g.weight, g.bias)
    assert_close(applied.numpy()[0], ref_W, dtype, scale=10)
    assert_close(applied.numpy()[1], ref_b, dtype, scale=10)


# Each case: fit's keyword arguments, an optimiser's (None: fit's lr), and the bias.
FITS = {
    "full batch": (dict(steps=12, lr=0.05), None, True),
    "shuffled mini-batches": (dict(steps=11, lr=0.05, batch_size=5, seed=7), None, True),
    "shuffled, no bias, dampening": (
        dict(steps=9, batch_size=4, seed=2),
        dict(lr=0.05, momentum=0.8, dampening=0.3),
        False,
    ),
    "in order, nesterov": (
        dict(steps=9, batch_size=4, shuffle=False),
        dict(lr=0.05, momentum=0.9, nesterov=True),
        True,
    ),
    "epochs, sum, weight decay": (
        dict(epochs=2, batch_size=6, shuffle=False, reduction="sum"),
        dict(lr=0.01, momentum=0.9, weight_decay=0.01),
        True,
    ),
}


@pytest.mark.parametrize("case", list(FITS))
@pytest.mark.parametrize("dtype", DTYPES)
def test_fit_matches_the_reference_and_the_cpu(device, dtype, case):
    kwargs, hyper, bias = FITS[case]
    X, T, W, b = make_data(N, D, O, dtype, seed=5)
    b = b if bias else None
    steps = kwargs.get("steps") or 2 * -(-N // kwargs["batch_size"])  # epochs count the partial batch
    ref_kwargs = dict(
        hyper or dict(lr=kwargs["lr"]),
        batch_size=kwargs.get("batch_size"),
        shuffle=kwargs.get("shuffle", True),
        seed=kwargs.get("seed", 0),
        reduction=kwargs.get("reduction", "mean"),
    )
    ref_losses, ref_W, ref_b = naive.fit(X, T, W, b, steps, **ref_kwargs)

    def fit(dev):
        model = layer(W, b, dev)
        opt = None if hyper is None else fastlin.SGD(**hyper)
        return model, model.fit(X, T, opt=opt, **kwargs)

    model, hist = fit(device)
    assert isinstance(hist.loss, np.ndarray) and hist.loss.shape == (steps,)
    if "seed" in kwargs:
        assert hist.seed == kwargs["seed"]
    rtol = FIT_RTOL[dtype]
    np.testing.assert_allclose(hist.loss, ref_losses, rtol=rtol)
    W_got, b_got = model.numpy()
    np.testing.assert_allclose(W_got, ref_W, rtol=rtol, atol=rtol)
    if bias:
        np.testing.assert_allclose(b_got, ref_b, rtol=rtol, atol=rtol)
    else:
        assert b_got is None
    if device != "cpu":
        cpu_model, cpu_hist = fit("cpu")
        np.testing.assert_allclose(hist.loss, cpu_hist.loss, rtol=rtol)
        np.testing.assert_allclose(W_got, cpu_model.weight, rtol=rtol, atol=rtol)


TORCH_OPTIMISERS = [
    dict(lr=0.05),
    dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=0.01),
    dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.001),
]


@pytest.mark.parametrize("hyper", TORCH_OPTIMISERS, ids=["plain", "momentum-dampening-decay", "nesterov"])
def test_fit_matches_torch_in_float64(device, hyper):
    torch = pytest.importorskip("torch")
    steps = 30
    X, T, W, b = make_data(N, D, O, np.float64, seed=6)
    model = layer(W, b, device)
    hist = model.fit(X, T, steps=steps, opt=fastlin.SGD(**hyper))

    ref = torch.nn.Linear(D, O, dtype=torch.float64)
    with torch.no_grad():
        ref.weight.copy_(torch.from_numpy(W))
        ref.bias.copy_(torch.from_numpy(b))
    opt = torch.optim.SGD(ref.parameters(), **hyper)
    Xt, Tt = torch.from_numpy(X), torch.from_numpy(T)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(ref(Xt), Tt)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    np.testing.assert_allclose(hist.loss, losses, rtol=1e-9)
    W_got, b_got = model.numpy()
    np.testing.assert_allclose(W_got, ref.weight.detach().numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(b_got, ref.bias.detach().numpy(), rtol=1e-9, atol=1e-12)


# Adam, AdamW and schedules (issue #13): fastlin's (optimiser, schedule) and torch's
# (optimiser class, its arguments, the scheduler over it, or None).
TORCH_SCHEDULED = [
    (
        lambda: fastlin.Adam(0.02, amsgrad=True, schedule=fastlin.schedules.cosine(T_max=12, eta_min=1e-3)),
        lambda t, p: t.optim.Adam(p, lr=0.02, amsgrad=True),
        lambda t, o: t.optim.lr_scheduler.CosineAnnealingLR(o, T_max=12, eta_min=1e-3),
    ),
    (
        lambda: fastlin.AdamW(0.02, weight_decay=0.1, schedule=fastlin.schedules.step(step_size=5, gamma=0.5)),
        lambda t, p: t.optim.AdamW(p, lr=0.02, weight_decay=0.1),
        lambda t, o: t.optim.lr_scheduler.StepLR(o, step_size=5, gamma=0.5),
    ),
    (
        lambda: fastlin.SGD(
            0.05,
            momentum=0.9,
            schedule=fastlin.schedules.warmup(fastlin.schedules.exponential(0.9), steps=4, start_factor=0.25),
        ),
        lambda t, p: t.optim.SGD(p, lr=0.05, momentum=0.9),
        lambda t, o: t.optim.lr_scheduler.SequentialLR(
            o,
            [
                t.optim.lr_scheduler.LinearLR(o, start_factor=0.25, total_iters=4),
                t.optim.lr_scheduler.ExponentialLR(o, 0.9),
            ],
            milestones=[4],
        ),
    ),
]


@pytest.mark.parametrize("case", TORCH_SCHEDULED, ids=["adam-amsgrad-cosine", "adamw-step", "sgd-warmup-exponential"])
@pytest.mark.parametrize("batch_size", [None, 8])
def test_adam_and_schedules_match_torch_in_float64(device, case, batch_size):
    """20 steps in two fits (the schedule and the moments carry over), in row order."""
    torch = pytest.importorskip("torch")
    make_opt, make_torch_opt, make_sched = case
    X, T, W, b = make_data(N, D, O, np.float64, seed=16)
    model, opt = layer(W, b, device), make_opt()
    first = model.fit(X, T, steps=12, opt=opt, batch_size=batch_size, shuffle=False)
    rest = model.fit(X, T, steps=8, opt=opt, batch_size=batch_size, shuffle=False)

    ref = torch.nn.Linear(D, O, dtype=torch.float64)
    with torch.no_grad():
        ref.weight.copy_(torch.from_numpy(W))
        ref.bias.copy_(torch.from_numpy(b))
    topt = make_torch_opt(torch, ref.parameters())
    sched = make_sched(torch, topt)
    Xt, Tt = torch.from_numpy(X), torch.from_numpy(T)
    batch = batch_size or N
    losses, lrs = [], []
    for fit_steps in (12, 8):  # each fit starts at the first row, as fastlin's does
        pos = 0
        for _ in range(fit_steps):
            topt.zero_grad()
            loss = torch.nn.functional.mse_loss(ref(Xt[pos : pos + batch]), Tt[pos : pos + batch])
            loss.backward()
            lrs.append(topt.param_groups[0]["lr"])
            topt.step()
            sched.step()
            losses.append(loss.item())
            pos = 0 if pos + batch >= N else pos + batch
    np.testing.assert_allclose(np.concatenate([first.loss, rest.loss]), losses, rtol=1e-9)
    np.testing.assert_allclose(np.concatenate([first.lr, rest.lr]), lrs, rtol=1e-12)
    W_got, b_got = model.numpy()
    np.testing.assert_allclose(W_got, ref.weight.detach().numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(b_got, ref.bias.detach().numpy(), rtol=1e-9, atol=1e-12)


def test_fit_in_segments_with_a_callback_matches_one_call(device):
    """A callback makes every step its own call: the epoch, the position in
    it and the momentum must carry over between the calls exactly."""
    X, T, W, b = make_data(13, 3, 2, np.float64, seed=7)
    seen = []
    hooked, plain = layer(W, b, device), layer(W, b, device)
    opt_hooked, opt_plain = fastlin.SGD(0.05, momentum=0.9), fastlin.SGD(0.05, momentum=0.9)
    h1 = hooked.fit(
        X, T, steps=8, opt=opt_hooked, batch_size=4, seed=3, callback=lambda s, loss: seen.append(s) and False
    )
    h2 = plain.fit(X, T, steps=8, opt=opt_plain, batch_size=4, seed=3)
    assert seen == list(range(1, 9))
    np.testing.assert_allclose(h1.loss, h2.loss, rtol=1e-11)
    np.testing.assert_allclose(hooked.numpy()[0], plain.numpy()[0], rtol=1e-11)


# ---------------------------------------------------------------------------
# errors change nothing
# ---------------------------------------------------------------------------
# numba's simulator runs the kernels as numpy scalar code, which warns where a
# GPU (or the CPU's compiled kernels) silently makes Inf/NaN; the tests below
# make them on purpose.
def simulator_float_warnings(test):
    test = pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")(test)
    return pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")(test)


def _poison(a, value):
    a = a.copy()
    a.flat[a.size // 2 + 1] = value
    return a


def _trained(device, dtype):
    """A model with momentum state, and a twin that will see no bad call."""
    X, T, W, b = make_data(N, D, O, dtype, seed=8)
    pairs = []
    for _ in range(2):
        model, opt = layer(W, b, device), fastlin.SGD(0.05, momentum=0.9)
        model.step(X, T, opt)
        pairs.append((model, opt))
    return X, T, pairs


def assert_untouched(model, opt, twin, twin_opt, X, T):
    """Same parameters as the twin, and the same next step: the momentum
    state (which the public API does not show) was not disturbed either."""
    assert_same_model(model, twin)
    assert model.step(X, T, opt) == twin.step(X, T, twin_opt)
    assert_same_model(model, twin)


@pytest.mark.parametrize("dtype", DTYPES)
@simulator_float_warnings
def test_bad_data_is_rejected_and_changes_nothing(device, dtype):
    X, T, [(model, opt), (twin, twin_opt)] = _trained(device, dtype)
    calls = {
        "forward": lambda X, T: model(X),
        "loss": lambda X, T: model.loss(X, T),
        "gradients": lambda X, T: model.gradients(X, T),
        "backward": lambda X, T: model.backward(X, T),
        "step": lambda X, T: model.step(X, T, opt),
        "fit": lambda X, T: model.fit(X, T, steps=3, opt=opt),
        "fit-minibatch": lambda X, T: model.fit(X, T, steps=7, opt=opt, batch_size=4, seed=1),
    }
    bad = [  # (what, X, T, exception, message fragment); forward skips the rows about T
        ("X 3-D", X[None], T, ValueError, "X must be 1-D"),
        ("in_features mismatch", X[:, :-1], T, ValueError, f"in_features={D}"),
        ("rows differ", X, T[:-1], ValueError, "rows"),
        ("T out_features mismatch", X, T[:, :-1], ValueError, f"out_features={O}"),
        ("empty X", X[:0], T[:0], ValueError, "empty"),
        ("NaN in X", _poison(X, np.nan), T, ValueError, "X contains NaN or Inf"),
        ("Inf in T", X, _poison(T, np.inf), ValueError, "T contains NaN or Inf"),
    ]
    for what, bX, bT, exc, fragment in bad:
        for name, call in calls.items():
            if name == "forward" and bX is X:
                continue  # forward takes no target: nothing wrong with its input
            with pytest.raises(exc) as info:
                call(bX, bT)
            expected = fragment.replace("T ", "dY ") if name == "backward" else fragment
            assert expected in str(info.value), (what, name, str(info.value))
    assert_untouched(model, opt, twin, twin_opt, X, T)


@simulator_float_warnings
def test_nan_late_in_a_minibatch_fit_restores_the_weights_from_before_the_fit(device):
    X, T, [(model, opt), (twin, twin_opt)] = _trained(device, np.float64)
    Xbad = X.copy()
    Xbad[-1, 0] = np.nan  # only the last mini-batch of the epoch reads it
    with pytest.raises(ValueError, match="X contains NaN"):
        model.fit(Xbad, T, steps=10, opt=opt, batch_size=3, shuffle=False)
    assert_untouched(model, opt, twin, twin_opt, X, T)


@simulator_float_warnings
def test_check_finite_false_skips_the_diagnosis_but_still_protects_the_weights(device):
    X, T, [(model, opt), (twin, twin_opt)] = _trained(device, np.float64)
    Xbad = _poison(X, np.nan)
    assert np.isnan(to_host(model(Xbad, check_finite=False))).any()
    assert np.isnan(model.loss(Xbad, T, check_finite=False))
    with pytest.raises(fastlin.DivergenceError):
        model.step(Xbad, T, opt, check_finite=False)
    with pytest.raises(fastlin.DivergenceError):
        model.fit(Xbad, T, steps=5, opt=opt, check_finite=False)
    assert_untouched(model, opt, twin, twin_opt, X, T)


@simulator_float_warnings
def test_divergence_keeps_the_weights_of_the_last_finite_step(device):
    """lr far too large: the loss grows until an update would overflow
    float32.  DivergenceError names the step and keeps the weights of the
    step before it, exactly those of a fit stopped there."""
    X, T, W, b = make_data(8, 3, 2, np.float32, seed=9)
    X *= 100
    model = layer(W, b, device)
    with pytest.raises(fastlin.DivergenceError) as info:
        model.fit(X, T, steps=60, lr=10.0)
    err = info.value
    assert isinstance(err, FloatingPointError) and isinstance(err, ValueError)
    assert "step" in str(err) and "lr" in str(err)
    assert err.step == len(err.history.loss) + 1 >= 2
    assert np.isfinite(model.numpy()[0]).all() and np.isfinite(model.numpy()[1]).all()
    replay = layer(W, b, device)
    replay_hist = replay.fit(X, T, steps=err.step - 1, lr=10.0)
    assert_same_model(model, replay)
    np.testing.assert_array_equal(err.history.loss, replay_hist.loss)
    if device != "cpu":
        with pytest.raises(fastlin.DivergenceError) as on_cpu:
            layer(W, b, "cpu").fit(X, T, steps=60, lr=10.0)
        assert on_cpu.value.step == err.step


@simulator_float_warnings
def test_divergence_in_a_single_step_changes_nothing(device):
    X, T, W, b = make_data(N, D, O, np.float32, seed=10)
    model = layer(W * 1e37, b, device)
    before = model.numpy()[0]
    with pytest.raises(fastlin.DivergenceError) as info:
        model.step(X * 1e3, T, fastlin.SGD(1e3))
    assert info.value.step == 1
    np.testing.assert_array_equal(model.numpy()[0], before)


# ---------------------------------------------------------------------------
# placement, moves, copies, files, pickle
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_parameters_live_on_the_device_and_move_with_to(device, dtype):
    model = fastlin.Linear(D, O, dtype=dtype, device=device, seed=4, init="kaiming_uniform")
    on_cpu = fastlin.Linear(D, O, dtype=dtype, seed=4, init="kaiming_uniform")
    assert model.device == device and model.dtype == dtype
    assert repr(model).endswith(f"device={device!r})")
    assert lives_on(model.weight, device) and lives_on(model.bias, device)
    W, b = model.numpy()
    assert isinstance(W, np.ndarray) and W.dtype == dtype
    np.testing.assert_array_equal(W, on_cpu.weight)  # the initialiser does not depend on the device
    np.testing.assert_array_equal(b, on_cpu.bias)

    assert model.to("cpu") is model and model.device == "cpu"
    assert isinstance(model.weight, np.ndarray)
    np.testing.assert_array_equal(model.weight, on_cpu.weight)
    assert model.to(device) is model and model.device == device
    assert lives_on(model.weight, device)
    np.testing.assert_array_equal(model.numpy()[0], on_cpu.weight)

    new = np.random.default_rng(5).standard_normal((O, D))
    model.weight = new  # the setter writes the device's copy, cast to the dtype
    assert lives_on(model.weight, device)
    np.testing.assert_array_equal(model.numpy()[0], new.astype(dtype))

    twin = model.copy()
    assert twin.device == device and twin.weight is not model.weight
    twin.weight = np.zeros((O, D))
    np.testing.assert_array_equal(model.numpy()[0], new.astype(dtype))  # independent


def test_from_weights_takes_the_devices_arrays_and_no_bias(device):
    _, _, W, b = make_data(1, 4, 2, np.float64, seed=11)
    model = layer(W, b, device)
    again = fastlin.Linear.from_weights(model.weight, model.bias, device=device)
    assert again.weight is not model.weight
    np.testing.assert_array_equal(again.numpy()[0], W)
    np.testing.assert_array_equal(again.numpy()[1], b)
    no_bias = fastlin.Linear(4, 2, bias=False, device=device)
    assert no_bias.bias is None and no_bias.numpy()[1] is None and not no_bias.has_bias


def test_momentum_follows_the_model_between_devices(device):
    """Trained on the CPU, moved to ``device`` and back: the optimiser's
    momentum follows at each step, so the result is that of staying put."""
    X, T, W, b = make_data(11, 3, 2, np.float64, seed=12)
    moved, stayed = layer(W, b, "cpu"), layer(W, b, "cpu")
    opt_moved, opt_stayed = fastlin.SGD(0.05, momentum=0.9), fastlin.SGD(0.05, momentum=0.9)
    for where in ("cpu", device, "cpu"):
        moved.to(where).fit(X, T, steps=3, opt=opt_moved)
        stayed.fit(X, T, steps=3, opt=opt_stayed)
    np.testing.assert_allclose(moved.numpy()[0], stayed.weight, rtol=1e-11)
    np.testing.assert_allclose(moved.numpy()[1], stayed.bias, rtol=1e-11)


@pytest.mark.parametrize("dtype", DTYPES)
def test_save_and_load_round_trip_on_any_device(device, dtype, tmp_path):
    X, T, W, b = make_data(N, D, O, dtype, seed=13)
    model = layer(W, b, device)
    model.step(X, T, fastlin.SGD(0.1))  # values that no initialiser made
    path = tmp_path / "model.npz"
    model.save(path)
    for where in (device, "cpu"):
        back = fastlin.load(path, device=where)
        assert back.device == where and back.dtype == dtype
        assert_same_model(back, model)
    no_bias = layer(W, None, device)
    no_bias.save(path)
    back = fastlin.load(path, device=device)
    assert back.bias is None
    assert_same_model(back, no_bias)


@pytest.mark.parametrize("how", ["pickle", "deepcopy"])
def test_pickle_round_trips_keep_training_bit_for_bit(device, how):
    X, T, W, b = make_data(N, D, O, np.float64, seed=14)
    model, opt = layer(W, b, device), fastlin.SGD(0.05, momentum=0.9, nesterov=True)
    model.fit(X, T, steps=3, opt=opt, batch_size=5, seed=1)
    # Model and optimiser together: the momentum state travels with them.
    if how == "pickle":
        back, back_opt = pickle.loads(pickle.dumps((model, opt)))
    else:
        back, back_opt = copy.deepcopy((model, opt))
    assert back.device == device and back.dtype == model.dtype
    assert lives_on(back.weight, device) and back.weight is not model.weight
    assert_same_model(back, model)
    h = model.fit(X, T, steps=4, opt=opt, batch_size=5, seed=2)
    hb = back.fit(X, T, steps=4, opt=back_opt, batch_size=5, seed=2)
    np.testing.assert_array_equal(h.loss, hb.loss)
    assert_same_model(back, model)
