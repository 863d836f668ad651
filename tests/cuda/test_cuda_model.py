"""CUDA models through the public API: same API and same results as CPU
models (and the float64 reference), parameters on the device, errors and
divergence handled as on the CPU."""

from __future__ import annotations

import cuda_ref as ref
import numpy as np
import pytest
from cuda_ref import f64, to_host

import fastlin
from fastlin import _dispatch

DTYPES = [np.float32, np.float64]


def make(n, d, o, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)).astype(dtype)
    T = rng.standard_normal((n, o)).astype(dtype)
    W = (rng.standard_normal((o, d)) / np.sqrt(d)).astype(dtype)
    b = rng.standard_normal(o).astype(dtype)
    return X, T, W, b


def rtol(dtype):
    return 2e-5 if np.dtype(dtype) == np.float32 else 1e-11


def is_device(a):
    return hasattr(a, "copy_to_host") and not isinstance(a, np.ndarray)


def pair(W, b, bias=True):
    """The same layer on the GPU and on the CPU."""
    return fastlin.Linear.from_weights(W, b if bias else None, device="cuda"), fastlin.Linear.from_weights(
        W, b if bias else None
    )


@pytest.mark.parametrize("dtype", DTYPES)
def test_placement_and_moves(dtype):
    model = fastlin.Linear(5, 3, dtype=dtype, device="cuda", seed=4, init="kaiming_uniform")
    host = fastlin.Linear(5, 3, dtype=dtype, seed=4, init="kaiming_uniform")
    assert model.device == "cuda" and model.dtype == dtype
    assert repr(model).endswith("device='cuda')")
    assert is_device(model.weight) and is_device(model.bias)
    W, b = model.numpy()
    assert isinstance(W, np.ndarray) and W.dtype == dtype
    np.testing.assert_array_equal(W, host.weight)
    np.testing.assert_array_equal(b, host.bias)
    assert model.to("cpu") is model and model.device == "cpu"
    assert isinstance(model.weight, np.ndarray)
    np.testing.assert_array_equal(model.weight, host.weight)
    model.to("cuda")
    assert is_device(model.weight)
    np.testing.assert_array_equal(to_host(model.weight), host.weight)
    # the weight setter writes the device copy
    model.weight = np.ones((3, 5))
    np.testing.assert_array_equal(to_host(model.weight), np.ones((3, 5), dtype=dtype))
    copy = model.copy()
    assert copy.device == "cuda" and copy.weight is not model.weight


def test_from_weights_accepts_device_arrays_and_no_bias():
    _, _, W, b = make(1, 4, 2)
    dev = fastlin.Linear.from_weights(W, b, device="cuda")
    again = fastlin.Linear.from_weights(dev.weight, dev.bias, device="cuda")
    np.testing.assert_array_equal(again.numpy()[0], W)
    nob = fastlin.Linear(4, 2, bias=False, device="cuda")
    assert nob.bias is None and nob.numpy()[1] is None


