"""pickle and copy of CUDA models and their optimisers (tiny shapes for the simulator).

A CUDA model comes back on the GPU, with its momentum buffers on the GPU, and
training continued from the copy gives the bits training continued from the
original gives.  Without a usable GPU, unpickling raises DeviceError.
"""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest

import fastlin
from fastlin import _dispatch


def make(n, d, o, dtype, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)).astype(dtype)
    T = rng.standard_normal((n, o)).astype(dtype)
    W = (rng.standard_normal((o, d)) / np.sqrt(d)).astype(dtype)
    b = rng.standard_normal(o).astype(dtype)
    return X, T, W, b


def _oob(obj):
    buffers = []
    data = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    return pickle.loads(data, buffers=[bytes(b.raw()) for b in buffers])


ROUND_TRIPS = {
    "pickle": lambda o: pickle.loads(pickle.dumps(o)),
    "pickle-5-out-of-band": _oob,
    "deepcopy": copy.deepcopy,
}


def host(model):
    W, b = model.numpy()
    return W.tobytes(), None if b is None else b.tobytes()


@pytest.mark.parametrize("how", list(ROUND_TRIPS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cuda_training_continues_bit_for_bit_after_a_round_trip(how, dtype):
    X, T, W, b = make(40, 5, 3, dtype, seed=1)
    model = fastlin.Linear.from_weights(W, b, device="cuda")
    opt = fastlin.SGD(0.05, momentum=0.9, nesterov=True)
    model.fit(X, T, steps=3, opt=opt)
    model.step(X, T, opt)
    copy_model, copy_opt = ROUND_TRIPS[how]((model, opt))
    assert copy_model.device == "cuda" and hasattr(copy_model.weight, "copy_to_host")
    st = copy_opt._states[copy_model]
    assert st.device == "cuda" and hasattr(st.slots_w, "copy_to_host")
    assert host(copy_model) == host(model)
    fresh = fastlin.Linear.from_weights(*model.numpy(), device="cuda")  # as if the momentum were lost
    for m, o in ((model, opt), (copy_model, copy_opt), (fresh, fastlin.SGD(0.05, momentum=0.9, nesterov=True))):
        m.fit(X, T, steps=3, opt=o)
        m.step(X, T, o)
    assert host(copy_model) == host(model)
    assert host(fresh) != host(model)


def test_cuda_round_trip_from_inside_a_fit():
    X, T, W, b = make(30, 4, 2, np.float64, seed=2)
    model, opt = fastlin.Linear.from_weights(W, b, device="cuda"), fastlin.SGD(0.03, momentum=0.9)
    saved = {}
    model.fit(
        X,
        T,
        steps=6,
        opt=opt,
        callback=lambda s, l: s == 3 and saved.setdefault("pair", pickle.loads(pickle.dumps((model, opt)))) and False,
    )
    copy_model, copy_opt = saved["pair"]
    copy_model.fit(X, T, steps=3, opt=copy_opt)
    assert host(copy_model) == host(model)


def test_cuda_model_without_bias_and_copy_copy():
    _, _, W, _ = make(20, 3, 2, np.float32, seed=3)
    model = fastlin.Linear.from_weights(W, None, device="cuda")
    for back in (copy.copy(model), copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert back.device == "cuda" and back.bias is None and host(back) == host(model)
        assert back.weight is not model.weight


def test_unpickling_a_cuda_model_where_cuda_cannot_run_raises_device_error(monkeypatch):
    _, _, W, b = make(3, 3, 2, np.float32, seed=4)
    data = pickle.dumps(fastlin.Linear.from_weights(W, b, device="cuda"))
    monkeypatch.setattr(_dispatch, "cuda_unavailable_reason", lambda: "no usable CUDA GPU (test)")
    with pytest.raises(fastlin.DeviceError, match="pickled on CUDA"):
        pickle.loads(data)
