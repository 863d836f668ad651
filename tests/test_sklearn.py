"""fastlin.sklearn.LinearRegressor: scikit-learn's own estimator checks, and
agreement with sklearn.linear_model.LinearRegression (the exact answer)."""

import math
import pickle

import numpy as np
import pytest

sklearn = pytest.importorskip(
    "sklearn", minversion="1.6", reason="scikit-learn >= 1.6 is not installed (pip install 'fastlin[sklearn]')"
)

from numpy.testing import assert_allclose  # noqa: E402
from sklearn.base import clone  # noqa: E402
from sklearn.datasets import load_diabetes, make_regression  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.linear_model import LinearRegression, Ridge  # noqa: E402
from sklearn.model_selection import GridSearchCV  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

import fastlin  # noqa: E402
from fastlin import schedules  # noqa: E402
from fastlin.backends import cpu_ops  # noqa: E402
from fastlin.sklearn import LinearRegressor  # noqa: E402


def well_conditioned(n_samples=400, n_features=8, n_targets=1, noise=5.0, seed=0):
    """Gaussian features (so XᵀX/n ≈ I after centring), a bias and noise."""
    X, y = make_regression(
        n_samples=n_samples, n_features=n_features, n_targets=n_targets, noise=noise, bias=7.0, random_state=seed
    )
    return X, y


# ----------------------------------------------------------------------
# scikit-learn's estimator checks: every one must pass, none is expected to
# fail.  (A few skip themselves when pandas is not installed, or when
# SCIPY_ARRAY_API=1 is not set before scipy is imported.)
# ----------------------------------------------------------------------
# The defaults (the exact solve), plain gradient descent (which needs a looser
# tol to converge on the checks' unscaled data within max_iter), heavy-ball
# momentum with an L2 penalty, gradient descent's defaults (under its old
# name "gd"), the exact solve with an L2 penalty, Adam's defaults, and SGD
# with a cosine schedule.
@parametrize_with_checks(
    [
        LinearRegressor(),
        LinearRegressor(solver="sgd", momentum=0.0, tol=1e-4),
        LinearRegressor(solver="sgd", momentum=0.5, nesterov=False, weight_decay=0.1),
        LinearRegressor(solver="gd"),
        LinearRegressor(solver="normal", weight_decay=0.1),
        LinearRegressor(solver="adam"),
        LinearRegressor(solver="sgd", learning_rate="cosine"),
    ]
)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


# ----------------------------------------------------------------------
# agreement with LinearRegression
# ----------------------------------------------------------------------
@pytest.mark.parametrize("n_targets", [1, 3])
def test_default_fit_matches_linear_regression(n_targets):
    X, y = well_conditioned(n_targets=n_targets)
    ours = LinearRegressor().fit(X, y)
    exact = LinearRegression().fit(X, y)
    assert_allclose(ours.coef_, exact.coef_, rtol=0, atol=1e-4)
    assert_allclose(ours.intercept_, exact.intercept_, rtol=0, atol=1e-4)
    assert_allclose(ours.predict(X), exact.predict(X), rtol=0, atol=1e-3)
    assert ours.n_iter_ < ours.max_iter  # it stopped by the tolerance, not the cap


def test_no_intercept_matches_linear_regression():
    X, y = well_conditioned()
    ours = LinearRegressor(fit_intercept=False).fit(X, y)
    exact = LinearRegression(fit_intercept=False).fit(X, y)
    assert_allclose(ours.coef_, exact.coef_, rtol=0, atol=1e-4)
    assert ours.intercept_ == 0.0


def test_more_features_than_samples_gives_the_minimum_norm_solution():
    # Gradient descent from zero stays in the row space of X, which is what
    # makes its limit the minimum-norm solution lstsq returns.
    rng = np.random.default_rng(3)
    X, y = rng.normal(size=(20, 40)), rng.normal(size=20)
    ours = LinearRegressor(solver="gd", tol=1e-9, max_iter=20000).fit(X, y)
    exact = LinearRegression().fit(X, y)
    assert_allclose(ours.coef_, exact.coef_, rtol=0, atol=1e-6)
    assert_allclose(ours.predict(X), y, rtol=0, atol=1e-6)  # it interpolates


def test_weight_decay_is_ridge():
    # The documented objective: MSE + weight_decay/2·‖coef‖², whose optimum
    # is Ridge's with alpha = weight_decay·Σw/2 (Ridge sums the squares), and
    # the intercept is not penalised.
    X, y = well_conditioned()
    w = np.random.default_rng(6).uniform(0.5, 2.0, size=len(X))
    ours = LinearRegressor(weight_decay=0.5).fit(X, y, sample_weight=w)
    ridge = Ridge(alpha=0.5 * w.sum() / 2).fit(X, y, sample_weight=w)
    assert_allclose(ours.coef_, ridge.coef_, rtol=0, atol=1e-4)
    assert_allclose(ours.intercept_, ridge.intercept_, rtol=0, atol=1e-4)
    assert np.abs(ours.coef_).max() < np.abs(LinearRegression().fit(X, y, sample_weight=w).coef_).max()


def test_float32_input_trains_in_float32():
    X, y = well_conditioned()
    ours = LinearRegressor().fit(X.astype(np.float32), y)
    exact = LinearRegression().fit(X, y)
    assert ours.coef_.dtype == np.float32
    assert ours.predict(X.astype(np.float32)).dtype == np.float32
    assert ours.predict(X).dtype == np.float64  # float64 X is not rounded down
    assert_allclose(ours.coef_, exact.coef_, rtol=1e-5, atol=1e-4)