def test_auto_never_picks_the_simulator(simulated):
    if not simulated:
        pytest.skip("checks the simulator case; on a GPU device='auto' may pick CUDA")
    assert fastlin.Linear(300, 300, device="auto").device == "cpu"


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
def test_api_matches_cpu(path, dtype, bias):
    X, T, W, b = make(19, 6, 3, dtype)
    gpu, cpu = pair(W, b, bias)
    Y = gpu(X)
    assert is_device(Y) and Y.shape == (19, 3)
    np.testing.assert_allclose(to_host(Y), cpu(X), rtol=rtol(dtype), atol=rtol(dtype))
    y1 = gpu(X[3])
    assert y1.shape == (3,)
    np.testing.assert_allclose(to_host(y1), cpu(X[3]), rtol=rtol(dtype), atol=rtol(dtype))
    for reduction in ("mean", "sum"):
        loss = gpu.loss(X, T, reduction=reduction)
        assert type(loss) is float
        assert loss == pytest.approx(cpu.loss(X, T, reduction=reduction), rel=rtol(dtype))
    g, c = gpu.gradients(X, T), cpu.gradients(X, T)
    assert type(g.loss) is float and g.loss == pytest.approx(c.loss, rel=rtol(dtype))
    assert is_device(g.weight)
    np.testing.assert_allclose(to_host(g.weight), c.weight, rtol=rtol(dtype), atol=rtol(dtype))
    if bias:
        np.testing.assert_allclose(to_host(g.bias), c.bias, rtol=rtol(dtype), atol=rtol(dtype))
    else:
        assert g.bias is None
    dX, dW, db = gpu.backward(X, T)
    cX, cW, cb = cpu.backward(X, T)
    np.testing.assert_allclose(to_host(dX), cX, rtol=rtol(dtype), atol=rtol(dtype))
    np.testing.assert_allclose(to_host(dW), cW, rtol=rtol(dtype), atol=rtol(dtype))
    assert (db is None) == (not bias)
    if bias:
        np.testing.assert_allclose(to_host(db), cb, rtol=rtol(dtype), atol=rtol(dtype))
    opt_g, opt_c = fastlin.SGD(0.1, momentum=0.9, nesterov=True), fastlin.SGD(0.1, momentum=0.9, nesterov=True)
    for _ in range(2):
        lg, lc = gpu.step(X, T, opt_g), cpu.step(X, T, opt_c)
        assert type(lg) is float and lg == pytest.approx(lc, rel=rtol(dtype))
    np.testing.assert_allclose(gpu.numpy()[0], cpu.weight, rtol=10 * rtol(dtype), atol=10 * rtol(dtype))


FITS = {
    "full batch": dict(steps=12, lr=0.05),
    "shuffled mini-batches": dict(steps=11, lr=0.05, batch_size=5, seed=7),
    "epochs, sum, momentum": dict(epochs=2, opt=("momentum",), batch_size=6, shuffle=False, reduction="sum"),
}


@pytest.mark.parametrize("case", list(FITS))
@pytest.mark.parametrize("dtype", DTYPES)
def test_fit_matches_cpu_and_reference(path, launches, dtype, case):
    X, T, W, b = make(17, 4, 2, dtype)
    kw = dict(FITS[case])
    ref_kw = dict(
        lr=kw.get("lr"),
        batch_size=kw.get("batch_size"),
        shuffle=kw.get("shuffle", True),
        seed=kw.get("seed", 0),
        reduction=kw.get("reduction", "mean"),
    )
    if "opt" in kw:
        kw.pop("opt")
        opts = [fastlin.SGD(0.01, momentum=0.9, weight_decay=0.01) for _ in range(2)]
        ref_kw.update(lr=0.01, momentum=0.9, weight_decay=0.01)
    else:
        opts = [None, None]
    gpu, cpu = pair(W, b)
    hg = gpu.fit(X, T, opt=opts[0], **kw)
    hc = cpu.fit(X, T, opt=opts[1], **kw)
    steps = kw.get("steps") or 2 * 3
    rlosses, rW, rb = ref.fit(X, T, W, b, steps, **ref_kw)
    assert isinstance(hg.loss, np.ndarray) and hg.loss.shape == (steps,)
    if "seed" in kw:
        assert hg.seed == hc.seed == kw["seed"]
    tol = 1e-4 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(hg.loss, hc.loss, rtol=tol)
    np.testing.assert_allclose(hg.loss, rlosses, rtol=tol)
    np.testing.assert_allclose(gpu.numpy()[0], cpu.weight, rtol=tol, atol=tol)
    np.testing.assert_allclose(f64(gpu.numpy()[0]), rW, rtol=tol, atol=tol)
    np.testing.assert_allclose(f64(gpu.numpy()[1]), rb, rtol=tol, atol=tol)


def test_fit_in_segments_with_a_callback_matches_one_call():
    """A callback makes every step its own call: the device state (epoch,
    position, momentum) must carry over exactly."""
    X, T, W, b = make(13, 3, 2)
    a, b_ = pair(W, b)
    seen = []
    ha = a.fit(X, T, steps=8, lr=0.05, batch_size=4, seed=3, callback=lambda s, loss: seen.append(s) and False)
    hb = b_.fit(X, T, steps=8, lr=0.05, batch_size=4, seed=3)
    assert seen == list(range(1, 9))
    np.testing.assert_allclose(ha.loss, hb.loss, rtol=1e-11)
    np.testing.assert_allclose(a.numpy()[0], b_.weight, rtol=1e-11)


