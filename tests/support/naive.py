"""Plain float64 numpy references for every fastlin operation.

Written for clarity, not speed: each is the textbook formula, computed in
float64 whatever the input dtype.  The kernels are tested against these.
"""

from __future__ import annotations

import numpy as np

MASK64 = (1 << 64) - 1


def f64(*arrays):
    return [None if a is None else np.asarray(a, dtype=np.float64) for a in arrays]


def forward(X, W, b=None):
    X, W, b = f64(X, W, b)
    Y = X @ W.T
    return Y if b is None else Y + b


def mse(P, T, reduction="mean"):
    P, T = f64(P, T)
    sse = float(np.sum((P - T) ** 2))
    return sse if reduction == "sum" else sse / P.size


def mse_grad(X, T, W, b=None, reduction="mean"):
    """Loss, dL/dW, dL/db of the MSE of X·Wᵀ + b against T."""
    X, T = f64(X, T)
    R = forward(X, W, b) - T
    c = 2.0 if reduction == "sum" else 2.0 / R.size
    loss = float(np.sum(R**2)) / (1.0 if reduction == "sum" else R.size)
    return loss, c * R.T @ X, c * R.sum(axis=0)


def mse_grad_magnitude(X, T, W, b=None, reduction="mean"):
    """``c·|R|ᵀ|X|``: dL/dW's sum with every term made positive (for error bounds)."""
    X, T = f64(X, T)
    R = forward(X, W, b) - T
    c = 2.0 if reduction == "sum" else 2.0 / R.size
    return c * np.abs(R).T @ np.abs(X)


def backward(X, dY, W):
    X, dY, W = f64(X, dY, W)
    return dY @ W, dY.T @ X, dY.sum(axis=0)


def sgd_update(p, g, buf, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
    """torch.optim.SGD for one tensor; ``buf`` None means "first step".

    Returns (new p, new buf).
    """
    g = g + weight_decay * p
    if momentum != 0.0:
        buf = g.copy() if buf is None else momentum * buf + (1.0 - dampening) * g
        g = g + momentum * buf if nesterov else buf
    return p - lr * g, buf


def _hash32(x):
    """lowbias32 (C. Wellons) of a 32-bit value, on Python ints."""
    x &= 0xFFFFFFFF
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    return x ^ (x >> 16)


def epoch_permutation(seed, epoch, n):
    """The documented shuffle: epoch ``epoch`` of a fit seeded ``seed`` visits
    rows ``order[0], order[1], ...`` where ``order[i]`` is ``i`` sent through a
    8-round Feistel network on ``2h`` bits (``h`` the least with ``4**h >= n``)
    and sent through again while it is ``>= n`` (cycle-walking).  Round ``r``
    maps the halves ``(L, R)`` to ``(R, L XOR hash(R XOR key_r))``, the key
    ``key_r`` being the hash chained over ``0x9E3779B9 XOR r``, the 32-bit halves
    of seed and epoch (low first) and ``r · 0x85EBCA6B``.
    """
    seed &= MASK64
    epoch &= MASK64
    words = [seed & 0xFFFFFFFF, seed >> 32, epoch & 0xFFFFFFFF, epoch >> 32]
    keys = []
    for r in range(8):
        key = 0x9E3779B9 ^ r
        for w in [*words, (r * 0x85EBCA6B) & 0xFFFFFFFF]:
            key = _hash32(key ^ w)
        keys.append(key)
    h = 0
    while 4**h < n:
        h += 1
    half = (1 << h) - 1

    def network(x):
        left, right = x >> h, x & half
        for key in keys:
            left, right = right, (left ^ _hash32(right ^ key)) & half
        return (left << h) | right

    order = []
    for i in range(n):
        x = network(i)
        while x >= n:
            x = network(x)
        order.append(x)
    return np.array(order, dtype=np.int64)


def fit(
    X,
    T,
    W,
    b,
    steps,
    *,
    lr,
    momentum=0.0,
    dampening=0.0,
    weight_decay=0.0,
    nesterov=False,
    batch_size=None,
    shuffle=False,
    seed=0,
    reduction="mean",
):
    """Mini-batch SGD exactly as fastlin documents it, in float64.

    Returns (losses, W, b) with b None for a layer without bias.
    """
    X, T, W, b = f64(X, T, W, b)
    T = T.reshape(len(X), -1)
    n = len(X)
    batch = n if batch_size is None else min(batch_size, n)
    shuffle = shuffle and batch < n
    bufW = bufb = None
    losses = []
    epoch, pos, order = 0, 0, np.arange(n)
    for _ in range(steps):
        if pos == 0 and shuffle:
            order = epoch_permutation(seed, epoch, n)
        rows = order[pos : pos + batch]
        loss, dW, db = mse_grad(X[rows], T[rows], W, b, reduction)
        losses.append(loss)
        W, bufW = sgd_update(W, dW, bufW, lr, momentum, dampening, weight_decay, nesterov)
        if b is not None:
            b, bufb = sgd_update(b, db, bufb, lr, momentum, dampening, weight_decay, nesterov)
        pos += len(rows)
        if pos >= n:
            pos, epoch = 0, epoch + 1
    return np.array(losses), W, b
