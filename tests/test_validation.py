"""Bad input gets a clear error and loses nothing; odd-but-valid input works.

Every rejected call is made on a model whose parameters (and optimiser
state) are snapshotted first; after the error they must be bit-identical.
"""

from __future__ import annotations

import numpy as np
import pytest

import fastlin
from fastlin import _dispatch
from tests.support import naive
from tests.support.helpers import make_data, tol

N, D, O = 20, 5, 3


@pytest.fixture(params=[np.float32, np.float64])
def setup(request):
    dtype = request.param
    X, T, W, b = make_data(N, D, O, dtype)
    model = fastlin.Linear.from_weights(W, b)
    opt = fastlin.SGD(0.1, momentum=0.9)
    model.step(X, T, opt)  # momentum buffers now hold a value
    return model, opt, X, T


def snapshot(model, opt):
    st = opt._states.get(model)
    bufs = () if st is None else (st.slots_w.copy(), st.slots_b.copy(), st.counters.copy())
    return model.weight.copy(), model.bias.copy(), bufs


def assert_unchanged(before, model, opt):
    after = snapshot(model, opt)
    np.testing.assert_array_equal(before[0], after[0])
    np.testing.assert_array_equal(before[1], after[1])
    for x, y in zip(before[2], after[2]):
        np.testing.assert_array_equal(x, y)


def calls(model, opt, X, T):
    """Every API entry point that takes (X, T), as (name, callable)."""
    return [
        ("forward", lambda X, T: model(X)),
        ("loss", lambda X, T: model.loss(X, T)),
        ("gradients", lambda X, T: model.gradients(X, T)),
        ("backward", lambda X, T: model.backward(X, T)),
        ("step", lambda X, T: model.step(X, T, opt)),
        ("fit", lambda X, T: model.fit(X, T, steps=3, opt=opt)),
        ("fit-minibatch", lambda X, T: model.fit(X, T, steps=7, opt=opt, batch_size=4, seed=1)),
    ]


def bad_inputs(X, T):
    """(description, X, T, exception type, message fragment)."""
    return [
        ("X 3-D", X[None], T, ValueError, "X must be 1-D"),
        ("X 0-D", np.float64(1.0), T, ValueError, "X must be 1-D"),
        ("in_features mismatch", X[:, :-1], T, ValueError, "in_features=5"),
        ("single sample mismatch", X[0, :-1], T[0], ValueError, "in_features=5"),
        ("rows differ", X, T[:-1], ValueError, "rows"),
        ("T out_features mismatch", X, T[:, :-1], ValueError, "out_features=3"),
        ("T 3-D", X, T[None], ValueError, "T must have shape"),
        ("empty X", X[:0], T[:0], ValueError, "empty"),
        ("complex X", X.astype(np.complex128), T, TypeError, "complex"),
        # An object array of numbers is read as floats (as scikit-learn does); of other objects, refused.
        ("object X", _objects(X), T, TypeError, "object array"),
        ("string X", X.astype(str), T, TypeError, "string"),
        ("complex T", X, T.astype(np.complex64), TypeError, "complex"),
        ("ragged list X", [[1.0, 2.0], [3.0]], T, ValueError, "X"),
        ("NaN in X", _poison(X, np.nan), T, ValueError, "X contains NaN or Inf"),
        ("Inf in X", _poison(X, np.inf), T, ValueError, "X contains NaN or Inf"),
        ("NaN in T", X, _poison(T, np.nan), ValueError, "T contains NaN or Inf"),
        ("-Inf in T", X, _poison(T, -np.inf), ValueError, "T contains NaN or Inf"),
    ]


def _objects(a):
    out = a.astype(object)
    out.flat[1] = object()
    return out


