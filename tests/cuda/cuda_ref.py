"""Plain float64 numpy references for the CUDA tests (independent of both
backends' kernels), and small helpers."""

from __future__ import annotations

import numpy as np

MASK64 = (1 << 64) - 1


def to_host(a):
    """A device array (numba, simulator) or numpy array -> numpy."""
    return a.copy_to_host() if hasattr(a, "copy_to_host") else np.asarray(a)


def f64(a):
    return np.asarray(to_host(a), dtype=np.float64)


def forward(X, W, b):
    return f64(X) @ f64(W).T + f64(b)


def sse(P, T):
    return float(((f64(P) - f64(T)) ** 2).sum())


def gradients(X, T, W, b, reduction="mean"):
    """(loss, dW, db) of the MSE loss, ``c = 2/(N·O)`` or 2."""
    R = forward(X, W, b) - f64(T)
    n, o = R.shape
    c = 2.0 if reduction == "sum" else 2.0 / (n * o)
    loss = float((R**2).sum()) if reduction == "sum" else float((R**2).mean())
    return loss, c * R.T @ f64(X), c * R.sum(axis=0)


def backward(X, dY, W):
    dY = f64(dY)
    return dY @ f64(W), dY.T @ f64(X), dY.sum(axis=0)


def sgd(p, g, buf, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
    """torch.optim.SGD on float64 arrays; ``buf`` None on the first step.
    Returns (new p, new buf)."""
    g = g + weight_decay * p
    if momentum:
        buf = g.copy() if buf is None else momentum * buf + (1.0 - dampening) * g
        g = g + momentum * buf if nesterov else buf
    return p - lr * g, buf


def _splitmix64(x):
    x = (x + 0x9E3779B97F4A7C15) & MASK64
    z = x
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return x, z ^ (z >> 31)


def epoch_permutation(seed, epoch, n):
    """The documented shuffle order (SplitMix64-driven Fisher-Yates), in
    Python integers."""
    perm = list(range(n))
    x = (seed & MASK64) ^ ((epoch * 0xD1B54A32D192ED03) & MASK64)
    for i in range(n - 1, 0, -1):
        x, z = _splitmix64(x)
        j = z % (i + 1)
        perm[i], perm[j] = perm[j], perm[i]
    return np.array(perm, dtype=np.int64)


def fit(X, T, W, b, steps, lr, *, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False,
        batch_size=None, shuffle=True, seed=0, reduction="mean", bias=True):
    """``Linear.fit`` in float64 numpy: returns (losses, W, b)."""
    X, T, W, b = f64(X), f64(T), f64(W).copy(), f64(b).copy()
    n = X.shape[0]
    batch = n if batch_size is None else min(batch_size, n)
    shuffle = shuffle and batch < n
    bufW = bufb = None
    pos, epoch, losses = 0, 0, []
    perm = None
    for _ in range(steps):
        if shuffle and pos == 0:
            perm = epoch_permutation(seed, epoch, n)
        k = min(batch, n - pos)
        rows = perm[pos : pos + k] if shuffle else np.arange(pos, pos + k)
        loss, gW, gb = gradients(X[rows], T[rows], W, b, reduction)
        losses.append(loss)
        kw = dict(momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov)
        W, bufW = sgd(W, gW, bufW, lr, **kw)
        if bias:
            b, bufb = sgd(b, gb, bufb, lr, **kw)
        pos += k
        if pos >= n:
            pos, epoch = 0, epoch + 1
    return np.array(losses), W, b


def tol(dtype):
    """(rtol, atol) for comparing a result of ``dtype`` data with float64 maths."""
    return (2e-5, 1e-6) if np.dtype(dtype) == np.float32 else (1e-12, 1e-13)


def assert_close(actual, expected, dtype, scale=1.0):
    rtol, atol = tol(dtype)
    np.testing.assert_allclose(f64(actual), f64(expected), rtol=rtol * scale, atol=atol * scale)
