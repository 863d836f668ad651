"""The benchmark cases of ``shared/BENCH.md``: N rows × D inputs → O outputs, float32.

``roofline`` cases are big enough for a hardware limit to mean something;
for the tiny ones (seed, small) the time is call overhead and no limit is
recorded.  huge_tall (16,000,000 × 256 → 1, 16 GB) is a GPU-only case and
lives with the GPU benchmarks.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Case:
    name: str
    n_rows: int
    n_in: int
    n_out: int
    roofline: bool
    about: str


CASES = {
    c.name: c
    for c in (
        Case("seed", 1, 5, 2, False, "the blog's problem: call overhead"),
        Case("small", 64, 32, 4, False, "per-step overhead of the API"),
        Case("tall", 1_000_000, 64, 1, True, "memory bandwidth: an ideal step reads X once (256 MB)"),
        Case("tall16", 1_000_000, 64, 16, True, "bandwidth and arithmetic together"),
        Case("wide", 16_384, 1_024, 256, True, "arithmetic: GEMM-bound, 17 GFLOP a step"),
    )
}

STEP_CASES = ("seed", "small", "tall", "tall16", "wide")
FIT_CASES = ("seed", "small")
FIT_STEPS = 100