def test_momentum_state_follows_the_model_between_devices():
    X, T, W, b = make(11, 3, 2)
    moved = fastlin.Linear.from_weights(W, b, device="cuda")
    moved.to("cpu")
    om, os_ = fastlin.SGD(0.05, momentum=0.9), fastlin.SGD(0.05, momentum=0.9)
    moved.fit(X, T, steps=3, opt=om)
    stay_cpu = fastlin.Linear.from_weights(W, b)
    stay_cpu.fit(X, T, steps=3, opt=os_)
    moved.to("cuda")
    moved.fit(X, T, steps=3, opt=om)
    stay_cpu.fit(X, T, steps=3, opt=os_)
    np.testing.assert_allclose(moved.numpy()[0], stay_cpu.weight, rtol=1e-11)


@pytest.mark.parametrize("dtype", DTYPES)
def test_mse_loss_and_sgd_apply_on_device_arrays(cops, dtype):
    X, T, W, b = make(9, 3, 2, dtype)
    gpu, cpu = pair(W, b)
    P = gpu(X)
    for target in (T, cops.from_host(T)):  # host or device target
        for reduction in ("mean", "sum"):
            got = fastlin.mse_loss(P, target, reduction=reduction)
            assert type(got) is float
            assert got == pytest.approx(fastlin.mse_loss(cpu(X), T, reduction=reduction), rel=rtol(dtype))
    assert fastlin.mse_loss(P, P) == 0.0
    with pytest.raises(ValueError, match="same shape"):
        fastlin.mse_loss(P, T[:-1])
    g = gpu.gradients(X, T)
    opt_g, opt_c = fastlin.SGD(0.1, momentum=0.5), fastlin.SGD(0.1, momentum=0.5)
    opt_g.apply(gpu, g.weight, g.bias)
    c = cpu.gradients(X, T)
    opt_c.apply(cpu, c.weight, c.bias)
    np.testing.assert_allclose(gpu.numpy()[0], cpu.weight, rtol=10 * rtol(dtype), atol=10 * rtol(dtype))
    np.testing.assert_allclose(gpu.numpy()[1], cpu.bias, rtol=10 * rtol(dtype), atol=10 * rtol(dtype))


def test_save_and_load_a_cuda_model(tmp_path):
    _, _, W, b = make(1, 4, 3, np.float32)
    model = fastlin.Linear.from_weights(W, b, device="cuda")
    model.save(tmp_path / "m.npz")
    back = fastlin.load(tmp_path / "m.npz", device="cuda")
    assert back.device == "cuda" and back.dtype == np.float32
    np.testing.assert_array_equal(back.numpy()[0], W)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_divergence_keeps_the_last_finite_weights(launches):
    """lr far too large: the loss grows until an update would overflow
    float32; DivergenceError names the step, and the weights are those of the
    last finite step, as on the CPU.  (The warning filters matter in the
    simulator only: numpy warns where the GPU silently makes Inf/NaN.)"""
    X, T, W, b = make(8, 3, 2, np.float32)
    X *= 100
    gpu, cpu = pair(W, b)
    with pytest.raises(fastlin.DivergenceError) as eg:
        gpu.fit(X, T, steps=60, lr=10.0)
    with pytest.raises(fastlin.DivergenceError) as ec:
        cpu.fit(X, T, steps=60, lr=10.0)
    assert eg.value.step == ec.value.step
    assert "step" in str(eg.value) and "lr" in str(eg.value)
    assert len(eg.value.history.loss) == eg.value.step - 1
    assert np.isfinite(gpu.numpy()[0]).all()
    np.testing.assert_allclose(gpu.numpy()[0], cpu.weight, rtol=1e-3)


def test_cuda_without_a_gpu_is_a_device_error(monkeypatch):
    monkeypatch.setattr(_dispatch, "cuda_unavailable_reason", lambda: "no NVIDIA driver found")
    with pytest.raises(fastlin.DeviceError, match="no NVIDIA driver found"):
        fastlin.Linear(3, 2, device="cuda")
    assert issubclass(fastlin.DeviceError, RuntimeError)
