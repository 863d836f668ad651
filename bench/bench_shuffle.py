"""One shuffled mini-batch epoch: 1,000,000 x 64 -> 1 and -> 16, batch 256 (BENCH.md).

The way most people train.  Each batch's rows sit at random addresses, so
the step is bound by memory latency unless rows are fetched ahead.

fastlin ``model.fit(X, T, epochs=1, batch_size=256, seed=1, opt=opt)`` --
the whole call, its own permutation included -- against the same epoch
unshuffled (``shuffle=False``: the reference the issue's goal is measured
against), a numpy epoch (``rng.permutation``, fancy-index gather of each
batch, two BLAS products, in-place SGD) and a torch epoch (``randperm``,
indexing, ``nn.Linear``, autograd, ``optim.SGD``), in the same run.
``extra_info`` carries the bytes of one read of X and T, the flops, the
read bandwidth over this X and the SGEMM rate measured in the same run, and
the fraction of that roofline reached (a shuffled epoch cannot stream, so
the fraction says how far random access stays from a plain read).  It also
records ``random_read_s``: a plain ``@njit`` pass that reads every row of X
and T once in the epoch's shuffled order, prefetching the rows 16 positions
ahead as fastlin does -- the least a shuffled epoch can take on one core,
measured in the same run -- and fastlin's ``fraction_of_random_read``.

Run: ``python -m pytest bench/bench_shuffle.py --benchmark-only``.
"""

from __future__ import annotations

import gc
import time

import numba
import numpy as np
import pytest
from bench_osweep import record_limits
from hardware import step_bytes, step_flops
from peers import Problem

from fastlin.backends._simd import (
    prefetch,  # fastlin's own intrinsic: the same hint it gives
)

N_ROWS, N_IN, BATCH, SEED, LR = 1_000_000, 64, 256, 1, 0.01
OUTPUTS = (1, 16)
LIBRARIES = ("fastlin-cpu", "fastlin-cpu-unshuffled", "numpy", "torch")


@numba.njit(nogil=True, fastmath={"reassoc", "contract"})
def _random_read(X, T, rows, ahead):
    """Σ X[rows[k]] + Σ T[rows[k]]: every row once, in the given order (float32 lines of 16)."""
    s = np.float32(0.0)
    n_in, n_out = X.shape[1], T.shape[1]
    for k in range(rows.shape[0]):
        if k + ahead < rows.shape[0]:
            j = rows[k + ahead]
            for d in range(0, n_in, 16):
                prefetch(X, j, d)
            prefetch(X, j, n_in - 1)
            prefetch(T, j, 0)
            prefetch(T, j, n_out - 1)
        i = rows[k]
        for d in range(n_in):
            s += X[i, d]
        for o in range(n_out):
            s += T[i, o]
    return s


def random_read_seconds(X, T, repeats=5):
    """Fastest of ``repeats`` shuffled passes of :func:`_random_read`."""
    rows = np.random.default_rng(SEED).permutation(X.shape[0]).astype(np.int64)
    _random_read(X, T, rows, 16)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        _random_read(X, T, rows, 16)
        best = min(best, time.perf_counter() - t0)
    return best


class _Epochs:
    """The data of one O at a time (X is 256 MB), and an epoch runner per library."""

    def __init__(self):
        self.n_out = None
        self.problem = None
        self.random_read_s = None

    def get(self, n_out):
        if n_out != self.n_out:
            self.problem = None
            gc.collect()
            self.problem = Problem(N_ROWS, N_IN, n_out, seed=0, lr=LR)
            self.n_out = n_out
            X, T = self.problem.data()[:2]
            self.random_read_s = random_read_seconds(X, T)
        return self.problem


@pytest.fixture(scope="module")
def epochs():
    return _Epochs()


def _fastlin(problem, shuffle):
    import fastlin

    X, T, W0, b0 = problem.data()
    model = fastlin.Linear.from_weights(W0, b0)
    opt = fastlin.SGD(lr=LR)

    def epoch():
        return model.fit(X, T, epochs=1, batch_size=BATCH, shuffle=shuffle, seed=SEED, opt=opt).loss[-1]

    return epoch


def _numpy(problem):
    X, T, W0, b0 = problem.data()
    W, b = W0.copy(), b0.copy()
    rng = np.random.default_rng(SEED)
    lr = np.float32(LR)

    def epoch():
        order = rng.permutation(X.shape[0])
        loss = 0.0
        for lo in range(0, X.shape[0], BATCH):
            idx = order[lo : lo + BATCH]
            Xb, Tb = X[idx], T[idx]  # the gather: two (batch, ·) copies
            R = Xb @ W.T
            R += b
            R -= Tb
            loss = float(np.vdot(R, R)) / R.size
            R *= np.float32(2.0 / R.size)
            W[...] -= lr * (R.T @ Xb)
            b[...] -= lr * R.sum(axis=0)
        return loss

    return epoch


def _torch(problem):
    import torch

    X, T, W0, b0 = problem.data()
    tX, tT = torch.from_numpy(X), torch.from_numpy(T)
    model = torch.nn.Linear(W0.shape[1], W0.shape[0])
    with torch.no_grad():
        model.weight.copy_(torch.from_numpy(W0))
        model.bias.copy_(torch.from_numpy(b0))
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    gen = torch.Generator().manual_seed(SEED)
    mse = torch.nn.functional.mse_loss

    def epoch():
        order = torch.randperm(X.shape[0], generator=gen)
        loss = None
        for lo in range(0, X.shape[0], BATCH):
            idx = order[lo : lo + BATCH]
            opt.zero_grad(set_to_none=True)
            loss = mse(model(tX[idx]), tT[idx])
            loss.backward()
            opt.step()
        return loss.item()

    return epoch


def _runner(library, problem):
    if library == "fastlin-cpu":
        return _fastlin(problem, True)
    if library == "fastlin-cpu-unshuffled":
        return _fastlin(problem, False)
    if library == "numpy":
        return _numpy(problem)
    pytest.importorskip("torch")
    return _torch(problem)


PARAMS = [pytest.param(o, library, id=f"O{o}-{library}") for o in OUTPUTS for library in LIBRARIES]


@pytest.mark.parametrize(("n_out", "library"), PARAMS)
def test_shuffled_epoch(benchmark, epochs, hardware, n_out, library):
    problem = epochs.get(n_out)
    X = problem.data()[0]
    case = f"epoch{n_out}"
    hardware.for_case(case, X)  # the read bandwidth over this X, before its first benchmark
    epoch = _runner(library, problem)
    benchmark.group = f"epoch:O={n_out}"
    benchmark.name = f"shuffled_epoch[O={n_out}-{library}]"
    epoch()  # compile, allocate scratch
    benchmark.pedantic(epoch, rounds=5, warmup_rounds=1)
    extra = {
        "kind": "epoch",
        "shape": [N_ROWS, N_IN, n_out],
        "batch_size": BATCH,
        "shuffled": library != "fastlin-cpu-unshuffled",
    }
    extra["random_read_s"] = min(epochs.random_read_s, random_read_seconds(*problem.data()[:2], repeats=3))
    if getattr(benchmark, "stats", None):
        extra["fraction_of_random_read"] = extra["random_read_s"] / benchmark.stats.stats.median
    record_limits(
        benchmark,
        hardware,
        group=benchmark.group,
        case=case,
        library=library,
        X=X,
        nbytes=step_bytes(N_ROWS, N_IN, n_out),
        flops=step_flops(N_ROWS, N_IN, n_out),
        extra=extra,
    )
