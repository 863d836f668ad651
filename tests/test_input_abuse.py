"""Inputs a careful, hostile user will pass, at every door data comes in by.

Masked arrays, torch tensors that require grad, pandas nullable dtypes,
Python integers beyond int64, big-endian float32, initialisers that return
NaN/Inf or float32 overflow, data beyond float32's range, and a failed refit
of the scikit-learn estimator.  Every refusal is a TypeError/ValueError that
names the argument, and leaves the model (and optimiser) bit-identical.

Behaviours chosen (also in the report to the lead):
- a masked array with no masked entry is used as its data; one masked entry refuses it;
- a torch tensor that requires grad is refused (TypeError saying ``.detach()``), not detached;
- pandas nullable dtypes without NA and object arrays of real numbers are read as float64;
  NA / None is "missing values (NA)"; object arrays of strings or other objects are refused.
"""

from __future__ import annotations

import numpy as np
import pytest

import fastlin
from tests.support.helpers import make_data

N, D, O = 9, 4, 3


@pytest.fixture(params=[np.float32, np.float64])
def setup(request):
    dtype = request.param
    X, T, W, b = make_data(N, D, O, dtype, seed=4)
    model = fastlin.Linear.from_weights(W, b)
    opt = fastlin.SGD(0.05, momentum=0.9)
    model.step(X, T, opt)  # momentum buffers hold a value
    return model, opt, X, T


def _state(model, opt):
    st = opt._states.get(model)
    bufs = () if st is None else (st.slots_w.copy(), st.slots_b.copy(), st.counters.copy())
    return model.weight.copy(), model.bias.copy(), bufs


def _assert_same_state(before, after):
    for x, y in zip(before[:2], after[:2]):
        assert x.tobytes() == y.tobytes()
    for x, y in zip(before[2], after[2]):
        assert x.tobytes() == y.tobytes()


def _doors(model, opt):
    """Every entry point for data and parameters: (name, call(X, T), the argument names it takes)."""
    return [
        ("forward", lambda X, T: model(X), ("X",)),
        ("loss", lambda X, T: model.loss(X, T), ("X", "T")),
        ("gradients", lambda X, T: model.gradients(X, T), ("X", "T")),
        ("backward", lambda X, T: model.backward(X, T), ("X", "dY")),
        ("step", lambda X, T: model.step(X, T, opt), ("X", "T")),
        ("fit", lambda X, T: model.fit(X, T, steps=2, opt=opt), ("X", "T")),
        ("fit-minibatch", lambda X, T: model.fit(X, T, steps=3, opt=opt, batch_size=4, seed=0), ("X", "T")),
        ("mse_loss", lambda X, T: fastlin.mse_loss(X, T), ("pred", "target")),
    ]


def _refused_everywhere(model, opt, X, T, make_bad, exc, fragments):
    """Each door, with X and then T replaced by ``make_bad(a)``, raises
    ``exc`` naming the argument and saying every fragment; nothing changes."""
    for door, call, names in _doors(model, opt):
        a, b = (X, T) if door != "mse_loss" else (X[:, :O], T)
        for position, name in enumerate(names):
            args = [a, b]
            args[position] = make_bad(args[position])
            before = _state(model, opt)
            with pytest.raises(exc) as info:
                call(*args)
            message = str(info.value)
            assert message.startswith(name + " ") or f" {name} " in message, (door, name, message)
            for fragment in fragments:
                assert fragment in message, (door, name, message)
            _assert_same_state(before, _state(model, opt))