def _poison(a, value):
    a = a.copy()
    a.flat[a.size // 2 + 1] = value
    return a


def test_every_bad_input_is_rejected_and_nothing_changes(setup):
    model, opt, X, T = setup
    for what, bX, bT, exc, fragment in bad_inputs(X, T):
        for name, call in calls(model, opt, X, T):
            if name == "forward" and (bX is X or "T" in what.split()[-1]):
                continue  # forward takes no target
            before = snapshot(model, opt)
            with pytest.raises(exc) as info:
                call(bX, bT)
            expected = fragment.replace("T ", "dY ") if name == "backward" else fragment
            assert expected in str(info.value), (what, name, str(info.value))
            assert_unchanged(before, model, opt)


def test_nan_late_in_a_minibatch_fit_restores_the_weights_from_before_the_fit(setup):
    model, opt, X, T = setup
    X = X.copy()
    X[-1, 0] = np.nan  # reached only by a late mini-batch
    before = snapshot(model, opt)
    with pytest.raises(ValueError, match="X contains NaN"):
        model.fit(X, T, steps=50, opt=opt, batch_size=3, shuffle=False)
    assert_unchanged(before, model, opt)


def test_check_finite_false_skips_the_diagnosis_but_still_protects_the_weights(setup):
    model, opt, X, T = setup
    Xbad = _poison(X, np.nan)
    assert np.isnan(model(Xbad, check_finite=False)).any()
    assert np.isnan(model.loss(Xbad, T, check_finite=False))
    before = snapshot(model, opt)
    with pytest.raises(fastlin.DivergenceError):
        model.step(Xbad, T, opt, check_finite=False)
    with pytest.raises(fastlin.DivergenceError):
        model.fit(Xbad, T, steps=5, opt=opt, check_finite=False)
    assert_unchanged(before, model, opt)


@pytest.mark.parametrize(
    "kwargs, exc, fragment",
    [
        (dict(lr=0.0), ValueError, "lr must be > 0"),
        (dict(lr=-1.0), ValueError, "lr must be > 0"),
        (dict(lr=float("nan")), ValueError, "lr must be finite"),
        (dict(lr=float("inf")), ValueError, "lr must be finite"),
        (dict(lr="0.1"), TypeError, "lr must be a real number"),
        (dict(lr=True), TypeError, "lr must be a real number"),
        (dict(lr=0.1, momentum=-0.5), ValueError, "momentum must be >= 0"),
        (dict(lr=0.1, momentum=float("nan")), ValueError, "momentum must be finite"),
        (dict(lr=0.1, weight_decay=-1e-4), ValueError, "weight_decay must be >= 0"),
        (dict(lr=0.1, dampening=float("inf")), ValueError, "dampening must be finite"),
        (dict(lr=0.1, nesterov=True), ValueError, "nesterov momentum requires momentum > 0"),
        (dict(lr=0.1, momentum=0.9, dampening=0.1, nesterov=True), ValueError, "dampening == 0"),
        (dict(lr=0.1, nesterov="yes"), TypeError, "nesterov must be True or False"),
    ],
)
def test_sgd_arguments_are_checked_like_torch(kwargs, exc, fragment):
    with pytest.raises(exc, match=fragment):
        fastlin.SGD(**kwargs)


def test_sgd_hyper_parameters_changed_later_are_checked_too():
    opt = fastlin.SGD(0.1, momentum=0.9, nesterov=True)
    opt.lr = 0.05  # a schedule: allowed
    assert opt.hyper()[0]["lr"] == 0.05
    with pytest.raises(ValueError, match="lr must be > 0"):
        opt.lr = -1
    with pytest.raises(ValueError, match="nesterov"):
        opt.momentum = 0.0
    assert opt.lr == 0.05 and opt.momentum == 0.9


@pytest.mark.parametrize(
    "kwargs, exc, fragment",
    [
        (dict(batch_size=0), ValueError, "batch_size must be >= 1"),
        (dict(batch_size=-3), ValueError, "batch_size must be >= 1"),
        (dict(batch_size=2.5), TypeError, "batch_size must be an integer"),
        (dict(steps=-1), ValueError, "steps must be >= 0"),
        (dict(steps=True), TypeError, "steps must be an integer"),
        (dict(epochs=-1), ValueError, "epochs must be >= 0"),
        (dict(steps=3, epochs=1), ValueError, "steps or epochs"),
        (dict(reduction="max"), ValueError, "reduction must be 'mean' or 'sum'"),
        (dict(log_every=-1), ValueError, "log_every must be >= 0"),
        (dict(callback=3), TypeError, "callback must be callable"),
        (dict(lr=0.1, opt=fastlin.SGD(0.1)), ValueError, "lr or opt"),
        (dict(opt="sgd"), TypeError, "opt must be a fastlin.SGD"),
        (dict(seed=-1), ValueError, "seed must be >= 0"),
        (dict(shuffle=None), TypeError, "shuffle must be True or False"),
    ],
)
def test_bad_fit_arguments(setup, kwargs, exc, fragment):
    model, opt, X, T = setup
    before = snapshot(model, opt)
    with pytest.raises(exc, match=fragment):
        model.fit(X, T, **kwargs)
    assert_unchanged(before, model, opt)


def test_unknown_reduction_everywhere(setup):
    model, opt, X, T = setup
    for call in (
        lambda: model.loss(X, T, reduction="avg"),
        lambda: model.gradients(X, T, reduction="avg"),
        lambda: model.step(X, T, opt, reduction="avg"),
        lambda: fastlin.mse_loss(X, X, reduction="avg"),
    ):
        with pytest.raises(ValueError, match="reduction"):
            call()


def test_step_needs_an_sgd(setup):
    model, _, X, T = setup
    with pytest.raises(TypeError, match="opt must be a fastlin.SGD"):
        model.step(X, T, 0.1)


@pytest.mark.parametrize(
    "kwargs, exc, fragment",
    [
        (dict(init="he"), ValueError, "unknown init 'he'"),
        (dict(device="tpu"), ValueError, "device must be one of"),
        (dict(device="cuda:0"), ValueError, "device must be one of"),
        (dict(dtype=np.float16), TypeError, "float32 or float64"),
        (dict(dtype="int32"), TypeError, "float32 or float64"),
        (dict(bias="yes"), TypeError, "bias must be True or False"),
        (dict(seed=1.5), TypeError, "seed must be an integer"),
        (dict(init=lambda rng, o, i: (np.zeros((i, o)), np.zeros(o))), ValueError, "returned shapes"),
    ],
)
def test_bad_constructor_arguments(kwargs, exc, fragment):
    with pytest.raises(exc, match=fragment):
        fastlin.Linear(5, 3, **kwargs)


@pytest.mark.parametrize("value", [0, -2, 2.0, None, "5"])
def test_bad_feature_counts(value):
    with pytest.raises((TypeError, ValueError), match="in_features"):
        fastlin.Linear(value, 3)


def test_cuda_without_a_usable_gpu_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(_dispatch, "cuda_unavailable_reason", lambda: "no NVIDIA driver found")
    for make in (
        lambda: fastlin.Linear(5, 3, device="cuda"),
        lambda: fastlin.Linear.from_weights(np.ones((3, 5)), device="cuda"),
        lambda: fastlin.Linear(5, 3).to("cuda"),
    ):
        with pytest.raises(fastlin.DeviceError, match="no NVIDIA driver found"):
            make()
    assert issubclass(fastlin.DeviceError, RuntimeError)
    # "auto" never fails: it falls back to the CPU when CUDA is unusable
    assert fastlin.Linear(500, 500, device="auto").device == "cpu"


@pytest.mark.skipif(fastlin.cuda_available(), reason="this machine can run CUDA kernels")
def test_cuda_on_this_machine_raises_device_error_with_a_reason():
    with pytest.raises(fastlin.DeviceError, match="CUDA cannot be used: .+"):
        fastlin.Linear(5, 3, device="cuda")


def test_from_weights_checks_the_bias_and_weight():
    W = np.ones((3, 5))
    with pytest.raises(ValueError, match=r"bias must have shape \(3,\)"):
        fastlin.Linear.from_weights(W, np.ones(4))
    with pytest.raises(ValueError, match=r"bias must have shape \(3,\)"):
        fastlin.Linear.from_weights(W, np.ones((3, 1)))
    with pytest.raises(ValueError, match="non-empty 2-D"):
        fastlin.Linear.from_weights(np.ones(5))
    with pytest.raises(ValueError, match="non-empty 2-D"):
        fastlin.Linear.from_weights(np.ones((0, 5)))
    with pytest.raises(ValueError, match="weight contains NaN"):
        fastlin.Linear.from_weights(np.full((3, 5), np.nan))
    with pytest.raises(TypeError, match="complex"):
        fastlin.Linear.from_weights(np.ones((3, 5), dtype=complex))


def test_parameter_setters_validate(setup):
    model, opt, X, T = setup
    before = snapshot(model, opt)
    with pytest.raises(ValueError, match="weight must have shape"):
        model.weight = np.ones((O, D + 1))
    with pytest.raises(ValueError, match="bias contains NaN"):
        model.bias = np.full(O, np.nan)
    assert_unchanged(before, model, opt)
    model.weight = np.full((O, D), 0.5)
    assert (model.weight == 0.5).all() and model.weight.dtype == model.dtype
    with pytest.raises(AttributeError, match="bias=False"):
        fastlin.Linear(2, 2, bias=False).bias = np.ones(2)


def test_mse_loss_checks_its_arguments():
    a = np.ones((4, 2))
    with pytest.raises(ValueError, match="same shape"):
        fastlin.mse_loss(a, np.ones((4, 3)))
    with pytest.raises(ValueError, match="empty"):
        fastlin.mse_loss(a[:0], a[:0])
    with pytest.raises(ValueError, match="1-D or 2-D"):
        fastlin.mse_loss(a[None], a[None])
    with pytest.raises(ValueError, match="target contains NaN"):
        fastlin.mse_loss(a, np.full((4, 2), np.inf))
    with pytest.raises(TypeError, match="string"):
        fastlin.mse_loss(a, a.astype(str))


# ---------------------------------------------------------------------------
# accepted with correct results
# ---------------------------------------------------------------------------
def _odd_but_valid(X, T):
    """(description, X-like, T-like): all hold the same numbers as X, T."""
    Xf, Tf = np.asfortranarray(X), np.asfortranarray(T)
    wide = np.zeros((X.shape[0] * 2, X.shape[1] * 3), dtype=X.dtype)
    wide[::2, ::3] = X
    ro_X, ro_T = X.copy(), T.copy()
    ro_X.flags.writeable = False
    ro_T.flags.writeable = False
    return [
        ("fortran", Xf, Tf),
        ("strided", wide[::2, ::3], T),
        ("read-only", ro_X, ro_T),
        ("lists", X.tolist(), T.tolist()),
    ]


def test_odd_layouts_and_lists_give_the_same_results(setup):
    model, opt, X, T = setup
    ref_model = model.copy()
    ref_opt = fastlin.SGD(0.1, momentum=0.9)
    ref_model.step(X, T, ref_opt)  # align the momentum state with `model`
    for what, Xv, Tv in _odd_but_valid(X, T):
        m, o = model.copy(), fastlin.SGD(0.1)
        r, ro = model.copy(), fastlin.SGD(0.1)
        np.testing.assert_array_equal(m(Xv), r(X), err_msg=what)
        assert m.loss(Xv, Tv) == r.loss(X, T), what
        np.testing.assert_array_equal(m.gradients(Xv, Tv).weight, r.gradients(X, T).weight, err_msg=what)
        assert m.step(Xv, Tv, o) == r.step(X, T, ro), what
        np.testing.assert_array_equal(m.weight, r.weight, err_msg=what)
        h1 = m.fit(Xv, Tv, steps=5, lr=0.05, batch_size=7, seed=3)
        h2 = r.fit(X, T, steps=5, lr=0.05, batch_size=7, seed=3)
        np.testing.assert_array_equal(h1.loss, h2.loss, err_msg=what)


def test_integer_data_is_cast_to_the_model_dtype():
    rng = np.random.default_rng(3)
    X = rng.integers(-5, 6, size=(30, 4))
    T = rng.integers(-5, 6, size=(30, 2))
    for dtype in (np.float32, np.float64):
        W = (rng.standard_normal((2, 4)) / 4).astype(dtype)
        model = fastlin.Linear.from_weights(W, np.zeros(2, dtype))
        Y = model(X)
        assert Y.dtype == dtype
        np.testing.assert_allclose(Y, naive.forward(X, W, np.zeros(2)), **tol(dtype))
        np.testing.assert_allclose(model.loss(X, T), naive.mse(naive.forward(X, W), T), **tol(dtype))


def test_float64_data_for_a_float32_model_is_cast():
    X, T, W, b = make_data(40, 6, 2, np.float64)
    m32 = fastlin.Linear.from_weights(W.astype(np.float32), b.astype(np.float32))
    X32, T32 = X.astype(np.float32), T.astype(np.float32)
    assert m32(X).dtype == np.float32
    np.testing.assert_array_equal(m32(X), m32(X32))
    assert m32.loss(X, T) == m32.loss(X32, T32)
    a, b_ = m32.copy(), m32.copy()
    assert a.step(X, T, fastlin.SGD(0.1)) == b_.step(X32, T32, fastlin.SGD(0.1))
    np.testing.assert_array_equal(a.weight, b_.weight)


def test_boolean_data_counts_as_zero_and_one():
    model = fastlin.Linear.from_weights(np.array([[1.0, 2.0]]), np.array([0.5]))
    np.testing.assert_array_equal(model(np.array([[True, False], [True, True]])), [[1.5], [3.5]])
