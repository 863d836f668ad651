"""CUDA kernels (``numba.cuda``): the twins of :mod:`fastlin.backends.cpu`,
named in one table.

Kernels only: no validation, no allocation.  :mod:`fastlin.backends.cuda_ops`
allocates, picks the launch configuration and launches.  The kernels live in
one module per strategy:

:mod:`.cuda_rows`
    the "rows" plan, row streaming (tall layers, few outputs): ``mse_grad``,
    ``step_partials`` + ``step_update`` (a step), ``fit_steps`` (a whole
    small fit in one launch);
:mod:`.cuda_tiled`
    the "tiled" plan, TS×TS tiles (any shape): ``forward``, ``model_sse``,
    ``residual``, ``grad_partials``, ``update_check`` / ``update_apply``;
:mod:`.cuda_elementwise`
    ``reduce_grad``, ``backward``, ``sse``, ``all_finite``, ``cast_copy_*``;
:mod:`.cuda_shuffle`
    ``shuffle_epoch``, ``counter_permutation`` (the order of :mod:`.permute`);

with their shared device helpers in :mod:`.cuda_device` and every tuning
knob in :mod:`.cuda_config`.  The same operation has the same name as on the
CPU where it is one launch (``forward``, ``sse``, ``model_sse``,
``mse_grad``, ``backward``, ``fit_steps``, ``all_finite``).

These modules import ``numba.cuda``, so only :mod:`cuda_ops` imports them,
and only once a CUDA device was asked for.  ``cuda.jit`` without a signature
compiles on the first launch of each argument-type combination, never at
import.  Inside kernels the module is always called ``cuda``: numba's
simulator (``NUMBA_ENABLE_CUDASIM=1``) swaps that global name.

Determinism
    Nothing is summed with atomics.  Every block writes its own partial sums;
    they are added in a fixed order (strided shares in block index order,
    then a fixed shared-memory tree).  The split depends on the shape and the
    block size only, so
    results are bit-identical from run to run.  They can differ from the CPU
    in the last bits, because the CPU splits the rows differently.
"""

from __future__ import annotations

import numba
from numba import types

from .abi import HYPER
from .cuda_elementwise import all_finite, backward, cast_copy_1d, cast_copy_2d, reduce_grad, sse
from .cuda_rows import fit_steps, mse_grad, step_partials, step_update
from .cuda_shuffle import counter_permutation, shuffle_epoch
from .cuda_tiled import forward, grad_partials, model_sse, residual, update_apply, update_check

__all__ = [
    "KERNELS",
    "all_finite",
    "backward",
    "cast_copy_1d",
    "cast_copy_2d",
    "counter_permutation",
    "fit_steps",
    "forward",
    "grad_partials",
    "launch_signatures",
    "model_sse",
    "mse_grad",
    "reduce_grad",
    "residual",
    "shuffle_epoch",
    "sse",
    "step_partials",
    "step_update",
    "update_apply",
    "update_check",
]


def launch_signatures(dtype):
    """Argument types (numba types) of every kernel as cuda_ops launches it,
    for ``dtype`` ("float32" or "float64") data: what the compile checks
    (tests/cuda/ptx_check.py, bench/gpu_static.py) compile without a GPU,
    as ``numba.cuda.compile_ptx(kernel.py_func, types.void(*args))``."""
    f = getattr(types, dtype)
    a3, a2, a1 = types.Array(f, 3, "C"), types.Array(f, 2, "C"), types.Array(f, 1, "C")
    f1, r2 = types.Array(types.float64, 1, "C"), types.Array(types.float64, 2, "C")
    i1 = types.Array(types.int64, 1, "C")
    h1 = types.Array(numba.from_dtype(HYPER), 1, "C")  # hyper: one abi.HYPER record
    i8, u8, f8, b1 = types.int64, types.uint64, types.float64, types.boolean
    # the optimiser's arguments: slots_w, slots_b, counters, hyper
    opt = [a3, a2, i1, h1]
    return {
        "forward": [a2, a2, a1, b1, a2],
        "sse": [a2, a2, f1],
        "model_sse": [a2, a2, a2, a1, b1, f1],
        "mse_grad": [a2, a2, a2, a1, b1, i8, i8, b1, f1, f1],
        "backward": [a2, a2, a2],
        "step_partials": [a2, a2, a2, a1, b1, i1, i1, i1, b1, i8, b1, i8, f1],
        "step_update": [a2, a1, b1, *opt, b1, f8, i1, i8, f1, f1],
        "fit_steps": [a2, a2, a2, a1, b1, *opt, b1, f8, i1, i1, u8, i8, f1, f1],
        "shuffle_epoch": [i1, u8, i1],
        "counter_permutation": [u8, i8, i8, i1],
        "residual": [a2, a2, a2, a1, b1, i1, i1, i1, r2, f1],
        "grad_partials": [a2, r2, i1, i1, i1, f1],
        "update_check": [f1, i8, f1, i8, f8, a2, a1, b1, *opt, b1, f8, i1, f1, f1],
        "update_apply": [a2, a1, b1, *opt, i1, b1, f1],
        "reduce_grad": [f1, i8, f8, a2, a1],
        "all_finite": [a1, types.Array(types.int32, 1, "C")],
        "cast_copy_1d": [types.Array(types.int64, 1, "A"), a1],
        "cast_copy_2d": [types.Array(types.float64, 2, "A"), a2],
    }


# Every kernel, for the compile checks.
KERNELS = tuple(launch_signatures("float32"))
