"""The counter-based permutation of fastlin.backends.permute (compiled for the
CPU with numba, as a fit would): a bijection of range(n) for awkward n, a
plain-Python twin that agrees, and no visible pattern -- different epochs and
seeds give different orders, position and index are uncorrelated, about one
fixed point per order, and rows spread evenly over the epoch.  (NEEDS_CUDA
is False: this is the CPU side; test_cuda_permute.py checks the GPU's.)
"""

from __future__ import annotations

import numpy as np
import pytest
from numba import njit

from fastlin.backends import permute

NEEDS_CUDA = False

_round_key = njit(inline="always")(permute.round_key)
_index = njit(inline="always")(permute.permuted_index)


@njit
def _fill(seed, epoch, h, out):
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
    n = out.shape[0]
    for i in range(n):
        out[i] = _index(i, n, h, keys)


def order(seed, epoch, n):
    out = np.empty(n, dtype=np.int64)
    _fill(np.uint64(seed), epoch, permute.half_bits(n), out)
    return out


def python_order(seed, epoch, n):
    keys = tuple(permute.round_key(np.uint64(seed), epoch, r) for r in range(permute.ROUNDS))
    h = permute.half_bits(n)
    return np.array([int(permute.permuted_index(i, n, h, keys)) for i in range(n)])


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 17, 64, 65, 1000, 4097, 100_003])
def test_every_row_once_per_epoch(n):
    for seed, epoch in ((0, 0), (7, 3), (2**64 - 1, 2**40)):
        np.testing.assert_array_equal(np.sort(order(seed, epoch, n)), np.arange(n))


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("n", [1, 17, 250])
def test_the_python_twin_agrees_and_never_wraps(n):
    """The plain functions (what the simulator runs) give the compiled numbers,
    with no numpy overflow warning (every product stays below 2**64)."""
    for seed, epoch in ((3, 0), (2**64 - 1, 5)):
        np.testing.assert_array_equal(python_order(seed, epoch, n), order(seed, epoch, n))


def test_half_bits():
    assert [permute.half_bits(n) for n in (1, 2, 4, 5, 16, 17, 2**20, 2**20 + 1)] == [0, 1, 1, 2, 2, 3, 10, 11]


def test_no_visible_pattern():
    n = 200_000
    orders = {(s, e): order(s, e, n) for s in (1, 2) for e in range(4)}
    idx = np.arange(n)
    for (s, e), p in orders.items():
        # position and row uncorrelated (|r| ~ 1/sqrt(n) = 0.002)
        assert abs(np.corrcoef(idx, p)[0, 1]) < 0.01, (s, e)
        # neighbours in the order are unrelated rows (lag-1 and lag-2 autocorrelation ~ 0)
        assert abs(np.corrcoef(p[:-1], p[1:])[0, 1]) < 0.01, (s, e)
        assert abs(np.corrcoef(p[:-2], p[2:])[0, 1]) < 0.01, (s, e)
        # each tenth of the epoch draws rows evenly from the whole range (chi-square, 9 dof)
        counts = np.histogram(p[: n // 10], bins=10, range=(0, n))[0]
        expected = n / 100
        assert ((counts - expected) ** 2 / expected).sum() < 40, counts
    # different epochs and seeds: different orders, agreeing at about 1 place in n
    keys = list(orders)
    for a in range(len(keys)):
        for b in range(a + 1, len(keys)):
            assert (orders[keys[a]] == orders[keys[b]]).sum() < 12, (keys[a], keys[b])


def test_about_one_fixed_point():
    """A random permutation has Poisson(1) fixed points: over 200 orders the
    mean is about 1 (standard error ~0.07)."""
    fixed = [int((order(seed, 0, 997) == np.arange(997)).sum()) for seed in range(200)]
    assert 0.7 < np.mean(fixed) < 1.3, np.mean(fixed)


@pytest.mark.parametrize("n", [3, 5, 9, 33])
def test_small_orders_place_each_row_evenly(n):
    """Over 20,000 seeds, row i lands at position j with chance 1/n for every
    (i, j) (chi-square on (n-1)^2 dof within 6 standard deviations).  Four
    Feistel rounds fail this (n = 5: chi-square ~700 for 16 dof)."""
    seeds = np.random.default_rng(1).integers(0, 2**63, 20_000, dtype=np.int64).astype(np.uint64)
    counts = np.zeros((n, n))
    for s in seeds:
        counts[np.arange(n), order(s, 0, n)] += 1
    expected = len(seeds) / n
    chi2 = ((counts - expected) ** 2 / expected).sum()
    dof = (n - 1) ** 2
    assert chi2 < dof + 6 * np.sqrt(2 * dof), (chi2, dof)


def test_the_fits_epochs_are_unrelated():
    """What a fit draws (cpu.epoch_permutation, epoch after epoch of one seed,
    and neighbouring seeds): every row once, and neither the order nor each
    row's position carries over from one epoch to the next."""
    from fastlin.backends import cpu

    n = 100_003
    perms = {}
    for seed in (41, 42):
        for epoch in range(6):
            p = np.empty(n, dtype=np.int64)
            cpu.epoch_permutation(np.uint64(seed), epoch, p)
            np.testing.assert_array_equal(np.sort(p), np.arange(n))
            np.testing.assert_array_equal(p, order(seed, epoch, n))
            perms[seed, epoch] = p
    pairs = [((s, e), (s, e + 1)) for s in (41, 42) for e in range(5)] + [((41, e), (42, e)) for e in range(6)]
    for a, b in pairs:
        pa, pb = perms[a], perms[b]
        assert abs(np.corrcoef(pa, pb)[0, 1]) < 0.015, (a, b)
        # the position of each row in one epoch vs in the next
        assert abs(np.corrcoef(np.argsort(pa), np.argsort(pb))[0, 1]) < 0.015, (a, b)
        assert (pa == pb).sum() < 12, (a, b)