# ---------------------------------------------------------------------------
# masked arrays
# ---------------------------------------------------------------------------
def _masked(a):
    mask = np.zeros(a.shape, dtype=bool)
    mask.flat[a.size // 2] = True
    return np.ma.masked_array(a, mask=mask)


def test_masked_entries_are_refused_everywhere_with_how_to_fill_or_drop(setup):
    model, opt, X, T = setup
    _refused_everywhere(model, opt, X, T, _masked, ValueError, ["masked", ".filled(", ".compressed()"])


def test_masked_parameters_and_gradients_are_refused(setup):
    model, opt, _, _ = setup
    W, b = model.numpy()
    before = _state(model, opt)
    for call, name in [
        (lambda: fastlin.Linear.from_weights(_masked(W), b), "weight"),
        (lambda: fastlin.Linear.from_weights(W, _masked(b)), "bias"),
        (lambda: setattr(model, "weight", _masked(W)), "weight"),
        (lambda: setattr(model, "bias", _masked(b)), "bias"),
        (lambda: opt.apply(model, _masked(W), b), "weight_grad"),
    ]:
        with pytest.raises(ValueError, match=rf"^{name} is a masked array.*\.filled\(value\)"):
            call()
    _assert_same_state(before, _state(model, opt))


def test_a_masked_array_with_nothing_masked_is_its_data(setup):
    model, _, X, T = setup
    for wrap in (np.ma.masked_array, lambda a: np.ma.masked_array(a, mask=np.zeros(a.shape, bool))):
        np.testing.assert_array_equal(model(wrap(X)), model(X))
        assert model.loss(wrap(X), wrap(T)) == model.loss(X, T)
        assert fastlin.mse_loss(wrap(X), wrap(X[::-1])) == fastlin.mse_loss(X, X[::-1])
        W, b = model.numpy()
        assert fastlin.Linear.from_weights(wrap(W), wrap(b)).weight.tobytes() == W.tobytes()


def test_the_value_under_a_mask_never_reaches_the_fit(setup):
    """The silent failure seen on main: a masked NaN or 1e6 drove the fit."""
    model, opt, X, T = setup
    hidden = np.ma.masked_array(X.copy(), mask=np.zeros(X.shape, bool))
    hidden[0, 0] = np.ma.masked
    hidden.data[0, 0] = 1e6
    before = _state(model, opt)
    with pytest.raises(ValueError, match="masked"):
        model.fit(hidden, T, steps=5, opt=opt)
    _assert_same_state(before, _state(model, opt))


# ---------------------------------------------------------------------------
# torch tensors that require grad: refused, with .detach()
# ---------------------------------------------------------------------------
def _requires_grad(a):
    torch = pytest.importorskip("torch")
    return torch.tensor(np.ascontiguousarray(a), requires_grad=True)


def test_tensors_that_require_grad_are_refused_everywhere(setup):
    pytest.importorskip("torch")
    model, opt, X, T = setup
    _refused_everywhere(model, opt, X, T, _requires_grad, TypeError, ["requires grad", ".detach()"])


def test_parameters_that_require_grad_are_refused(setup):
    pytest.importorskip("torch")
    model, opt, _, _ = setup
    W, b = model.numpy()
    before = _state(model, opt)
    for call, name in [
        (lambda: fastlin.Linear.from_weights(_requires_grad(W), b), "weight"),
        (lambda: fastlin.Linear.from_weights(W, _requires_grad(b)), "bias"),
        (lambda: setattr(model, "weight", _requires_grad(W)), "weight"),
        (lambda: setattr(model, "bias", _requires_grad(b)), "bias"),
        (lambda: opt.apply(model, _requires_grad(W), b), "weight_grad"),
        (lambda: fastlin.Linear(D, O, init=lambda rng, o, i: (_requires_grad(np.ones((o, i))), np.zeros(o))), "weight"),
    ]:
        with pytest.raises(TypeError, match=rf"{name}\b.* is a torch tensor that requires grad.*\.detach\(\)"):
            call()
    _assert_same_state(before, _state(model, opt))


def test_detached_tensors_give_the_numpy_results(setup):
    pytest.importorskip("torch")
    model, _, X, T = setup
    tX, tT = _requires_grad(X).detach(), _requires_grad(T).detach()
    np.testing.assert_array_equal(model(tX), model(X))
    assert model.loss(tX, tT) == model.loss(X, T)
    assert fastlin.mse_loss(tX, _requires_grad(X[::-1]).detach()) == fastlin.mse_loss(X, X[::-1])


# ---------------------------------------------------------------------------
# pandas nullable dtypes and Python integers beyond int64
# ---------------------------------------------------------------------------
def _frames(X, dtype_name):
    """(the frame's values as float64, a DataFrame of ``dtype_name`` made from X)."""
    pd = pytest.importorskip("pandas")
    if dtype_name == "boolean":
        X = X > 0
    elif dtype_name == "Int64":
        X = np.round(X * 10).astype(np.int64)
    frame = pd.DataFrame(X, columns=[f"c{j}" for j in range(X.shape[1])]).astype(dtype_name)
    return np.array([[float(v) for v in row] for row in frame.itertuples(index=False)]), frame


@pytest.mark.parametrize("dtype_name", ["Float64", "Float32", "Int64", "boolean"])
def test_pandas_nullable_dtypes_without_na_are_read_like_numpy(setup, dtype_name):
    model, _, X, T = setup
    Xn, frame = _frames(X, dtype_name)
    Tn, target = _frames(T, dtype_name)
    assert model(frame).tobytes() == model(Xn).tobytes()
    assert model(frame.iloc[3]).tobytes() == model(Xn[3]).tobytes()  # a row Series: one sample
    assert model.loss(frame, target) == pytest.approx(model.loss(Xn, Tn), rel=1e-6)
    assert fastlin.mse_loss(frame["c0"], frame["c1"]) == pytest.approx(fastlin.mse_loss(Xn[:, 0], Xn[:, 1]), rel=1e-6)
    twin = model.copy()
    before = _state(twin, fastlin.SGD(0.05))
    history = twin.fit(frame, target, steps=3, lr=0.05)
    assert len(history.loss) == 3 and np.isfinite(history.loss).all()
    assert twin.weight.tobytes() != before[0].tobytes()


@pytest.mark.parametrize("dtype_name", ["Float64", "Int64", "boolean"])
def test_pandas_missing_values_say_missing_values_na(setup, dtype_name):
    pd = pytest.importorskip("pandas")
    model, opt, X, T = setup

    def with_na(a):
        if isinstance(a, pd.DataFrame) or a.ndim != 2:
            pytest.fail("unexpected")
        _, frame = _frames(a, dtype_name)
        frame.iloc[1, 1] = pd.NA
        return frame

    _refused_everywhere(model, opt, X, T, with_na, ValueError, ["missing values (NA)"])
    # a Series with NA, and the object array numpy makes of a frame with NA
    _, frame = _frames(X, dtype_name)
    frame.iloc[2, 0] = pd.NA
    with pytest.raises(ValueError, match=r"pred has missing values \(NA\)"):
        fastlin.mse_loss(frame["c0"], frame["c1"])
    with pytest.raises(ValueError, match=r"X has missing values \(NA"):
        model(np.asarray(frame))
    with pytest.raises(ValueError, match=r"weight has missing values \(NA\)"):
        fastlin.Linear.from_weights(frame)


def test_python_integers_beyond_int64_are_read_as_floats():
    big = np.asarray([[2**70, -(2**65), 3], [1, 2**64, -7]])
    assert big.dtype == object
    as_float = np.array([[2.0**70, -(2.0**65), 3], [1, 2.0**64, -7]])
    model = fastlin.Linear(3, 1, dtype=np.float64, seed=0)
    np.testing.assert_array_equal(model(big), model(as_float))
    assert fastlin.Linear.from_weights(big).weight.tobytes() == as_float.tobytes()
    assert fastlin.mse_loss(big, as_float) == 0.0
    with pytest.raises(ValueError, match="X holds a number too large for float64"):
        model(np.asarray([[10**400, 1, 2]]))


@pytest.mark.parametrize(
    "values, exc, fragment",
    [
        ([["1.5", 2.0, 3.0]], TypeError, "object array holding strings"),
        ([[None, 2.0, 3.0]], ValueError, "missing values (NA / None)"),
        ([[1 + 2j, 2.0, 3.0]], TypeError, "complex"),
        ([[object(), 2.0, 3.0]], TypeError, "object array holding object values"),
    ],
)
def test_object_arrays_of_non_numbers_are_refused(values, exc, fragment):
    model = fastlin.Linear(3, 1, seed=0)
    with pytest.raises(exc) as info:
        model(np.array(values, dtype=object))
    assert str(info.value).startswith("X ") and fragment in str(info.value)


# ---------------------------------------------------------------------------
# byte order: a float32 is float32
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["f4", "f8"])
def test_big_endian_weights_keep_their_precision(dtype):
    W = np.random.default_rng(5).normal(size=(3, 4)).astype(">" + dtype)
    b = np.arange(3, dtype=">" + dtype)
    model = fastlin.Linear.from_weights(W, b)
    assert model.dtype == np.dtype(dtype) and model.weight.dtype == np.dtype(dtype)
    assert model.weight.dtype.isnative
    np.testing.assert_array_equal(model.weight, W)
    model.weight = W[::-1]
    model.bias = b[::-1]
    np.testing.assert_array_equal(model.weight, W[::-1])
    np.testing.assert_array_equal(model.bias, b[::-1])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_big_endian_data_gives_the_native_results(dtype):
    X, T, W, b = make_data(17, 5, 2, dtype, seed=6)
    model = fastlin.Linear.from_weights(W, b)
    bX, bT = X.astype(X.dtype.newbyteorder(">")), T.astype(T.dtype.newbyteorder(">"))
    assert model(bX).tobytes() == model(X).tobytes()
    assert model.loss(bX, bT) == model.loss(X, T)
    # mse_loss keeps float32 in either byte order (it used to switch to float64)
    assert fastlin.mse_loss(bT, bT[::-1]) == fastlin.mse_loss(T, T[::-1])