def test_momentum_does_not_stop_training_early():
    # With momentum the loss of gradient descent oscillates; the full-batch
    # stopping rule watches the weights instead, so training goes on to the
    # optimum.  (Nesterov momentum is the default.)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 6)) * [1, 2, 4, 8, 1, 1]  # condition number ~ 64
    y = X @ rng.normal(size=6) + rng.normal(scale=0.1, size=300)
    exact = LinearRegression().fit(X, y)
    for nesterov in (False, True):
        ours = LinearRegressor(solver="gd", momentum=0.9, nesterov=nesterov).fit(X, y)
        assert_allclose(ours.coef_, exact.coef_, rtol=0, atol=1e-3)


# ----------------------------------------------------------------------
# scikit-learn conventions: shapes, attributes, errors
# ----------------------------------------------------------------------
def test_shapes_follow_scikit_learn():
    X, y = well_conditioned(n_samples=50, n_features=4, n_targets=3)
    one = LinearRegressor().fit(X, y[:, 0])
    assert one.coef_.shape == (4,) and isinstance(one.intercept_, float)
    assert one.predict(X).shape == (50,)
    column = LinearRegressor().fit(X, y[:, :1])
    assert column.coef_.shape == (1, 4) and column.intercept_.shape == (1,)
    assert column.predict(X).shape == (50, 1)
    multi = LinearRegressor().fit(X, y)
    assert multi.coef_.shape == (3, 4) and multi.intercept_.shape == (3,)
    assert multi.predict(X).shape == (50, 3)
    assert multi.n_features_in_ == 4
    assert len(multi.loss_curve_) == multi.n_iter_ >= 1
    sgd = LinearRegressor(solver="sgd", max_iter=7, tol=None).fit(X, y)
    assert len(sgd.lr_curve_) == len(sgd.loss_curve_) == sgd.n_iter_ == 7
    assert all(isinstance(v, float) for v in sgd.lr_curve_)
    assert all(isinstance(v, float) for v in multi.loss_curve_)


def test_dataframe_feature_names_are_kept():
    pd = pytest.importorskip("pandas", reason="pandas is not installed")
    X, y = well_conditioned(n_samples=50, n_features=3)
    frame = pd.DataFrame(X, columns=["age", "dose", "weight"])
    model = LinearRegressor().fit(frame, pd.Series(y))
    assert model.feature_names_in_.tolist() == ["age", "dose", "weight"]
    assert_allclose(model.predict(frame), LinearRegressor().fit(X, y).predict(X), rtol=1e-12)
    with pytest.warns(UserWarning, match="feature names"):
        model.predict(X)  # scikit-learn warns when the names go missing


def test_loss_curve_is_the_training_mse():
    X, y = well_conditioned(n_targets=2)
    model = LinearRegressor(solver="gd", momentum=0.0).fit(X, y)
    # The first step starts from zero coefficients and the mean intercept:
    # its loss is the variance of y (averaged over the targets).
    assert model.loss_curve_[0] == pytest.approx(np.var(y, axis=0).mean(), rel=1e-12)
    # Plain full-batch descent at lr = 1/L never increases the loss.
    assert np.all(np.diff(model.loss_curve_) <= 1e-9 * model.loss_curve_[0])
    residual = np.mean((model.predict(X) - y) ** 2)
    assert model.loss_curve_[-1] == pytest.approx(residual, rel=1e-6)


def test_predict_before_fit_raises():
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        LinearRegressor().predict(np.zeros((2, 3)))


@pytest.mark.parametrize(
    "params, error",
    [
        ({"lr": 0.0}, ValueError),
        ({"lr": "fast"}, ValueError),
        ({"momentum": -0.5}, ValueError),
        ({"nesterov": "yes"}, TypeError),
        ({"weight_decay": -1.0}, ValueError),
        ({"max_iter": 0}, ValueError),
        ({"max_iter": 2.5}, TypeError),
        ({"batch_size": 0}, ValueError),
        ({"tol": -1e-3}, ValueError),
        ({"n_iter_no_change": 0}, ValueError),
        ({"shuffle": "yes"}, TypeError),
        ({"device": "tpu"}, ValueError),
        ({"learning_rate": "adaptive"}, ValueError),  # scikit-learn's, not offered
        ({"learning_rate": "optimal"}, ValueError),
        ({"learning_rate": "Cosine"}, ValueError),
        ({"learning_rate": None}, ValueError),
        ({"power_t": math.nan}, ValueError),
        ({"power_t": "0.5"}, TypeError),
        ({"beta_1": 1.0}, ValueError),
        ({"beta_1": -0.1}, ValueError),
        ({"beta_2": 1.5}, ValueError),
        ({"beta_2": "x"}, TypeError),
        ({"epsilon": -1e-8}, ValueError),
        ({"epsilon": math.inf}, ValueError),
    ],
)
@pytest.mark.parametrize("solver", ["auto", "sgd", "adam"])
def test_bad_hyper_parameters_raise_at_fit(params, error, solver):
    # Every parameter is checked whatever the solver, as MLPRegressor does:
    # a bad beta_1 fails the exact solve too, before any work.
    model = LinearRegressor(solver=solver, **params)  # scikit-learn: never raise in __init__
    with pytest.raises(error, match=next(iter(params))):
        model.fit(np.ones((4, 2)), np.arange(4.0))
    assert not hasattr(model, "coef_")


def test_nesterov_is_ignored_without_momentum():
    X, y = well_conditioned()
    plain = LinearRegressor(solver="gd", momentum=0.0, nesterov=True).fit(X, y)
    assert plain.n_iter_ > 1
    assert_allclose(
        plain.coef_, LinearRegressor(solver="gd", momentum=0.0, nesterov=False).fit(X, y).coef_, rtol=0, atol=0
    )


