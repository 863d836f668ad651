"""The float64 solve behind :meth:`Linear.solve`, :func:`fastlin.dask.solve`
and ``LinearRegressor(solver="normal")``.

The inputs are the shifted Gram sums of one pass over the data
(:class:`fastlin.backends.cpu_gram.GramSums`: ``x' = x − x_ref``,
``t' = t − t_ref``).  Everything here is small dense linear algebra on
(D + 1)² numbers; nothing reads X again.

The problem
    For each output, with θ the parameters in the shifted coordinates (the
    intercept ``c = W·r + b − s`` for ``x' = x − r``, ``t' = t − s``)::

        minimise  θᵀHθ − 2θᵀg + μ·‖φ‖²,     θ = K·φ + k

    ``H`` the Gram matrix of the shifted design ``[x', 1]``, ``g`` its
    product with the targets, and φ the parameters in the user's coordinates
    (the penalised norm; ``K``, ``k`` the exact change of coordinates).  With
    ``μ = 0`` and several minimisers we return the one with the smallest
    ``‖φ‖`` (the limit of ``μ → 0``).

How it is solved
    ``H`` is scaled to unit diagonal (so that columns of very different
    scales do not decide the rank) and factored, ``H = RᵀR``: by Cholesky
    when every squared pivot is above ``PIVOT_MIN`` (condition number below
    about 1e9), else by an eigendecomposition that drops the eigenvalues
    below ``EIG_RCOND`` times the largest.  The problem is then the small
    least-squares problem ``‖R·(K·φ + k) − q‖² + μ‖φ‖²``, solved by QR.  When
    H is singular, the parameter directions that K maps into its null space
    (collinear or constant columns, too few rows) are removed exactly first,
    which gives the minimum-norm answer; an SVD (``lstsq``) takes what is
    still rank-deficient.  ``H`` itself
    is well conditioned even when the data has large offsets, and the
    change of coordinates ``K`` (where the offsets live) never meets a
    squared matrix.

Threads
    Systems of up to ``SERIAL_SOLVE_MAX`` unknowns are solved on one BLAS
    thread, so the answer does not depend on BLAS's thread count.

Where it stops
    Normal equations square the condition number of the data: singular
    values of the (scaled) design more than about 1e6 times smaller than the
    largest are treated as zero.  Exactly collinear and constant columns are
    handled exactly; data that is merely that ill-conditioned gets the
    truncated (minimum-norm) answer, where an SVD of X would resolve more.
"""

from __future__ import annotations

import contextlib

import numpy as np

from . import _validate

# Cholesky's answer is trusted when every squared pivot of the unit-diagonal
# matrix is above this (the condition number is then below about 1e9).
PIVOT_MIN = 1e-9
# Eigenvalues of the unit-diagonal matrix below EIG_RCOND × the largest are
# taken as zero: the float64 sums carry about 16 digits, and a few are lost
# to rounding over many rows.
EIG_RCOND = 1e-12
# A parameter direction is a null direction of the data term when it maps
# into the null space of the sums to within this (relative, unit columns).
NULL_RCOND = 1e-10
# Systems up to this size (D + 1) are factored and solved on one BLAS thread:
# at these sizes a second thread saves little, and on a machine whose other
# core is busy OpenBLAS's waiting threads made a 201 × 201 solve 4× slower
# (measured: 18 ms against 4.4 ms, median, 2-core VM under load).  It also
# makes the solution's bits independent of the BLAS thread count.
SERIAL_SOLVE_MAX = 1024


def _blas_for(n):
    """The context the dense solve of an ``n`` × ``n`` system runs in."""
    if n > SERIAL_SOLVE_MAX:
        return contextlib.nullcontext()
    from .backends import cpu_ops

    return cpu_ops._BLAS


def check_sample_weight(sample_weight, n_rows, single=False):
    """sample_weight -> float64 (n_rows,) array, or None; raises naming it.

    Real, finite, non-negative and not all zero; shape (n_rows,) (a single
    sample also takes a scalar).
    """
    if sample_weight is None:
        return None
    if hasattr(sample_weight, "copy_to_host"):
        sample_weight = sample_weight.copy_to_host()
    w = np.asarray(sample_weight)
    _validate.check_dtype_kind(w.dtype, "sample_weight")
    if single and w.ndim == 0:
        w = w.reshape(1)
    if w.shape != (n_rows,):
        raise ValueError(f"sample_weight must have shape ({n_rows},), one weight per row of X, got shape {w.shape}")
    w = np.array(w, dtype=np.float64, order="C", copy=True)
    if not np.isfinite(w).all():
        raise ValueError("sample_weight contains NaN or Inf")
    if (w < 0).any():
        raise ValueError("sample_weight must be non-negative")
    if not w.any():
        raise ValueError("every sample weight is zero; at least one row needs a positive weight")
    return w


