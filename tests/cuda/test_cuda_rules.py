"""The shared scalar rules (fastlin/backends/rules.py) compiled as CUDA device
functions, the way fastlin.backends.cuda compiles them.

* In a kernel, on a GPU or under numba's simulator (``NUMBA_ENABLE_CUDASIM=1``):
  the learning rate and one update per thread, for every rule and schedule,
  against the same functions compiled with ``numba.njit``.
* Compiled to PTX for sm_90 without a GPU, in a subprocess (the simulator
  replaces ``numba.cuda`` in this one): proof that the device functions type
  and lower for real hardware, with record and float32/float64 arguments,
  and that the compiled learning rate reads the warm-up fields of the record
  (a 64-bit integer and a double load at their byte offsets).
  Skipped, with the reason, without numba-cuda's toolkit wheels.

NEEDS_CUDA is False so that the PTX check runs everywhere; the kernel test
skips itself when there is neither a GPU nor the simulator.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numba
import numpy as np
import pytest

from fastlin import _dispatch, schedules
from fastlin.backends import abi, rules

NEEDS_CUDA = False
ROOT = Path(__file__).resolve().parents[2]
TPB = 16  # several blocks for the 40 threads below

_lr_cpu = numba.njit(rules.scheduled_lr)
_update_cpu = numba.njit(rules.update_element)


UNAVAILABLE = _dispatch.cuda_unavailable_reason()

if UNAVAILABLE is None:
    # Module globals, not closures: the simulator swaps the name ``cuda`` in
    # a kernel's globals for its own.
    from numba import cuda

    lr_dev = cuda.jit(device=True)(rules.scheduled_lr)
    update_dev = cuda.jit(device=True)(rules.update_element)

    @cuda.jit
    def rules_kernel(hyper, steps, has_buf, p, g, slots, lr_out, p_out, slots_out):
        i = cuda.grid(1)
        if i < p.shape[0]:
            hp = hyper[0]
            step = steps[i]
            lr = lr_dev(hp, step)
            lr_out[i] = lr
            a, b, c, d = update_dev(hp, lr, step, has_buf[i] != 0, p[i], g[i], slots[0, i], slots[1, i], slots[2, i])
            p_out[i] = a
            slots_out[0, i] = b
            slots_out[1, i] = c
            slots_out[2, i] = d


def _hyper(rule, lr, schedule, **fields):
    hyper = abi.new_hyper()
    hyper[0]["rule"] = rule
    hyper[0]["lr"] = lr
    for name, value in fields.items():
        hyper[0][name] = value
    schedule.encode(hyper[0])
    return hyper


SGD, ADAM = abi.RULE_SGD, abi.RULE_ADAM
ADAM_FIELDS = {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8}
CASES = [
    _hyper(SGD, 0.1, schedules.constant()),
    _hyper(SGD, 0.1, schedules.step(4, 0.5), momentum=0.9, weight_decay=0.01),
    _hyper(SGD, 0.1, schedules.cosine(13, eta_min=0.001), momentum=0.9, dampening=0.2),
    _hyper(SGD, 0.1, schedules.linear(0.25, 0.5, 9), momentum=0.8, nesterov=True, weight_decay=0.1),
    _hyper(ADAM, 1e-2, schedules.exponential(0.95), **ADAM_FIELDS),
    _hyper(ADAM, 1e-2, schedules.inverse_scaling(0.5), weight_decay=0.1, amsgrad=True, **ADAM_FIELDS),
    _hyper(ADAM, 1e-2, schedules.cosine(5), weight_decay=0.05, decoupled=True, **ADAM_FIELDS),
    _hyper(ADAM, 1e-2, schedules.linear(), beta1=0.3, beta2=0.7, eps=1e-6, amsgrad=True, decoupled=True),
    # warm-ups: ending inside the first 36 steps; lasting past them (steps 0 ..
    # 35 ramp, 100 ... do not); one step long, before a linear decay; and
    # ending at step 999, which the kernel evaluates with 1000 beside it
    _hyper(SGD, 0.1, schedules.warmup(schedules.cosine(13, eta_min=0.001), 7, 0.2), momentum=0.9),
    _hyper(ADAM, 1e-2, schedules.warmup(schedules.inverse_scaling(0.5), 40), amsgrad=True, **ADAM_FIELDS),
    _hyper(ADAM, 1e-2, schedules.warmup(schedules.linear(0.25, 0.5, 9), 1, 1.0), decoupled=True, **ADAM_FIELDS),
    _hyper(SGD, 0.1, schedules.warmup(schedules.constant(), 999, 0.01), weight_decay=0.01),
]


def test_rules_in_a_cuda_kernel_match_njit():
    if UNAVAILABLE is not None:
        pytest.skip(f"needs a GPU, or NUMBA_ENABLE_CUDASIM=1 set before Python starts: {UNAVAILABLE}")
    rng = np.random.default_rng(11)
    n = 40
    steps = np.concatenate([np.arange(n - 4), [100, 999, 1000, 4321]]).astype(np.int64)
    has_buf = (steps > 0).astype(np.int64)
    p = rng.standard_normal(n)
    g = rng.standard_normal(n) * 3.0
    g[5] = 0.0
    slots = np.abs(rng.standard_normal((3, n)))  # second moments must be >= 0
    blocks = (n + TPB - 1) // TPB
    # On a GPU, libdevice's pow/sin/sqrt may round differently from the
    # CPU's libm in the last bit or two; the simulator runs the same libm.
    rtol = 1e-15 if _dispatch.cuda_simulated() else 1e-13
    for hyper in CASES:
        lr_out, p_out, slots_out = np.empty(n), np.empty(n), np.empty((3, n))
        rules_kernel[blocks, TPB](hyper, steps, has_buf, p, g, slots, lr_out, p_out, slots_out)
        cuda.synchronize()
        hp = hyper[0]
        want_lr = np.array([_lr_cpu(hp, s) for s in steps])
        want = np.array(
            [_update_cpu(hp, want_lr[i], steps[i], has_buf[i] != 0, p[i], g[i], *slots[:, i]) for i in range(n)]
        )
        np.testing.assert_allclose(lr_out, want_lr, rtol=rtol, atol=1e-300, err_msg=repr(hyper))
        np.testing.assert_allclose(p_out, want[:, 0], rtol=rtol, err_msg=repr(hyper))
        np.testing.assert_allclose(slots_out, want[:, 1:].T, rtol=rtol, err_msg=repr(hyper))
        assert not np.array_equal(p_out, p)  # something happened


# Run in a subprocess without NUMBA_ENABLE_CUDASIM.  Exit 3 (with the reason
# on the last line) when numba-cuda or its toolkit is missing.
_PTX_SCRIPT = textwrap.dedent(
    r"""
    import importlib.util, re, sys, types
    if importlib.util.find_spec("numba_cuda") is None:
        print("numba-cuda is not installed"); sys.exit(3)
    import numba.cuda
    import numba.cuda.dispatcher as dispatcher
    from numba.core import types as nt
    from numba.np import numpy_support

    cc = (9, 0)
    # Device functions are compiled for the current device: pin that query
    # (as tests/cuda/ptx_check.py does); nothing else of a device is used.
    dispatcher.get_current_device = lambda: types.SimpleNamespace(compute_capability=cc)
    try:
        numba.cuda.compile_ptx(lambda a: None, "void(float64[::1])", cc=cc)
    except Exception as exc:
        print(f"no CUDA toolkit to compile with: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}")
        sys.exit(3)

    from numba import cuda
    from fastlin.backends import abi, rules

    lr_dev = cuda.jit(device=True)(rules.scheduled_lr)
    update_dev = cuda.jit(device=True)(rules.update_element)

    def step_kernel(hyper, counters, p, g, slots, lr_out):
        i = cuda.grid(1)
        hp = hyper[0]
        step = counters[abi.CNT_STEP]
        lr = lr_dev(hp, step)
        if i == 0:
            lr_out[0] = lr
        if i < p.shape[0]:
            a, b, c, d = update_dev(
                hp, lr, step, counters[abi.CNT_HAS_BUF] != 0, p[i], g[i], slots[0, i], slots[1, i], slots[2, i]
            )
            p[i] = a
            slots[0, i] = b
            slots[1, i] = c
            slots[2, i] = d

    record = nt.Array(numpy_support.from_dtype(abi.HYPER), 1, "C")
    for dt in (nt.float32, nt.float64):
        sig = (record, nt.int64[::1], dt[::1], dt[::1], dt[:, ::1], nt.float64[::1])
        ptx, _ = numba.cuda.compile_ptx(step_kernel, sig, cc=cc)
        assert ".target sm_90" in ptx and ".entry" in ptx, ptx[:2000]
        # The warm-up is compiled in: the kernel loads warmup_steps (u64) and
        # warmup_start_factor (f64) from the record, at their byte offsets.
        for field, kind in (("warmup_steps", "u64"), ("warmup_start_factor", "f64")):
            offset = abi.HYPER.fields[field][1]
            pattern = rf"ld\.global\.{kind}\s+%\w+, \[%\w+\+{offset}\];"
            assert re.search(pattern, ptx), (field, offset, [ln for ln in ptx.splitlines() if "ld.global" in ln])
        print(f"ok {dt} {len(ptx.splitlines())} PTX lines")
    """
)


def test_rules_compile_to_ptx_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-c", _PTX_SCRIPT], capture_output=True, text=True, env=env, timeout=600, cwd=ROOT
    )
    if proc.returncode == 3:
        pytest.skip(proc.stdout.strip().splitlines()[-1])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [line.split()[:2] for line in proc.stdout.splitlines() if line.startswith("ok")] == [
        ["ok", "float32"],
        ["ok", "float64"],
    ], proc.stdout
