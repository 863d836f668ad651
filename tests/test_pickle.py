"""pickle and copy of Linear and SGD: round trips mid-training continue bit for bit."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest

import fastlin
from fastlin import _dispatch
from tests.support.helpers import make_data

OPTIMISERS = [
    dict(lr=0.05),
    dict(lr=0.05, momentum=0.9),
    dict(lr=0.05, momentum=0.8, dampening=0.3, weight_decay=0.01),
    dict(lr=0.05, momentum=0.9, nesterov=True),
]


def _oob_round_trip(obj):
    """pickle protocol 5 with out-of-band buffers (as joblib and
    multiprocessing.shared_memory users do), handed back read-only."""
    buffers = []
    data = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    return pickle.loads(data, buffers=[bytes(b.raw()) for b in buffers])


ROUND_TRIPS = {
    "pickle": lambda obj: pickle.loads(pickle.dumps(obj)),
    "pickle-0": lambda obj: pickle.loads(pickle.dumps(obj, protocol=0)),
    "pickle-5-out-of-band": _oob_round_trip,
    "deepcopy": copy.deepcopy,
}


def _same(a, b):
    assert type(a) is type(b) and a.device == b.device and a.dtype == b.dtype
    assert a.weight.tobytes() == b.weight.tobytes()
    assert (a.bias is None) == (b.bias is None)
    if a.bias is not None:
        assert a.bias.tobytes() == b.bias.tobytes()


@pytest.mark.parametrize("how", list(ROUND_TRIPS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_round_trips(how, dtype, bias):
    _, _, W, b = make_data(1, 17, 3, dtype, seed=1)
    model = fastlin.Linear.from_weights(W, b if bias else None)
    back = ROUND_TRIPS[how](model)
    _same(model, back)
    assert back.weight is not model.weight and back.weight.flags.writeable
    assert repr(back) == repr(model)
    back.weight = np.zeros_like(W)  # independent of the original
    assert model.weight.tobytes() == W.tobytes()


@pytest.mark.parametrize("how", list(ROUND_TRIPS))
@pytest.mark.parametrize("hyper", OPTIMISERS, ids=lambda h: ",".join(f"{k}={v}" for k, v in h.items()))
@pytest.mark.parametrize("shape", [(33, 6, 2), (40, 5, 33)], ids=["streaming", "gemm"])
def test_training_continues_bit_for_bit_after_a_round_trip(how, hyper, shape):
    X, T, W, b = make_data(*shape, np.float32, seed=2)
    model, opt = fastlin.Linear.from_weights(W, b), fastlin.SGD(**hyper)
    model.fit(X, T, steps=5, opt=opt, batch_size=8, seed=1)
    model.step(X, T, opt)
    copy_model, copy_opt = ROUND_TRIPS[how]((model, opt))
    assert copy_opt is not opt and copy_model is not model
    assert repr(copy_opt) == repr(opt) and copy_model in copy_opt._states
    _same(model, copy_model)
    no_momentum = fastlin.Linear.from_weights(*model.numpy())  # the copy, had the buffers been lost
    for m, o in ((model, opt), (copy_model, copy_opt), (no_momentum, fastlin.SGD(**hyper))):
        m.fit(X, T, steps=7, opt=o, batch_size=8, seed=2)
        m.step(X, T, o)
    _same(model, copy_model)
    if hyper.get("momentum"):  # so the test can tell copied buffers from fresh ones
        assert no_momentum.weight.tobytes() != model.weight.tobytes()


@pytest.mark.parametrize("how", ["pickle", "deepcopy", "pickle-5-out-of-band"])
def test_a_round_trip_from_inside_a_fit_keeps_the_momentum_of_that_moment(how):
    X, T, W, b = make_data(50, 4, 3, np.float64, seed=3)
    model, opt = fastlin.Linear.from_weights(W, b), fastlin.SGD(0.03, momentum=0.9, nesterov=True)
    saved = {}

    def callback(step, loss):
        if step == 6:
            saved["pair"] = ROUND_TRIPS[how]((model, opt))

    model.fit(X, T, steps=15, opt=opt, callback=callback)  # full batch: a fit of 9 more continues it
    copy_model, copy_opt = saved["pair"]
    copy_model.fit(X, T, steps=9, opt=copy_opt)
    _same(model, copy_model)


def test_models_and_optimiser_pickled_in_either_order_and_shared_optimiser():
    X, T, W, b = make_data(30, 4, 2, np.float64, seed=4)
    m1, m2 = fastlin.Linear.from_weights(W, b), fastlin.Linear.from_weights(W * 2, b)
    opt = fastlin.SGD(0.02, momentum=0.9)
    m1.step(X, T, opt), m2.step(X, T, opt), m2.step(X, T, opt)
    o_c, m1_c, m2_c = pickle.loads(pickle.dumps((opt, m1, m2)))  # optimiser first
    assert set(o_c._states.keys()) == {m1_c, m2_c}
    for m, o in ((m1, opt), (m2, opt), (m1_c, o_c), (m2_c, o_c)):
        m.step(X, T, o)
    _same(m1, m1_c)
    _same(m2, m2_c)


def test_optimiser_copied_alone_keeps_its_hyper_parameters_and_no_state():
    X, T, W, b = make_data(30, 4, 2, np.float64, seed=5)
    model, opt = fastlin.Linear.from_weights(W, b), fastlin.SGD(0.02, momentum=0.9, weight_decay=0.1)
    model.step(X, T, opt)
    for back in (pickle.loads(pickle.dumps(opt)), copy.deepcopy(opt)):
        assert repr(back) == repr(opt)
        assert len(back._states) == 0  # its models were copies that nothing holds
        back.lr = 0.5  # still validated and still usable
        with pytest.raises(ValueError, match="lr"):
            back.lr = -1.0


def test_shallow_copies():
    # copy.copy(model) is an independent model (as model.copy()); copy.copy(opt)
    # is an optimiser with the same hyper-parameters and its own copy of the
    # momentum buffers of the same models.
    X, T, W, b = make_data(30, 4, 2, np.float64, seed=6)
    model, opt = fastlin.Linear.from_weights(W, b), fastlin.SGD(0.02, momentum=0.9)
    model.step(X, T, opt)
    shallow = copy.copy(model)
    _same(model, shallow)
    assert shallow.weight is not model.weight
    twin = copy.copy(opt)
    assert model in twin._states and twin._states[model].slots_w is not opt._states[model].slots_w
    before = model.numpy()
    model.step(X, T, twin)  # continues from the copied buffers ...
    after_twin = model.numpy()
    model.weight, model.bias = before
    model.step(X, T, opt)  # ... exactly as from the original ones, which it left alone
    assert model.weight.tobytes() == after_twin[0].tobytes() and model.bias.tobytes() == after_twin[1].tobytes()


def test_pickle_holds_no_modules_or_locks():
    X, T, W, b = make_data(30, 4, 2, np.float64, seed=7)
    model, opt = fastlin.Linear.from_weights(W, b), fastlin.SGD(0.02, momentum=0.9)
    model.step(X, T, opt)
    state = model.__getstate__()
    assert set(state) == {"format", "device", "weight", "bias", "extra"}
    assert all(type(v).__module__ in ("numpy", "builtins") for v in (state["weight"], state["bias"], state["device"]))
    ostate = opt.__getstate__()
    assert set(ostate) == {"format", "hyper", "states"}
    ((m, saved),) = ostate["states"]
    assert m is model and all(isinstance(v, np.ndarray) for v in saved.values())


def test_a_cuda_model_without_cuda_raises_device_error(monkeypatch):
    _, _, W, b = make_data(3, 4, 2, np.float32, seed=8)
    state = fastlin.Linear.from_weights(W, b).__getstate__()
    state["device"] = "cuda"  # as pickled on a machine with a GPU
    monkeypatch.setattr(_dispatch, "cuda_unavailable_reason", lambda: "no usable CUDA GPU (test)")
    model = fastlin.Linear.__new__(fastlin.Linear)
    with pytest.raises(fastlin.DeviceError, match=r"pickled on CUDA.*no usable CUDA GPU \(test\).*to\('cpu'\)"):
        model.__setstate__(state)


def test_a_pickle_from_another_format_is_refused_clearly():
    with pytest.raises(ValueError, match="cannot restore a fastlin.Linear"):
        fastlin.Linear.__new__(fastlin.Linear).__setstate__({"format": 99})
    with pytest.raises(ValueError, match="cannot restore a fastlin.SGD"):
        fastlin.SGD.__new__(fastlin.SGD).__setstate__(("old", "tuple"))
