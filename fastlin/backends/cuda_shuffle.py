"""The epoch shuffle on the GPU: the counter-based permutation of
:mod:`.permute`, compiled for the device from the functions the CPU compiles
(so both draw the same order), and the kernels that fill a fit's row order.
"""

from __future__ import annotations

from numba import cuda

from . import permute as _permute
from .abi import CNT_EPOCH, CNT_POS, CNT_STATUS, OK
from .cuda_config import CACHE

_half_bits = cuda.jit(device=True)(_permute.half_bits)
_round_key = cuda.jit(device=True)(_permute.round_key)
_permuted_index = cuda.jit(device=True)(_permute.permuted_index)


@cuda.jit(device=True)
def epoch_permutation(seed, epoch, h, perm, first, stride):
    """Entries ``first, first + stride, ...`` of the row order
    :func:`fastlin.backends.cpu.epoch_permutation` gives for (seed, epoch),
    ``h = permute.half_bits(len(perm))``: each entry is computed on its own,
    so the threads of a block or a grid fill ``perm`` together, O(n / threads).
    """
    keys = (
        _round_key(seed, epoch, 0),
        _round_key(seed, epoch, 1),
        _round_key(seed, epoch, 2),
        _round_key(seed, epoch, 3),
        _round_key(seed, epoch, 4),
        _round_key(seed, epoch, 5),
        _round_key(seed, epoch, 6),
        _round_key(seed, epoch, 7),
    )  # permute.ROUNDS of them
    n = perm.shape[0]
    for i in range(first, n, stride):
        perm[i] = _permuted_index(i, n, h, keys)


@cuda.jit(cache=CACHE)
def counter_permutation(seed, epoch, h, perm):
    """``perm`` = the whole row order of (seed, epoch), ``h =
    permute.half_bits(len(perm))``, unconditionally: one entry per thread
    (grid-stride), the numbers :func:`fastlin.backends.cpu.epoch_permutation`
    gives.  Fits use :func:`shuffle_epoch`; this one serves tests and
    benchmarks."""
    epoch_permutation(seed, epoch, h, perm, cuda.grid(1), cuda.gridsize(1))


@cuda.jit(cache=CACHE)
def shuffle_epoch(counters, seed, perm):
    """Draw this epoch's row order when a fit is at the start of an epoch
    (launched by the host before such steps of a multi-launch fit): one
    thread per row, in as many blocks as needed (grid-stride beyond that)."""
    if counters[CNT_STATUS] == OK and counters[CNT_POS] == 0:
        epoch_permutation(seed, counters[CNT_EPOCH], _half_bits(perm.shape[0]), perm, cuda.grid(1), cuda.gridsize(1))
