"""LinearRegressor's exact solve (solver="normal"/"auto") against scikit-learn's
LinearRegression and Ridge, the solver choice, and lr="auto" on data of any
magnitude (the step size from the Gram matrix's largest eigenvalue)."""

import numpy as np
import pytest

sklearn = pytest.importorskip(
    "sklearn", minversion="1.6", reason="scikit-learn >= 1.6 is not installed (pip install 'fastlin[sklearn]')"
)

from numpy.testing import assert_allclose  # noqa: E402
from sklearn.datasets import make_regression  # noqa: E402
from sklearn.linear_model import LinearRegression, Ridge  # noqa: E402

from fastlin import sklearn as fsk  # noqa: E402
from fastlin.sklearn import LinearRegressor  # noqa: E402


def data(n, d, n_targets=1, seed=0, dtype=np.float64):
    X, y = make_regression(n_samples=n, n_features=d, n_targets=n_targets, noise=2.0, bias=3.0, random_state=seed)
    return X.astype(dtype), y


def rank_deficient(n=40, seed=1):
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, 3))
    # duplicate (×2, exact in binary), constant, and a sum of two columns
    X = np.column_stack([base, 2.0 * base[:, 0], np.full(n, 5.0), base[:, 1] + base[:, 2]])
    y = base @ [1.0, -2.0, 0.5] + 0.1 * rng.normal(size=n)
    return X, y


SHAPES = {
    "tall": (200, 6, 1),
    "multi-target": (150, 5, 3),
    "D=1": (30, 1, 1),
    "N<D": (8, 20, 1),
    "N<D multi": (5, 9, 2),
}


@pytest.mark.parametrize("fit_intercept", [True, False])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_normal_solver_matches_linear_regression(shape, fit_intercept):
    n, d, o = SHAPES[shape]
    X, y = data(n, d, o, seed=n + d)
    ours = LinearRegressor(solver="normal", fit_intercept=fit_intercept).fit(X, y)
    exact = LinearRegression(fit_intercept=fit_intercept).fit(X, y)
    scale = np.abs(exact.coef_).max()
    assert_allclose(ours.coef_, exact.coef_, rtol=0, atol=1e-9 * scale)
    assert_allclose(ours.intercept_, exact.intercept_, rtol=0, atol=1e-9 * max(scale, 1.0))
    assert ours.n_iter_ == 1 and ours.lr_ is None and ours.lr_curve_ == []
    residual = np.mean((exact.predict(X) - y) ** 2)
    assert ours.loss_curve_[0] == pytest.approx(residual, rel=1e-8, abs=1e-12 * np.var(y))


@pytest.mark.parametrize("fit_intercept", [True, False])
def test_normal_solver_on_rank_deficient_data_is_minimum_norm(fit_intercept):
    X, y = rank_deficient()
    ours = LinearRegressor(fit_intercept=fit_intercept).fit(X, y)
    exact = LinearRegression(fit_intercept=fit_intercept).fit(X, y)
    assert_allclose(ours.coef_, exact.coef_, rtol=0, atol=1e-8)
    assert_allclose(ours.intercept_, exact.intercept_, rtol=0, atol=1e-8)


@pytest.mark.parametrize("fit_intercept", [True, False])
@pytest.mark.parametrize("n_targets", [1, 2])
def test_weight_decay_is_ridge_exactly(n_targets, fit_intercept):
    X, y = data(120, 7, n_targets, seed=4)
    w = np.random.default_rng(2).uniform(0.0, 2.0, size=len(X))
    w[::5] = 0.0
    lam = 0.3
    ours = LinearRegressor(weight_decay=lam, fit_intercept=fit_intercept).fit(X, y, sample_weight=w)
    ridge = Ridge(alpha=lam * n_targets * w.sum() / 2, fit_intercept=fit_intercept, solver="svd").fit(
        X, y, sample_weight=w
    )
    assert_allclose(ours.coef_, ridge.coef_, rtol=1e-10, atol=1e-10)
    assert_allclose(ours.intercept_, ridge.intercept_, rtol=1e-10, atol=1e-10)


def test_weight_decay_on_rank_deficient_data_is_ridge():
    X, y = rank_deficient()
    ours = LinearRegressor(weight_decay=0.05).fit(X, y)
    ridge = Ridge(alpha=0.05 * len(X) / 2, solver="svd").fit(X, y)
    assert_allclose(ours.coef_, ridge.coef_, rtol=1e-9, atol=1e-10)
    assert_allclose(ours.intercept_, ridge.intercept_, rtol=1e-9, atol=1e-10)