def test_momentum_needs_fewer_epochs_on_ill_conditioned_data():
    X, y = load_diabetes(return_X_y=True)  # standardised: condition number ~ 470
    X = StandardScaler().fit_transform(X)
    exact = LinearRegression().fit(X, y)
    default = LinearRegressor(solver="gd").fit(X, y)
    assert default.n_iter_ < 500
    assert_allclose(default.coef_, exact.coef_, rtol=0, atol=1e-4 * np.abs(exact.coef_).max())
    with pytest.warns(ConvergenceWarning):
        LinearRegressor(solver="gd", momentum=0.0).fit(X, y)  # about κ·log(1/tol) epochs needed


@pytest.mark.skipif(fastlin.cuda_available(), reason="this machine has a usable GPU")
def test_cuda_without_a_gpu_raises_device_error():
    with pytest.raises(fastlin.DeviceError):
        LinearRegressor(device="cuda").fit(np.ones((4, 2)), np.arange(4.0))


@pytest.mark.skipif(not fastlin.cuda_available(), reason="needs a usable CUDA GPU")
def test_cuda_fit_matches_cpu():
    # device="cuda" makes "auto" run gradient descent: the CPU's gradient
    # descent takes the same steps; the exact solve is ~1e-5 away (the tol).
    X, y = well_conditioned()
    gpu = LinearRegressor(device="cuda").fit(X, y)
    cpu = LinearRegressor(solver="sgd").fit(X, y)
    exact = LinearRegressor().fit(X, y)
    scale = np.abs(exact.coef_).max()
    assert gpu.n_iter_ == cpu.n_iter_ > 1
    assert_allclose(gpu.coef_, cpu.coef_, rtol=0, atol=1e-9 * scale)
    assert_allclose(gpu.coef_, exact.coef_, rtol=0, atol=1e-5 * scale)


@pytest.mark.skipif(not fastlin.cuda_available(), reason="needs a usable CUDA GPU (or NUMBA_ENABLE_CUDASIM=1)")
@pytest.mark.parametrize(
    "params",
    [
        {"solver": "adam", "learning_rate": "cosine"},
        {"solver": "sgd", "learning_rate": "invscaling", "batch_size": 8, "random_state": 0},
    ],
)
def test_cuda_adam_and_schedules_match_cpu(params):
    X, y = well_conditioned(n_samples=24, n_features=3)  # tiny: the simulator is slow
    gpu = LinearRegressor(device="cuda", max_iter=6, tol=None, **params).fit(X, y)
    cpu = LinearRegressor(device="cpu", max_iter=6, tol=None, **params).fit(X, y)
    assert_allclose(gpu.coef_, cpu.coef_, rtol=1e-12, atol=1e-12 * np.abs(cpu.coef_).max())
    assert_allclose(gpu.lr_curve_, cpu.lr_curve_, rtol=1e-15)


@pytest.mark.skipif(not fastlin.cuda_available(), reason="needs a usable CUDA GPU (or NUMBA_ENABLE_CUDASIM=1)")
def test_cuda_partial_fit_pickles_without_its_device_state():
    # A CUDA layer would not unpickle on a machine without a GPU: the copy
    # drops it and resumes from coef_ with a fresh optimiser state.
    X, y = well_conditioned(n_samples=24, n_features=3)
    model = LinearRegressor(device="cuda", solver="adam").partial_fit(X, y)
    copy = pickle.loads(pickle.dumps(model))
    assert not hasattr(copy, "_live")
    assert_allclose(copy.predict(X), model.predict(X), rtol=0, atol=0)
    assert copy.partial_fit(X, y).n_iter_ == 2


def test_diverging_learning_rate_raises_and_leaves_the_model_unfitted():
    X, y = well_conditioned()
    model = LinearRegressor(solver="gd", lr=100.0)
    with pytest.raises(fastlin.DivergenceError):
        model.fit(X, y)
    assert not hasattr(model, "coef_")


# ----------------------------------------------------------------------
# sample_weight
# ----------------------------------------------------------------------
def test_sample_weight_matches_weighted_linear_regression():
    X, y = well_conditioned(n_targets=2)
    w = np.random.default_rng(1).uniform(0.1, 3.0, size=len(X))
    ours = LinearRegressor().fit(X, y, sample_weight=w)
    exact = LinearRegression().fit(X, y, sample_weight=w)
    assert_allclose(ours.coef_, exact.coef_, rtol=0, atol=1e-4)
    assert_allclose(ours.intercept_, exact.intercept_, rtol=0, atol=1e-4)


def test_integer_weights_equal_repeated_rows():
    X, y = well_conditioned(n_samples=60)
    w = np.random.default_rng(2).integers(0, 4, size=len(X))
    weighted = LinearRegressor().fit(X, y, sample_weight=w)
    repeated = LinearRegressor().fit(np.repeat(X, w, axis=0), np.repeat(y, w))
    # The same gradient-descent path, not merely the same optimum.
    assert weighted.n_iter_ == repeated.n_iter_
    assert_allclose(weighted.loss_curve_, repeated.loss_curve_, rtol=1e-9)
    assert_allclose(weighted.coef_, repeated.coef_, rtol=1e-9, atol=1e-12)


