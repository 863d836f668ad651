"""The simulator's uninitialised memory is poisoned (tests/support/sim_poison.py).

On a GPU a kernel that reads memory it never wrote gets garbage; these
checks make sure that, in this suite's simulator runs, it gets NaN (or -1)
every time, so such a read fails the test that makes it.  On a real GPU
nothing is patched and the module is skipped.
"""

from __future__ import annotations

import numpy as np
import pytest
from numba import cuda

from fastlin import _dispatch

# (without CUDA at all the conftest skips this module with the others, in one line)
ON_A_REAL_GPU = _dispatch.cuda_unavailable_reason() is None and not _dispatch.cuda_simulated()
pytestmark = pytest.mark.skipif(ON_A_REAL_GPU, reason="checks the simulator's patched allocators")


def test_device_arrays_start_as_nan_or_minus_one():
    assert np.isnan(cuda.device_array(7, dtype=np.float64).copy_to_host()).all()
    assert np.isnan(cuda.device_array((2, 3), dtype=np.float32).copy_to_host()).all()
    assert (cuda.device_array(5, dtype=np.int64).copy_to_host() == -1).all()


@cuda.jit
def _read_before_write(out):
    tile = cuda.shared.array(8, np.float64)
    scratch = cuda.local.array(2, np.float64)
    t = cuda.threadIdx.x
    if t == 0:
        tile[1] = 1.0  # tile[0] is never written
    cuda.syncthreads()
    out[cuda.blockIdx.x, t, 0] = tile[t % 2]
    out[cuda.blockIdx.x, t, 1] = scratch[0]


def test_shared_and_local_arrays_start_as_nan_in_every_block():
    out = cuda.to_device(np.zeros((2, 4, 2)))
    _read_before_write[2, 4](out)
    got = out.copy_to_host()
    # even threads read the unwritten tile[0], odd ones tile[1]; block 1 does
    # not see what block 0 left in its shared memory
    assert np.isnan(got[:, 0::2, 0]).all() and (got[:, 1::2, 0] == 1.0).all()
    assert np.isnan(got[:, :, 1]).all()


@cuda.jit
def _leave_a_value(out):
    tile = cuda.shared.array(4, np.float64)
    tile[cuda.threadIdx.x] = 5.0
    cuda.syncthreads()
    out[cuda.blockIdx.x] = tile[0]


def test_the_threads_of_a_block_share_one_array():
    out = cuda.to_device(np.zeros(3))
    _leave_a_value[3, 4](out)
    assert (out.copy_to_host() == 5.0).all()