def factor(H, G):
    """``(R, q, null)`` with ``H ≈ RᵀR`` and ``Rᵀq ≈ G``, so that
    ``θᵀHθ − 2θᵀG = ‖Rθ − q‖² − const``.

    H (P, P) symmetric positive semi-definite and G (P, O), float64.  H is
    scaled to unit diagonal; Cholesky when every squared pivot is above
    ``PIVOT_MIN`` (R is then (P, P)), else an eigendecomposition without the
    eigenvalues below ``EIG_RCOND`` times the largest (R is (k, P), k the
    numerical rank).  ``null`` (P, P − k) spans H's numerical null space
    (no columns after Cholesky).
    """
    n = H.shape[0]
    diag = np.diagonal(H).copy()
    good = np.isfinite(diag) & (diag > 0.0)
    d = np.where(good, 1.0 / np.sqrt(np.where(good, diag, 1.0)), 1.0)
    Hs = H * d[:, None] * d[None, :]
    Hs = 0.5 * (Hs + Hs.T)
    Gs = G * d[:, None]
    if good.all():
        try:
            c = np.linalg.cholesky(Hs)
        except np.linalg.LinAlgError:
            c = None
        if c is not None and np.min(np.diagonal(c)) ** 2 > PIVOT_MIN:
            # Hs = c·cᵀ, so H = RᵀR with R = cᵀ·diag(1/d); c·q = Gs.
            return c.T / d[None, :], _triangular(c, Gs, lower=True), np.zeros((n, 0))
    lam, V = np.linalg.eigh(Hs)
    top = float(lam[-1]) if n else 0.0
    keep = lam > EIG_RCOND * top if top > 0.0 else np.zeros(n, dtype=bool)
    root = np.sqrt(lam[keep])
    Vk = V[:, keep]
    # Hs·v = 0  <=>  H·(D·v) = 0
    return (root[:, None] * Vk.T) / d[None, :], (Vk.T @ Gs) / root[:, None], d[:, None] * V[:, ~keep]


def _triangular(R, Q, lower):
    """``R⁻¹·Q`` for a triangular R (float64; substitution, in one thread)."""
    from .backends import cpu_gram

    Q = np.ascontiguousarray(Q, dtype=np.float64)
    out = np.empty_like(Q)
    cpu_gram.solve_triangular(np.ascontiguousarray(R, dtype=np.float64), Q, lower, out)
    return out


def _is_upper(R):
    """Whether R is square and upper triangular (Cholesky's factor is)."""
    return R.shape[0] == R.shape[1] and not np.tril(R, -1).any()


def _null_directions(K, null):
    """Orthonormal basis of ``{φ : K·φ ∈ span(null)}``: the parameter
    directions that change nothing in the data term.

    The null space of ``[K, −null]``, each column scaled to unit norm first
    (K's columns carry the offsets, null's are arbitrary), with singular
    values below ``NULL_RCOND`` × the largest taken as zero; then the φ part,
    orthonormalised.
    """
    n = K.shape[1]
    M = np.hstack([K, -null])
    scale = np.linalg.norm(M, axis=0)
    scale[scale == 0.0] = 1.0
    _, sv, Vt = np.linalg.svd(M / scale, full_matrices=True)
    rank = int(np.sum(sv > NULL_RCOND * sv[0])) if sv.size and sv[0] > 0 else 0
    phi = (Vt[rank:].T / scale[:, None])[:n]
    if not phi.shape[1]:
        return phi
    U, s2, _ = np.linalg.svd(phi, full_matrices=False)
    return U[:, s2 > NULL_RCOND * s2[0]] if s2[0] > 0 else U[:, :0]