def test_sample_weight_is_exact_with_zeros_and_integers():
    X, y = data(60, 4, seed=7)
    w = np.random.default_rng(0).integers(0, 4, size=60)
    w[0] = 2
    weighted = LinearRegressor().fit(X, y, sample_weight=w)
    repeated = LinearRegressor().fit(np.repeat(X, w, axis=0), np.repeat(y, w))
    exact = LinearRegression().fit(X, y, sample_weight=w)
    assert_allclose(weighted.coef_, repeated.coef_, rtol=1e-10)
    assert_allclose(weighted.coef_, exact.coef_, rtol=1e-10)
    assert_allclose(weighted.intercept_, exact.intercept_, rtol=1e-10)
    scaled = LinearRegressor().fit(X, y, sample_weight=1000.0 * w)
    assert_allclose(scaled.coef_, weighted.coef_, rtol=1e-12)


def test_one_sample():
    ours = LinearRegressor().fit([[1.0, 2.0]], [3.0])
    exact = LinearRegression().fit([[1.0, 2.0]], [3.0])
    assert_allclose(ours.coef_, exact.coef_, atol=1e-12)
    assert ours.intercept_ == pytest.approx(exact.intercept_)


def test_float32_stays_float32():
    X, y = data(300, 10, seed=3, dtype=np.float32)
    ours = LinearRegressor().fit(X, y)
    exact = LinearRegression().fit(X.astype(np.float64), y)
    assert ours.coef_.dtype == np.float32
    assert_allclose(ours.coef_, exact.coef_, rtol=1e-6, atol=1e-5)
    assert ours.score(X, y) == pytest.approx(exact.score(X, y), abs=1e-6)


def test_large_offsets_in_float32_features():
    # timestamps near 1e9 (spread 1e4), true slope 1e-3 and -2e-3
    rng = np.random.default_rng(5)
    X = (1e9 + 1e4 * rng.random((2000, 2))).astype(np.float32)
    Xd = X.astype(np.float64)
    y = 1e-3 * (Xd[:, 0] - 1e9) - 2e-3 * (Xd[:, 1] - 1e9) + 0.01 * rng.normal(size=2000)
    ours = LinearRegressor().fit(X, y)
    exact = LinearRegression().fit(Xd - Xd.mean(axis=0), y)  # centred in float64: well conditioned
    assert_allclose(ours.coef_, exact.coef_, rtol=1e-5)
    # The intercept (about −1e6 here) to float32 precision.  (coef_ and
    # intercept_ are float32 for float32 X, so predictions near 1e9 carry
    # their rounding, ~0.1, as LinearRegression's float32 fit would.)
    intercept = exact.intercept_ - exact.coef_ @ Xd.mean(axis=0)
    assert ours.intercept_ == pytest.approx(intercept, rel=1e-6)


# ----------------------------------------------------------------------
# which solver runs
# ----------------------------------------------------------------------
def test_auto_picks_the_exact_solve_for_the_full_batch_and_gd_otherwise(monkeypatch):
    X, y = data(200, 5, seed=9)
    assert LinearRegressor().fit(X, y).n_iter_ == 1
    assert LinearRegressor(solver="sgd").fit(X, y).n_iter_ > 1
    assert LinearRegressor(solver="adam").fit(X, y).n_iter_ > 1
    mini = LinearRegressor(batch_size=32, random_state=0, tol=None, max_iter=3).fit(X, y)
    assert mini.n_iter_ == 3 and mini.lr_ is not None
    monkeypatch.setattr(fsk, "AUTO_EXACT_MAX_FEATURES", 4)
    assert LinearRegressor().fit(X, y).n_iter_ > 1  # too wide for "auto": gradient descent
    assert LinearRegressor(solver="normal").fit(X, y).n_iter_ == 1


def test_exact_and_gradient_descent_agree():
    X, y = data(400, 8, seed=10)
    exact = LinearRegressor().fit(X, y)
    gd = LinearRegressor(solver="gd", tol=1e-9, max_iter=5000).fit(X, y)
    assert_allclose(gd.coef_, exact.coef_, atol=1e-5 * np.abs(exact.coef_).max())


def test_partial_fit_after_an_exact_fit_continues_from_it():
    X, y = data(300, 4, seed=11)
    model = LinearRegressor().fit(X, y)
    coef = model.coef_.copy()
    model.partial_fit(X, y)
    assert model.n_iter_ == 2
    assert_allclose(model.coef_, coef, rtol=0, atol=1e-2 * np.abs(coef).max())


