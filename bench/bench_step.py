"""One full-batch training step (forward, MSE, gradient, SGD update) per call.

fastlin's ``model.step(X, T, opt)`` -- the public API, validation included --
against the same step in numpy, torch and JAX on the same float32 data.
"""

from __future__ import annotations

import pytest
from cases import CASES, STEP_CASES
from peers import LIBRARIES, make

PARAMS = [pytest.param(case, library, id=f"{case}-{library}") for case in STEP_CASES for library in LIBRARIES]


@pytest.mark.parametrize(("case", "library"), PARAMS)
def test_step(benchmark, problems, record, case, library):
    problem = problems.get(case)
    backend = make(library, problem)
    benchmark.group = f"step:{case}"
    benchmark.name = f"step[{case}-{library}]"
    try:
        with backend.context():
            for _ in range(3):  # compile, allocate scratch, fill caches
                backend.step()
            benchmark(backend.step)
        record(benchmark, kind="step", case=case, library=library, problem=problem)
    finally:
        backend.close()


def test_cases_are_the_documented_ones():
    """The shapes BENCH.md names (a guard against editing one and not the other)."""
    assert CASES["tall"].n_rows * CASES["tall"].n_in * 4 == 256_000_000
    assert (CASES["wide"].n_rows, CASES["wide"].n_in, CASES["wide"].n_out) == (16_384, 1_024, 256)
