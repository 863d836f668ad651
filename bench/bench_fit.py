"""A 100-step fit in one call, keeping every step's loss.

fastlin's whole ``model.fit(X, T, steps=100, opt=opt)`` call (validation,
planning, the compiled loop and the History) against a numpy loop, a torch
loop, a replayed torch CUDA graph and one jitted ``lax.fori_loop`` in JAX.
"""

from __future__ import annotations

import pytest
from cases import FIT_CASES, FIT_STEPS
from peers import LIBRARIES, make

PARAMS = [pytest.param(case, library, id=f"{case}-{library}") for case in FIT_CASES for library in LIBRARIES]


@pytest.mark.parametrize(("case", "library"), PARAMS)
def test_fit(benchmark, problems, record, case, library):
    problem = problems.get(case)
    backend = make(library, problem)
    benchmark.group = f"fit{FIT_STEPS}:{case}"
    benchmark.name = f"fit{FIT_STEPS}[{case}-{library}]"
    try:
        with backend.context():
            for _ in range(3):  # compile and warm up
                backend.fit(FIT_STEPS)
            benchmark(backend.fit, FIT_STEPS)
        record(benchmark, kind="fit", case=case, library=library, problem=problem, steps=FIT_STEPS)
    finally:
        backend.close()