def least_squares(R, q, null, K, k, mu):
    """``argmin_φ ‖R·(K·φ + k) − q‖² + μ‖φ‖²``, and among several minimisers
    (μ = 0, singular data) the one with the smallest ``‖φ‖``.

    R (r, P), q (r, O), null (P, m) from :func:`factor`; K (P, n) of full
    column rank and k (P, O), the change to the user's coordinates.  The
    directions that :func:`_null_directions` finds are removed exactly (the
    minimiser has no component along them), and the rest is solved by QR,
    or by an SVD (``numpy.linalg.lstsq``) when that is still rank-deficient.
    Neither forms BᵀB, so the conditioning of ``B = R·K`` is not squared.
    """
    B = R @ K
    y = q - R @ k
    n = B.shape[1]
    C = None
    if null.shape[1]:
        Z = _null_directions(K, null)
        if Z.shape[1]:
            Qf = np.linalg.qr(Z, mode="complete")[0]
            C = Qf[:, Z.shape[1] :]  # the orthogonal complement of the null directions
            B = B @ C
            n = B.shape[1]
    if mu > 0.0:
        B = np.vstack([B, np.sqrt(mu) * np.eye(n)])
        y = np.vstack([y, np.zeros((n, y.shape[1]))])
    u = None
    if B.shape[0] >= n:
        Q, Rr = np.linalg.qr(B)
        piv = np.abs(np.diagonal(Rr))
        if piv.size and piv.min() > 1e-13 * piv.max() * max(B.shape):
            u = np.linalg.solve(Rr, Q.T @ y)
    if u is None:
        u = np.linalg.lstsq(B, y, rcond=None)[0]
    return u if C is None else C @ u


def design(sums):
    """``H`` (D+1, D+1) and ``g`` (D+1, O) of the shifted design ``[x', 1]``."""
    n_in = sums.xx.shape[0]
    H = np.empty((n_in + 1, n_in + 1))
    H[:n_in, :n_in] = sums.xx
    H[:n_in, n_in] = H[n_in, :n_in] = sums.sx
    H[n_in, n_in] = sums.sw
    g = np.vstack([sums.xt, sums.st[None, :]])
    return H, g


def layer_solution(sums, has_bias, weight_decay):
    """Float64 ``(W (O, D), b (O,) or None)`` minimising the layer's mean loss
    plus ``weight_decay/2 · (‖W‖² + ‖b‖²)`` (see :meth:`fastlin.Linear.solve`).

    The data term is ``‖Rθ − q‖²`` in the shifted coordinates θ = (W, c),
    ``c = W·r + b − s`` (R from :func:`factor`).  In the user's coordinates
    φ = (W, b), θ = K·φ + k with K = [[I, 0], [rᵀ, 1]] and k = (0, −s), so
    the problem is ``‖R·K·φ − (q − R·k)‖² + μ‖φ‖²``, solved by
    :func:`least_squares` without squaring the conditioning that a large
    offset r brings.
    """
    n_in, n_out = sums.xt.shape
    r, s = sums.x_ref, sums.t_ref
    H, g = design(sums)
    mu = weight_decay * n_out * sums.sw / 2.0
    # Without bias b = 0, so c = W·r − s: K keeps its first D columns.
    K = np.eye(n_in + 1)
    K[n_in, :n_in] = r
    if not has_bias:
        K = K[:, :n_in]
    k = np.zeros((n_in + 1, n_out))
    k[n_in] = -s
    with _blas_for(n_in + 1):
        R, q, null = factor(H, g)
        phi = least_squares(R, q, null, K, k, mu)
    W = phi[:n_in].T.copy()
    return W, (phi[n_in].copy() if has_bias else None)


def layer_loss(sums, W, b):
    """Mean loss ``Σ w·‖x·Wᵀ + b − t‖² / (O·Σw)`` of parameters (W, b) from the
    sums (float64; absolute error about 1e-16 × the spread of T squared)."""
    return layer_sse(sums, W, b) / (sums.xt.shape[1] * sums.sw)


def layer_sse(sums, W, b):
    """``Σ w·‖x·Wᵀ + b − t‖²`` from the sums, clipped at 0."""
    n_out = sums.xt.shape[1]
    W = np.asarray(W, dtype=np.float64)
    b = np.zeros(n_out) if b is None else np.asarray(b, dtype=np.float64)
    H, g = design(sums)
    theta = np.vstack([W.T, (W @ sums.x_ref + b - sums.t_ref)[None, :]])
    q = sums.tt - 2.0 * np.einsum("po,po->o", theta, g) + np.einsum("po,po->o", theta, H @ theta)
    return max(float(q.sum()), 0.0)