def test_natural_float_dtype_ignores_byte_order():
    from fastlin._validate import natural_float_dtype

    for spec, want in [
        (">f4", np.float32),
        ("<f4", np.float32),
        (">f8", np.float64),
        ("<i4", np.float64),
        (">f2", np.float64),
    ]:
        assert natural_float_dtype(np.zeros(1, spec)) == want, spec


# ---------------------------------------------------------------------------
# values beyond float32's range, from data, parameters and initialisers
# ---------------------------------------------------------------------------
def test_float64_data_beyond_float32_is_refused_not_made_inf():
    X, T, W, b = make_data(6, 4, 2, np.float32, seed=7)
    model = fastlin.Linear.from_weights(W, b)
    opt = fastlin.SGD(0.1)
    big = X.astype(np.float64)
    big[2, 1] = 1e39
    before = _state(model, opt)
    for call in (lambda: model(big), lambda: model.loss(big, T), lambda: model.fit(big, T, steps=2, opt=opt)):
        with pytest.raises(ValueError, match="X has values too large for float32"):
            call()
    with pytest.raises(ValueError, match="T has values too large for float32"):
        model.step(X, -big[:, :2], opt)
    with pytest.raises(ValueError, match="weight has values too large for float32"):
        model.weight = big[1:3]
    _assert_same_state(before, _state(model, opt))
    assert fastlin.Linear.from_weights(big).dtype == np.float64  # float64 weights stay float64


