"""CUDA models through the public API, where only CUDA has something to vary
or to refuse: every launch plan gives the CPU's results, ``device="auto"``
never picks the simulator, and a missing GPU is a DeviceError.

What every device must do alike (forward, gradients, step, fit, errors,
divergence, moves, files, pickle) is tested once, over both devices, in
test_conformance.py; this file adds the launch plans that the ``path``
(row tiles or TS×TS tiles) and ``launches`` (one launch, or one per step)
fixtures of conftest.py force.
"""

from __future__ import annotations

import numpy as np
import pytest

import fastlin
from fastlin import _dispatch
from tests.support import cuda_ref as ref
from tests.support.cuda_ref import f64, to_host
from tests.support.helpers import make_data

DTYPES = [np.float32, np.float64]


def rtol(dtype):
    return 2e-5 if np.dtype(dtype) == np.float32 else 1e-11


def pair(W, b):
    """The same layer on the GPU and on the CPU."""
    return fastlin.Linear.from_weights(W, b, device="cuda"), fastlin.Linear.from_weights(W, b)


def test_auto_never_picks_the_simulator(simulated):
    if not simulated:
        pytest.skip("checks the simulator case; on a GPU device='auto' may pick CUDA")
    assert fastlin.Linear(300, 300, device="auto").device == "cpu"


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_kernel_path_gives_the_cpu_results(path, dtype, bias):
    """forward, loss, gradients, backward and two Nesterov steps, on row
    tiles and on TS×TS tiles."""
    X, T, W, b = make_data(19, 6, 3, dtype)
    gpu, cpu = pair(W, b if bias else None)
    r = rtol(dtype)
    np.testing.assert_allclose(to_host(gpu(X)), cpu(X), rtol=r, atol=r)
    np.testing.assert_allclose(to_host(gpu(X[3])), cpu(X[3]), rtol=r, atol=r)
    for reduction in ("mean", "sum"):
        assert gpu.loss(X, T, reduction=reduction) == pytest.approx(cpu.loss(X, T, reduction=reduction), rel=r)
    g, c = gpu.gradients(X, T), cpu.gradients(X, T)
    assert g.loss == pytest.approx(c.loss, rel=r)
    np.testing.assert_allclose(to_host(g.weight), c.weight, rtol=r, atol=r)
    assert (g.bias is None) == (not bias)
    if bias:
        np.testing.assert_allclose(to_host(g.bias), c.bias, rtol=r, atol=r)
    for got, want in zip(gpu.backward(X, T), cpu.backward(X, T)):
        assert (got is None) == (want is None)
        if want is not None:
            np.testing.assert_allclose(to_host(got), want, rtol=r, atol=r)
    opt_g, opt_c = fastlin.SGD(0.1, momentum=0.9, nesterov=True), fastlin.SGD(0.1, momentum=0.9, nesterov=True)
    for _ in range(2):
        assert gpu.step(X, T, opt_g) == pytest.approx(cpu.step(X, T, opt_c), rel=r)
    np.testing.assert_allclose(gpu.numpy()[0], cpu.weight, rtol=10 * r, atol=10 * r)


FITS = {
    "full batch": dict(steps=12, lr=0.05),
    "shuffled mini-batches": dict(steps=11, lr=0.05, batch_size=5, seed=7),
    "epochs, sum, momentum": dict(epochs=2, batch_size=6, shuffle=False, reduction="sum"),
}


@pytest.mark.parametrize("case", list(FITS))
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_launch_plan_fits_as_the_cpu(path, launches, dtype, case):
    X, T, W, b = make_data(17, 4, 2, dtype)
    kwargs = FITS[case]
    momentum = "lr" not in kwargs
    opts = [fastlin.SGD(0.01, momentum=0.9, weight_decay=0.01) if momentum else None for _ in range(2)]
    gpu, cpu = pair(W, b)
    hg = gpu.fit(X, T, opt=opts[0], **kwargs)
    hc = cpu.fit(X, T, opt=opts[1], **kwargs)
    steps = kwargs.get("steps") or 2 * 3
    ref_losses, ref_W, ref_b = ref.fit(
        X,
        T,
        W,
        b,
        steps,
        lr=0.01 if momentum else kwargs["lr"],
        momentum=0.9 if momentum else 0.0,
        weight_decay=0.01 if momentum else 0.0,
        batch_size=kwargs.get("batch_size"),
        shuffle=kwargs.get("shuffle", True),
        seed=kwargs.get("seed", 0),
        reduction=kwargs.get("reduction", "mean"),
    )
    assert hg.loss.shape == hc.loss.shape == (steps,)
    tol = 1e-4 if dtype == np.float32 else 1e-10
    for losses, W_want, b_want in ((hc.loss, cpu.weight, cpu.bias), (ref_losses, ref_W, ref_b)):  # CPU, float64 maths
        np.testing.assert_allclose(hg.loss, losses, rtol=tol)
        np.testing.assert_allclose(f64(gpu.numpy()[0]), W_want, rtol=tol, atol=tol)
        np.testing.assert_allclose(f64(gpu.numpy()[1]), b_want, rtol=tol, atol=tol)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_divergence_on_every_launch_plan_stops_where_the_cpu_does(launches):
    """lr far too large, in one launch or one launch per step: the same
    failing step as on the CPU and the last finite weights kept.  (The
    warning filters matter in the simulator only: numpy warns where the GPU
    silently makes Inf/NaN.)"""
    X, T, W, b = make_data(8, 3, 2, np.float32)
    X *= 100
    gpu, cpu = pair(W, b)
    with pytest.raises(fastlin.DivergenceError) as eg:
        gpu.fit(X, T, steps=60, lr=10.0)
    with pytest.raises(fastlin.DivergenceError) as ec:
        cpu.fit(X, T, steps=60, lr=10.0)
    assert eg.value.step == ec.value.step
    assert len(eg.value.history.loss) == eg.value.step - 1
    assert np.isfinite(gpu.numpy()[0]).all()
    np.testing.assert_allclose(gpu.numpy()[0], cpu.weight, rtol=1e-3)


def test_cuda_without_a_gpu_is_a_device_error(monkeypatch):
    monkeypatch.setattr(_dispatch, "cuda_unavailable_reason", lambda: "no NVIDIA driver found")
    with pytest.raises(fastlin.DeviceError, match="no NVIDIA driver found"):
        fastlin.Linear(3, 2, device="cuda")
    assert issubclass(fastlin.DeviceError, RuntimeError)
