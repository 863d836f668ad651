"""CUDA kernels (``numba.cuda``): the twins of :mod:`fastlin.backends.cpu`,
named in one table.

Kernels only: no validation, no allocation.  :mod:`fastlin.backends.cuda_ops`
allocates, picks the launch configuration and launches.  The kernels live in
one module per strategy:

:mod:`.cuda_rows`
    path F, row streaming (tall layers, few outputs): ``mse_grad``,
    ``step_partials`` + ``step_update`` (a step), ``fit_steps`` (a whole
    small fit in one launch);
:mod:`.cuda_tiled`
    path G, TS×TS tiles (any shape): ``forward``, ``model_sse``,
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

from .cuda_elementwise import all_finite, backward, cast_copy_1d, cast_copy_2d, reduce_grad, sse
from .cuda_rows import fit_steps, fused_step, mse_grad, step_partials, step_update
from .cuda_shuffle import counter_permutation, shuffle_epoch
from .cuda_tiled import apply_update, forward, grad_partials, model_sse, residual, update_apply, update_check

__all__ = [
    "KERNELS",
    "all_finite",
    "apply_update",
    "backward",
    "cast_copy_1d",
    "cast_copy_2d",
    "counter_permutation",
    "fit_steps",
    "forward",
    "fused_step",
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
    """Argument types of every kernel as cuda_ops launches it, for ``dtype``
    ("float32" or "float64") data: what the compile checks
    (tests/cuda/ptx_check.py, bench/gpu_static.py) compile without a GPU."""
    f = dtype
    a2, a1 = f"{f}[:, ::1]", f"{f}[::1]"
    f1, i1, r2 = "float64[::1]", "int64[::1]", "float64[:, ::1]"
    return {
        "forward": [a2, a2, a1, "boolean", a2],
        "sse": [a2, a2, f1],
        "model_sse": [a2, a2, a2, a1, "boolean", f1],
        "mse_grad": [a2, a2, a2, a1, "boolean", "int64", "int64", "boolean", f1, f1],
        "backward": [a2, a2, a2],
        "step_partials": [a2, a2, a2, a1, i1, i1, i1, f1, "boolean", "boolean", "int64", "boolean", "int64"],
        "step_update": [a2, a1, a2, a1, f1, i1, i1, f1, "int64", f1],
        "fit_steps": [a2, a2, a2, a1, a2, a1, f1, i1, i1, i1, "uint64", f1, f1, "int64"],
        "shuffle_epoch": ["uint64", i1, i1],
        "counter_permutation": ["uint64", "int64", "int64", i1],
        "residual": [a2, a2, a2, a1, i1, i1, i1, r2, f1],
        "grad_partials": [a2, r2, i1, i1, i1, f1],
        "update_check": [a2, a1, a2, a1, f1, i1, i1, f1, "int64", f1, "int64", f1, "float64", f1],
        "update_apply": [a2, a1, a2, a1, f1, i1, i1, f1, "boolean"],
        "reduce_grad": [f1, "int64", "float64", a2, a1],
        "all_finite": [a1, "int32[::1]"],
        "cast_copy_1d": ["int64[:]", a1],
        "cast_copy_2d": ["float64[:, :]", a2],
    }


# Every kernel, for the compile checks.
KERNELS = tuple(launch_signatures("float32"))
