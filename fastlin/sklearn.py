"""A scikit-learn estimator trained by fastlin's kernels (extra ``sklearn``).

>>> from fastlin.sklearn import LinearRegressor            # doctest: +SKIP
>>> model = LinearRegressor().fit(X, y)                    # doctest: +SKIP
>>> model.coef_, model.intercept_, model.score(X, y)       # doctest: +SKIP

Importing :mod:`fastlin` never imports scikit-learn; importing this module
does, and says how to install it when it is missing.

How a fit maps onto fastlin
---------------------------
With ``solver="normal"`` (and ``"auto"`` on full-batch data with at most
2048 features, the default case) ``fit`` is exact: one pass of fastlin's
Gram kernel over X forms the float64 sums ``Σ w·xxᵀ``, ``Σ w·xyᵀ``,
``Σ w·x``, ``Σ w·y`` (shifted by the first row, so that large offsets lose
no digits), and a small float64 solve on the centred sums gives the
coefficients of ``Ridge(alpha=weight_decay·n_targets·Σw/2)`` (of
``LinearRegression`` without ``weight_decay``, minimum-norm when the data is
rank-deficient); the intercept is ``ȳ − coef·x̄``, unpenalised.

Otherwise (``solver="sgd"`` or ``"adam"``, mini-batches, ``partial_fit``)
training runs :meth:`fastlin.Linear.fit` on a bias-free layer that starts at
zero, with a :class:`fastlin.SGD` or :class:`fastlin.Adam` optimiser (and the
:mod:`fastlin.schedules` schedule that ``learning_rate`` names):

* ``fit`` centres X and y (by their weighted means) when ``fit_intercept``,
  trains the coefficients on the centred data and recovers the intercept as
  ``ȳ − coef·x̄``, as :class:`sklearn.linear_model.LinearRegression` and
  ``Ridge`` do.  Centring takes the intercept out of the optimisation, which
  makes full-batch gradient descent far better conditioned, and keeps the
  intercept out of ``weight_decay``.
* ``partial_fit`` cannot centre data it has not seen, so it appends a column
  of ones to X and learns the intercept as that column's weight; like
  ``torch.optim.SGD``, ``weight_decay`` then applies to it too.
* ``sample_weight`` is exact, not approximate: with ``w'`` the weights scaled
  to mean 1, the rows ``√w'·x`` and targets ``√w'·y`` give the mean loss
  ``Σ wᵢ rᵢ² / Σ wᵢ``, so weighting a row by an integer k is the same as
  repeating it k times (full batch).
* Starting from zero, full-batch gradient descent stays in the span of the
  data's rows and so converges (without ``weight_decay``) to the
  minimum-norm least-squares solution: the one ``LinearRegression``
  returns, even when there are more features than samples.  (Adam's
  per-coordinate scaling leaves that span, so this holds for "sgd" only.)
* Early stopping is an ``epoch_callback`` of :meth:`fastlin.Linear.fit`:
  the steps of an epoch run in one compiled call, and the stopping rule
  runs once per epoch.
"""

from __future__ import annotations

import functools
import math
import numbers
import warnings

import numpy as np

try:
    import sklearn  # noqa: F401  (the check that it is installed at all)
    from sklearn.base import BaseEstimator, MultiOutputMixin, RegressorMixin
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.utils import check_random_state
    from sklearn.utils.validation import assert_all_finite, check_array, check_is_fitted, validate_data
except ImportError as exc:  # scikit-learn missing, or older than 1.6 (no validate_data)
    raise ImportError(
        "fastlin.sklearn needs scikit-learn >= 1.6; install it with: pip install 'fastlin[sklearn]'"
    ) from exc

from . import _solve, _validate, schedules
from .backends import cpu_ops
from .layer import Linear
from .optim import SGD, Adam

__all__ = ["LinearRegressor"]


def _keeps_previous_fit_on_failure(fit):
    """Wrap ``fit`` so that a fit that raises (divergence, NaN in X, Ctrl-C)
    leaves the estimator exactly as it was: the previous ``coef_``,
    ``intercept_``, ``n_iter_``, ``loss_curve_``, ``lr_``, ``lr_curve_``,
    ``n_features_in_`` and partial_fit state.  A shallow copy of ``__dict__`` suffices because
    fit replaces its attributes and never changes them in place."""

    @functools.wraps(fit)
    def wrapper(self, *args, **kwargs):
        before = dict(self.__dict__)
        try:
            return fit(self, *args, **kwargs)
        except BaseException:
            self.__dict__.clear()
            self.__dict__.update(before)
            raise

    return wrapper


# solver="auto" takes the exact solve up to this many features (the D × D
# float64 Gram matrix is then at most 32 MiB, its solve well under a second).
AUTO_EXACT_MAX_FEATURES = 2048
# "gd" is the name of "sgd" before Adam came (fastlin 0.1); kept as a synonym.
SOLVERS = ("auto", "normal", "sgd", "gd", "adam")
LEARNING_RATES = ("constant", "invscaling", "cosine")
# lr="auto" for Adam: this fraction of RMS(y)/RMS(X) over the design (see the
# class docstring), and a further ADAM_STOCHASTIC_FACTOR with stochastic
# gradients.  Measured on standardised problems (make_regression, diabetes,
# condition numbers up to ~500): 0.1-0.3 converge in 250-450 full-batch
# epochs to ~1e-5 of LinearRegression; 0.01 may not within max_iter=1000.
ADAM_AUTO_LR = 0.1
ADAM_STOCHASTIC_FACTOR = 0.1
# lr="auto" for Adam on data without a usable scale (constant X or y, or
# squares beyond float64): MLPRegressor's learning_rate_init.
ADAM_FALLBACK_LR = 1e-3


