"""Make the CUDA simulator's uninitialised memory loud.

On a GPU, ``cuda.device_array``, ``cuda.shared.array`` and ``cuda.local.array``
hand out whatever the memory last held.  The simulator hands out
``np.empty``/``np.ndarray``, which is usually zeros or leftovers of a previous
array, so a kernel that reads a slot before writing it passes most runs and
fails now and then (CI once saw a NaN loss on a first step).  ``install()``
fills every such allocation with 0xFF bytes: NaN for floats, -1 for integers,
so a read-before-write shows up on every run, in the test that made it.
"""

from __future__ import annotations

import functools
import sys

import numpy as np

POISON_BYTE = 0xFF


def _poison(a: np.ndarray) -> np.ndarray:
    if a.size:
        a.reshape(-1).view(np.uint8)[...] = POISON_BYTE
    return a


def install() -> None:
    """Patch the simulator's allocators (idempotent).  Call only when
    ``NUMBA_ENABLE_CUDASIM=1``: the simulator's modules are imported here."""
    import numba.cuda as cuda
    from numba.cuda.simulator import kernelapi
    from numba.cuda.simulator.cudadrv import devicearray

    if getattr(cuda.device_array, "_fastlin_poisoned", False):
        return

    plain_device_array = devicearray.device_array

    @functools.wraps(plain_device_array)
    def device_array(*args, **kwargs):
        arr = plain_device_array(*args, **kwargs)
        _poison(arr._ary)
        return arr

    device_array._fastlin_poisoned = True
    cuda.device_array = device_array
    devicearray.device_array = device_array

    plain_local = kernelapi.FakeCUDALocal.array

    def local_array(self, shape, dtype, alignment=None):
        return _poison(plain_local(self, shape, dtype, alignment))

    kernelapi.FakeCUDALocal.array = local_array

    plain_shared = kernelapi.FakeCUDAShared.array

    def shared_array(self, shape, dtype, alignment=None):
        # The simulator gives every thread of a block the same array for one
        # source line, keyed by its caller's file and line; a wrapper would
        # become that caller and alias them all, so key it here the same way
        # and poison the array once, when the block first asks for it.
        if shape == 0:  # dynamic shared memory: the simulator zero-fills it
            return plain_shared(self, shape, dtype, alignment)
        if alignment is not None:
            raise RuntimeError("Array alignment is not supported in cudasim")
        caller = sys._getframe(1)
        key = (caller.f_code.co_filename, caller.f_lineno)
        arr = self._allocations.get(key)
        if arr is None:
            if isinstance(dtype, kernelapi.types.Type):
                dtype = kernelapi.numpy_support.as_dtype(dtype)
            # setdefault, not get-then-set: another thread of the block may
            # have made the array since our get (a thread switch can fall
            # between the two), and then we must use that one.
            arr = self._allocations.setdefault(key, _poison(np.empty(shape, dtype)))
        return arr

    kernelapi.FakeCUDAShared.array = shared_array

    # The simulator keeps one set of shared arrays per launch and runs the
    # blocks one after another, so block 1 would find block 0's values
    # where a GPU gives it garbage: poison them again before every block.
    from numba.cuda.simulator import kernel as sim_kernel

    plain_run = sim_kernel.BlockManager.run

    def run_block(self, grid_point, *args):
        context = sim_kernel._get_kernel_context()
        if context is not None:
            for arr in context.shared._allocations.values():
                _poison(arr)
        return plain_run(self, grid_point, *args)

    sim_kernel.BlockManager.run = run_block