def test_scaling_all_weights_changes_nothing():
    X, y = well_conditioned(n_samples=80)
    w = np.random.default_rng(4).uniform(0.5, 2.0, size=len(X))
    a = LinearRegressor().fit(X, y, sample_weight=w)
    b = LinearRegressor().fit(X, y, sample_weight=1000.0 * w)
    assert_allclose(a.coef_, b.coef_, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(
    "weights, match",
    [
        (np.zeros(10), "zero"),
        (-np.ones(10), "Negative"),
        (np.ones(11), "entries"),
        (np.ones((10, 2)), "1-D"),
    ],
)
def test_bad_sample_weight_raises(weights, match):
    X, y = well_conditioned(n_samples=10)
    with pytest.raises(ValueError, match=match):
        LinearRegressor().fit(X, y, sample_weight=weights)


# ----------------------------------------------------------------------
# early stopping
# ----------------------------------------------------------------------
def test_tol_none_runs_exactly_max_iter_epochs():
    X, y = well_conditioned()
    model = LinearRegressor(solver="gd", tol=None, max_iter=37).fit(X, y)
    assert model.n_iter_ == 37 and len(model.loss_curve_) == 37


def test_tighter_tol_trains_longer_and_closer():
    X, y = well_conditioned()
    X = X * np.linspace(1.0, 6.0, X.shape[1])  # condition number ~ 36: many steps
    exact = LinearRegression().fit(X, y)
    loose = LinearRegressor(solver="gd", tol=1e-3).fit(X, y)
    tight = LinearRegressor(solver="gd", tol=1e-8, max_iter=5000).fit(X, y)
    assert loose.n_iter_ < tight.n_iter_ < 5000
    assert np.abs(tight.coef_ - exact.coef_).max() < np.abs(loose.coef_ - exact.coef_).max()


def test_patience_counts_epochs_without_progress():
    X, y = well_conditioned()
    X = X * np.linspace(1.0, 6.0, X.shape[1])
    short = LinearRegressor(solver="gd", momentum=0.0, tol=1e-4, n_iter_no_change=1).fit(X, y)
    long = LinearRegressor(solver="gd", momentum=0.0, tol=1e-4, n_iter_no_change=20).fit(X, y)
    # Plain full-batch descent makes steadily less progress: once it falls below
    # tol it stays there, so waiting k epochs adds k − 1 epochs.
    assert long.n_iter_ == short.n_iter_ + 19


def test_hitting_max_iter_warns():
    X, y = well_conditioned()
    X = X * np.linspace(1.0, 6.0, X.shape[1])
    with pytest.warns(ConvergenceWarning, match="max_iter=5"):
        model = LinearRegressor(solver="gd", max_iter=5).fit(X, y)
    assert model.n_iter_ == 5


def test_mini_batches_stop_when_the_loss_stalls():
    X, y = well_conditioned(n_samples=2000, noise=20.0)
    model = LinearRegressor(batch_size=64, random_state=0).fit(X, y)
    assert model.n_iter_ < model.max_iter
    exact = LinearRegression().fit(X, y)
    # Constant-step SGD hovers around the optimum: close, not exact.
    assert model.score(X, y) > exact.score(X, y) - 0.01


def test_mini_batch_shuffling_follows_random_state():
    X, y = well_conditioned()
    a = LinearRegressor(batch_size=16, tol=None, max_iter=3, random_state=1).fit(X, y)
    b = LinearRegressor(batch_size=16, tol=None, max_iter=3, random_state=1).fit(X, y)
    c = LinearRegressor(batch_size=16, tol=None, max_iter=3, random_state=2).fit(X, y)
    assert_allclose(a.coef_, b.coef_, rtol=0, atol=0)
    assert not np.allclose(a.coef_, c.coef_, rtol=0, atol=1e-12)


# ----------------------------------------------------------------------
# partial_fit
# ----------------------------------------------------------------------
def test_partial_fit_streams_to_the_least_squares_solution():
    X, y = well_conditioned(n_samples=600, noise=0.5)
    exact = LinearRegression().fit(X, y)
    model = LinearRegressor()
    for _ in range(20):
        for chunk in np.array_split(np.arange(len(X)), 6):
            model.partial_fit(X[chunk], y[chunk])
    assert model.n_iter_ == 120 and len(model.loss_curve_) == 120
    assert model.loss_curve_[-1] < 1e-3 * model.loss_curve_[0]
    # Each call is one step on a different batch: close to the optimum, not on it.
    assert_allclose(model.coef_, exact.coef_, rtol=0, atol=0.05)
    assert model.score(X, y) > exact.score(X, y) - 1e-4


def test_partial_fit_is_fastlin_sgd_with_momentum_kept_between_calls():
    X, y = well_conditioned(n_samples=50, n_features=3)
    model = LinearRegressor(momentum=0.8, nesterov=False)
    model.partial_fit(X, y).partial_fit(X, y)
    # The same two steps done by hand: the intercept is the weight of a
    # column of ones, and one optimiser carries its momentum across them.
    layer = fastlin.Linear(4, 1, bias=False, init="zeros", dtype=np.float64)
    opt = fastlin.SGD(model.lr_, momentum=0.8)
    A = np.column_stack([X, np.ones(len(X))])
    layer.fit(A, y, epochs=1, opt=opt)
    layer.fit(A, y, epochs=1, opt=opt)
    W = layer.weight[0]
    assert_allclose(model.coef_, W[:3], rtol=1e-12)
    assert_allclose(model.intercept_, W[3], rtol=1e-12)


def test_partial_fit_continues_from_fit():
    X, y = well_conditioned()
    model = LinearRegressor().fit(X, y)
    coef, n_iter = model.coef_.copy(), model.n_iter_
    model.partial_fit(X, y)
    assert model.n_iter_ == n_iter + 1
    assert_allclose(model.coef_, coef, rtol=0, atol=1e-3)  # already at the optimum


def test_partial_fit_divergence_keeps_the_previous_coefficients():
    X, y = well_conditioned(n_samples=64)
    model = LinearRegressor(batch_size=8, random_state=0).partial_fit(X, y)  # lr="auto" fixed here
    coef, intercept = model.coef_.copy(), model.intercept_
    # A batch 1e80 times larger in scale: its first mini-batch step succeeds,
    # a later one overflows.
    with pytest.raises(fastlin.DivergenceError):
        model.partial_fit(1e80 * X, y)
    assert_allclose(model.coef_, coef, rtol=0, atol=0)
    assert model.intercept_ == intercept and model.n_iter_ == 1
    # The next call continues from those coefficients, not from the
    # half-done epoch's weights.
    model.partial_fit(X, y)
    assert np.abs(model.coef_ - coef).max() < 0.5 * np.abs(coef).max()
    assert model.n_iter_ == 2


def test_partial_fit_checks_features_and_targets():
    X, y = well_conditioned(n_samples=30, n_targets=2)
    model = LinearRegressor().partial_fit(X, y)
    with pytest.raises(ValueError, match="features"):
        model.partial_fit(X[:, :-1], y)
    with pytest.raises(ValueError, match="targets"):
        model.partial_fit(X, y[:, 0:1].repeat(3, axis=1))


@pytest.mark.parametrize(
    "params",
    [
        {"momentum": 0.5, "nesterov": False},
        {"solver": "adam", "learning_rate": "invscaling"},
        {"learning_rate": "cosine", "max_iter": 3},
    ],
)
def test_pickled_estimator_predicts_the_same_and_keeps_training(params):
    X, y = well_conditioned(n_samples=40)
    model = LinearRegressor(**params).partial_fit(X, y)
    copy = pickle.loads(pickle.dumps(model))
    restarted = pickle.loads(pickle.dumps(model))
    del restarted._live  # what a fresh optimiser state (the pre-#13 pickle) would do
    assert_allclose(copy.predict(X), model.predict(X), rtol=0, atol=0)
    for est in (model, copy, restarted):
        est.partial_fit(X, y)
    # The optimiser's state (momentum or Adam's moments, the schedule's
    # position) travels with the pickle: the copy takes the same next step.
    assert copy.n_iter_ == 2
    assert_allclose(copy.coef_, model.coef_, rtol=0, atol=0)
    assert copy.lr_curve_ == model.lr_curve_
    assert not np.allclose(restarted.coef_, model.coef_, rtol=1e-6, atol=0)


# ----------------------------------------------------------------------
# in scikit-learn's machinery
# ----------------------------------------------------------------------
def test_pipeline_with_standard_scaler_on_diabetes():
    X, y = load_diabetes(return_X_y=True)
    ours = make_pipeline(StandardScaler(), LinearRegressor()).fit(X, y)
    exact = make_pipeline(StandardScaler(), LinearRegression()).fit(X, y)
    assert_allclose(ours[-1].coef_, exact[-1].coef_, rtol=0, atol=1e-4 * np.abs(exact[-1].coef_).max())
    assert ours.score(X, y) == pytest.approx(exact.score(X, y), abs=1e-8)


def test_grid_search_picks_the_useful_weight_decay():
    rng = np.random.default_rng(5)
    X = rng.normal(size=(120, 5))
    y = X @ [3.0, -2.0, 1.0, 0.5, 4.0] + rng.normal(scale=0.1, size=120)
    search = GridSearchCV(LinearRegressor(), {"weight_decay": [0.0, 1.0, 10.0]}, cv=3).fit(X, y)
    # Almost noiseless data: any L2 penalty only biases the fit.
    assert search.best_params_ == {"weight_decay": 0.0}
    scores = search.cv_results_["mean_test_score"]
    assert scores[0] > scores[1] > scores[2]
    assert search.best_estimator_.score(X, y) > 0.99


# ----------------------------------------------------------------------
# solver="adam"
# ----------------------------------------------------------------------
def _rms(a):
    return float(np.sqrt(np.mean(np.square(a))))


@pytest.mark.parametrize("n_targets", [1, 3])
def test_adam_reaches_linear_regression(n_targets):
    # Measured: 1.9e-6 of the largest coefficient after ~250 epochs.
    X, y = well_conditioned(n_targets=n_targets)
    ours = LinearRegressor(solver="adam").fit(X, y)
    exact = LinearRegression().fit(X, y)
    scale = np.abs(exact.coef_).max()
    assert_allclose(ours.coef_, exact.coef_, rtol=0, atol=1e-5 * scale)
    assert_allclose(ours.intercept_, exact.intercept_, rtol=0, atol=1e-5 * scale)
    assert ours.n_iter_ < 500  # stopped by the tolerance, well before max_iter


def test_adam_lr_auto_is_the_documented_ratio():
    X, y = well_conditioned(n_samples=300, n_targets=2)
    Xc, yc = X - X.mean(axis=0), y - y.mean(axis=0)
    full = LinearRegressor(solver="adam", max_iter=2, tol=None).fit(X, y)
    assert full.lr_ == pytest.approx(0.1 * _rms(yc) / _rms(Xc), rel=1e-12)
    # stochastic gradients (mini-batches): 10 times smaller
    mini = LinearRegressor(solver="adam", batch_size=32, max_iter=2, tol=None, random_state=0).fit(X, y)
    assert mini.lr_ == pytest.approx(0.01 * _rms(yc) / _rms(Xc), rel=1e-12)
    # partial_fit: its first batch as it is, with the column of ones
    part = LinearRegressor(solver="adam").partial_fit(X, y)
    assert part.lr_ == pytest.approx(0.01 * _rms(y) / _rms(np.column_stack([X, np.ones(len(X))])), rel=1e-12)
    # no usable scale (y constant): MLPRegressor's 1e-3
    assert LinearRegressor(solver="adam", max_iter=2, tol=None).fit(X, np.full(len(X), 3.0)).lr_ == 1e-3


def test_adam_with_lr_auto_does_not_depend_on_the_units():
    # Adam's update is invariant to the gradient's scale, and lr="auto" scales
    # with y's units over X's: the same path in any units.
    X, y = well_conditioned()
    base = LinearRegressor(solver="adam").fit(X, y)
    y_in_mm = LinearRegressor(solver="adam").fit(X, 1000.0 * y)
    x_in_km = LinearRegressor(solver="adam").fit(X / 50.0, y)
    assert y_in_mm.n_iter_ == x_in_km.n_iter_ == base.n_iter_
    assert_allclose(y_in_mm.coef_, 1000.0 * base.coef_, rtol=1e-8)
    assert_allclose(x_in_km.coef_, 50.0 * base.coef_, rtol=1e-8)


def test_adam_on_standardised_diabetes_and_why_lr_is_not_1e_3():
    X, y = load_diabetes(return_X_y=True)  # condition number ~ 470 after scaling
    X = StandardScaler().fit_transform(X)
    exact = LinearRegression().fit(X, y)
    scale = np.abs(exact.coef_).max()  # ~ 38 (y spreads over ~ 77)
    ours = LinearRegressor(solver="adam").fit(X, y)
    assert ours.n_iter_ < 1000
    assert_allclose(ours.coef_, exact.coef_, rtol=0, atol=1e-4 * scale)  # measured 1.6e-5
    # MLPRegressor's learning_rate_init moves a coefficient by at most about
    # 1e-3 a step: 1000 epochs get nowhere near coefficients of 38.
    with pytest.warns(ConvergenceWarning):
        slow = LinearRegressor(solver="adam", lr=1e-3).fit(X, y)
    assert np.abs(slow.coef_ - exact.coef_).max() > 0.5 * scale


def test_adam_weight_decay_is_ridge():
    # fastlin.Adam adds weight_decay·coef to the gradient (not AdamW's
    # decoupled decay), so it converges to the same Ridge optimum as SGD.
    X, y = well_conditioned()
    w = np.random.default_rng(6).uniform(0.5, 2.0, size=len(X))
    ours = LinearRegressor(solver="adam", weight_decay=0.5).fit(X, y, sample_weight=w)
    ridge = Ridge(alpha=0.5 * w.sum() / 2).fit(X, y, sample_weight=w)
    scale = np.abs(ridge.coef_).max()
    assert_allclose(ours.coef_, ridge.coef_, rtol=0, atol=1e-5 * scale)
    assert_allclose(ours.intercept_, ridge.intercept_, rtol=0, atol=1e-5 * scale)


def test_adam_ignores_momentum_and_sgd_ignores_the_betas():
    X, y = well_conditioned(n_samples=100)
    a = LinearRegressor(solver="adam", momentum=0.0, max_iter=20, tol=None).fit(X, y)
    b = LinearRegressor(solver="adam", momentum=0.5, nesterov=False, max_iter=20, tol=None).fit(X, y)
    assert_allclose(a.coef_, b.coef_, rtol=0, atol=0)
    c = LinearRegressor(solver="sgd", beta_1=0.5, epsilon=1.0, max_iter=20, tol=None).fit(X, y)
    d = LinearRegressor(solver="sgd", max_iter=20, tol=None).fit(X, y)
    assert_allclose(c.coef_, d.coef_, rtol=0, atol=0)
    # and the betas do reach Adam
    e = LinearRegressor(solver="adam", beta_1=0.5, max_iter=20, tol=None).fit(X, y)
    assert not np.allclose(e.coef_, a.coef_, rtol=1e-6, atol=0)


def test_adam_full_batch_is_fastlin_adam_on_the_centred_data():
    X, y = well_conditioned(n_samples=120, n_features=4)
    model = LinearRegressor(solver="adam", beta_1=0.8, beta_2=0.99, epsilon=1e-6, max_iter=30, tol=None).fit(X, y)
    layer = fastlin.Linear(4, 1, bias=False, init="zeros", dtype=np.float64)
    opt = fastlin.Adam(model.lr_, betas=(0.8, 0.99), eps=1e-6)
    layer.fit(X - X.mean(axis=0), y - y.mean(), epochs=30, opt=opt)
    assert_allclose(model.coef_, layer.weight[0], rtol=1e-12)
    assert model.intercept_ == pytest.approx(y.mean() - layer.weight[0] @ X.mean(axis=0), rel=1e-12)


def test_gd_is_a_synonym_of_sgd():
    X, y = well_conditioned(n_samples=200)
    for extra in ({}, {"batch_size": 16, "random_state": 0, "max_iter": 5, "tol": None}):
        gd = LinearRegressor(solver="gd", **extra).fit(X, y)
        sgd = LinearRegressor(solver="sgd", **extra).fit(X, y)
        assert gd.n_iter_ == sgd.n_iter_
        assert_allclose(gd.coef_, sgd.coef_, rtol=0, atol=0)


@pytest.mark.parametrize("solver", ["sgd", "adam"])
def test_mini_batches_stop_when_the_loss_stalls_with_either_solver(solver):
    X, y = well_conditioned(n_samples=2000, noise=20.0)
    model = LinearRegressor(solver=solver, batch_size=64, random_state=0).fit(X, y)
    assert model.n_iter_ < model.max_iter
    exact = LinearRegression().fit(X, y)
    assert model.score(X, y) > exact.score(X, y) - 0.01  # measured 6e-4 (sgd), 2e-4 (adam)


def test_partial_fit_with_adam_streams_to_the_least_squares_solution():
    X, y = well_conditioned(n_samples=600, noise=0.5)
    exact = LinearRegression().fit(X, y)
    model = LinearRegressor(solver="adam")
    for _ in range(50):
        for chunk in np.array_split(np.arange(len(X)), 6):
            model.partial_fit(X[chunk], y[chunk])
    assert model.n_iter_ == 300
    assert_allclose(model.coef_, exact.coef_, rtol=0, atol=0.01)  # measured 2e-3
    assert model.score(X, y) > exact.score(X, y) - 1e-4


# ----------------------------------------------------------------------
# learning_rate: the schedules
# ----------------------------------------------------------------------
def _expected_rate(learning_rate, lr, k, total, power_t=0.25):
    """The rate of 0-based step k (float64 numpy, from the docstring's formulas)."""
    if learning_rate == "invscaling":
        return lr / (k + 1) ** power_t
    if learning_rate == "cosine":
        return lr * (1.0 + math.cos(math.pi * k / total)) / 2.0
    return lr


@pytest.mark.parametrize("solver", ["sgd", "adam"])
@pytest.mark.parametrize("learning_rate", ["constant", "invscaling", "cosine"])
def test_each_learning_rate_shows_in_lr_curve(learning_rate, solver):
    X, y = well_conditioned(n_samples=100, n_features=3)
    # batches of 30: 4 steps an epoch (the last of 10 rows), 6 epochs
    model = LinearRegressor(
        solver=solver, learning_rate=learning_rate, power_t=0.4, batch_size=30, max_iter=6, tol=None, random_state=0
    ).fit(X, y)
    expected = [_expected_rate(learning_rate, model.lr_, 4 * e, 24, power_t=0.4) for e in range(6)]
    assert model.lr_curve_ == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert model.lr_curve_[0] == model.lr_


@pytest.mark.parametrize("solver", ["sgd", "adam"])
@pytest.mark.parametrize("learning_rate", ["invscaling", "cosine"])
def test_learning_rate_reaches_the_optimiser(learning_rate, solver):
    # The full-batch fit is fastlin's optimiser with that schedule on the
    # centred data, step for step.
    X, y = well_conditioned(n_samples=150, n_features=4)
    model = LinearRegressor(solver=solver, learning_rate=learning_rate, power_t=0.5, max_iter=25, tol=None).fit(X, y)
    schedule = schedules.inverse_scaling(0.5) if learning_rate == "invscaling" else schedules.cosine(T_max=25)
    if solver == "adam":
        opt = fastlin.Adam(model.lr_, schedule=schedule)
    else:
        opt = fastlin.SGD(model.lr_, momentum=0.9, nesterov=True, schedule=schedule)
    layer = fastlin.Linear(4, 1, bias=False, init="zeros", dtype=np.float64)
    history = layer.fit(X - X.mean(axis=0), y - y.mean(), epochs=25, opt=opt)
    assert_allclose(model.coef_, layer.weight[0], rtol=1e-12)
    assert_allclose(model.lr_curve_, history.lr, rtol=1e-15)
    constant = LinearRegressor(solver=solver, max_iter=25, tol=None).fit(X, y)
    assert not np.allclose(constant.coef_, model.coef_, rtol=1e-6, atol=0)


@pytest.mark.parametrize("solver", ["sgd", "adam"])
def test_cosine_decay_ends_mini_batch_training_closer_to_the_optimum(solver):
    # A constant step leaves mini-batch training hovering around the optimum;
    # decaying it to zero over max_iter epochs settles it (measured: 6-10x closer).
    X, y = well_conditioned(n_samples=1000, noise=20.0)
    exact = LinearRegression().fit(X, y)
    common = dict(solver=solver, batch_size=32, max_iter=20, tol=None, random_state=0)
    constant = LinearRegressor(**common).fit(X, y)
    cosine = LinearRegressor(learning_rate="cosine", **common).fit(X, y)
    assert cosine.lr_curve_[-1] < 0.02 * cosine.lr_
    error_constant = np.abs(constant.coef_ - exact.coef_).max()
    error_cosine = np.abs(cosine.coef_ - exact.coef_).max()
    assert error_cosine < error_constant / 3


def test_partial_fit_continues_the_schedule_across_calls():
    X, y = well_conditioned(n_samples=50, n_features=3)
    model = LinearRegressor(solver="adam", learning_rate="invscaling", power_t=0.5)
    for _ in range(3):
        model.partial_fit(X, y)
    # The same three steps by hand: one optimiser, whose state holds the
    # schedule's position, across three fits.
    layer = fastlin.Linear(4, 1, bias=False, init="zeros", dtype=np.float64)
    opt = fastlin.Adam(model.lr_, schedule=schedules.inverse_scaling(0.5))
    A = np.column_stack([X, np.ones(len(X))])
    for _ in range(3):
        layer.fit(A, y, epochs=1, opt=opt)
    assert_allclose(model.coef_, layer.weight[0, :3], rtol=1e-12)
    assert model.intercept_ == pytest.approx(layer.weight[0, 3], rel=1e-12)
    assert model.lr_curve_ == pytest.approx([model.lr_ / math.sqrt(k + 1) for k in range(3)], rel=1e-12)


def test_partial_fit_cosine_counts_the_first_calls_steps_per_epoch():
    X, y = well_conditioned(n_samples=50, n_features=3)
    model = LinearRegressor(learning_rate="cosine", batch_size=10, max_iter=3, random_state=0)
    model.partial_fit(X, y)  # 5 steps: T_max = 3 epochs of 5 steps
    model.partial_fit(X[:30], y[:30])  # 3 steps, from step 5
    model.partial_fit(X, y)  # from step 8
    expected = [_expected_rate("cosine", model.lr_, k, 15) for k in (0, 5, 8)]
    assert model.lr_curve_ == pytest.approx(expected, rel=1e-12)
    assert model.n_iter_ == 3


# ----------------------------------------------------------------------
# early stopping: once per epoch, the same rule
# ----------------------------------------------------------------------
def test_early_stopping_runs_each_epoch_in_one_compiled_call(monkeypatch):
    calls = []
    fit_steps = cpu_ops.fit_steps

    def counting(*args, **kwargs):
        calls.append(1)
        return fit_steps(*args, **kwargs)

    monkeypatch.setattr(cpu_ops, "fit_steps", counting)
    X, y = well_conditioned()  # 400 rows in batches of 16: 25 steps an epoch
    model = LinearRegressor(batch_size=16, tol=1e-12, n_iter_no_change=10, max_iter=6, random_state=0)
    with pytest.warns(ConvergenceWarning):
        model.fit(X, y)
    assert model.n_iter_ == 6
    # A per-step callback made 150 calls.  (The first epoch may take two:
    # fit times one step before sizing its calls.)
    assert 6 <= len(calls) <= 7


def test_mini_batch_early_stopping_follows_the_documented_rule():
    # Replay the rule on the loss curve of an unstopped fit (the same shuffles).
    X, y = well_conditioned(n_samples=1000, noise=20.0)
    common = dict(batch_size=50, max_iter=60, random_state=3)
    curve = LinearRegressor(tol=None, **common).fit(X, y).loss_curve_
    tol, patience = 1e-3, 3
    best, bad, stop = math.inf, 0, None
    for epoch, loss in enumerate(curve, start=1):
        bad = bad + 1 if loss >= best - tol * curve[0] else 0
        best = min(best, loss)
        if bad >= patience:
            stop = epoch
            break
    assert stop is not None and stop < 60
    stopped = LinearRegressor(tol=tol, n_iter_no_change=patience, **common).fit(X, y)
    assert stopped.n_iter_ == stop
    assert_allclose(stopped.loss_curve_, curve[:stop], rtol=1e-12)


def test_full_batch_early_stopping_follows_the_documented_rule():
    # Replay the rule on the weights of every step of the same descent.
    X, y = well_conditioned()
    X = X * np.linspace(1.0, 6.0, X.shape[1])
    tol, patience = 1e-6, 5
    stopped = LinearRegressor(solver="sgd", tol=tol, n_iter_no_change=patience).fit(X, y)
    layer = fastlin.Linear(X.shape[1], 1, bias=False, init="zeros", dtype=np.float64)
    weights = [layer.weight[0].copy()]

    def record(step, loss):
        weights.append(layer.weight[0].copy())
        return False

    opt = fastlin.SGD(stopped.lr_, momentum=0.9, nesterov=True)
    layer.fit(X - X.mean(axis=0), y - y.mean(), epochs=stopped.max_iter, opt=opt, callback=record)
    bad, stop = 0, None
    for epoch in range(1, len(weights)):
        W, previous = weights[epoch], weights[epoch - 1]
        bad = bad + 1 if np.abs(W - previous).max() <= tol * np.abs(W).max() else 0
        if bad >= patience:
            stop = epoch
            break
    assert stopped.n_iter_ == stop
    assert_allclose(stopped.coef_, weights[stop], rtol=1e-12)


# ----------------------------------------------------------------------
# the new parameters in scikit-learn's machinery
# ----------------------------------------------------------------------
NEW_PARAMS = {"learning_rate": "constant", "power_t": 0.25, "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-8}


def test_new_parameters_round_trip_get_params_set_params_and_clone():
    assert {k: LinearRegressor().get_params()[k] for k in NEW_PARAMS} == NEW_PARAMS
    changed = {"solver": "adam", "learning_rate": "cosine", "power_t": 0.5, "beta_1": 0.8, "beta_2": 0.99}
    changed["epsilon"] = 1e-6
    model = LinearRegressor().set_params(**changed)
    assert {k: model.get_params()[k] for k in changed} == changed
    X, y = well_conditioned(n_samples=100)
    fitted = clone(model).fit(X, y)
    assert fitted.get_params() == model.get_params()
    again = clone(fitted)
    assert not hasattr(again, "coef_") and again.get_params() == model.get_params()
    # the cloned parameters train the same model, and they matter
    assert_allclose(again.fit(X, y).coef_, fitted.coef_, rtol=0, atol=0)
    default = LinearRegressor(solver="adam").fit(X, y)
    assert not np.allclose(default.coef_, fitted.coef_, rtol=1e-9, atol=0)


def test_grid_search_over_solver_and_learning_rate():
    X, y = well_conditioned(n_samples=150)
    grid = {"solver": ["sgd", "adam"], "learning_rate": ["constant", "invscaling", "cosine"]}
    search = GridSearchCV(LinearRegressor(max_iter=300), grid, cv=3).fit(X, y)
    assert len(search.cv_results_["params"]) == 6
    assert search.best_estimator_.score(X, y) > 0.99
