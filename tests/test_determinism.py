"""The same bits for any number of threads, on every CPU path.

Each case runs in fresh interpreters, because BLAS and numba read their
thread counts (OPENBLAS_NUM_THREADS, NUMBA_NUM_THREADS) at start-up.  The
children print a hash of every result's bytes; the hashes must agree.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from fastlin.backends import cpu_ops

CHILD = textwrap.dedent(
    """
    import hashlib, sys
    import numpy as np
    import fastlin
    from fastlin.backends import cpu_ops

    def digest(*arrays):
        h = hashlib.sha256()
        for a in arrays:
            h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()[:16]

    out = []
    # (knobs, rows, in, out): GEMM with 2 blocks; GEMM with 12 blocks in 5 chunks
    # of up to 3; the streaming kernels split into many chunks.
    cases = [
        ({}, 3000, 40, 33),
        ({"GEMM_BLOCK_ROWS": 256, "MAX_CHUNKS": 5}, 3000, 40, 33),
        ({"MIN_CHUNK_WORK": 1, "PARALLEL_FORWARD_WORK": 0}, 3000, 40, 3),
    ]
    for knobs, n, d, o in cases:
        saved = {name: getattr(cpu_ops, name) for name in knobs}
        for name, value in knobs.items():
            setattr(cpu_ops, name, value)
        for dtype in (np.float32, np.float64):
            rng = np.random.default_rng(7)
            X = rng.standard_normal((n, d)).astype(dtype)
            T = rng.standard_normal((n, o)).astype(dtype)
            model = fastlin.Linear(d, o, dtype=dtype, seed=3)
            opt = fastlin.SGD(0.05, momentum=0.9)
            h = model.fit(X, T, steps=3, opt=opt)
            model.step(X, T, opt)
            hb = model.fit(X, T, steps=4, opt=opt, batch_size=700, seed=5)  # shuffled mini-batches
            g = model.gradients(X, T)
            out.append(digest(model.weight, model.bias, h.loss, hb.loss, g.weight, g.bias,
                              np.float64(g.loss), np.float64(model.loss(X, T)), model.forward(X)))
        for name, value in saved.items():
            setattr(cpu_ops, name, value)
    print(" ".join(out))
    """
)

THREADS = [("1", "1"), ("2", "2"), ("1", "2"), ("2", "1")]  # (OPENBLAS_NUM_THREADS, NUMBA_NUM_THREADS)


def _digests(openblas, numba_threads):
    env = dict(os.environ, OPENBLAS_NUM_THREADS=openblas, NUMBA_NUM_THREADS=numba_threads)
    env.pop("OMP_NUM_THREADS", None)
    run = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    return run.stdout.split()


@pytest.mark.skipif(
    not cpu_ops._BLAS.controlled, reason="numpy's BLAS is not an OpenBLAS fastlin can hold at one thread"
)
def test_every_path_gives_the_same_bits_for_any_blas_and_numba_thread_count():
    results = {threads: _digests(*threads) for threads in THREADS}
    reference = results[THREADS[0]]
    assert len(reference) == 6
    for threads, got in results.items():
        assert got == reference, f"OPENBLAS_NUM_THREADS, NUMBA_NUM_THREADS = {threads} differ from {THREADS[0]}"


def test_the_blas_thread_count_is_restored():
    # The GEMM path holds OpenBLAS at one thread only while it runs.
    import numpy as np

    import fastlin

    if not cpu_ops._BLAS.controlled:
        pytest.skip("numpy's BLAS is not an OpenBLAS fastlin can hold at one thread")
    before = cpu_ops._BLAS._get()
    rng = np.random.default_rng(0)
    model = fastlin.Linear(8, 40, seed=0)
    X, T = rng.standard_normal((50, 8)), rng.standard_normal((50, 40))
    model.step(X, T, fastlin.SGD(0.01))
    model.forward(X)
    assert cpu_ops._BLAS._get() == before and cpu_ops._BLAS._depth == 0