@pytest.mark.parametrize("solver", ["exact", "SGD", "lbfgs", "adamw", 1, None])
def test_bad_solver_raises_at_fit(solver):
    model = LinearRegressor(solver=solver)
    with pytest.raises(ValueError, match="solver"):
        model.fit(np.ones((4, 2)), np.arange(4.0))


def test_exact_solve_runs_on_the_cpu_whatever_device_says():
    X, y = data(50, 3, seed=12)
    a = LinearRegressor(solver="normal", device="cuda").fit(X, y)
    b = LinearRegressor(solver="normal").fit(X, y)
    assert_allclose(a.coef_, b.coef_, rtol=0, atol=0)


def test_exact_solve_overflowing_float64_raises_value_error():
    X = np.array([[1e200, 1.0], [2e200, 3.0], [0.0, 1.0]])
    with pytest.raises(ValueError, match="overflow"):
        LinearRegressor().fit(X, [1.0, 2.0, 3.0])


# ----------------------------------------------------------------------
# lr="auto" from the Gram matrix
# ----------------------------------------------------------------------
@pytest.mark.parametrize("scale", [1.0, 1e9, 1e19])
def test_largest_eigenvalue_is_right_for_float32_of_any_magnitude(scale):
    rng = np.random.default_rng(0)
    A = (scale * (1.0 + 1e-3 * rng.random((500, 6)))).astype(np.float32)
    A[:, 0] = 1.0  # a column of ones, as partial_fit appends
    A64 = A.astype(np.float64)
    ref = np.linalg.eigvalsh(A64.T @ A64)[-1]
    assert fsk._largest_eigenvalue(A) == pytest.approx(ref, rel=1e-10)


def test_gd_on_features_near_1e9_converges_to_the_right_coefficients():
    # the power iteration's float32 norm overflowed here: DivergenceError at
    # step 124, or coefficients near 1e10 for a true value of 1e-9
    rng = np.random.default_rng(6)
    n = 2000
    X = (1e9 + 1e4 * rng.standard_normal((n, 3))).astype(np.float32)
    Xd = X.astype(np.float64)
    true = np.array([1e-9, 2e-3, -1e-3])
    y = (Xd - 1e9) @ true + 5.0 + 1e-3 * rng.normal(size=n)
    gd = LinearRegressor(solver="gd").fit(X, y)
    exact = LinearRegression().fit(Xd - Xd.mean(axis=0), y)
    assert np.isfinite(gd.lr_) and gd.lr_ > 0
    assert_allclose(gd.coef_, exact.coef_, rtol=0, atol=1e-6)
    assert gd.score(X, y) == pytest.approx(exact.score(Xd - Xd.mean(axis=0), y), abs=1e-5)


def test_partial_fit_on_features_near_1e9_does_not_diverge():
    rng = np.random.default_rng(7)
    X = (1e9 + 1e4 * rng.random((1000, 2))).astype(np.float32)
    y = 1e-3 * (X.astype(np.float64)[:, 0] - 1e9) + 2.0
    model = LinearRegressor(batch_size=100, random_state=0)
    for _ in range(3):
        model.partial_fit(X, y)
    assert np.isfinite(model.lr_) and model.lr_ > 0
    assert np.all(np.isfinite(model.coef_)) and np.isfinite(model.intercept_)
    assert np.all(np.isfinite(model.loss_curve_))
    assert model.loss_curve_[-1] <= model.loss_curve_[0]


def test_mini_batch_lr_auto_on_huge_features_is_finite():
    rng = np.random.default_rng(8)
    X = (1e19 * (1.0 + rng.random((200, 2)))).astype(np.float32)
    y = rng.normal(size=200)
    model = LinearRegressor(batch_size=50, random_state=0, max_iter=2, tol=None).fit(X, y)
    assert np.isfinite(model.lr_) and model.lr_ > 0
    assert np.all(np.isfinite(model.coef_))


@pytest.mark.parametrize("solver", ["auto", "normal", "sgd", "adam"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_in_x_is_refused_by_every_solver(solver, bad):
    # the exact solve finds them in its sums instead of a separate pass
    X, y = data(50, 3, seed=13)
    w = np.ones(50)
    w[7] = 0.0  # even in a row of weight zero
    X[7, 1] = bad
    with pytest.raises(ValueError, match="Input X contains"):
        LinearRegressor(solver=solver).fit(X, y, sample_weight=w)
    with pytest.raises(ValueError, match="Input X contains"):
        LinearRegressor(solver=solver).fit(X.astype(np.float32), y)