class LinearRegressor(MultiOutputMixin, RegressorMixin, BaseEstimator):
    """Least-squares linear regression by fastlin's kernels: exact, or by SGD.

    Fits ``y ≈ X·coef_ᵀ + intercept_`` by minimising the (weighted) mean
    squared error.  By default (``solver="auto"`` on full-batch data) the
    exact minimiser from one pass over X: the coefficients of
    :class:`~sklearn.linear_model.LinearRegression` (``Ridge`` with
    ``weight_decay``) to float64 rounding.  With ``solver="sgd"``, gradient
    descent with :class:`fastlin.SGD`: full-batch with Nesterov momentum and
    a step size derived from the data (deterministic; on well-conditioned
    data it reaches LinearRegression's coefficients to about 1e-5), or
    mini-batch SGD with ``batch_size``.  With ``solver="adam"``, the same
    with :class:`fastlin.Adam`.  ``learning_rate`` picks a schedule for
    either.

    Parameters
    ----------
    solver : {"auto", "normal", "sgd", "adam", "gd"}, default="auto"
        How ``fit`` finds the coefficients.  ``"normal"``: the exact
        minimiser, from float64 sums ``XᵀX``, ``Xᵀy`` formed in one pass over
        X and a small float64 solve (Cholesky, or an eigendecomposition and
        the minimum-norm answer when the data is rank-deficient), the
        answer of :class:`~sklearn.linear_model.Ridge` /
        :class:`~sklearn.linear_model.LinearRegression`.  The gradient-descent
        parameters (``lr``, ``momentum``, ``max_iter``, ``tol``, ...) are then
        unused, and it runs on the CPU whatever ``device`` says.  ``"sgd"``:
        gradient descent with :class:`fastlin.SGD` (``momentum``,
        ``nesterov``).  ``"adam"``: :class:`fastlin.Adam` (``beta_1``,
        ``beta_2``, ``epsilon``); :class:`~sklearn.neural_network.MLPRegressor`
        names both solvers so.  ``"gd"``: the same as ``"sgd"``, its name
        before Adam was added, kept so that existing code works.  ``"auto"``:
        the exact solve when the full batch is used (``batch_size=None``),
        the device is not ``"cuda"`` and there are at most 2048 features;
        ``"sgd"`` otherwise.  ``partial_fit`` runs ``"adam"`` when asked and
        ``"sgd"`` for every other solver.
    lr : "auto" or float, default="auto"
        Learning rate.  ``"auto"`` derives it from the data: ``1/L``, where
        ``L`` is the smoothness of the mean loss over a batch (for the full
        batch, the largest eigenvalue of its Hessian ``2·XᵀX/(n·n_outputs)``;
        for mini-batches the expected smoothness of
        Gower et al. (2019), which moves towards ``max‖xᵢ‖²`` as the batch
        shrinks), plus ``weight_decay``.  The eigenvalue comes from the
        float64 Gram matrix of the data (one pass over it and
        ``numpy.linalg.eigvalsh``), so it holds for float32 features of any
        finite magnitude.  When the gradients are stochastic
        (mini-batches, and ``partial_fit``, whose calls see different data)
        and momentum is on, it is further multiplied by ``1 − momentum``.

        With ``solver="adam"``, ``"auto"`` is ``0.1·RMS(y)/RMS(X)``: the
        root-mean-square of the (centred, weighted) targets over that of the
        (centred, weighted) features, i.e. the size of a coefficient in y's
        units per unit of X.  Adam divides each gradient by its own running
        RMS, so its first steps move every coefficient by about ``lr``
        whatever the gradient's scale: ``lr`` sets how far Adam travels
        per step, and a smoothness bound (SGD's rule) says nothing about
        it.  On standardised features a coefficient is of the order of y's
        spread (up to 38 on the diabetes data, whose y spreads over 77), and
        a tenth of that converged in 250-450 full-batch epochs to about 1e-5
        of LinearRegression's coefficients (make_regression and diabetes
        data, condition numbers up to ~500); MLPRegressor's
        ``learning_rate_init=1e-3`` moves a coefficient at most about 1 in
        ``max_iter=1000`` steps and stops far short.  With stochastic
        gradients Adam's steps stay about ``lr`` long around the optimum,
        where the noise keeps its moments balanced, so there it is 10 times
        smaller (``0.01·RMS(y)/RMS(X)``; ``partial_fit`` measures its first
        batch as it is, uncentred and with its column of ones).  Data
        without a usable scale (constant X or y) gets 1e-3.

        A number is used as given.  The value used (the schedule's base
        rate) is stored in ``lr_``.
    learning_rate : {"constant", "invscaling", "cosine"}, default="constant"
        How the learning rate moves over the steps of a fit, as in
        :class:`~sklearn.linear_model.SGDRegressor` and MLPRegressor, with
        either solver (MLPRegressor uses it for "sgd" only).  ``"constant"``:
        ``lr`` at every step.  ``"invscaling"``: ``lr / (t + 1) ** power_t``
        at the 0-based step t (:func:`fastlin.schedules.inverse_scaling`).
        fastlin counts optimiser steps, i.e. mini-batches: with
        ``batch_size=1`` this is SGDRegressor's ``eta0 / t ** power_t`` (its
        t counts single-sample updates from 1); with larger batches fastlin's
        t grows ``batch_size`` times slower than scikit-learn's sample
        count, and with the full batch it is the epoch (MLPRegressor
        updates its rate once per epoch, from the samples seen).
        ``"cosine"``: from ``lr`` down to 0 along half a cosine over the
        ``max_iter`` epochs' steps (:func:`fastlin.schedules.cosine` with
        ``T_max = max_iter · steps per epoch``); ``partial_fit`` counts each
        call as one epoch of the first call's number of steps (past
        ``max_iter`` calls the rate climbs back, as torch's
        ``CosineAnnealingLR`` does).  Early stopping may end a fit before a
        schedule's end.  The rate of each
        epoch's first step is kept in ``lr_curve_``.  Checked at fit time:
        other strings (scikit-learn's "optimal", "adaptive") raise
        ValueError.
    power_t : float, default=0.25
        The exponent of ``learning_rate="invscaling"`` (finite; SGDRegressor's
        default, MLPRegressor's is 0.5).
    momentum : float, default=0.9
        Momentum factor (>= 0), as in ``torch.optim.SGD``.  Full-batch
        gradient descent needs about κ epochs to converge on data whose
        Hessian has condition number κ; with momentum about √κ.  (Like
        :class:`~sklearn.neural_network.MLPRegressor`, the defaults are
        Nesterov momentum 0.9.)
    nesterov : bool, default=True
        Nesterov momentum; used only when ``momentum > 0``.  ``momentum`` and
        ``nesterov`` are for ``solver="sgd"``; Adam ignores them.
    beta_1, beta_2 : float, default=0.9, 0.999
        Adam's decay rates of its first and second moment estimates, each in
        [0, 1) (MLPRegressor's names; ``betas`` of :class:`fastlin.Adam`).
        Used with ``solver="adam"`` only.
    epsilon : float, default=1e-8
        Added to Adam's denominator (>= 0, finite; ``eps`` of
        :class:`fastlin.Adam`).  Used with ``solver="adam"`` only.
    weight_decay : float, default=0.0
        L2 penalty (>= 0) added to the gradient as ``weight_decay·coef``, so
        the objective is the mean squared error (over samples and targets)
        plus ``weight_decay/2·‖coef‖²``: for one target, the optimum of
        ``Ridge(alpha=weight_decay·n_samples/2)``.  ``fit`` does not
        penalise the intercept; ``partial_fit`` does (see Notes).  The same
        with ``solver="adam"``: :class:`fastlin.Adam` adds the L2 term to
        the gradient as ``torch.optim.Adam`` does, so the point it converges
        to is the same Ridge optimum (AdamW's decoupled decay would not be).
    fit_intercept : bool, default=True
        Learn an intercept.  Without it the data is used as it is.
    max_iter : int, default=1000
        Maximum number of epochs (passes over the data).  With the full batch
        an epoch is one gradient step.
    batch_size : int or None, default=None
        Rows per mini-batch; None trains on the full batch (deterministic).
    shuffle : bool, default=True
        Visit the mini-batches in a new random order every epoch (ignored for
        the full batch).
    tol : float or None, default=1e-6
        Tolerance of the stopping rule: training stops once
        ``n_iter_no_change`` epochs in a row made progress of at most
        ``tol``.  With the full batch, progress is the largest change of a
        coefficient in the epoch relative to the largest coefficient (the
        rule of scikit-learn's SAG solver; it also suits momentum, whose loss
        oscillates).  With mini-batches, whose weights never settle at a
        constant step, it is how far the epoch's mean loss fell below the
        best so far, relative to the first epoch's loss.  None trains for
        exactly ``max_iter`` epochs.  Reaching ``max_iter`` first emits a
        :class:`~sklearn.exceptions.ConvergenceWarning`.
    n_iter_no_change : int, default=5
        Epochs without progress to wait before stopping.
    device : {"cpu", "cuda", "auto"}, default="cpu"
        Where training runs (see :class:`fastlin.Linear`).  Predictions are
        computed on the CPU.
    random_state : int, RandomState instance or None, default=None
        Seeds the mini-batch shuffling.  The full batch uses no randomness.

    Attributes
    ----------
    coef_ : ndarray of shape (n_features,) or (n_targets, n_features)
        Coefficients; 1-D when ``y`` was 1-D.  float32 when X was float32,
        else float64.
    intercept_ : float or ndarray of shape (n_targets,)
        Intercept (0.0 without ``fit_intercept``); a scalar when ``y`` was
        1-D.
    n_iter_ : int
        Number of epochs run (summed over ``partial_fit`` calls); 1 after
        the exact solve (its one pass over the data).
    loss_curve_ : list of float
        Mean training loss of every epoch: the (weighted) MSE, averaged over
        the targets and over the epoch's batches, each measured before its
        update.  After the exact solve, one entry: the training loss at the
        solution (computed from the Gram sums).
    lr_ : float or None
        The learning rate used by the last ``fit`` or ``partial_fit`` call
        (the base rate, before ``learning_rate``'s schedule); None after the
        exact solve, which uses none.
    lr_curve_ : list of float
        The learning rate of the first step of every epoch, as the schedule
        moved it (from :attr:`fastlin.History.lr`); one entry per entry of
        ``loss_curve_``, summed over ``partial_fit`` calls.  Empty after the
        exact solve.
    n_features_in_ : int
        Number of features seen during ``fit``.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Names of the features, when X had string column names.

    See Also
    --------
    fastlin.Linear : the layer this estimator trains.
    sklearn.linear_model.LinearRegression : the exact least-squares solution.
    sklearn.linear_model.SGDRegressor : scikit-learn's stochastic regressor.

    Notes
    -----
    ``fit`` centres the data and trains the coefficients only, so its
    intercept is never penalised.  ``partial_fit`` learns the intercept as
    the weight of an extra column of ones, so ``weight_decay`` shrinks it as
    ``torch.optim.SGD`` would.  With ``lr="auto"``, ``partial_fit`` derives the
    learning rate from its first batch and keeps it; pass a number when later
    batches may be much larger in scale.  Between ``partial_fit`` calls the
    optimiser's state carries on: the momentum buffers or Adam's moments,
    and the schedule's position (its step count): successive calls
    continue one run of the optimiser.  A pickled or copied estimator
    keeps that state when it trains on the CPU (``device="cpu"``); on
    another device it resumes with a fresh state (the schedule from its
    start).  Changing a hyper-parameter between calls also starts a fresh
    state; ``fit`` always does.

    The exact solve works from the normal equations, which square the
    condition number of the data: singular values of the centred, column-
    scaled X more than about 1e6 times below the largest are treated as
    zero (exactly collinear and constant columns are then handled as
    ``LinearRegression`` handles them, minimum norm), where an SVD of X
    would still resolve them.  Its cost grows as n_samples·n_features², and
    it keeps a (n_features + 1)² float64 matrix per chunk of rows.

    Examples
    --------
    >>> import numpy as np
    >>> from fastlin.sklearn import LinearRegressor
    >>> X = np.random.default_rng(0).normal(size=(200, 3))
    >>> y = X @ [1.5, -2.0, 0.5] + 3.0
    >>> model = LinearRegressor().fit(X, y)
    >>> np.round(model.coef_, 4), round(model.intercept_, 4)
    (array([ 1.5, -2. ,  0.5]), 3.0)
    """

    def __init__(
        self,
        *,
        solver="auto",
        lr="auto",
        learning_rate="constant",
        power_t=0.25,
        momentum=0.9,
        nesterov=True,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-8,
        weight_decay=0.0,
        fit_intercept=True,
        max_iter=1000,
        batch_size=None,
        shuffle=True,
        tol=1e-6,
        n_iter_no_change=5,
        device="cpu",
        random_state=None,
    ):
        self.solver = solver
        self.lr = lr
        self.learning_rate = learning_rate
        self.power_t = power_t
        self.momentum = momentum
        self.nesterov = nesterov
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.weight_decay = weight_decay
        self.fit_intercept = fit_intercept
        self.max_iter = max_iter
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.tol = tol
        self.n_iter_no_change = n_iter_no_change
        self.device = device
        self.random_state = random_state

    # ------------------------------------------------------------------
    # scikit-learn protocol
    # ------------------------------------------------------------------
    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = False  # the kernels take dense arrays
        return tags

    def __getstate__(self):
        # partial_fit's live layer and optimiser pickle together (the
        # optimiser keeps its state for the layer pickled beside it), so a
        # copy resumes with the same momentum or moments and schedule
        # position.  A layer on a GPU would fail to unpickle on a machine
        # without one: that state is dropped and rebuilt fresh from coef_
        # and intercept_ when needed.
        state = super().__getstate__()
        live = state.get("_live")
        if live is not None and live[0].device != "cpu":
            del state["_live"]
        return state

    # ------------------------------------------------------------------
    # training
    # ------------------------------------------------------------------
    @_keeps_previous_fit_on_failure
    def fit(self, X, y, sample_weight=None):
        """Fit the model on the (weighted) mean squared error: by the exact
        solve or by gradient descent, as ``solver`` says.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training data; float32 stays float32, anything else numeric
            becomes float64.  Dense only.
        y : array-like of shape (n_samples,) or (n_samples, n_targets)
            Targets, cast to X's float dtype.
        sample_weight : array-like of shape (n_samples,), optional
            Non-negative weights, not all zero.  An integer weight k is the
            same as repeating the row k times.

        Returns
        -------
        self : LinearRegressor
            The fitted estimator.

        Raises
        ------
        fastlin.DivergenceError
            Training diverged (only with a numeric ``lr`` that is too large).
            After any failed fit the estimator keeps its previous fit (or
            stays unfitted) exactly.
        """
        hyper = self._check_params()
        # X's NaN/Inf check is left to the solver: the exact solve notices
        # them in its sums, which saves a pass over X (see _fit_exact).
        X, y = validate_data(
            self,
            X,
            y,
            dtype=[np.float64, np.float32],
            multi_output=True,
            y_numeric=True,
            reset=True,
            ensure_all_finite=False,
        )
        Y, y_1d = _as_2d_targets(y, X.dtype)
        weights = _check_weights(sample_weight, X)
        for name in _FITTED_STATE:
            self.__dict__.pop(name, None)
        if self._uses_exact_solve(X.shape[1], hyper):
            return self._fit_exact(X, Y, y_1d, weights, hyper)
        assert_all_finite(X, input_name="X", estimator_name=type(self).__name__)
        # Made first so that an unusable device fails before any work is done.
        layer = Linear(X.shape[1], Y.shape[1], bias=False, init="zeros", dtype=X.dtype, device=self.device)

        A, T, x_offset, y_offset = _fit_design(X, Y, weights, self.fit_intercept)
        batch = A.shape[0] if self.batch_size is None else min(self.batch_size, A.shape[0])
        per_epoch = -(-A.shape[0] // batch)
        lr = self._learning_rate(A, T, batch, hyper, stochastic=batch < A.shape[0])
        seed = int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))
        opt = _optimizer(lr, hyper, self._schedule(hyper, per_epoch))
        stopper = (
            None
            if self.tol is None
            else _EarlyStopping(self.tol, self.n_iter_no_change, layer, full_batch=batch == A.shape[0])
        )
        # epoch_callback, not callback: the steps of an epoch stay in one
        # compiled call (a per-step callback made each step its own call).
        history = layer.fit(
            A,
            T,
            epochs=self.max_iter,
            opt=opt,
            batch_size=batch,
            shuffle=self.shuffle,
            seed=seed,
            epoch_callback=stopper,
        )
        curve = _epoch_means(history.loss, A.shape[0], batch)
        if stopper is not None and not history.stopped_early:
            warnings.warn(
                f"LinearRegressor did not converge within max_iter={self.max_iter} epochs "
                f"(progress still above tol={self.tol}); increase max_iter, "
                "standardise the features (StandardScaler) or raise tol.",
                ConvergenceWarning,
                stacklevel=2,
            )

        W, _ = layer.numpy()
        intercept = y_offset - W @ x_offset if self.fit_intercept else np.zeros(W.shape[0], dtype=W.dtype)
        self._set_coefficients(W, intercept, y_1d)
        self.n_iter_ = len(curve)
        self.loss_curve_ = curve
        self.lr_ = lr
        self.lr_curve_ = _epoch_firsts(history.lr, per_epoch, len(curve))
        return self

    def partial_fit(self, X, y, sample_weight=None):
        """Run one epoch of SGD (or Adam) on (X, y), continuing from the current state.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,) or (n_samples, n_targets)
            The number of targets must stay the same across calls.
        sample_weight : array-like of shape (n_samples,), optional
            Non-negative weights, not all zero; scaled to mean 1 within the
            call.

        Returns
        -------
        self : LinearRegressor

        Raises
        ------
        fastlin.DivergenceError
            The step diverged (a numeric ``lr`` too large, or ``lr="auto"``
            fixed on a first batch much smaller in scale than this one).  The
            coefficients of the previous call are kept.
        """
        hyper = self._check_params()
        first = not hasattr(self, "coef_")
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32], multi_output=True, y_numeric=True, reset=first)
        Y, y_1d = _as_2d_targets(y, X.dtype)
        if not first and Y.shape[1] != self._n_targets():
            raise ValueError(f"y has {Y.shape[1]} targets but the model was fitted with {self._n_targets()}")
        weights = _check_weights(sample_weight, X)

        A, T = _partial_design(X, Y, weights, self.fit_intercept)
        batch = A.shape[0] if self.batch_size is None else min(self.batch_size, A.shape[0])
        per_epoch = -(-A.shape[0] // batch)
        if not isinstance(self.lr, str):
            lr = float(self.lr)
        else:  # "auto": derived from the first batch, then kept (per solver)
            auto = getattr(self, "_partial_lr", None)
            if not isinstance(auto, dict):  # None, or SGD's rate kept by an older fastlin
                auto = {} if auto is None else {"sgd": auto}
            if hyper["solver"] not in auto:
                auto = {**auto, hyper["solver"]: self._learning_rate(A, T, batch, hyper, stochastic=True)}
                self._partial_lr = auto
            lr = auto[hyper["solver"]]
        if getattr(self, "_rng", None) is None:
            self._rng = check_random_state(self.random_state)
        seed = int(self._rng.randint(np.iinfo(np.int32).max))
        # The schedule's length in steps is fixed by the first call, so that
        # a later call of another size keeps the same schedule (and state).
        if getattr(self, "_partial_epoch_steps", None) is None:
            self._partial_epoch_steps = per_epoch
        schedule = self._schedule(hyper, self._partial_epoch_steps)

        layer, opt = self._live_state(A.shape[1], T.shape[1], X.dtype, lr, hyper, schedule)
        try:
            history = layer.fit(A, T, epochs=1, opt=opt, batch_size=batch, shuffle=self.shuffle, seed=seed)
        except BaseException:
            # The layer may hold some of this call's steps: start the next
            # call again from coef_ and intercept_, which are unchanged.
            del self._live
            raise

        W, _ = layer.numpy()
        if self.fit_intercept:
            W, intercept = W[:, :-1], W[:, -1]
        else:
            intercept = np.zeros(W.shape[0], dtype=W.dtype)
        self._set_coefficients(W, intercept, y_1d if first else self._y_1d)
        self.n_iter_ = getattr(self, "n_iter_", 0) + 1
        epochs = _epoch_means(history.loss, A.shape[0], batch)
        self.loss_curve_ = getattr(self, "loss_curve_", []) + epochs
        self.lr_ = lr
        self.lr_curve_ = getattr(self, "lr_curve_", []) + _epoch_firsts(history.lr, per_epoch, len(epochs))
        return self

    # ------------------------------------------------------------------
    # prediction
    # ------------------------------------------------------------------
    def predict(self, X):
        """Predict with the fitted linear model, ``X·coef_ᵀ + intercept_``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        y_pred : ndarray of shape (n_samples,) or (n_samples, n_targets)
            1-D when the model was fitted on 1-D y.  float32 when both X and
            the coefficients are float32, else float64.
        """
        check_is_fitted(self)
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        dtype = np.result_type(X.dtype, self.coef_.dtype)
        W = np.atleast_2d(self.coef_).astype(dtype, copy=False)
        Y = Linear.from_weights(W, self._intercept_vector(dtype)).forward(X)
        return Y[:, 0] if self._y_1d else Y

    # score() comes from RegressorMixin: the R² of predict(X) against y.

    # ------------------------------------------------------------------
    # helpers
    # ------------------------------------------------------------------
    def _check_params(self):
        """Validate the hyper-parameters (at fit time, as scikit-learn asks).

        Every one is checked whatever the solver (as MLPRegressor does), so
        a bad value never waits for the solver that uses it.  Returns the
        checked values the training code reads.
        """
        if not isinstance(self.solver, str) or self.solver not in SOLVERS:
            raise ValueError(
                f"solver must be 'auto', 'normal', 'sgd' or 'adam' ('gd' is a synonym of 'sgd'), got {self.solver!r}"
            )
        if not isinstance(self.learning_rate, str) or self.learning_rate not in LEARNING_RATES:
            raise ValueError(f"learning_rate must be 'constant', 'invscaling' or 'cosine', got {self.learning_rate!r}")
        power_t = _validate.check_real(self.power_t, "power_t")
        betas = []
        for name in ("beta_1", "beta_2"):
            beta = _validate.check_real(getattr(self, name), name, minimum=0.0)
            if not beta < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {beta}")
            betas.append(beta)
        epsilon = _validate.check_real(self.epsilon, "epsilon", minimum=0.0)
        if not (isinstance(self.lr, str) and self.lr == "auto"):
            if isinstance(self.lr, str):
                raise ValueError(f"lr must be 'auto' or a positive number, got {self.lr!r}")
            _validate.check_real(self.lr, "lr", minimum=0.0, strict=True)
        # SGD checks momentum, weight_decay and nesterov exactly as torch does
        # (nesterov is ignored without momentum, as MLPRegressor ignores it).
        nesterov = _validate.check_bool(self.nesterov, "nesterov")
        sgd = SGD(1.0, momentum=self.momentum, weight_decay=self.weight_decay)
        sgd.nesterov = nesterov and sgd.momentum > 0.0
        _validate.check_bool(self.fit_intercept, "fit_intercept")
        _validate.check_bool(self.shuffle, "shuffle")
        _validate.check_int(self.max_iter, "max_iter", 1)
        _validate.check_int(self.batch_size, "batch_size", 1, allow_none=True)
        _validate.check_int(self.n_iter_no_change, "n_iter_no_change", 1)
        if self.tol is not None:
            _validate.check_real(self.tol, "tol", minimum=0.0)
        if not isinstance(self.device, str) or self.device not in ("cpu", "cuda", "auto"):
            raise ValueError(f"device must be 'cpu', 'cuda' or 'auto', got {self.device!r}")
        return {
            # the optimiser that gradient descent runs ("auto" and "normal"
            # reach it only through partial_fit, or "auto" on mini-batches)
            "solver": "adam" if self.solver == "adam" else "sgd",
            "momentum": sgd.momentum,
            "weight_decay": sgd.weight_decay,
            "nesterov": sgd.nesterov,
            "betas": tuple(betas),
            "eps": epsilon,
            "power_t": power_t,
        }

    def _uses_exact_solve(self, n_features, hyper):
        """solver="normal", or "auto" with the full batch, on the CPU, and at
        most AUTO_EXACT_MAX_FEATURES features."""
        if self.solver == "normal":
            return True
        return (
            self.solver == "auto"
            and self.batch_size is None
            and self.device != "cuda"
            and n_features <= AUTO_EXACT_MAX_FEATURES
        )

    def _fit_exact(self, X, Y, y_1d, weights, hyper):
        """The exact minimiser from one Gram pass over X (see Notes)."""
        X = np.ascontiguousarray(X)
        sums = cpu_ops.gram_sums(X, Y, weights)
        if not all(np.isfinite(a).all() for a in (sums.xx, sums.xt, sums.sx, sums.st, sums.tt)):
            # NaN/Inf in X (y was checked by validate_data): scikit-learn's error
            assert_all_finite(X, input_name="X", estimator_name=type(self).__name__)
            raise ValueError(
                "the sums of squares of X and y overflow float64 (values beyond about 1e150); "
                "scale X and y (e.g. StandardScaler) or use solver='gd'"
            )
        n_targets = Y.shape[1]
        alpha = hyper["weight_decay"] * n_targets * sums.sw / 2.0
        W, intercept, sse = _solve.ridge_solution(sums, alpha, self.fit_intercept)
        if not (np.isfinite(W).all() and np.isfinite(intercept).all()):
            raise ValueError("the least-squares solution is not finite; scale X and y (e.g. StandardScaler)")
        W = W.astype(X.dtype)
        intercept = intercept.astype(X.dtype)
        self._set_coefficients(W, intercept, y_1d)
        self.n_iter_ = 1
        self.loss_curve_ = [sse / (n_targets * sums.sw)]
        self.lr_ = None
        self.lr_curve_ = []
        return self

    def _schedule(self, hyper, steps_per_epoch):
        """The :mod:`fastlin.schedules` schedule that ``learning_rate`` names
        (None for "constant": the optimiser's fast path, no schedule)."""
        if self.learning_rate == "invscaling":
            return schedules.inverse_scaling(power_t=hyper["power_t"])
        if self.learning_rate == "cosine":
            return schedules.cosine(T_max=self.max_iter * steps_per_epoch)
        return None

    def _learning_rate(self, A, T, batch, hyper, stochastic):
        """``lr`` as given, or derived from the design (A, T) as the class
        docstring says: 1/L for SGD, a fraction of RMS(T)/RMS(A) for Adam."""
        if not isinstance(self.lr, str):
            return float(self.lr)
        if hyper["solver"] == "adam":
            return _adam_learning_rate(A, T, stochastic)
        n_targets = T.shape[1]
        n = A.shape[0]
        smooth_full = 2.0 * _largest_eigenvalue(A) / (n * n_targets)
        if batch < n:
            # float64 row norms: float32 squares of features near 1e19 overflow
            smooth_max = 2.0 * float(np.einsum("ij,ij->i", A, A, dtype=np.float64).max()) / n_targets
            smooth = (n * (batch - 1) * smooth_full + (n - batch) * smooth_max) / (batch * (n - 1))
        else:
            smooth = smooth_full
        smooth += hyper["weight_decay"]
        if not smooth > 0.0:  # X is constant (or a single row): the gradient is zero anyway
            return 1.0
        lr = 1.0 / smooth
        if stochastic and hyper["momentum"] > 0.0:
            lr *= 1.0 - min(hyper["momentum"], 0.99)
        return lr

    def _live_state(self, n_inputs, n_targets, dtype, lr, hyper, schedule):
        """partial_fit's layer and optimiser, kept between calls (with the
        optimiser's state: momentum or moments, and the schedule's position)
        while the shapes, the dtype and the hyper-parameters stay the same."""
        key = (
            n_inputs,
            n_targets,
            np.dtype(dtype),
            self.device,
            lr,
            hyper["solver"],
            hyper["momentum"],
            hyper["weight_decay"],
            hyper["nesterov"],
            hyper["betas"],
            hyper["eps"],
            schedule,
        )
        live = getattr(self, "_live", None)
        if live is not None and live[2] == key:
            return live[0], live[1]
        if hasattr(self, "coef_"):
            W = np.atleast_2d(self.coef_).astype(dtype)
            if self.fit_intercept:
                W = np.column_stack([W, self._intercept_vector(dtype)])
        else:
            W = np.zeros((n_targets, n_inputs), dtype=dtype)
        layer = Linear.from_weights(W, None, device=self.device)
        opt = _optimizer(lr, hyper, schedule)
        self._live = (layer, opt, key)
        return layer, opt

    def _set_coefficients(self, W, intercept, y_1d):
        self._y_1d = y_1d
        if y_1d:
            self.coef_ = W[0].copy()
            self.intercept_ = float(intercept[0]) if self.fit_intercept else 0.0
        else:
            self.coef_ = np.ascontiguousarray(W)
            self.intercept_ = np.asarray(intercept, dtype=W.dtype).copy() if self.fit_intercept else 0.0

    def _intercept_vector(self, dtype):
        """intercept_ as an (n_targets,) array (it is 0.0 without an intercept)."""
        return np.broadcast_to(np.asarray(self.intercept_, dtype=dtype), (self._n_targets(),))

    def _n_targets(self):
        return 1 if self.coef_.ndim == 1 else self.coef_.shape[0]


# What fit computes: dropped at the start of every fit (and restored by
# _keeps_previous_fit_on_failure when it fails).
_FITTED_STATE = (
    "coef_",
    "intercept_",
    "n_iter_",
    "loss_curve_",
    "lr_",
    "lr_curve_",
    "_live",
    "_partial_lr",
    "_partial_epoch_steps",
    "_rng",
)


def _optimizer(lr, hyper, schedule):
    """The fastlin optimiser of the checked hyper-parameters."""
    if hyper["solver"] == "adam":
        return Adam(lr, betas=hyper["betas"], eps=hyper["eps"], weight_decay=hyper["weight_decay"], schedule=schedule)
    return SGD(
        lr,
        momentum=hyper["momentum"],
        weight_decay=hyper["weight_decay"],
        nesterov=hyper["nesterov"],
        schedule=schedule,
    )


def _adam_learning_rate(A, T, stochastic):
    """lr="auto" for Adam: ``ADAM_AUTO_LR · RMS(T) / RMS(A)`` (see the class
    docstring), times ADAM_STOCHASTIC_FACTOR for stochastic gradients.

    Sums of squares in float64 (float32 squares of features near 1e19
    overflow); data whose ratio is not a positive finite number (constant X
    or y, squares beyond float64) gets ADAM_FALLBACK_LR.
    """
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        rms_t = math.sqrt(float(np.einsum("ij,ij->", T, T, dtype=np.float64)) / T.size)
        rms_a = math.sqrt(float(np.einsum("ij,ij->", A, A, dtype=np.float64)) / A.size)
        scale = rms_t / rms_a if rms_a > 0.0 else math.nan
    if not (math.isfinite(scale) and scale > 0.0):
        return ADAM_FALLBACK_LR
    lr = ADAM_AUTO_LR * scale
    if stochastic:
        lr *= ADAM_STOCHASTIC_FACTOR
    return lr


# ----------------------------------------------------------------------
# data preparation
# ----------------------------------------------------------------------
def _as_2d_targets(y, dtype):
    """y -> (C-contiguous (n, n_targets) array of ``dtype``, whether y was 1-D)."""
    y = np.asarray(y)
    y_1d = y.ndim == 1
    return np.ascontiguousarray(y.reshape(-1, 1) if y_1d else y, dtype=dtype), y_1d


def _check_weights(sample_weight, X):
    """sample_weight -> float64 (n,) array of non-negative weights, or None."""
    if sample_weight is None:
        return None
    n = X.shape[0]
    if isinstance(sample_weight, numbers.Number):
        sample_weight = np.full(n, sample_weight, dtype=np.float64)
    w = check_array(
        sample_weight, ensure_2d=False, dtype=np.float64, ensure_non_negative=True, input_name="sample_weight"
    )
    if w.ndim != 1:
        raise ValueError(f"sample_weight must be 1-D with shape ({n},), got shape {w.shape}")
    if w.shape[0] != n:
        raise ValueError(f"sample_weight has {w.shape[0]} entries but X has {n} samples")
    if not w.any():
        raise ValueError("every sample weight is zero; at least one sample needs a positive weight")
    return w


def _row_scales(weights, dtype):
    """√w' for the rows that carry weight, with w' scaled to mean 1 over them.

    Returns ``(kept_rows, scales)``; kept_rows is None when every row stays.
    """
    keep = weights > 0
    w = weights[keep]
    scales = np.sqrt(w * (w.shape[0] / w.sum())).astype(dtype)
    return (None if keep.all() else keep), scales


def _fit_design(X, Y, weights, fit_intercept):
    """The bias-free least-squares problem ``fit`` hands to fastlin.

    Returns ``(A, T, x_offset, y_offset)`` with A (m, n_features) and
    T (m, n_targets), both new C-contiguous arrays of X's dtype, such that
    the mean squared error of ``A·Wᵀ − T`` is the weighted MSE of the
    centred problem.  The offsets are the weighted means (zeros without an
    intercept).
    """
    if weights is None:
        keep, scales = None, None
        x_offset = X.mean(axis=0, dtype=np.float64) if fit_intercept else np.zeros(X.shape[1])
        y_offset = Y.mean(axis=0, dtype=np.float64) if fit_intercept else np.zeros(Y.shape[1])
    else:
        keep, scales = _row_scales(weights, X.dtype)
        if fit_intercept:
            x_offset = np.average(X, axis=0, weights=weights)
            y_offset = np.average(Y, axis=0, weights=weights)
        else:
            x_offset, y_offset = np.zeros(X.shape[1]), np.zeros(Y.shape[1])
    if keep is not None:
        X, Y = X[keep], Y[keep]
    # Centred in float64, then rounded once: an offset rounded to float32
    # first (features near 1e9 have a float32 spacing of 64) would leave the
    # design off-centre.  numpy subtracts in float64 block by block.
    A = np.empty(X.shape, dtype=X.dtype)
    T = np.empty(Y.shape, dtype=Y.dtype)
    np.subtract(X, np.asarray(x_offset, dtype=np.float64), out=A, casting="unsafe")
    np.subtract(Y, np.asarray(y_offset, dtype=np.float64), out=T, casting="unsafe")
    if scales is not None:
        A *= scales[:, None]
        T *= scales[:, None]
    return A, T, x_offset, y_offset


def _partial_design(X, Y, weights, fit_intercept):
    """partial_fit's problem: ``[√w'·X, √w']`` (intercept as the last column's
    weight) and ``√w'·y``, or the data itself without weights and intercept."""
    keep, scales = (None, None) if weights is None else _row_scales(weights, X.dtype)
    if keep is not None:
        X, Y = X[keep], Y[keep]
    if fit_intercept:
        A = np.empty((X.shape[0], X.shape[1] + 1), dtype=X.dtype)
        A[:, :-1] = X
        A[:, -1] = 1.0
    else:
        A = X if scales is None else X.copy()
    T = Y if scales is None else Y.copy()
    if scales is not None:
        A *= scales[:, None]
        T *= scales[:, None]
    return A, T


def _largest_eigenvalue(A):
    """Largest eigenvalue of ``AᵀA``, from its float64 Gram sums (one pass
    over A, the kernel behind the exact solve) and ``numpy.linalg.eigvalsh``.

    Exact to float64 rounding for float32 data of any finite magnitude (a
    float32 norm of features near 1e9 would overflow or lose the answer).
    """
    A = np.ascontiguousarray(A)
    sums = cpu_ops.gram_sums(A, np.zeros((A.shape[0], 1), dtype=A.dtype))
    r = sums.x_ref
    # undo the shift by the first row: AᵀA = Σ (a' + r)(a' + r)ᵀ
    G = sums.xx + np.outer(r, sums.sx) + np.outer(sums.sx, r) + sums.n_rows * np.outer(r, r)
    top = float(np.linalg.eigvalsh(0.5 * (G + G.T))[-1])
    return max(top, 0.0) if math.isfinite(top) else math.inf


def _epoch_means(step_losses, n_rows, batch):
    """Per-step batch losses -> the mean loss of each complete epoch.

    An epoch is ``ceil(n_rows / batch)`` steps, the last of them on the
    remaining rows; each batch's loss is weighted by its row count.
    """
    per_epoch = -(-n_rows // batch)
    sizes = np.full(per_epoch, batch, dtype=np.float64)
    sizes[-1] = n_rows - batch * (per_epoch - 1)
    n_epochs = len(step_losses) // per_epoch
    losses = np.asarray(step_losses[: n_epochs * per_epoch], dtype=np.float64).reshape(n_epochs, per_epoch)
    return (losses @ sizes / n_rows).tolist()


def _epoch_firsts(step_rates, per_epoch, n_epochs):
    """Per-step learning rates (History.lr) -> the rate of each epoch's first step."""
    return np.asarray(step_rates, dtype=np.float64)[: n_epochs * per_epoch : per_epoch].tolist()


class _EarlyStopping:
    """``Linear.fit`` epoch callback that ends training once ``patience``
    epochs in a row made no progress larger than ``tol``.

    Progress of a full-batch epoch (one gradient step) is the largest change
    of a weight relative to the largest weight, scikit-learn's rule for its
    SAG solver.  It also works with momentum, whose loss curve oscillates.
    Mini-batch SGD with a constant step never stops moving its weights, so
    there progress is the drop of the epoch's mean loss (over its rows, as
    ``Linear.fit`` hands it over) below the best so far, relative to the
    first epoch's loss.

    Called once per epoch, so the steps of an epoch run in one compiled call;
    the full-batch rule reads the weights at the epoch's end, where
    ``Linear.fit`` always ends a compiled call when it has an epoch callback.
    """

    def __init__(self, tol, patience, layer, full_batch):
        self.tol, self.patience = tol, patience
        self.layer = layer
        self.previous = layer.numpy()[0] if full_batch else None
        self.first_loss = None
        self.best = math.inf
        self.bad_epochs = 0

    def __call__(self, epoch, epoch_loss):
        if self.previous is not None:
            W = self.layer.numpy()[0]
            stalled = np.abs(W - self.previous).max() <= self.tol * np.abs(W).max()
            self.previous = W
        else:
            if self.first_loss is None:
                self.first_loss = epoch_loss
            stalled = epoch_loss >= self.best - self.tol * self.first_loss
            self.best = min(self.best, epoch_loss)
        self.bad_epochs = self.bad_epochs + 1 if stalled else 0
        return self.bad_epochs >= self.patience
