"""The kernel calls that skip numba's dispatcher (fastlin._jit.find_entry).

The CPU backend looks each kernel's compiled entry point up under a short
key (cpu_ops' "Entry-point keys"), and types the user's data read-only.  If the
key ever failed to tell two argument types apart, code compiled for one
would run on the other.  The whole suite runs with ``CHECK_ENTRY_TYPES`` on
(tests/conftest.py), so every call there is checked; these tests check the
check, and the argument types a user can vary: read-only and unaligned data.
"""

from __future__ import annotations

import numpy as np
import pytest

import fastlin
from fastlin import _jit
from fastlin.backends import cpu, cpu_ops


def _data(n, d, o, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)).astype(np.float32), rng.standard_normal((n, o)).astype(np.float32)


def _read_only(a):
    a = a.copy()
    a.flags.writeable = False
    return a


def _unaligned(a):
    raw = np.empty(a.nbytes + 1, dtype=np.uint8)
    out = raw[1:].view(a.dtype).reshape(a.shape)
    out[...] = a
    assert not out.flags.aligned
    return out


# The small-problem kernels (cpu.SMALL_WORK), and one streaming one: each
# new argument type compiles the kernels again, tens of seconds on a loaded
# 2-core machine.  (The suite's own calls are checked at every shape.)
CASES = [((1, 5, 2), _read_only), ((1, 5, 2), _unaligned), ((7, 3, 1), _read_only)]


def test_the_suite_checks_every_direct_call():
    assert _jit.CHECK_ENTRY_TYPES


@pytest.mark.parametrize(("shape", "variant"), CASES)
def test_read_only_and_unaligned_data_train_as_plain_arrays_do(shape, variant):
    n, d, o = shape
    X, T = _data(n, d, o)
    plain, other = fastlin.Linear(d, o, seed=1), fastlin.Linear(d, o, seed=1)
    opt_a, opt_b = fastlin.SGD(0.01, momentum=0.9), fastlin.SGD(0.01, momentum=0.9)
    losses = []
    for model, opt, x, t in ((plain, opt_a, X, T), (other, opt_b, variant(X), variant(T))):
        step = [model.step(x, t, opt) for _ in range(3)]
        fit = model.fit(x, t, steps=4, batch_size=max(1, n // 3), seed=5, opt=opt).loss
        losses.append((step, fit.tolist()))
    assert losses[0] == losses[1]
    np.testing.assert_array_equal(plain.weight, other.weight)
    np.testing.assert_array_equal(plain.bias, other.bias)


def test_read_only_and_unaligned_data_share_the_compiled_code():
    X, T = _data(1, 5, 2)
    model, opt = fastlin.Linear(5, 2, seed=0), fastlin.SGD(0.01, momentum=0.9)
    for x, t in ((X, T), (_read_only(X), _read_only(T)), (_unaligned(X), _unaligned(T)), (X, T)):
        model.step(x, t, opt)
    table = cpu_ops._scratch(model._step_ws, 1, model._W)[5]
    assert len(table) == 1  # (numba's array types ignore alignment)


def test_read_only_data_compile_no_kernel_again(monkeypatch):
    X, T = _data(7, 3, 1)
    model = fastlin.Linear(3, 1, seed=0)
    for x, t in ((X, T), (_read_only(X), _read_only(T))):
        model.forward(x), model.loss(x, t), model.gradients(x, t), model.backward(x, t)
        if x is X:
            compiled = {d: len(d.overloads) for d in (cpu.forward, cpu.model_sse, cpu.mse_grad, cpu.backward)}
    assert {d: len(d.overloads) for d in compiled} == compiled


def test_a_key_that_hides_a_type_is_caught():
    X, T = _data(1, 5, 2)
    model, opt = fastlin.Linear(5, 2, seed=0), fastlin.SGD(0.01, momentum=0.9)
    model.step(X, T, opt)
    _, _, work, acc, kernel, table = cpu_ops._scratch(model._step_ws, 1, model._W)
    (key,) = table
    st = opt.state_for(model, cpu_ops)
    hyper = opt.hyper()
    args = [X, T, model._W, model._bvec, True, st.slots_w, st.slots_b, st.counters, hyper]
    args += [cpu_ops._update_kind(hyper), False, float(np.finfo(np.float32).max), 1, work, acc]
    # A type the key (made for C-contiguous X) would tell apart, given the wrong key:
    args[0] = np.asfortranarray(np.repeat(X, 2, axis=0))
    with pytest.raises(AssertionError, match="two signatures"):
        _jit.find_entry(table, key, kernel, tuple(args))


def test_without_the_check_a_key_is_typed_once(monkeypatch):
    monkeypatch.setattr(_jit, "CHECK_ENTRY_TYPES", False)
    typed = []
    real = _jit.find_entry
    monkeypatch.setattr(_jit, "find_entry", lambda t, k, d, a: typed.append(d) or real(t, k, d, a))
    X, T = _data(1, 5, 2)
    model, reference = fastlin.Linear(5, 2, seed=0), fastlin.Linear(5, 2, seed=0)
    opt, ref_opt = fastlin.SGD(0.01), fastlin.SGD(0.01)
    for _ in range(5):
        model.step(X, T, opt)
        model.fit(X, T, steps=3, opt=opt)
    assert typed == [cpu.fused_step_small, cpu.fit_steps_small]
    monkeypatch.setattr(_jit, "CHECK_ENTRY_TYPES", True)
    for _ in range(5):
        reference.step(X, T, ref_opt)
        reference.fit(X, T, steps=3, opt=ref_opt)
    np.testing.assert_array_equal(model.weight, reference.weight)
