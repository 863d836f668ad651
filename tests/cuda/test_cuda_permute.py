"""The GPU draws fastlin.backends.permute's order exactly as the CPU does
(the same functions, compiled by numba-cuda; in the simulator, run as
Python), for several blocks and a grid-stride tail."""

from __future__ import annotations

import numpy as np
import pytest

from fastlin.backends import permute
from tests.cuda.test_permute_stats import order
from tests.support.cuda_ref import to_host


@pytest.mark.parametrize(("seed", "epoch", "n"), [(0, 0, 1), (7, 3, 17), (2**64 - 1, 5, 61), (12345, 2**33, 200)])
def test_gpu_order_is_the_cpu_order(cops, kernels, seed, epoch, n):
    from fastlin.backends.cuda_config import TPB

    perm = cops.empty((n,), np.int64)
    blocks = 2  # fewer threads than rows for n > 2·TPB: the grid-stride loop runs
    cops._launch(kernels.counter_permutation, blocks, TPB)(np.uint64(seed), epoch, permute.half_bits(n), perm)
    np.testing.assert_array_equal(to_host(perm), order(seed, epoch, n))
