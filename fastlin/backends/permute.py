"""A counter-based permutation of ``range(n)``: row ``i`` of an epoch's order
is ``permuted_index(i, ...)``, computable for any ``i`` independently, on the
CPU and the GPU alike (the same integer arithmetic, so the same order).

The order fastlin's shuffled fits use (epoch ``e`` of a fit seeded ``s``
visits rows ``permuted_index(0), permuted_index(1), ...`` for (s, e)): the
CPU fills its ``perm`` array from it at each epoch's start
(:func:`fastlin.backends.cpu.epoch_permutation`), the GPU fills its own in
parallel, one thread per row (:func:`fastlin.backends.cuda_shuffle.shuffle_epoch`),
so CPU and GPU shuffled fits visit the same rows.

Construction: an 8-round balanced Feistel network on ``2·h`` bits, ``4**h >=
n``, whose round function is a 32-bit integer hash (``lowbias32``, C.
Wellons) of the right half XOR a round key; values ``>= n`` are walked on
through the network until they land in range (cycle-walking), which keeps it
a bijection of ``range(n)``: at most ``4**h / n < 4`` rounds of the network
on average.  The round keys come from (seed, epoch, round) through the same
hash.

Every function is plain Python on ``numpy.uint64`` values whose products
stay below 2**64 (32-bit operands), so that it compiles unchanged with
``numba.njit`` and ``numba.cuda.jit(device=True)``, and runs in numba's CUDA
simulator, where numpy would warn about a wrapping multiply.  No function
calls another (each target compiles them separately).  Compiled kernels
are cached by the file that compiles them, not this one: after editing this
file, clear the numba cache (``fastlin/backends/__pycache__/*.nb[ic]``).

tests/support/naive.py writes the same definition out independently, on Python ints.
"""

from __future__ import annotations

import numpy as np

# Four rounds already hide any pattern in large orders, but over small n they
# leave the position of a row measurably uneven (n = 5: the chance that row i
# lands at position j ranges 0.18-0.26 instead of 0.2); eight rounds make it
# even within sampling error (tests/cuda/test_permute_stats.py).
ROUNDS = 8


def half_bits(n):
    """``h`` of the network for ``n`` rows: the least h with ``4**h >= n``."""
    h = 0
    while (1 << (2 * h)) < n:
        h += 1
    return h


def round_key(seed, epoch, r):
    """32-bit key of round ``r`` for (seed, epoch): the hash chained over the
    seed's and the epoch's 32-bit halves and ``r``."""
    mask = np.uint64(0xFFFFFFFF)
    s = np.uint64(seed)
    e = np.uint64(epoch)
    x = np.uint64(0x9E3779B9) ^ np.uint64(r)
    for k in range(5):
        if k == 0:
            w = s & mask
        elif k == 1:
            w = s >> np.uint64(32)
        elif k == 2:
            w = e & mask
        elif k == 3:
            w = e >> np.uint64(32)
        else:
            w = np.uint64(r) * np.uint64(0x85EBCA6B) & mask
        x = (x ^ w) & mask
        x ^= x >> np.uint64(16)
        x = (x * np.uint64(0x7FEB352D)) & mask
        x ^= x >> np.uint64(15)
        x = (x * np.uint64(0x846CA68B)) & mask
        x ^= x >> np.uint64(16)
    return x


def permuted_index(i, n, h, keys):
    """Position ``i`` (0 <= i < n) of the permutation given by ``h =
    half_bits(n)`` and ``keys``, the tuple of the ``ROUNDS`` round keys
    (``round_key(seed, epoch, r)`` for r = 0, 1, ...)."""
    mask32 = np.uint64(0xFFFFFFFF)
    bits = np.uint64(h)
    half = (np.uint64(1) << bits) - np.uint64(1)
    x = np.uint64(i)
    limit = np.uint64(n)
    while True:
        left = x >> bits
        right = x & half
        for key in keys:
            f = (right ^ key) & mask32
            f ^= f >> np.uint64(16)
            f = (f * np.uint64(0x7FEB352D)) & mask32
            f ^= f >> np.uint64(15)
            f = (f * np.uint64(0x846CA68B)) & mask32
            f ^= f >> np.uint64(16)
            left, right = right, (left ^ f) & half
        x = (left << bits) | right
        if x < limit:
            return x