def _init_returning(W=None, b=None):
    def init(rng, out_features, in_features):
        weight = np.ones((out_features, in_features)) if W is None else W(out_features, in_features)
        bias = np.zeros(out_features) if b is None else b(out_features)
        return weight, bias

    return init


@pytest.mark.parametrize(
    "init, dtype, fragment",
    [
        (_init_returning(W=lambda o, i: np.full((o, i), np.nan)), np.float64, "weight returned by init"),
        (_init_returning(W=lambda o, i: np.full((o, i), -np.inf)), np.float32, "contains NaN or Inf"),
        (_init_returning(b=lambda o: np.full(o, np.inf)), np.float64, "bias returned by init"),
        (_init_returning(W=lambda o, i: np.full((o, i), 1e39)), np.float32, "too large for float32"),
        (_init_returning(b=lambda o: np.full(o, -4e38)), np.float32, "too large for float32"),
        (_init_returning(W=lambda o, i: np.ones((i, o))), np.float32, "returned shapes"),
        (_init_returning(W=lambda o, i: np.ones((o, i), complex)), np.float32, "complex"),
        (_init_returning(W=lambda o, i: _masked(np.ones((o, i)))), np.float32, "masked"),
        (lambda rng, o, i: np.ones((o, i)), np.float32, "must return a pair"),
    ],
)
def test_an_init_callable_is_checked_like_from_weights(init, dtype, fragment):
    with pytest.raises((TypeError, ValueError), match=fragment.replace("(", r"\(")):
        fastlin.Linear(4, 3, init=init, dtype=dtype)


