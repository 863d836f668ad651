"""What a CUDA model accepts: the core issue's bad-input list (a clear error,
nothing changed), odd-but-valid host data, numba device arrays without a
copy, and CuPy / PyTorch / DLPack GPU arrays without a copy (real GPU only).
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

import fastlin
from tests.support.cuda_ref import to_host

N, D, O = 10, 5, 3


def make(dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((N, D)).astype(dtype)
    T = rng.standard_normal((N, O)).astype(dtype)
    W = (rng.standard_normal((O, D)) / np.sqrt(D)).astype(dtype)
    b = rng.standard_normal(O).astype(dtype)
    return X, T, W, b


@pytest.fixture(params=[np.float32, np.float64])
def setup(request):
    X, T, W, b = make(request.param)
    model = fastlin.Linear.from_weights(W, b, device="cuda")
    opt = fastlin.SGD(0.1, momentum=0.9)
    model.step(X, T, opt)  # momentum buffers now hold a value
    return model, opt, X, T


def snapshot(model, opt):
    st = opt._states[model]
    return [*model.numpy(), to_host(st.slots_w), to_host(st.slots_b), st.counters.copy()]


def assert_unchanged(before, model, opt):
    for x, y in zip(before, snapshot(model, opt)):
        np.testing.assert_array_equal(x, y)


# In the simulator the kernels run as Python on numpy scalars, which warn
# where a GPU silently produces NaN/Inf (which the kernels then detect and
# report).  Only the tests that feed NaN/Inf take these filters.
SIMULATED_NONFINITE = [
    pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning"),
]


def nonfinite(test):
    for mark in SIMULATED_NONFINITE:
        test = mark(test)
    return test


def _poison(a, value):
    a = a.copy()
    a.flat[a.size // 2 + 1] = value
    return a


def _objects(a):
    out = a.astype(object)
    out.flat[1] = object()
    return out


def bad_inputs(X, T, cops):
    """(description, X, T, exception type, message fragment, calls to try)."""
    dev = cops.from_host
    every = ("forward", "loss", "gradients", "backward", "step", "fit", "fit-minibatch")
    with_t = every[1:]
    kernels_run = ("forward", "step", "fit-minibatch")  # the NaN cases run kernels: keep the simulator quick
    return [
        ("X 3-D", X[None], T, ValueError, "X must be 1-D", every),
        ("in_features mismatch", X[:, :-1], T, ValueError, "in_features=5", every),
        ("single sample mismatch", X[0, :-1], T[0], ValueError, "in_features=5", every),
        ("rows differ", X, T[:-1], ValueError, "rows", with_t),
        ("T out_features mismatch", X, T[:, :-1], ValueError, "out_features=3", with_t),
        ("empty X", X[:0], T[:0], ValueError, "empty", every),
        ("complex X", X.astype(np.complex128), T, TypeError, "complex", every),
        # an object array of numbers is read as floats (fastlin._validate); of other objects, refused
        ("object X", _objects(X), T, TypeError, "object", every),
        ("string X", X.astype(str), T, TypeError, "string", every),
        ("complex T", X, T.astype(np.complex64), TypeError, "complex", with_t),
        ("device X 3-D", dev(X[None]), T, ValueError, "X must be 1-D", every),
        ("device X in_features mismatch", dev(np.ascontiguousarray(X[:, :-1])), T, ValueError, "in_features=5", every),
        ("device complex X", dev(X.astype(np.complex128)), T, TypeError, "complex", every),
        ("device T rows differ", X, dev(np.ascontiguousarray(T[:-1])), ValueError, "rows", with_t),
        ("NaN in X", _poison(X, np.nan), T, ValueError, "X contains NaN or Inf", kernels_run),
        ("Inf in device X", dev(_poison(X, np.inf)), T, ValueError, "X contains NaN or Inf", kernels_run),
        ("NaN in T", X, _poison(T, np.nan), ValueError, "T contains NaN or Inf", ("loss", "gradients", "step", "fit")),
    ]


def calls(model, opt):
    return {
        "forward": lambda X, T: model(X),
        "loss": lambda X, T: model.loss(X, T),
        "gradients": lambda X, T: model.gradients(X, T),
        "backward": lambda X, T: model.backward(X, T),
        "step": lambda X, T: model.step(X, T, opt),
        "fit": lambda X, T: model.fit(X, T, steps=3, opt=opt),
        "fit-minibatch": lambda X, T: model.fit(X, T, steps=5, opt=opt, batch_size=4, seed=1),
    }


@nonfinite
def test_every_bad_input_is_rejected_and_nothing_changes(setup, cops):
    model, opt, X, T = setup
    entry = calls(model, opt)
    for what, bX, bT, exc, fragment, names in bad_inputs(X, T, cops):
        for name in names:
            before = snapshot(model, opt)
            with pytest.raises(exc) as info:
                entry[name](bX, bT)
            expected = fragment.replace("T ", "dY ") if name == "backward" else fragment
            assert expected in str(info.value), (what, name, str(info.value))
            assert_unchanged(before, model, opt)


def test_bad_arguments_are_rejected_and_nothing_changes(setup):
    model, opt, X, T = setup
    before = snapshot(model, opt)
    cases = [
        (dict(batch_size=0), ValueError, "batch_size"),
        (dict(steps=-1), ValueError, "steps"),
        (dict(reduction="max"), ValueError, "reduction"),
        (dict(lr=-0.1, opt=None), ValueError, "lr"),
        (dict(lr=float("nan"), opt=None), ValueError, "lr"),
    ]
    for kwargs, exc, fragment in cases:
        kwargs = {"opt": opt, **kwargs}
        if kwargs["opt"] is None:
            del kwargs["opt"]
        with pytest.raises(exc, match=fragment):
            model.fit(X, T, **kwargs)
        assert_unchanged(before, model, opt)
    with pytest.raises(ValueError, match="nesterov"):
        fastlin.SGD(0.1, nesterov=True)
    with pytest.raises(ValueError, match="weight must have shape"):
        model.weight = np.ones((2, 2))
    assert_unchanged(before, model, opt)


@nonfinite
def test_nan_late_in_a_minibatch_fit_restores_the_weights(setup):
    model, opt, X, T = setup
    X = X.copy()
    X[-1, 0] = np.nan  # reached only by a late mini-batch
    before = snapshot(model, opt)
    with pytest.raises(ValueError, match="X contains NaN"):
        model.fit(X, T, steps=6, opt=opt, batch_size=3, shuffle=False)
    assert_unchanged(before, model, opt)


@nonfinite
def test_check_finite_false_still_protects_the_weights(setup):
    model, opt, X, T = setup
    Xbad = _poison(X, np.nan)
    assert np.isnan(to_host(model(Xbad, check_finite=False))).any()
    before = snapshot(model, opt)
    with pytest.raises(fastlin.DivergenceError):
        model.step(Xbad, T, opt, check_finite=False)
    assert_unchanged(before, model, opt)


def test_odd_but_valid_host_inputs():
    X, _, W, b = make(np.float32)
    gpu = fastlin.Linear.from_weights(W, b, device="cuda")
    expected = to_host(gpu(X))
    ro = X.copy()
    ro.setflags(write=False)
    for variant in (np.asfortranarray(X), np.repeat(X, 2, axis=0)[::2], ro, X.tolist(), X.astype(np.float64)):
        np.testing.assert_array_equal(to_host(gpu(variant)), expected)
    Xi = np.arange(N * D).reshape(N, D) % 7
    np.testing.assert_allclose(to_host(gpu(Xi)), to_host(gpu(Xi.astype(np.float32))))
    t1 = np.ones(N)
    one = fastlin.Linear(D, 1, device="cuda", seed=0)
    assert one.loss(X, t1) == pytest.approx(one.loss(X, t1[:, None]))


def test_device_arrays_go_in_without_a_copy(cops):
    X, _, _, _ = make(np.float32)
    d = cops.from_host(X)
    assert cops.as_input(d, "X", np.dtype(np.float32)) is d


@pytest.mark.parametrize("variant", ["float64", "int32", "bool", "fortran", "strided"])
def test_device_arrays_of_another_dtype_or_layout_are_converted_on_the_device(cops, variant):
    X, _, W, b = make(np.float32)
    host = {
        "float64": X.astype(np.float64),
        "int32": (X * 10).astype(np.int32),
        "bool": X > 0,
        "fortran": np.asfortranarray(X),
        "strided": np.repeat(X, 2, axis=0),
    }[variant]
    d = _fortran_device(host) if variant == "fortran" else cops.from_host(host)
    if variant == "strided":
        d = d[::2]
        host = host[::2]
    got = cops.as_input(d, "X", np.dtype(np.float32))
    assert got.dtype == np.float32 and got.is_c_contiguous() and got.shape == host.shape
    np.testing.assert_array_equal(to_host(got), host.astype(np.float32))
    gpu = fastlin.Linear.from_weights(W, b, device="cuda")
    np.testing.assert_allclose(to_host(gpu(d)), to_host(gpu(host.astype(np.float32))), rtol=1e-6)


def _fortran_device(host):
    """A Fortran-ordered device array (numba keeps the host layout)."""
    from numba import cuda

    d = cuda.to_device(host)
    assert not d.is_c_contiguous()
    return d


# --------------------------------------------------------------------------
# CuPy, PyTorch and DLPack: real GPU only
# --------------------------------------------------------------------------
def _device_ptr(a):
    return a.__cuda_array_interface__["data"][0]


def _need_gpu(simulated):
    if simulated:
        pytest.skip("GPU interop needs a real GPU: the simulator has no device memory to share")


def test_torch_cuda_tensors_go_in_without_a_copy(cops, simulated):
    _need_gpu(simulated)
    if importlib.util.find_spec("torch") is None:
        pytest.skip("torch is not installed")
    import torch

    if not torch.cuda.is_available():
        pytest.skip("this torch build has no CUDA")
    X, T, W, b = make(np.float32)
    tX = torch.from_numpy(X).cuda()
    view = cops.as_input(tX, "X", np.dtype(np.float32))
    assert _device_ptr(view) == tX.data_ptr()
    gpu = fastlin.Linear.from_weights(W, b, device="cuda")
    np.testing.assert_allclose(to_host(gpu(tX)), to_host(gpu(X)), rtol=1e-6)
    assert gpu.loss(tX, torch.from_numpy(T).cuda()) == pytest.approx(gpu.loss(X, T))
    with pytest.raises(TypeError, match=r"X is a torch tensor that requires grad.*detach"):
        gpu(tX.clone().requires_grad_(True))


class _DLPackOnly:
    """An array that offers only DLPack (as JAX arrays do)."""

    def __init__(self, inner):
        self._inner = inner

    def __dlpack__(self, **kwargs):
        return self._inner.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self._inner.__dlpack_device__()


def test_dlpack_only_arrays_go_in_without_a_copy(cops, simulated):
    _need_gpu(simulated)
    if importlib.util.find_spec("torch") is None:
        pytest.skip("torch is not installed")
    import torch

    if not torch.cuda.is_available():
        pytest.skip("this torch build has no CUDA")
    X = make(np.float32)[0]
    tX = torch.from_numpy(X).cuda()
    view = cops.as_input(_DLPackOnly(tX), "X", np.dtype(np.float32))
    assert _device_ptr(view) == tX.data_ptr()
    np.testing.assert_array_equal(to_host(view), X)


def test_cupy_arrays_go_in_without_a_copy(cops, simulated):
    _need_gpu(simulated)
    if importlib.util.find_spec("cupy") is None:
        pytest.skip("cupy is not installed")
    import cupy

    X, T, W, b = make(np.float32)
    cX = cupy.asarray(X)
    view = cops.as_input(cX, "X", np.dtype(np.float32))
    assert _device_ptr(view) == cX.data.ptr
    gpu = fastlin.Linear.from_weights(W, b, device="cuda")
    h = gpu.fit(cX, cupy.asarray(T), steps=3, lr=0.1)
    assert len(h.loss) == 3
    assert fastlin.mse_loss(cupy.asarray(T), cupy.asarray(T)) == 0.0
