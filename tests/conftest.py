"""Shared fixtures."""

from __future__ import annotations

import pytest

from fastlin.backends import cpu_ops


@pytest.fixture(params=["default", "many-chunks"])
def chunking(request, monkeypatch):
    """Run a test with fastlin's own work split, and again with tiny chunks so
    that the parallel kernels and the chunk-ordered reduction always run."""
    if request.param == "many-chunks":
        monkeypatch.setattr(cpu_ops, "MIN_CHUNK_WORK", 1)
        monkeypatch.setattr(cpu_ops, "PARALLEL_FORWARD_WORK", 0)
    return request.param
