"""What a step does to the optimiser state's ``counters`` (``abi.CNT_*``).

Plain Python on an int64 array, compiled unchanged by both targets
(``njit(inline="always")`` on the CPU, ``cuda.jit(device=True)`` on CUDA,
where one thread calls it), so the two backends count steps and walk
through epochs by the same rule.  Like :mod:`.permute`, no function here
calls another: each target compiles them separately.
"""

from __future__ import annotations

from .abi import CNT_EPOCH, CNT_HAS_BUF, CNT_POS, CNT_STEP


def step_taken(counters, uses_buffers):
    """An update was applied: count it (the schedule's position, Adam's t),
    and mark the momentum buffers as holding a value when the rule keeps them."""
    counters[CNT_STEP] += 1
    if uses_buffers:
        counters[CNT_HAS_BUF] = 1


def advance(counters, n, n_rows):
    """A fit's step used the ``n`` rows from ``counters[CNT_POS]``: move past
    them, into the next epoch after the last (possibly shorter) batch."""
    pos = counters[CNT_POS] + n
    if pos >= n_rows:
        pos = 0
        counters[CNT_EPOCH] += 1
    counters[CNT_POS] = pos