def centred(sums):
    """Centred sums: ``(Σ w(x−x̄)(x−x̄)ᵀ, Σ w(x−x̄)(t−t̄)ᵀ, Σ w(t−t̄)², x̄, t̄)``."""
    sw = sums.sw
    mx, mt = sums.sx / sw, sums.st / sw
    xx = sums.xx - np.outer(sums.sx, mx)
    xx = 0.5 * (xx + xx.T)
    xt = sums.xt - np.outer(sums.sx, mt)
    tt = sums.tt - sums.st * mt
    return xx, xt, tt, sums.x_ref + mx, sums.t_ref + mt


def ridge_solution(sums, alpha, fit_intercept):
    """scikit-learn's convention: ``argmin Σ w‖x·Wᵀ + b − t‖² + alpha‖W‖²``
    with the intercept unpenalised (minimum ‖W‖ when alpha = 0 and the
    solution is not unique).  Returns float64 ``(W (O, D), b (O,), sse)``
    where ``sse`` is the weighted sum of squared residuals at the solution."""
    n_in, n_out = sums.xt.shape
    with _blas_for(n_in + 1):
        if fit_intercept:
            xx, xt, _, mx, mt = centred(sums)
            R, q, null = factor(xx, xt)
            if alpha == 0.0 and not null.shape[1] and _is_upper(R):
                # Cholesky succeeded and nothing is penalised: R·W = q is the
                # whole problem (least_squares would take a QR of R first).
                W = _triangular(R, q, lower=False).T
            else:
                W = least_squares(R, q, null, np.eye(n_in), np.zeros((n_in, n_out)), alpha).T
            b = mt - W @ mx
        else:
            # W·x − t = W·x' − t' + (W·r − s): the shifted design with c = W·r − s.
            H, g = design(sums)
            R, q, null = factor(H, g)
            K = np.eye(n_in + 1)[:, :n_in]
            K[n_in] = sums.x_ref
            k = np.zeros((n_in + 1, n_out))
            k[n_in] = -sums.t_ref
            W = least_squares(R, q, null, K, k, alpha).T
            b = np.zeros(n_out)
    sse = layer_sse(sums, W, b)
    return W, b, sse


def shift_sums(sums, x_ref, t_ref):
    """The same sums about another reference row (exact up to float64 rounding).

    With ``δ = sums.x_ref − x_ref`` and ``ε = sums.t_ref − t_ref`` the shifted
    values gain ``δ`` and ``ε``, so ``Σ w(x'+δ)(x'+δ)ᵀ = xx + δ·sxᵀ + sx·δᵀ
    + sw·δδᵀ`` and so on.  Used to add the sums of chunks that were each
    shifted by their own first row.
    """
    dx = sums.x_ref - x_ref
    dt = sums.t_ref - t_ref
    sw = sums.sw
    return sums._replace(
        xx=sums.xx + np.outer(dx, sums.sx) + np.outer(sums.sx, dx) + sw * np.outer(dx, dx),
        xt=sums.xt + np.outer(dx, sums.st) + np.outer(sums.sx, dt) + sw * np.outer(dx, dt),
        sx=sums.sx + sw * dx,
        st=sums.st + sw * dt,
        tt=sums.tt + 2.0 * dt * sums.st + sw * dt * dt,
        x_ref=np.array(x_ref, dtype=np.float64),
        t_ref=np.array(t_ref, dtype=np.float64),
    )


def add_sums(parts):
    """Sums of consecutive row blocks -> the sums of all of them, about the
    first block's reference row, added in the order given."""
    first = parts[0]
    xx, xt, sx, st, tt = (a.copy() for a in (first.xx, first.xt, first.sx, first.st, first.tt))
    sw, n_rows = first.sw, first.n_rows
    for part in parts[1:]:
        part = shift_sums(part, first.x_ref, first.t_ref)
        xx += part.xx
        xt += part.xt
        sx += part.sx
        st += part.st
        tt += part.tt
        sw += part.sw
        n_rows += part.n_rows
    return first._replace(xx=xx, xt=xt, sx=sx, st=st, tt=tt, sw=sw, n_rows=n_rows)


def sums_finite(sums):
    return all(np.isfinite(a).all() for a in (sums.xx, sums.xt, sums.sx, sums.st, sums.tt))
