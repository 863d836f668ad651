"""Property tests (hypothesis): random shapes, scales and hyper-parameters."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import fastlin
from tests.support import naive

# No deadline: the first example of a run compiles kernels.  Derandomised so
# that CI runs the same examples every time.
examples = settings(deadline=None, max_examples=60, derandomize=True)


@st.composite
def problems(draw, max_rows=40):
    n = draw(st.integers(1, max_rows))
    d = draw(st.integers(1, 9))
    o = draw(st.integers(1, 4))
    scale = draw(st.sampled_from([1e-3, 1.0, 1e3]))
    seed = draw(st.integers(0, 2**32 - 1))
    bias = draw(st.booleans())
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)) * scale
    T = rng.standard_normal((n, o)) * scale
    W = rng.standard_normal((o, d)) / np.sqrt(d)
    b = rng.standard_normal(o) if bias else None
    return X, T, W, b


def close(got, ref, rtol=1e-10):
    scale = max(1.0, float(np.max(np.abs(ref)))) if np.size(ref) else 1.0
    np.testing.assert_allclose(got, ref, rtol=rtol, atol=rtol * scale)


@examples
@given(problems())
def test_forward(p):
    X, T, W, b = p
    close(fastlin.Linear.from_weights(W, b)(X), naive.forward(X, W, b))


@examples
@given(problems(), st.sampled_from(["mean", "sum"]))
def test_gradients(p, reduction):
    X, T, W, b = p
    g = fastlin.Linear.from_weights(W, b).gradients(X, T, reduction=reduction)
    loss, dW, db = naive.mse_grad(X, T, W, b, reduction)
    close(g.loss, loss)
    close(g.weight, dW)
    if b is not None:
        close(g.bias, db)


@examples
@given(problems(), st.floats(1e-3, 0.5), st.floats(0.0, 0.99), st.booleans(), st.floats(0.0, 0.1))
def test_step(p, lr, momentum, nesterov, weight_decay):
    X, T, W, b = p
    nesterov = nesterov and momentum > 0
    model = fastlin.Linear.from_weights(W, b)
    opt = fastlin.SGD(lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
    losses = [model.step(X, T, opt) for _ in range(3)]
    ref_loss, ref_W, ref_b = naive.fit(
        X, T, W, b, 3, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay
    )
    close(losses, ref_loss)
    close(model.weight, ref_W)
    if b is not None:
        close(model.bias, ref_b)


@examples
@given(problems(max_rows=60), st.integers(1, 70), st.booleans(), st.integers(0, 2**64 - 1), st.integers(1, 25))
def test_fit(p, batch_size, shuffle, seed, steps):
    X, T, W, b = p
    model = fastlin.Linear.from_weights(W, b)
    hist = model.fit(X, T, steps=steps, lr=1e-3, batch_size=batch_size, shuffle=shuffle, seed=seed)
    ref_loss, ref_W, ref_b = naive.fit(X, T, W, b, steps, lr=1e-3, batch_size=batch_size, shuffle=shuffle, seed=seed)
    close(hist.loss, ref_loss)
    close(model.weight, ref_W)