def test_an_init_callable_may_return_large_float64_and_no_bias_without_bias():
    model = fastlin.Linear(4, 3, init=_init_returning(W=lambda o, i: np.full((o, i), 1e39)), dtype=np.float64)
    assert model.weight[0, 0] == 1e39
    model = fastlin.Linear(4, 3, bias=False, init=lambda rng, o, i: (np.ones((o, i)), None))
    assert not model.has_bias
    with pytest.raises(ValueError, match="no bias"):
        fastlin.Linear(4, 3, init=lambda rng, o, i: (np.ones((o, i)), None))


def test_an_init_callable_result_is_copied():
    W = np.ones((3, 4))
    model = fastlin.Linear(4, 3, init=lambda rng, o, i: (W, np.zeros(o)), dtype=np.float64)
    W[:] = 5.0
    assert (model.weight == 1.0).all()


# ---------------------------------------------------------------------------
# scikit-learn: a failed refit keeps the previous fit
# ---------------------------------------------------------------------------
def _gd():
    """Gradient descent (the exact solver, where there is one, cannot diverge)."""
    from fastlin.sklearn import LinearRegressor

    return {"solver": "gd"} if "solver" in LinearRegressor().get_params() else {}


_FITTED = ("coef_", "intercept_", "n_iter_", "loss_curve_", "lr_", "n_features_in_")


def _fitted(est):
    return {k: getattr(est, k) for k in _FITTED}


def _assert_fitted_unchanged(est, before):
    for k, v in before.items():
        got = getattr(est, k)
        if isinstance(v, np.ndarray):
            assert got.dtype == v.dtype and got.tobytes() == v.tobytes(), k
        else:
            assert got == v and type(got) is type(v), k


@pytest.mark.parametrize("multi", [False, True])
def test_a_failed_refit_keeps_the_previous_fit(multi):
    pytest.importorskip("sklearn")
    from fastlin.sklearn import LinearRegressor

    rng = np.random.default_rng(8)
    X = rng.normal(size=(40, 3))
    y = X @ (rng.normal(size=(3, 2)) if multi else rng.normal(size=3)) + 0.25
    est = LinearRegressor(max_iter=30, tol=None, random_state=0, **_gd()).fit(X, y)
    before = _fitted(est)
    prediction = est.predict(X)

    est.set_params(lr=1e8)  # diverges
    with pytest.raises(fastlin.DivergenceError):
        est.fit(X * 100, y)
    _assert_fitted_unchanged(est, before)

    est.set_params(lr="auto")
    bad = X.copy()
    bad[5, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        est.fit(bad, y)
    _assert_fitted_unchanged(est, before)

    est.set_params(lr=1e8)  # diverges on data with another number of features
    with pytest.raises(fastlin.DivergenceError):
        est.fit(np.column_stack([X, X]) * 100, y)
    _assert_fitted_unchanged(est, before)
    np.testing.assert_array_equal(est.predict(X), prediction)


def test_a_failed_first_fit_leaves_the_estimator_unfitted():
    pytest.importorskip("sklearn")
    from sklearn.exceptions import NotFittedError

    from fastlin.sklearn import LinearRegressor

    rng = np.random.default_rng(9)
    X = rng.normal(size=(30, 2)) * 100
    est = LinearRegressor(lr=1e8, max_iter=20, tol=None, **_gd())
    with pytest.raises(fastlin.DivergenceError):
        est.fit(X, X[:, 0])
    with pytest.raises(NotFittedError):
        est.predict(X)
    assert not hasattr(est, "n_features_in_")
