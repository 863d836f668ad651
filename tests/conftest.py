"""Shared fixtures."""

from __future__ import annotations

import os

# Before fastlin is imported (and inherited by the tests' subprocesses): every
# kernel call that skips numba's dispatcher checks that its table key picked
# code compiled for its arguments' types (fastlin._jit.find_entry).
os.environ["FASTLIN_CHECK_ENTRY_TYPES"] = "1"

import pytest  # noqa: E402

from fastlin.backends import cpu_ops  # noqa: E402


@pytest.fixture(params=["default", "many-chunks", "gemm"])
def chunking(request, monkeypatch):
    """Run a test three ways: with fastlin's own choices; with tiny chunks, so
    that the parallel kernels and the chunk-ordered reduction always run; and
    on the GEMM path with tiny row blocks, whatever the number of outputs."""
    if request.param == "many-chunks":
        monkeypatch.setattr(cpu_ops, "MIN_CHUNK_WORK", 1)
        monkeypatch.setattr(cpu_ops, "PARALLEL_FORWARD_WORK", 0)
        monkeypatch.setattr(cpu_ops, "GEMM_MIN_OUT", 1 << 30)
    elif request.param == "gemm":
        monkeypatch.setattr(cpu_ops, "GEMM_MIN_OUT", 1)
        monkeypatch.setattr(cpu_ops, "GEMM_BLOCK_ROWS", 16)
    return request.param
